"""From an HTTP answer or a transport failure to a typed error.

Status codes, the server's `error_code`, request ids and `Retry-After`.
"""

from __future__ import annotations

import email.utils
import socket
import time
from typing import TYPE_CHECKING

import httpx
from pydantic import ValidationError

from .._core.secrets import excerpt
from ..errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    PayloadTooLargeError,
    ResponseFormatError,
    status_error_class,
)
from ..types import ServingErrorBody

if TYPE_CHECKING:
    pass

__all__ = [
    "LARGE_BODY_BYTES",
    "error_from_response",
    "is_name_resolution_failure",
    "map_transport_error",
    "parse_retry_after",
    "request_id_of",
]


# --------------------------------------------------------------------------------------------------
# Errors


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: an integer, or an HTTP date. None when absent/garbled."""
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


LARGE_BODY_BYTES = 1_000_000
"""A connection dropped while sending a body at least this large is taken for a size refusal:
proxies in front of serving endpoints drop oversized uploads rather than answer 413.
"""


def map_transport_error(
    exc: httpx.HTTPError,
    endpoint: str,
    body_bytes: int = 0,
    *,
    bound: str = "timeout=",
    advice: str = "raise timeout= if the model is slow",
) -> APIError:
    """The typed error for an attempt that got no complete answer, naming the underlying failure
    (`Connection refused`, a DNS failure) and what bounded the attempt in time (`bound`).

    A host name that does not resolve is an [`APIConnectionError`][clip_client.APIConnectionError] with
    `name_resolution` set, saying what to check; the retry policy retries it once at most. An answer whose
    body does not decode (a `Content-Encoding` it does not follow) is a
    [`ResponseFormatError`][clip_client.ResponseFormatError], retried once like any malformed answer.
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
            f"could not resolve the host name {host!r} ({_underlying(exc)})",
            endpoint=endpoint,
            setting="host",
            advice="check DATABRICKS_HOST (or {host=}), the ~/.databrickscfg profile in use, and the "
            "network: VPN, proxy, DNS",
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


_NAME_RESOLUTION_TEXTS = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no address associated with hostname",
    "getaddrinfo failed",
)
"""What resolvers say when a name does not resolve (glibc, macOS, Windows), for errors that arrive
as text rather than as `socket.gaierror`.
"""


def is_name_resolution_failure(exc: BaseException) -> bool:
    """Whether a connection failed because the host name did not resolve (DNS)."""
    return any(
        isinstance(e, socket.gaierror) or any(t in str(e).lower() for t in _NAME_RESOLUTION_TEXTS)
        for e in _chain(exc)
    )


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception behind it: causes, contexts and the members of exception groups."""
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
    """The operating system's error behind an httpx one (`ConnectionRefusedError`, `gaierror`),
    or `exc` itself."""
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
