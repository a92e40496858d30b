"""Backends: whatever turns one batch of texts or prepared images into a float32 array.

The remote endpoints and the in-process model answer the same calls, so batching, ordering,
normalisation and progress sit above them in the client, written once.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import threading
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import httpx
from tenacity import AsyncRetrying, RetryCallState, Retrying
from tenacity.stop import stop_base

from . import _constants as C
from ._concurrency import AIMDLimit, AsyncLimiter, CallContext, Slot, ThreadLimiter
from ._core import FloatArray, Kind, encode_body, encode_record, parse_predictions, record_size
from ._images import PreparedImage
from ._transport import (
    Workspace,
    error_from_response,
    map_transport_error,
    request_id_of,
    retry_arguments,
)
from ._version import __version__
from .errors import APIError, APITimeoutError
from .types import Settings

logger = logging.getLogger(C.LOGGER_NAME)

__all__ = ["Backend", "RemoteBackend"]


@runtime_checkable
class Backend(Protocol):
    """What a client needs from the thing that computes embeddings."""

    #: "encoded" when images travel as file bytes, "pixels" when the backend wants uint8 arrays.
    image_input: Literal["encoded", "pixels"]
    #: Largest request body in bytes, or None when requests have no size (in-process).
    max_request_bytes: int | None

    def payload(self, kind: Kind, item: str | PreparedImage) -> tuple[Any, int]:
        """The per-item payload a batch is made of, and its size in bytes (0 when unbounded)."""
        ...

    def embed(self, kind: Kind, payloads: Sequence[Any], ctx: CallContext | None = None) -> FloatArray:
        """One batch, synchronously; may be called from several threads at once. ``ctx`` carries
        the call's deadline and cancellation."""
        ...

    async def aembed(self, kind: Kind, payloads: Sequence[Any], ctx: CallContext | None = None) -> FloatArray:
        """One batch, from an event loop."""
        ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


def user_agent() -> str:
    return f"clip-serving-client/{__version__} python/{platform.python_version()} httpx/{httpx.__version__}"


class _Counters:
    """Thread-safe counts for ``client.stats``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.overloads = 0

    def attempt(self, number: int) -> None:
        with self._lock:
            self.requests += 1
            self.retries += number > 1

    def overload(self) -> None:
        with self._lock:
            self.overloads += 1


class _StopAtDeadline(stop_base):
    """Stop retrying once the call's deadline has passed or the call was cancelled."""

    def __init__(self, ctx: CallContext) -> None:
        self.ctx = ctx

    def __call__(self, retry_state: RetryCallState) -> bool:
        left = self.ctx.remaining()
        return self.ctx.cancelled.is_set() or (left is not None and left <= 0)


