"""HTTP plumbing shared by both clients: workspace resolution, auth, error mapping, retry policy.

The retry policy is one set of tenacity arguments; the sync client runs it with ``Retrying`` and the
async client with ``AsyncRetrying``, so the two cannot disagree about what is retried or how long
to wait.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import inspect
import ipaddress
import logging
import random
import socket
import ssl
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

import httpcore
import httpx
from pydantic import ValidationError
from tenacity import RetryCallState, stop_after_attempt, stop_before_delay
from tenacity.stop import stop_base

from . import _constants as C
from ._concurrency import CallContext
from ._secrets import excerpt, redact, register, register_headers, safe_cause
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    CredentialsError,
    PayloadTooLargeError,
    ResponseFormatError,
    status_error_class,
)
from .types import ServingErrorBody

if TYPE_CHECKING:
    from databricks.sdk.core import Config

logger = logging.getLogger(C.LOGGER_NAME)

__all__ = [
    "DataPlaneUnavailable",
    "Workspace",
    "data_plane_url",
    "error_from_response",
    "map_transport_error",
    "normalize_host",
    "parse_retry_after",
    "resolve_workspace",
    "retry_arguments",
]


# --------------------------------------------------------------------------------------------------
# Workspace and auth


def normalize_host(host: str) -> str:
    """``https://`` added when missing, trailing slash dropped; plain http only to loopback."""
    host = host.strip()
    if not host.rstrip("/"):
        raise ValueError("host is empty; pass host='https://<workspace>.cloud.databricks.com'")
    if "://" not in host:  # checked before stripping slashes, so "https://" is not read as a hostname
        host = "https://" + host
    host = host.rstrip("/")
    parts = urlsplit(host)
    problem = _url_problem(parts)
    if problem == "not http":
        raise ValueError(f"host {host!r} is not an http(s) URL of a Databricks workspace")
    if problem:
        raise ValueError(f"host {host!r} {problem}; use https://")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _url_problem(parts: SplitResult) -> str | None:
    """Why a URL the token would be sent to is refused: "not http" (not an http(s) URL with a host),
    plain http to anything but loopback (the token would cross the network in clear text), or None."""
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not http"
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        return "uses plain http to a non-loopback address, which would send the token in clear text"
    return None


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


