"""Time bounds of one attempt: a clock per attempt and sockets that give up when it runs out."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from .. import _constants as C

if TYPE_CHECKING:
    pass

__all__ = ["AttemptClock", "sync_client"]

logger = logging.getLogger(C.LOGGER_NAME)


# --------------------------------------------------------------------------------------------------
# Time bounds of one attempt
#
# httpx times each socket operation on its own (httpcore reads `timeout["read"]` once per phase and
# gives every read that same value), so a server that sends one byte per second never trips a read
# timeout. One attempt is bounded as a whole instead: the async client cancels it
# (`asyncio.wait_for`); the sync client cannot cancel a thread, so the sync clients the library
# creates get network streams that shorten every connect, read and write to the attempt's time left
# (the header phase included), and every response body is read in chunks, checked against the clock.

_attempt_expires: ContextVar[float | None] = ContextVar("clip_client_attempt_expires", default=None)
"""When the attempt running in this thread must be over (`time.monotonic()`), read by the network
streams of the sync clients the library creates; None outside an attempt or without a bound.
"""

_attempt_cancelled: ContextVar[threading.Event | None] = ContextVar(
    "clip_client_attempt_cancelled", default=None
)
"""The call's cancellation flag (`CallContext.cancelled`) for the attempt running in this thread:
a read that is waiting on the socket gives up within `CANCEL_POLL` seconds of it being set, so a
worker thread does not stay blocked on an answer nobody wants (Ctrl-C, a consumer that stopped
early). Without it, the interpreter's exit would wait for every such request to finish, because
`concurrent.futures` joins its worker threads at exit."""

CANCEL_POLL = 0.25
"""Seconds a blocked read waits between looks at the call's cancellation flag."""


@dataclass(frozen=True)
class AttemptClock:
    """The time bound of one attempt.

    Attributes:
        expires_at: `time.monotonic()` by which the attempt must be over; None when nothing bounds
            it as a whole (an injected http client, and no call deadline).
        by_deadline: the call's deadline, not `timeout`, sets `expires_at`.
        bound: what bounds the attempt, for messages ("timeout=330s").
    """

    expires_at: float | None
    by_deadline: bool
    bound: str

    @classmethod
    def start(cls, timeout: float | None, deadline_left: float | None, bound: str) -> AttemptClock:
        """Now plus `timeout` (None: unbounded), or the call's deadline when that comes first."""
        now = time.monotonic()
        if deadline_left is not None and (timeout is None or deadline_left < timeout):
            return cls(now + deadline_left, True, bound)
        return cls(None if timeout is None else now + timeout, False, bound)

    def left(self) -> float | None:
        """Seconds left (never negative), or None when unbounded."""
        return None if self.expires_at is None else max(0.0, self.expires_at - time.monotonic())

    @contextmanager
    def bounding_sockets(self, cancelled: threading.Event | None = None) -> Iterator[None]:
        """Within this block, this thread's socket operations on a client made by
        `sync_client` end by `expires_at`, and a read waiting on the socket ends (httpcore's
        `ReadError`) within `CANCEL_POLL` seconds of `cancelled` being set."""
        token = _attempt_expires.set(self.expires_at)
        flag = _attempt_cancelled.set(cancelled)
        try:
            yield
        finally:
            _attempt_cancelled.reset(flag)
            _attempt_expires.reset(token)

    def read_body(self, response: httpx.Response) -> None:
        """Read a streamed response's body, stopping with `httpx.ReadTimeout` between two chunks
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


def sync_client(timeout: float, limits: httpx.Limits) -> httpx.Client:
    """The `httpx.Client` the library creates: httpx's own (environment proxies and all), with its
    connection pools' network backend wrapped so that every socket operation ends by the running
    attempt's deadline. httpx has no public hook for a pool's network backend, so this reaches into
    `_transport`/`_mounts`/`_pool`; if those ever change, it logs, and an attempt's connect and
    header phase fall back to httpx's per-operation timeouts (its body is still cut between chunks,
    and a sync call still returns by its deadline). The time-bound tests fail if that happens."""
    import httpcore  # only here: httpx itself imports it when the first client is built

    from .sockets import ExpiringBackend

    client = httpx.Client(timeout=timeout, limits=limits)
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend):
            pool._network_backend = ExpiringBackend(backend)  # type: ignore[union-attr]
        elif transport is not None:
            logger.debug("cannot bound the sockets of %r by the attempt's deadline", transport)
    return client
