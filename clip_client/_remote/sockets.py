"""Network streams that give up when the running attempt's time runs out: httpcore's network
backend, wrapped, for the sync clients the library creates (`timeouts.sync_client`).

A module of its own so that `import clip_client` does not import httpcore (and anyio, h11): httpx
imports it only when the first client is built, and so does `sync_client`, this module.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore

from .timeouts import CANCEL_POLL, _attempt_cancelled, _attempt_expires

__all__ = ["ExpiringBackend", "ExpiringStream", "time_left"]


def time_left(timeout: float | None, expired: type[Exception]) -> float | None:
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


class ExpiringStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the running attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        cancelled = _attempt_cancelled.get()
        if cancelled is None:
            return self._stream.read(max_bytes, time_left(timeout, httpcore.ReadTimeout))
        # Waited for in steps of at most CANCEL_POLL, looking at the call's flag between them. A
        # step that times out has consumed nothing (a plain socket's recv, or an SSL socket's,
        # which keeps a partial record for the next read), so the next step goes on where it was.
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            if cancelled.is_set():
                raise httpcore.ReadError("the call was cancelled")
            own = None if until is None else until - time.monotonic()
            if own is not None and own <= 0:
                raise httpcore.ReadTimeout("the read timed out")
            left = time_left(own, httpcore.ReadTimeout)
            polling = left is None or left > CANCEL_POLL
            try:
                return self._stream.read(max_bytes, CANCEL_POLL if polling else left)
            except httpcore.ReadTimeout:
                if not polling:  # the read's or the attempt's own time ran out
                    raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(
            ssl_context, server_hostname, time_left(timeout, httpcore.ConnectTimeout)
        )
        return ExpiringStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class ExpiringBackend(httpcore.NetworkBackend):
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
        timeout = time_left(timeout, httpcore.ConnectTimeout)
        return ExpiringStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        timeout = time_left(timeout, httpcore.ConnectTimeout)
        return ExpiringStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