class _StaticTokenAuth(httpx.Auth):
    """A personal access token given explicitly: the header never changes."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"
        register(token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "_StaticTokenAuth(token=***)"


class _ConfigAuth(httpx.Auth):
    """Fresh headers from databricks-sdk's ``Config.authenticate()`` on every request.

    ``authenticate()`` is cheap while the token is cached but blocks on the network when an OAuth
    token needs refreshing, so the async flow runs it in a worker thread, off the event loop.
    """

    def __init__(self, header_factory: Callable[[], Mapping[str, str]]) -> None:
        self._headers = header_factory

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers.update(self._call())
        yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers.update(await asyncio.to_thread(self._call))
        yield request

    def _call(self) -> Mapping[str, str]:
        try:
            headers = self._headers()
        except Exception as exc:  # the SDK's own messages name the auth method and how to fix it
            error = credentials_error(exc)
        else:
            # An OAuth refresh hands out a new token: known before it is sent, so an echo of it is scrubbed.
            register_headers(headers.items())
            return headers
        # Raised outside the handler, so no implicit context is attached: when the SDK's text held a
        # secret, its exception is not chained at all (credentials_error leaves __cause__ None).
        raise error

    def __repr__(self) -> str:
        return "_ConfigAuth()"


@dataclass(frozen=True)
class Workspace:
    """Where requests go and how they authenticate. Its repr never shows credentials.

    ``config`` is databricks-sdk's ``Config`` when the workspace was resolved through it, and None for
    an explicit host and token: the source of the data-plane tokens of route-optimized endpoints
    (:meth:`data_plane_auth`), which only OAuth credentials can be exchanged for.
    """

    host: str
    auth: httpx.Auth
    auth_type: str
    config: Config | None = None

    def __repr__(self) -> str:
        return f"Workspace(host={self.host!r}, auth_type={self.auth_type!r})"

    def data_plane_auth(self, url: str, authorization_details: str | None) -> httpx.Auth:
        """httpx auth for a route-optimized endpoint's data-plane ``url``: a data-plane OAuth token,
        exchanged for the workspace's own OAuth token by databricks-sdk's ``DataPlaneTokenSource``
        (what ``WorkspaceClient.serving_endpoints_data_plane`` uses: ``POST {host}/oidc/v1/token``),
        cached and refreshed by it, and registered with ``_secrets`` before it is sent. The exchange
        runs on a request's first use of the auth, off the event loop in the async client; its
        failure raises ``CredentialsError`` from that request.

        May block on the network (it checks that the credentials give an OAuth token at all): the
        async client calls it in a worker thread.

        Raises:
            DataPlaneUnavailable: the credentials cannot give a data-plane token: a personal access
                token (explicit ``token=``, or a ``Config`` whose auth is ``pat``), any other non-OAuth
                auth, or a databricks-sdk without ``DataPlaneTokenSource``. The message says why.
        """
        config = self.config
        if config is None:
            raise DataPlaneUnavailable(
                "the client was given a personal access token (host= and token=), and route-optimized "
                "endpoints take only OAuth tokens"
            )
        try:
            config.oauth_token()
        except ValueError as exc:  # the SDK: "OAuth tokens are not available for pat authentication"
            raise DataPlaneUnavailable(
                f"databricks-sdk's {self.auth_type} credentials give no OAuth token to exchange for a "
                f"data-plane token ({redact(str(exc))})"
            ) from None
        except Exception:  # a failing refresh: each request's auth says so, as CredentialsError
            pass
        source = _data_plane_tokens(config)
        details = authorization_details or ""

        def headers() -> dict[str, str]:
            token = source.token(url, details)
            return {"Authorization": f"{token.token_type or 'Bearer'} {token.access_token}"}

        return _ConfigAuth(headers)


class DataPlaneUnavailable(ValueError):
    """Why a route-optimized endpoint cannot be queried at its data-plane URL by this client."""


#: databricks-sdk's data-plane token sources, one per ``Config`` (each caches its tokens by endpoint).
_token_sources: weakref.WeakKeyDictionary[Config, Any] = weakref.WeakKeyDictionary()
_token_sources_lock = threading.Lock()


def _data_plane_tokens(config: Config) -> Any:
    """The ``DataPlaneTokenSource`` of ``config``, made as ``WorkspaceClient`` makes it."""
    try:
        from databricks.sdk.data_plane import DataPlaneTokenSource
    except ImportError:
        from databricks.sdk.version import __version__ as sdk_version

        raise DataPlaneUnavailable(
            f"databricks-sdk {sdk_version} has no DataPlaneTokenSource; upgrade it (pip install -U "
            "databricks-sdk)"
        ) from None
    with _token_sources_lock:
        source = _token_sources.get(config)
        if source is None:
            options: dict[str, Any] = {}
            if "disable_async" in inspect.signature(DataPlaneTokenSource).parameters:
                options["disable_async"] = getattr(config, "disable_async_token_refresh", True)
            source = DataPlaneTokenSource(config.host, config.oauth_token, **options)
            _token_sources[config] = source
        return source


def data_plane_url(url: str) -> str:
    """A data-plane URL as the endpoint's state gives it, checked as ``host=`` is: https, or plain
    http only to loopback. Raises ``DataPlaneUnavailable`` for any other."""
    problem = _url_problem(urlsplit(url.strip()))
    if problem == "not http":
        raise DataPlaneUnavailable(f"its data-plane URL {url!r} is not an http(s) URL")
    if problem:
        raise DataPlaneUnavailable(f"its data-plane URL {url!r} {problem}")
    return url.strip()


class _NoAuth(httpx.Auth):
    """No credentials: an MLflow scoring server addressed by URL, given no token."""

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield request

    def __repr__(self) -> str:
        return "_NoAuth()"


def scoring_server_workspace(
    text_url: str | None,
    image_url: str | None,
    *,
    token: str | None = None,
    host: str | None = None,
    profile: str | None = None,
    config: Config | None = None,
) -> Workspace:
    """Where requests go for ``text_url``/``image_url``: any MLflow scoring server (``mlflow models
    serve``, a container built by ``mlflow models build-docker``...) by its invocations URLs, with no
    workspace and no control plane. No ``Authorization`` header unless ``token`` is given; a token is
    sent only over https, or plain http to loopback.

    Raises:
        ValueError: only one of the two URLs, a workspace option (``host``/``profile``/``config``)
            with them, or a URL that is not http(s) (or plain http to another host with a token).
    """
    given = {"text_url": text_url, "image_url": image_url}
    missing = [name for name, url in given.items() if not url]
    if missing:
        present = next(name for name in given if name not in missing)
        raise ValueError(
            f"{present}= was given without {missing[0]}=: pass both URLs of the scoring servers "
            "(they may be one server, e.g. text_url=image_url='http://127.0.0.1:5000/invocations' "
            "for a model that embeds both), or neither to use a Databricks workspace"
        )
    clashing = [name for name, value in (("host", host), ("profile", profile), ("config", config)) if value]
    if clashing:
        raise ValueError(
            f"pass either text_url=/image_url= (a scoring server by URL) or a workspace "
            f"({'/'.join(clashing)}=), not both"
        )
    for name, url in given.items():
        parts = urlsplit(str(url).strip())
        problem = _url_problem(parts)
        if problem == "not http":
            raise ValueError(
                f"{name}={url!r} is not an http(s) URL; e.g. 'http://127.0.0.1:5000/invocations'"
            )
        if problem and token:
            raise ValueError(f"{name}={url!r} {problem}; use https:// or no token")
    auth: httpx.Auth = _StaticTokenAuth(token) if token else _NoAuth()
    origin = urlsplit(str(text_url).strip())
    return Workspace(f"{origin.scheme}://{origin.netloc}", auth, "pat" if token else "none")


def resolve_workspace(
    *,
    host: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    config: Config | None = None,
) -> Workspace:
    """Resolve host and credentials.

    An explicit ``host`` and ``token`` are used as they are: no ``Config`` is built, so nothing is
    probed on the network and no other credential in the environment can conflict with them.
    Everything else goes through databricks-sdk's ``Config`` chain (env vars, ``~/.databrickscfg``
    profiles, OAuth M2M, Azure, GCP...).
    """
    if config is not None and (host or token or profile):
        raise ValueError("pass either config= or host=/token=/profile=, not both")
    if host and token and not profile:
        return Workspace(normalize_host(host), _StaticTokenAuth(token), "pat")
    if config is None:
        kwargs: dict[str, Any] = {
            k: v for k, v in {"host": host, "token": token, "profile": profile}.items() if v
        }
        try:
            config = _config_class()(**kwargs)
        except ValueError as exc:
            raise ValueError(
                f"could not resolve a Databricks workspace: {str(exc).rstrip('.')}. Pass host= and "
                "token=, set DATABRICKS_HOST and DATABRICKS_TOKEN, or name a ~/.databrickscfg profile= "
                "(or use ClipClient.local() to run the model in-process)"
            ) from exc
    if not config.host:
        raise ValueError("databricks-sdk resolved no workspace host; set DATABRICKS_HOST or pass host=")
    register(*(getattr(config, attr.name, None) for attr in config.attributes() if attr.sensitive))
    return Workspace(
        normalize_host(config.host), _ConfigAuth(config.authenticate), str(config.auth_type), config
    )


_CONFIG_TIME_BOUNDS = {
    "retry_timeout_seconds": C.CONFIG_RETRY_TIMEOUT_SECONDS,
    "http_timeout_seconds": C.CONFIG_HTTP_TIMEOUT_SECONDS,
}


@functools.cache
def _config_class() -> type[Config]:
    """databricks-sdk's ``Config``, with its own network time bounds (``retry_timeout_seconds``,
    ``http_timeout_seconds``) set for what it does while it is built, when neither the caller, the
    environment nor the profile set them.

    ``Config()`` probes ``{host}/.well-known/databricks-config`` once the host is known, with the
    SDK's default retry budget of 300 s: a host that does not resolve held ``ClipClient()`` for about
    five minutes. The probe is best-effort (the SDK falls back to the explicit configuration), so a
    short budget costs nothing but a slower failure. The values are filled in at the last moment
    before the probe, after env vars and the profile were read, so that theirs win."""
    from databricks.sdk.core import Config

    Config.attributes()  # the SDK caches its attribute list on the class it is first asked from

    class TimeBoundConfig(Config):
        def _resolve_host_metadata(self) -> None:
            for name, value in _CONFIG_TIME_BOUNDS.items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
            super()._resolve_host_metadata()

    return TimeBoundConfig


def credentials_error(exc: Exception) -> CredentialsError:
    """databricks-sdk's failure as a :class:`CredentialsError`, scrubbed of credentials.

    The SDK's message names the auth method and how to fix it, so it is kept (redacted). Its
    exception is chained only when no credential shows in it or its own causes; otherwise the chain
    is cut, since a traceback prints every cause in full.
    """
    error = CredentialsError(redact(f"could not obtain credentials from databricks-sdk: {exc}"))
    error.__cause__ = safe_cause(exc)
    return error


# --------------------------------------------------------------------------------------------------
# Time bounds of one attempt
#
# httpx times each socket operation on its own (httpcore reads ``timeout["read"]`` once per phase and
# gives every read that same value), so a server that sends one byte per second never trips a read
# timeout. One attempt is bounded as a whole instead: the async client cancels it
# (``asyncio.wait_for``); the sync client cannot cancel a thread, so the sync clients the library
# creates get network streams that shorten every connect, read and write to the attempt's time left
# (the header phase included), and every response body is read in chunks, checked against the clock.

#: When the attempt running in this thread must be over (``time.monotonic()``), read by the network
#: streams of the sync clients the library creates; None outside an attempt or without a bound.
_attempt_expires: ContextVar[float | None] = ContextVar("clip_client_attempt_expires", default=None)


@dataclass(frozen=True)
class AttemptClock:
    """The time bound of one attempt.

    Attributes:
        expires_at: ``time.monotonic()`` by which the attempt must be over; None when nothing bounds
            it as a whole (an injected http client, and no call deadline).
        by_deadline: the call's deadline, not ``timeout``, sets ``expires_at``.
        bound: what bounds the attempt, for messages ("timeout=330s").
    """

    expires_at: float | None
    by_deadline: bool
    bound: str

    @classmethod
    def start(cls, timeout: float | None, deadline_left: float | None, bound: str) -> AttemptClock:
        """Now plus ``timeout`` (None: unbounded), or the call's deadline when that comes first."""
        now = time.monotonic()
        if deadline_left is not None and (timeout is None or deadline_left < timeout):
            return cls(now + deadline_left, True, bound)
        return cls(None if timeout is None else now + timeout, False, bound)

    def left(self) -> float | None:
        """Seconds left (never negative), or None when unbounded."""
        return None if self.expires_at is None else max(0.0, self.expires_at - time.monotonic())

    @contextmanager
    def bounding_sockets(self) -> Iterator[None]:
        """Within this block, this thread's socket operations on a client made by
        :func:`sync_client` end by ``expires_at``."""
        token = _attempt_expires.set(self.expires_at)
        try:
            yield
        finally:
            _attempt_expires.reset(token)

    def read_body(self, response: httpx.Response) -> None:
        """Read a streamed response's body, stopping with ``httpx.ReadTimeout`` between two chunks
        once the attempt's time is up. Closes the response either way: a body left half-read closes
        its connection rather than return it to the pool."""
        try:
            if self.expires_at is not None:
                response.stream = _ExpiringBody(response.stream, self.expires_at, response.request)
            response.read()
        finally:
            response.close()


