"""Credentials never leave the process in text: one place that knows them and scrubs them out.

Every credential the client holds (a personal access token, each bearer token that databricks-sdk's
`Config.authenticate()` hands out, which changes on every OAuth refresh, and the OAuth client
secret or any other attribute the SDK marks sensitive) is registered here the moment the client
sees it. Anything a server or a library says is passed through `redact` before it becomes part
of an error message, a repr or a log record, so a gateway that echoes the request's headers or a
401 that quotes the token cannot leak it. Registration is process-wide, on purpose: an error built
anywhere (a Spark worker, the CLI, a future integration) is scrubbed of every credential any client
in the process has used, with no object to thread through.

Beyond the registered values, two shapes are always scrubbed: `Bearer <credential>` of 16 or
more characters (an echoed `Authorization` header) and Databricks personal access tokens
(`dapi` + 32 hex digits, optionally `-N`), which a server may quote even when this process never
held that token.

Log records are scrubbed too: those of the `clip_client` logger by a filter attached at import,
and those of the libraries the client's HTTP traffic goes through (httpx, httpcore and all its
child loggers, databricks-sdk, urllib3) by `redact_library_logs`, installed when the first client
is created (an echoed response header shows up in httpcore's DEBUG lines).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

from .._constants import LOGGER_NAME

__all__ = [
    "MASK",
    "RedactingFilter",
    "excerpt",
    "mentions_a_secret",
    "redact",
    "redact_library_logs",
    "register",
    "register_headers",
    "safe_cause",
    "shorten",
]

MASK = "***"
"""What a credential is replaced with."""
_MIN_SECRET_LENGTH = 8
"""Values shorter than this are not registered: masking every "1" or "abc" in a message would make
it unreadable, and no real credential is that short.
"""

_PATTERNS = re.compile(
    r"(?i:\b(bearer)\s+)[A-Za-z0-9._~+/=-]{16,}"  # an echoed Authorization header
    r"|\bdapi[0-9a-f]{32}(?:-\d+)?\b"  # a Databricks personal access token
)


class _Registry:
    """The credentials seen so far, as one compiled pattern swapped whole on each addition, so
    `redact` reads it without a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.known: frozenset[str] = frozenset()
        self.pattern: re.Pattern[str] | None = None

    def add(self, values: Iterable[str | None]) -> None:
        new = {v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LENGTH} - self.known
        if not new:
            return
        with self._lock:
            known = self.known | new
            # Longest first, so a credential that contains another registered value is masked whole.
            alternatives = sorted(known, key=len, reverse=True)
            self.pattern = re.compile("|".join(re.escape(v) for v in alternatives))
            self.known = known


_registry = _Registry()


def register(*values: str | None) -> None:
    """Remember credentials so that `redact` scrubs them from now on. Cheap when already known."""
    _registry.add(values)


def register_headers(headers: Iterable[tuple[str, str]]) -> None:
    """Register the credential in each auth header value: the whole value and, for `Bearer x` /
    `Basic x`, the `x` alone (a server may quote either)."""
    for _, value in headers:
        scheme, _, credential = value.partition(" ")
        register(value, credential if scheme.lower() in ("bearer", "basic") else None)


def redact(text: str) -> str:
    """`text` with every registered credential, echoed bearer header and PAT replaced by `***`."""
    pattern = _registry.pattern  # one read: a concurrent register() swaps in a new pattern whole
    if pattern is not None:
        text = pattern.sub(MASK, text)
    return _PATTERNS.sub(_mask_match, text)


def excerpt(data: bytes, limit: int) -> str:
    """The start of a body as one line of at most `limit` characters. The whole body is redacted
    *before* anything is cut (a regular-expression pass, linear in its size, on an error path), so
    no credential that straddles a cut, however much whitespace comes before it, leaves part of
    itself behind."""
    text = data.decode("utf-8", "replace")
    return " ".join(redact(text).split())[:limit]


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with a note of how long it was; call it on redacted text."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}... ({len(text):,} characters in all)"


def mentions_a_secret(exc: BaseException | None) -> bool:
    """Whether `exc`, or any exception chained behind it, shows a credential in its text."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = f"{exc!s}\n{exc!r}"
        if redact(text) != text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def safe_cause(exc: BaseException) -> BaseException | None:
    """`exc` when it may be chained as a `__cause__` (a traceback prints every cause in full),
    or None when it or its own causes show a credential: a library's exception (a protocol error
    quoting a header the server sent back) cannot be rewritten, so it is left out of the chain."""
    return None if mentions_a_secret(exc) else exc


def _mask_match(match: re.Match[str]) -> str:
    scheme = match.group(1)
    return f"{scheme} {MASK}" if scheme else MASK


def _scrub_record(record: logging.LogRecord) -> None:
    """Mask every credential in `record`: its message with its arguments (a `bytes` argument, such
    as a header httpcore logs, shows as its repr, so a token in it is masked too), and the text of
    its exception. When anything was masked, the message becomes the masked text and the arguments
    are dropped, so neither a formatter nor a handler that reads `record.args` sees the credential.
    A record whose message does not format is left as it is (logging reports that itself)."""
    try:
        message = record.getMessage()
    except Exception:
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        text = logging.Formatter().formatException(record.exc_info)
        if redact(text) != text:
            record.exc_text = redact(text)  # formatters print exc_text when set, else format exc_info
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """Scrubs credentials from every record of the `clip_client` logger, whatever its arguments:
    a second line of defence behind the errors, which are redacted when they are built."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub_record(record)
        return True


logging.getLogger(LOGGER_NAME).addFilter(RedactingFilter())

_LIBRARY_LOGGERS = (LOGGER_NAME, "httpx", "httpcore", "databricks.sdk", "urllib3")
"""The loggers whose records `redact_library_logs` scrubs, each with all its children
(`httpcore.http11`, `httpcore.http2`, `httpcore.connection`, `httpcore.proxy`, `httpcore.socks`...):
clip_client's own and those of the libraries its HTTP traffic goes through."""
_install_lock = threading.Lock()
_installed = threading.Event()


def _is_library_logger(name: object) -> bool:
    return isinstance(name, str) and any(
        name == prefix or name.startswith(f"{prefix}.") for prefix in _LIBRARY_LOGGERS
    )


def redact_library_logs() -> None:
    """Scrub credentials from every record of the client's HTTP stack: httpx, httpcore and each of
    its child loggers, databricks-sdk and urllib3 (and clip_client's own children), at any level.
    httpcore logs a server's response headers at DEBUG, so a header that echoes the token
    (`x-request-id: <token>`) would otherwise reach whatever handler the application configured.

    Installed once per process, by the first client created (importing clip_client changes
    nothing), as a wrapper around the log record factory (`logging.setLogRecordFactory`) that
    chains to the factory in place before it. A filter on a logger only sees records logged on
    that very logger, not those its children propagate, so filters would have to name every child
    logger of every library, now and in their future versions; a filter on a handler needs the
    application's handlers. The factory sees each record as it is created, whichever logger
    logs it and whichever handler prints it, and touches only the records of the loggers above.
    Records below a logger's level are never created, so this costs nothing unless those loggers
    are enabled, then one formatting and one regular-expression pass per record. Calling it again
    does nothing."""
    if _installed.is_set():
        return
    with _install_lock:
        if _installed.is_set():
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if _is_library_logger(record.name):
                _scrub_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed.set()
