"""Which workspace, and how to authenticate to it.

Host checks, databricks-sdk's `Config` and its auth chain, and the data-plane tokens of
route-optimized endpoints.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import functools
import inspect
import ipaddress
import os
import re
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit

import httpx

from .. import _constants as C
from .._core.secrets import redact, register, register_headers, safe_cause
from ..errors import (
    ConfigurationError,
    CredentialsError,
)

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

__all__ = [
    "DataPlaneUnavailable",
    "Workspace",
    "credentials_error",
    "data_plane_url",
    "normalize_host",
    "resolve_workspace",
    "scoring_server_workspace",
    "sdk_config",
    "workspace_client",
]


# --------------------------------------------------------------------------------------------------
# Workspace and auth


def normalize_host(host: str) -> str:
    """`https://` added when missing, trailing slash dropped; plain http only to loopback."""
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
        self._token = token
        register(token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "_StaticTokenAuth(token=***)"


class _ConfigAuth(httpx.Auth):
    """Fresh headers from databricks-sdk's `Config.authenticate()` on every request.

    `authenticate()` is cheap while the token is cached but blocks on the network when an OAuth
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


@dataclass(frozen=True, eq=False)
class Workspace:
    """Where requests go and how they authenticate. Its repr never shows credentials.

    `config` is databricks-sdk's `Config` when the workspace was resolved through it, and None for
    an explicit host and token: the source of the data-plane tokens of route-optimized endpoints
    (`data_plane_auth`), which only OAuth credentials can be exchanged for.
    """

    host: str
    auth: httpx.Auth
    auth_type: str
    config: Config | None = None

    def __repr__(self) -> str:
        return f"Workspace(host={self.host!r}, auth_type={self.auth_type!r})"

    def static_token(self) -> str | None:
        """The personal access token given explicitly (`host=` and `token=`), for databricks-sdk's
        own clients of this workspace (the Files API of volumes); None for a `Config`'s auth."""
        return self.auth._token if isinstance(self.auth, _StaticTokenAuth) else None

    def data_plane_auth(self, url: str, authorization_details: str | None) -> httpx.Auth:
        """httpx auth for a route-optimized endpoint's data-plane `url`: a data-plane OAuth token,
        exchanged for the workspace's own OAuth token by databricks-sdk's `DataPlaneTokenSource`
        (what `WorkspaceClient.serving_endpoints_data_plane` uses: `POST {host}/oidc/v1/token`),
        cached and refreshed by it, and registered with `_secrets` before it is sent. The exchange
        runs on a request's first use of the auth, off the event loop in the async client; its
        failure raises `CredentialsError` from that request.

        May block on the network (it checks that the credentials give an OAuth token at all): the
        async client calls it in a worker thread.

        Raises:
            DataPlaneUnavailable: the credentials cannot give a data-plane token: a personal access
                token (explicit `token=`, or a `Config` whose auth is `pat`), any other non-OAuth
                auth, or a databricks-sdk without `DataPlaneTokenSource`. The message says why.
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


# databricks-sdk's data-plane token sources, one per `Config` (each caches its tokens by endpoint).
_token_sources: weakref.WeakKeyDictionary[Config, Any] = weakref.WeakKeyDictionary()
_token_sources_lock = threading.Lock()


def _data_plane_tokens(config: Config) -> Any:
    """The `DataPlaneTokenSource` of `config`, made as `WorkspaceClient` makes it."""
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
    """A data-plane URL as the endpoint's state gives it, checked as `host=` is: https, or plain
    http only to loopback. Raises `DataPlaneUnavailable` for any other."""
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
    """Where requests go for `text_url`/`image_url`: any MLflow scoring server (`mlflow models
    serve`, a container built by `mlflow models build-docker`...) by its invocations URLs, with no
    workspace and no control plane. No `Authorization` header unless `token` is given; a token is
    sent only over https, or plain http to loopback.

    Raises:
        ValueError: only one of the two URLs, a workspace option (`host`/`profile`/`config`)
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

    An explicit `host` and `token` are used as they are: no `Config` is built, so nothing is
    probed on the network and no other credential in the environment can conflict with them.
    Everything else goes through databricks-sdk's `Config` chain (env vars, `~/.databrickscfg`
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
            reason = redact(str(exc)).rstrip(".")
            missing = _missing_profile(reason, profile)
            if missing is not None:
                raise missing from exc
            raise ConfigurationError(
                f"could not resolve a Databricks workspace: {reason}.",
                setting="profile" if profile else "host",
                reason=reason,
                advice="Pass {host=} and {token=}, set DATABRICKS_HOST and DATABRICKS_TOKEN, or name a "
                "~/.databrickscfg {profile=} (or use ClipClient.local() to run the model in-process)",
            ) from exc
    if not config.host:
        raise ConfigurationError(
            "databricks-sdk resolved no workspace host",
            setting="host",
            advice="set DATABRICKS_HOST or pass {host=}",
        )
    register(*(getattr(config, attr.name, None) for attr in config.attributes() if attr.sensitive))
    return Workspace(
        normalize_host(config.host), _ConfigAuth(config.authenticate), str(config.auth_type), config
    )