class _ExpiringBody(httpx.SyncByteStream):
    def __init__(self, stream: Any, expires_at: float, request: httpx.Request) -> None:
        self._stream = stream
        self._expires_at = expires_at
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() >= self._expires_at:
                raise httpx.ReadTimeout(
                    "the answer was still arriving when time ran out", request=self._request
                )
            yield chunk

    def close(self) -> None:
        self._stream.close()


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """A socket operation's timeout, shortened to the running attempt's time left."""
    expires_at = _attempt_expires.get()
    if expires_at is None:
        return timeout
    left = expires_at - time.monotonic()
    if timeout is not None:
        left = min(timeout, left)
    if left <= 0:  # a socket timeout of 0 would mean "non-blocking"
        raise expired("the attempt's time ran out")
    return left


class _ExpiringStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the running attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(
            ssl_context, server_hostname, _time_left(timeout, httpcore.ConnectTimeout)
        )
        return _ExpiringStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _ExpiringBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with connections that end by the running attempt's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        timeout = _time_left(timeout, httpcore.ConnectTimeout)
        return _ExpiringStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = _time_left(timeout, httpcore.ConnectTimeout)
        return _ExpiringStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def sync_client(timeout: float, limits: httpx.Limits) -> httpx.Client:
    """The ``httpx.Client`` the library creates: httpx's own (environment proxies and all), with its
    connection pools' network backend wrapped so that every socket operation ends by the running
    attempt's deadline. httpx has no public hook for a pool's network backend, so this reaches into
    ``_transport``/``_mounts``/``_pool``; if those ever change, it logs, and an attempt's connect and
    header phase fall back to httpx's per-operation timeouts (its body is still cut between chunks,
    and a sync call still returns by its deadline). The time-bound tests fail if that happens."""
    client = httpx.Client(timeout=timeout, limits=limits)
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend):
            pool._network_backend = _ExpiringBackend(backend)  # type: ignore[union-attr]
        elif transport is not None:
            logger.debug("cannot bound the sockets of %r by the attempt's deadline", transport)
    return client