class RemoteBackend:
    """Databricks Model Serving: one POST per batch, with retries, to the text or image endpoint.

    Owns a pooled ``httpx.Client`` and/or ``httpx.AsyncClient`` (created on first use, kept alive
    across calls) unless the caller injects their own, which it then leaves open on ``close``.
    Every attempt takes a slot from one adaptive limit shared by all calls, threads and tasks on the
    client: 429 and 503 answers halve it, successes grow it back up to ``max_concurrency``.
    """

    image_input: Literal["encoded", "pixels"] = "encoded"

    def __init__(
        self,
        workspace: Workspace,
        settings: Settings,
        *,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.workspace = workspace
        self.settings = settings
        self.max_request_bytes: int | None = settings.max_request_bytes
        self._endpoints: dict[Kind, str] = {"text": settings.text_endpoint, "image": settings.image_endpoint}
        self._urls = {
            kind: f"{workspace.host}/serving-endpoints/{name}/invocations"
            for kind, name in self._endpoints.items()
        }
        self._retry = retry_arguments(
            max_retries=settings.max_retries,
            deadline=settings.retry_deadline,
            backoff=settings.retry_backoff,
            backoff_max=settings.retry_backoff_max,
        )
        self._timeout = settings.timeout
        self._headers = {"Content-Type": "application/json", "User-Agent": user_agent()}
        self._client = http_client
        self._aclient = async_http_client
        self._owns_client = http_client is None
        self._owns_aclient = async_http_client is None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.limit = AIMDLimit(settings.max_concurrency)
        self._thread_slots = ThreadLimiter(self.limit)
        self._task_slots = AsyncLimiter(self.limit)
        self.counters = _Counters()

    def __repr__(self) -> str:
        return (
            f"RemoteBackend(host={self.workspace.host!r}, text_endpoint={self._endpoints['text']!r}, "
            f"image_endpoint={self._endpoints['image']!r})"
        )

    def endpoint(self, kind: Kind) -> str:
        return self._endpoints[kind]

    # -- payloads ------------------------------------------------------------------------------------

    def payload(self, kind: Kind, item: str | PreparedImage) -> tuple[bytes, int]:
        value = encode_record(item if isinstance(item, str) else item.b64())
        return value, record_size(value)

    # -- sync ----------------------------------------------------------------------------------------

    def embed(self, kind: Kind, payloads: Sequence[Any], ctx: CallContext | None = None) -> FloatArray:
        body = encode_body(payloads)
        retrying = Retrying(**self._retry_arguments(ctx, sleep=ctx.sleep if ctx else None))
        for attempt in retrying:
            with attempt:
                with self._thread_slots.slot() as slot:
                    post = self._attempt(kind, body, ctx, attempt.retry_state.attempt_number)
                    try:
                        response = self._sync_client().post(**post)
                    except httpx.TransportError as exc:
                        raise self._transport_error(exc, kind, len(body), post["timeout"], ctx) from exc
                    self._grade(response, slot)
                # The slot is free once the answer is in: the next request goes out while this
                # thread/task parses, so no endpoint slot idles on the client's JSON work.
                return self._handle(response, kind, len(payloads), len(body))
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _sync_client(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(timeout=self._timeout, limits=self._limits())
        return self._client

    # -- async ---------------------------------------------------------------------------------------

    async def aembed(self, kind: Kind, payloads: Sequence[Any], ctx: CallContext | None = None) -> FloatArray:
        body = encode_body(payloads)
        client = self._async_client()
        retrying = AsyncRetrying(**self._retry_arguments(ctx, sleep=ctx.asleep if ctx else None))
        async for attempt in retrying:
            with attempt:
                async with self._task_slots.slot() as slot:
                    post = self._attempt(kind, body, ctx, attempt.retry_state.attempt_number)
                    try:
                        response = await client.post(**post)
                    except httpx.TransportError as exc:
                        raise self._transport_error(exc, kind, len(body), post["timeout"], ctx) from exc
                    self._grade(response, slot)
                # The slot is free once the answer is in: the next request goes out while this
                # thread/task parses, so no endpoint slot idles on the client's JSON work.
                return self._handle(response, kind, len(payloads), len(body))
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _async_client(self) -> httpx.AsyncClient:
        """The pooled async client, bound to the running event loop. A client used from another loop
        (a second ``asyncio.run``) gets a fresh pool: pooled connections belong to the loop that
        opened them, and the old loop may be closed, so they can be neither reused nor closed."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or (self._owns_aclient and self._aclient_loop is not loop):
            self._aclient = httpx.AsyncClient(timeout=self._timeout, limits=self._limits())
            self._aclient_loop = loop
        return self._aclient

    # -- shared --------------------------------------------------------------------------------------

    def _retry_arguments(self, ctx: CallContext | None, sleep: Any) -> dict[str, Any]:
        if ctx is None:
            return self._retry
        return {**self._retry, "stop": self._retry["stop"] | _StopAtDeadline(ctx), "sleep": sleep}

    def _attempt(self, kind: Kind, body: bytes, ctx: CallContext | None, number: int) -> dict[str, Any]:
        """The keyword arguments of one attempt's POST, made once a slot is ours: the call may have
        been cancelled, or its deadline come nearer, while the attempt waited for one."""
        timeout = self._attempt_timeout(kind, ctx)
        self.counters.attempt(number)
        return {
            "url": self._urls[kind],
            "content": body,
            "headers": self._headers,
            "auth": self.workspace.auth,
            "timeout": timeout,
        }

    def _attempt_timeout(self, kind: Kind, ctx: CallContext | None) -> httpx.Timeout:
        """``timeout`` bounds one attempt; the call's deadline, when nearer, bounds it further."""
        seconds = self._timeout
        if ctx is not None:
            ctx.check(self._endpoints[kind])
            left = ctx.remaining()
            if left is not None:
                seconds = min(seconds, left)
        return httpx.Timeout(seconds, connect=min(C.DEFAULT_CONNECT_TIMEOUT, seconds))

    def _transport_error(
        self,
        exc: httpx.TransportError,
        kind: Kind,
        nbytes: int,
        timeout: httpx.Timeout,
        ctx: CallContext | None,
    ) -> APIError:
        """The typed error for a failed attempt. A timeout that fired because the call's deadline
        shortened the attempt says so: "raise timeout=" would be the wrong advice."""
        endpoint = self._endpoints[kind]
        if isinstance(exc, httpx.TimeoutException) and ctx is not None and ctx.deadline is not None:
            connect = isinstance(exc, httpx.ConnectTimeout)
            used = timeout.connect if connect else timeout.read
            uncut = min(C.DEFAULT_CONNECT_TIMEOUT, self._timeout) if connect else self._timeout
            if used is not None and used < uncut:
                return APITimeoutError(
                    f"the call's deadline of {ctx.deadline:g}s passed while waiting for the endpoint "
                    f"({type(exc).__name__})",
                    endpoint=endpoint,
                )
        return map_transport_error(exc, endpoint, nbytes)

    def _limits(self) -> httpx.Limits:
        n = self.settings.max_concurrency
        return httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n, keepalive_expiry=60)

    def _grade(self, response: httpx.Response, slot: Slot) -> None:
        """What the adaptive limit learns from an answer: 429/503 mean overload."""
        if response.status_code in (429, 503):
            slot.overloaded = True
            self.counters.overload()
        else:
            slot.succeeded = response.status_code < 400

    def _handle(self, response: httpx.Response, kind: Kind, rows: int, nbytes: int) -> FloatArray:
        endpoint = self._endpoints[kind]
        request_id = request_id_of(response)
        elapsed = response.elapsed.total_seconds() if hasattr(response, "_elapsed") else float("nan")
        logger.debug(
            "POST %s: %d records, %d bytes -> HTTP %d in %.3fs (request_id=%s, limit=%d)",
            endpoint,
            rows,
            nbytes,
            response.status_code,
            elapsed,
            request_id,
            self.limit.current,
        )
        if response.status_code >= 400:
            raise error_from_response(response, endpoint)
        return parse_predictions(response.content, rows, endpoint=endpoint, request_id=request_id)

    def stats(self) -> dict[str, int]:
        c = self.counters
        return {
            "requests": c.requests,
            "retries": c.retries,
            "overloads": c.overloads,
            "concurrency_limit": self.limit.current,
            "max_concurrency": self.limit.maximum,
        }

    def close(self) -> None:
        if self._client is not None and self._owns_client:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None and self._owns_aclient:
            if self._aclient_loop is asyncio.get_running_loop():
                await self._aclient.aclose()
            self._aclient = None
        self.close()
