"""HTTP plumbing shared by both clients: workspace resolution, auth, error mapping, retry policy.

The retry policy is one set of tenacity arguments; the sync client runs it with ``Retrying`` and the
async client with ``AsyncRetrying``, so the two cannot disagree about what is retried or how long
to wait.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from pydantic import ValidationError
from tenacity import RetryCallState, stop_after_attempt, stop_before_delay

from . import _constants as C
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
    "Workspace",
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
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"host {host!r} is not an http(s) URL of a Databricks workspace")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"host {host!r} uses plain http to a non-loopback address, which would send the token in "
            "clear text; use https://"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


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
            return self._headers()
        except Exception as exc:  # the SDK's own messages name the auth method and how to fix it
            raise CredentialsError(f"could not obtain credentials from databricks-sdk: {exc}") from exc

    def __repr__(self) -> str:
        return "_ConfigAuth()"


@dataclass(frozen=True)
class Workspace:
    """Where requests go and how they authenticate. Its repr never shows credentials."""

    host: str
    auth: httpx.Auth
    auth_type: str

    def __repr__(self) -> str:
        return f"Workspace(host={self.host!r}, auth_type={self.auth_type!r})"


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
        from databricks.sdk.core import Config

        kwargs: dict[str, Any] = {
            k: v for k, v in {"host": host, "token": token, "profile": profile}.items() if v
        }
        try:
            config = Config(**kwargs)
        except ValueError as exc:
            raise ValueError(
                f"could not resolve a Databricks workspace: {str(exc).rstrip('.')}. Pass host= and "
                "token=, set DATABRICKS_HOST and DATABRICKS_TOKEN, or name a ~/.databrickscfg profile= "
                "(or use ClipClient.local() to run the model in-process)"
            ) from exc
    if not config.host:
        raise ValueError("databricks-sdk resolved no workspace host; set DATABRICKS_HOST or pass host=")
    return Workspace(normalize_host(config.host), _ConfigAuth(config.authenticate), str(config.auth_type))


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
        text = response.content[:300].decode("utf-8", "replace").strip()
        message = " ".join(text.split()) or response.reason_phrase or "no message"
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


def map_transport_error(exc: httpx.TransportError, endpoint: str, body_bytes: int = 0) -> APIError:
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(
            f"request timed out ({type(exc).__name__}); raise timeout= if the model is slow",
            endpoint=endpoint,
        )
    if isinstance(exc, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        error = APIConnectionError(
            f"TLS certificate verification failed ({exc}); check the host name, or give a custom CA "
            "bundle through an httpx client (http_client=httpx.Client(verify=...))",
            endpoint=endpoint,
        )
        error.retryable = False
        return error
    if body_bytes >= LARGE_BODY_BYTES and not isinstance(exc, httpx.ConnectError):
        return PayloadTooLargeError(
            f"the connection was dropped while sending a {body_bytes:,}-byte request "
            f"({type(exc).__name__}); taken as a refusal of its size",
            status_code=413,
            endpoint=endpoint,
        )
    return APIConnectionError(f"connection failed: {type(exc).__name__}: {exc}", endpoint=endpoint)


# --------------------------------------------------------------------------------------------------
# Retry policy


def is_retryable(exc: BaseException) -> bool:
    """Worth another attempt: connection trouble, timeouts, 408/429/5xx, and a 200 whose body was
    not the embeddings asked for (an HTML page from a gateway, a truncated answer)."""
    if isinstance(exc, APIStatusError):
        return exc.status_code in C.RETRYABLE_STATUS_CODES
    if isinstance(exc, APIConnectionError):
        return exc.retryable
    return isinstance(exc, ResponseFormatError)


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


def _should_retry(state: RetryCallState) -> bool:
    """The retry decision. It also stamps the attempt count on the error, so one that is raised at
    once (a 400 after two 503s) reports every attempt its batch took, not just the last."""
    exc = state.outcome.exception() if state.outcome is not None and state.outcome.failed else None
    if isinstance(exc, APIError):
        exc.attempts = state.attempt_number
    return exc is not None and is_retryable(exc)


def _give_up(state: RetryCallState) -> Any:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, APIError):
        exc.attempts = state.attempt_number
    assert exc is not None
    raise exc


def retry_arguments(
    *, max_retries: int, deadline: float, backoff: float, backoff_max: float
) -> dict[str, Any]:
    """Keyword arguments for ``tenacity.Retrying`` and ``tenacity.AsyncRetrying`` alike.

    The error that finally escapes is the last one, of its precise type, with ``attempts`` set.
    """
    return {
        "retry": _should_retry,
        "stop": stop_after_attempt(max_retries + 1) | stop_before_delay(deadline),
        "wait": _Backoff(backoff, backoff_max),
        "before_sleep": _log_retry,
        "retry_error_callback": _give_up,
        "reraise": True,
    }