# --------------------------------------------------------------------------------------------------
# Errors


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: an integer, or an HTTP date. None when absent/garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def request_id_of(response: httpx.Response) -> str | None:
    value = response.headers.get("x-request-id") or response.headers.get("x-databricks-request-id")
    return str(value) if value else None


def error_from_response(response: httpx.Response, endpoint: str) -> APIStatusError:
    """The typed error for an HTTP error answer, with the server's code, message and request id."""
    error_code: str | None = None
    message: str | None = None
    try:
        body = ServingErrorBody.model_validate_json(response.content)
        error_code, message = body.error_code, body.message
    except ValidationError:
        pass
    if not message:
        message = excerpt(response.content, 300) or response.reason_phrase or "no message"
    cls = status_error_class(response.status_code)
    return cls(
        message,
        status_code=response.status_code,
        error_code=error_code,
        request_id=request_id_of(response),
        endpoint=endpoint,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


#: A connection dropped while sending a body at least this large is taken for a size refusal:
#: proxies in front of serving endpoints drop oversized uploads rather than answer 413.
LARGE_BODY_BYTES = 1_000_000


def map_transport_error(
    exc: httpx.HTTPError,
    endpoint: str,
    body_bytes: int = 0,
    *,
    bound: str = "timeout=",
    advice: str = "raise timeout= if the model is slow",
) -> APIError:
    """The typed error for an attempt that got no complete answer, naming the underlying failure
    (``Connection refused``, a DNS failure) and what bounded the attempt in time (``bound``).

    A host name that does not resolve is an :class:`APIConnectionError` with ``name_resolution``
    set, saying what to check; the retry policy retries it once at most. An answer whose body does
    not decode (a ``Content-Encoding`` it does not follow) is a :class:`ResponseFormatError`, retried
    once like any malformed answer.
    """
    if isinstance(exc, httpx.DecodingError):
        return ResponseFormatError(
            f"the answer's body could not be decoded ({type(exc).__name__}: {exc})", endpoint=endpoint
        )
    if isinstance(exc, httpx.TimeoutException):
        what = "could not connect" if isinstance(exc, httpx.ConnectTimeout) else "no complete answer"
        if isinstance(exc, httpx.PoolTimeout):
            what = "no free connection in the pool"
        return APITimeoutError(f"{what} within {bound} ({type(exc).__name__}); {advice}", endpoint=endpoint)
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        error = APIConnectionError(
            f"TLS certificate verification failed ({exc}); check the host name, or give a custom CA "
            "bundle through an httpx client (http_client=httpx.Client(verify=...))",
            endpoint=endpoint,
        )
        error.retryable = False
        return error
    if isinstance(exc, httpx.ConnectError) and is_name_resolution_failure(exc):
        host = _host_of(exc)
        error = APIConnectionError(
            f"could not resolve the host name {host!r} ({_underlying(exc)}); check DATABRICKS_HOST "
            "(or host=), the ~/.databrickscfg profile in use, and the network: VPN, proxy, DNS",
            endpoint=endpoint,
        )
        error.name_resolution = True
        return error
    if body_bytes >= LARGE_BODY_BYTES and not isinstance(exc, httpx.ConnectError):
        return PayloadTooLargeError(
            f"the connection was dropped while sending a {body_bytes:,}-byte request "
            f"({type(exc).__name__}); taken as a refusal of its size",
            status_code=413,
            endpoint=endpoint,
        )
    text = f"connection failed: {type(exc).__name__}: {exc}"
    root = _root_cause(exc)
    if root is not exc:
        text += f" ({type(root).__name__})" if str(root) == str(exc) else f" ({type(root).__name__}: {root})"
    return APIConnectionError(text, endpoint=endpoint)


#: What resolvers say when a name does not resolve (glibc, macOS, Windows), for errors that arrive
#: as text rather than as ``socket.gaierror``.
_NAME_RESOLUTION_TEXTS = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no address associated with hostname",
    "getaddrinfo failed",
)