_NO_SUCH_PROFILE = re.compile(r"(?P<file>\S+) has no (?P<profile>.+?) profile configured")
"""How databricks-sdk says that the config file lacks the profile asked for."""


def _missing_profile(reason: str, profile: str | None) -> ConfigurationError | None:
    """The error for a `profile` that the config file does not have (the SDK's `reason` says so),
    or that no config file could hold (there is none): it names the profile and the file, and the
    profiles the file has. None for any other failure."""
    if not profile:
        return None
    said = _NO_SUCH_PROFILE.search(reason)
    if said is not None:
        file = Path(said["file"])
    else:
        file = Path(os.environ.get("DATABRICKS_CONFIG_FILE") or "~/.databrickscfg").expanduser()
        if file.exists():
            return None
    if not file.is_file():
        problem = f"profile {profile!r} was asked for, but there is no config file {str(file)!r}"
        advice = (
            "Write it (`databricks auth login --profile NAME`), or set DATABRICKS_HOST and DATABRICKS_TOKEN"
        )
    else:
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(configparser.Error, OSError, UnicodeDecodeError):
            parser.read(file, encoding="utf-8")
        names = ([parser.default_section] if parser.defaults() else []) + parser.sections()
        has = f"its profiles: {', '.join(names)}" if names else "it has no profiles"
        problem = f"profile {profile!r} is not in {str(file)!r} ({has})"
        advice = (
            "Name one of its profiles with {profile=}, add that profile to it, or set DATABRICKS_HOST "
            "and DATABRICKS_TOKEN"
        )
    return ConfigurationError(
        f"could not resolve a Databricks workspace: {problem}.",
        setting="profile",
        reason=problem,
        advice=advice,
    )


def sdk_config(**options: Any) -> Config:
    """databricks-sdk's `Config` for `options` (`host=`, `token=`, `profile=`...), built as
    `resolve_workspace` builds it: with this library's bounds on the network calls the SDK
    makes while it is built. For what needs the SDK itself (`WorkspaceClient`), such as deploy."""
    return _config_class()(**options)


def workspace_client(workspace: Workspace) -> WorkspaceClient:
    """databricks-sdk's `WorkspaceClient` for the workspace a client resolved: its own `Config`
    when it was resolved through the SDK's chain, else one built for its explicit host and token
    (as `deploy` builds it). For the services this library calls through the SDK (Vector Search,
    Unity Catalog tables).

    Raises:
        ConfigurationError: a scoring server addressed by URL (`text_url`/`image_url`), which has
            no workspace behind it.
    """
    from databricks.sdk import WorkspaceClient

    if workspace.config is not None:
        return WorkspaceClient(config=workspace.config)
    if (token := workspace.static_token()) is not None:
        return WorkspaceClient(config=sdk_config(host=workspace.host, token=token))
    raise ConfigurationError(
        f"the client talks to a scoring server by URL ({workspace.host}), which has no Databricks workspace",
        setting="host",
        advice="Pass {workspace=} (a databricks.sdk.WorkspaceClient), or build the client for a workspace "
        "({host=} and {token=}, or a {profile=})",
    )


_CONFIG_TIME_BOUNDS = {
    "retry_timeout_seconds": C.CONFIG_RETRY_TIMEOUT_SECONDS,
    "http_timeout_seconds": C.CONFIG_HTTP_TIMEOUT_SECONDS,
}


@functools.cache
def _config_class() -> type[Config]:
    """databricks-sdk's `Config`, with its own network time bounds (`retry_timeout_seconds`,
    `http_timeout_seconds`) set for what it does while it is built, when neither the caller, the
    environment nor the profile set them.

    `Config()` probes `{host}/.well-known/databricks-config` once the host is known, with the
    SDK's default retry budget of 300 s: a host that does not resolve held `ClipClient()` for about
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
    """databricks-sdk's failure as a [`CredentialsError`][clip_client.CredentialsError], scrubbed of
    credentials.

    The SDK's message names the auth method and how to fix it, so it is kept (redacted). Its
    exception is chained only when no credential shows in it or its own causes; otherwise the chain
    is cut, since a traceback prints every cause in full.
    """
    error = CredentialsError(redact(f"could not obtain credentials from databricks-sdk: {exc}"))
    error.__cause__ = safe_cause(exc)
    return error
