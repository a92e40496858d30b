"""databricks-sdk's failures: the HTTP status each stands for, and the package's typed error.

One reading of an SDK failure for every caller that talks to the workspace through databricks-sdk
(the Files API reader for volumes, Vector Search, deployment), so that a status is told the same
way everywhere: by the SDK's error class (`databricks.sdk.errors.platform`), else by what its
message says (a reason phrase or its request log's `< 502 ...` line), else by its `error_code`.
"""

from __future__ import annotations

import re
from http import HTTPStatus

from .._core.secrets import redact
from ..errors import APIConnectionError, APIError, status_error_class

__all__ = ["sdk_message", "sdk_status", "typed_error"]

_STATUSES = (  # databricks-sdk's error classes (`errors.platform`) and the statuses they stand for
    ("BadRequest", 400),
    ("Unauthenticated", 401),
    ("PermissionDenied", 403),
    ("NotFound", 404),
    ("ResourceConflict", 409),
    ("TooManyRequests", 429),
    ("Cancelled", 499),
    ("InternalError", 500),
    ("NotImplemented", 501),
    ("TemporarilyUnavailable", 503),
    ("DeadlineExceeded", 504),
)

_CODE_STATUSES = {"INTERNAL_ERROR": 500, "TEMPORARILY_UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}
"""The status an `error_code` stands for, where databricks-sdk has a class for neither the code nor
the answer's status (a 502 whose JSON body says `TEMPORARILY_UNAVAILABLE`): the code's status, so
that it is retried as the transient failure the server says it is."""

_REASONS = {status.phrase: int(status) for status in HTTPStatus}
_LOGGED_STATUS = re.compile(r"^< (\d{3}) ", re.MULTILINE)


_CONFIG_NOTE = re.compile(r"\.? (?:Config|Env): .*$", re.DOTALL)


def sdk_message(exc: BaseException) -> str:
    """The failure's own message, without what databricks-sdk appends to it (` Config: host=...,
    auth_type=...`, ` Env: ...`: its settings, secrets masked), which says nothing about the
    failure. Not yet scrubbed of credentials: pass it through `redact` before showing it."""
    return _CONFIG_NOTE.sub("", str(exc))


def _status_said(message: str) -> int | None:
    """The HTTP status of an answer databricks-sdk has no class for, where its message tells: the
    reason phrase alone (`Bad Gateway`: an answer without a body), or its request log's `< 502 ...`
    line (a body it could not parse)."""
    if message in _REASONS:
        return _REASONS[message]
    logged = _LOGGED_STATUS.search(message)
    return int(logged.group(1)) if logged else None


def sdk_status(exc: BaseException) -> int | None:
    """The HTTP status a databricks-sdk `DatabricksError` stands for, or None when nothing tells.

    By its class (`NotFound` is 404, `TemporarilyUnavailable` 503, ...), else by its message (a
    status the SDK has no class for: 502, 555), else by its `error_code`. None for anything that
    is not a `DatabricksError`."""
    from databricks.sdk.errors import platform
    from databricks.sdk.errors.base import DatabricksError

    if not isinstance(exc, DatabricksError):
        return None
    for name, status in _STATUSES:
        cls = getattr(platform, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return status
    return _status_said(sdk_message(exc)) or _CODE_STATUSES.get(exc.error_code or "")


def typed_error(exc: BaseException) -> APIError:
    """databricks-sdk's (or requests') failure as the package's typed error, its text scrubbed of
    credentials: an `APIStatusError` of the status it stands for (`sdk_status`), an
    `APIConnectionError` for a connection that failed, else an `APIError`. The SDK's own retries
    end in `TimeoutError` chained to the last failure: that failure is what is typed."""
    import requests
    from databricks.sdk.errors.base import DatabricksError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TimeoutError) and isinstance(
        exc.__cause__, (DatabricksError, requests.RequestException)
    ):
        exc = exc.__cause__
    if isinstance(exc, DatabricksError):
        message = redact(sdk_message(exc))
        status = sdk_status(exc)
        if status is None:
            return APIError(message or type(exc).__name__)
        retry_after = getattr(exc, "retry_after_secs", None)
        return status_error_class(status)(
            message or "no message",
            status_code=status,
            error_code=exc.error_code,
            retry_after=None if retry_after is None else float(retry_after),
        )
    dropped = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    if isinstance(exc, (*dropped, ConnectionError, TimeoutError)):
        return APIConnectionError(redact(f"{type(exc).__name__}: {exc}"))
    return APIError(redact(f"{type(exc).__name__}: {exc}"))