def is_name_resolution_failure(exc: BaseException) -> bool:
    """Whether a connection failed because the host name did not resolve (DNS)."""
    return any(
        isinstance(e, socket.gaierror) or any(t in str(e).lower() for t in _NAME_RESOLUTION_TEXTS)
        for e in _chain(exc)
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception behind it: causes, contexts and the members of exception groups."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        todo.extend(x for x in getattr(e, "exceptions", ()) if isinstance(x, BaseException))
    return seen


def _root_cause(exc: BaseException) -> BaseException:
    """The operating system's error behind an httpx one (``ConnectionRefusedError``, ``gaierror``),
    or ``exc`` itself."""
    errors = [e for e in _chain(exc) if isinstance(e, OSError)]
    return errors[-1] if errors else exc


def _underlying(exc: BaseException) -> str:
    root = _root_cause(exc)
    return f"{type(root).__name__}: {root}"


def _host_of(exc: httpx.TransportError) -> str | None:
    try:
        return exc.request.url.host or None
    except RuntimeError:  # an exception raised without its request
        return None


# --------------------------------------------------------------------------------------------------
# Retry policy


def is_retryable(exc: BaseException) -> bool:
    """Worth another attempt: connection trouble, timeouts, 408/429/5xx, and a 200 whose body was
    not the embeddings asked for (an HTML page from a gateway, a truncated answer). Some of these
    are worth only one more attempt per batch: see :func:`_retries_allowed`."""
    if isinstance(exc, APIStatusError):
        return exc.status_code in C.RETRYABLE_STATUS_CODES
    if isinstance(exc, APIConnectionError):
        return exc.retryable
    return isinstance(exc, ResponseFormatError)


def _retries_allowed(exc: BaseException) -> tuple[str, int] | None:
    """Failures that are most likely to happen again, and the retries one batch may spend on each:
    a malformed 200 (a gateway's HTML page is transient, a model that answers the wrong shape is
    not) and a host name that does not resolve (a wrong host or profile, or a VPN that is down, does
    not fix itself in a second; one retry covers a resolver's hiccup). None: up to ``max_retries``."""
    if isinstance(exc, ResponseFormatError):
        return "malformed answer", C.MALFORMED_ANSWER_RETRIES
    if isinstance(exc, APIConnectionError) and exc.name_resolution:
        return "name resolution", C.NAME_RESOLUTION_RETRIES
    return None


class _Backoff:
    """Wait for ``Retry-After`` when the server sent one, else capped exponential backoff with
    jitter (half fixed, half random, so concurrent clients spread out without waiting zero)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self._random = random.Random()
        self._lock = threading.Lock()

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, C.RETRY_AFTER_MAX))
        ceiling = min(self.maximum, self.initial * 2 ** (state.attempt_number - 1))
        with self._lock:
            return float(ceiling / 2 + self._random.uniform(0, ceiling / 2))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    logger.info("retrying after attempt %d failed: %s; waiting %.2fs", state.attempt_number, exc, wait)


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None and state.outcome.failed else None


#: Per batch (one tenacity run), how often each kind of failure in :func:`_retries_allowed` was met.
_limited_seen: weakref.WeakKeyDictionary[RetryCallState, Counter[str]] = weakref.WeakKeyDictionary()
_limited_lock = threading.Lock()


def _should_retry(state: RetryCallState) -> bool:
    """The retry decision. It also stamps the attempt count on the error, so one that is raised at
    once (a 400 after two 503s, a second malformed answer) reports every attempt its batch took."""
    exc = _failure(state)
    if isinstance(exc, APIError):
        exc.attempts = state.attempt_number
    if exc is None or not is_retryable(exc):
        return False
    limited = _retries_allowed(exc)
    if limited is None:
        return True
    kind, allowed = limited
    with _limited_lock:
        seen = _limited_seen.setdefault(state, Counter())
        seen[kind] += 1
        return seen[kind] <= allowed


class _StopAfterAttempts(stop_base):
    """``stop_after_attempt(attempts)``, except that the failures ``expected`` says were expected do
    not count: the 503s of an endpoint that is starting, a wait that ``retry_deadline`` alone bounds."""

    def __init__(self, attempts: int, expected: Callable[[BaseException], bool]) -> None:
        self.attempts = attempts
        self.expected = expected

    def __call__(self, state: RetryCallState) -> bool:
        exc = _failure(state)
        counted = exc is None or not self.expected(exc)
        with _limited_lock:
            seen = _limited_seen.setdefault(state, Counter())
            seen["counted attempts"] += counted
            return seen["counted attempts"] >= self.attempts


def retry_arguments(
    *,
    max_retries: int,
    deadline: float,
    backoff: float,
    backoff_max: float,
    expected: Callable[[BaseException], bool] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``tenacity.Retrying`` and ``tenacity.AsyncRetrying`` alike, for one
    batch (a fresh ``Retrying`` per batch: the once-only kinds are counted per run).

    ``expected(error)`` says whether a failure was expected (an endpoint starting up answers 503
    until it is ready): those are retried like any other but do not count against ``max_retries``,
    so only ``deadline`` bounds the wait. The error that finally escapes is the last one, of its
    precise type, with ``attempts`` set (``reraise``). :func:`call_retry_arguments` adds what one
    call's deadline asks for.
    """
    attempts = max_retries + 1
    return {
        "retry": _should_retry,
        "stop": (stop_after_attempt(attempts) if expected is None else _StopAfterAttempts(attempts, expected))
        | stop_before_delay(deadline),
        "wait": _Backoff(backoff, backoff_max),
        "before_sleep": _log_retry,
        "reraise": True,
    }


class _StopAtDeadline(stop_base):
    """Stop once the call was cancelled, or when its deadline would pass before the next retry."""

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.ctx.cancelled.is_set() or self.ctx.expires_within(retry_state.upcoming_sleep)


def call_retry_arguments(
    arguments: dict[str, Any], ctx: CallContext, endpoint: str, sleep: Callable[[float], Any]
) -> dict[str, Any]:
    """``arguments`` for one batch of a call with a :class:`CallContext`: every failure is
    remembered by the context; retrying stops when the call is cancelled or its deadline would pass
    before the next attempt, and then raises the deadline's ``APITimeoutError``, naming the last
    failure and chained to it (``__cause__``); waits are ``sleep`` (which wakes on cancellation)."""
    decide: Callable[[RetryCallState], bool] = arguments["retry"]

    def retry(state: RetryCallState) -> bool:
        exc = _failure(state)
        if exc is not None:
            ctx.failed(exc)
        return decide(state)

    def give_up(state: RetryCallState) -> Any:
        exc = _failure(state)
        assert exc is not None
        if not ctx.cancelled.is_set() and ctx.expires_within(state.upcoming_sleep):
            raise ctx.expired_error(
                endpoint, next_wait=state.upcoming_sleep, cause=exc, attempts=state.attempt_number
            )
        raise exc

    return {
        **arguments,
        "retry": retry,
        "stop": arguments["stop"] | _StopAtDeadline(ctx),
        "sleep": sleep,
        "retry_error_callback": give_up,
    }
