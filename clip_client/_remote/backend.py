"""The remote backend: one workspace's two serving endpoints behind the `Backend` protocol.

This is the data plane (payloads, one POST per batch, retries, the adaptive concurrency limit, time
bounds, error mapping). What the workspace says about each endpoint, and what is done about it
before the first request, is the control plane's (`control_plane.RemoteControlPlane`): the
backend holds one and exposes the `ControlPlane` protocol by delegating to it.
"""

from __future__ import annotations

import asyncio
import logging
import platform
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import httpx

from .. import _constants as C
from .._core.concurrency import AIMDLimit, AsyncLimiter, CallCancelled, CallContext, Slot, ThreadLimiter
from .._core.images import PreparedImage
from .._core.secrets import safe_cause
from .._core.wire import encode_body, encode_record, parse_predictions, record_size
from .._version import __version__
from ..errors import APIError, APIStatusError
from ..types import EmbeddingArray, InputKind, Settings
from .control_plane import MIN_TIMEOUT, STATE_TIMEOUT, RemoteControlPlane, Route
from .endpoint_state import EndpointState
from .retry import call_retry_arguments, retry_arguments
from .status import error_from_response, map_transport_error, request_id_of
from .timeouts import AttemptClock, sync_client
from .workspace import Workspace

__all__ = ["RemoteBackend", "user_agent"]

logger = logging.getLogger(C.LOGGER_NAME)


_CLOCK_SLACK = 0.05
"""A socket timeout can fire a hair before the time it was set for: within this many seconds of the
call's deadline, a timeout of an attempt the deadline bounded is the deadline's.
"""


def user_agent() -> str:
    return f"clip-serving-client/{__version__} python/{platform.python_version()} httpx/{httpx.__version__}"


class RemoteBackend:
    """Databricks Model Serving: one POST per batch, with retries, to the text or image endpoint.

    Owns a pooled `httpx.Client` and/or `httpx.AsyncClient` (created on first use, kept alive
    across calls) unless the caller injects their own, which it then leaves open on `close`.
    Every attempt takes a slot from one adaptive limit shared by all calls, threads and tasks on the
    client: 429 and 503 answers halve it, successes grow it back up to `max_concurrency`.

    Before its first request to an endpoint, its control plane (`self.control`) reads the
    endpoint's state once (`prepare`, one `GET /api/2.0/serving-endpoints/{name}` per endpoint
    per backend) and acts on it (`preflight`): the ceiling of `max_concurrency="auto"`, the
    data-plane URL of a route-optimized endpoint, and whether its 503s are those of an endpoint that
    is starting. The backend answers the `ControlPlane` protocol by delegating to it.
    """

    image_input: Literal["encoded", "pixels"] = "encoded"
    batch_size: int | None = None
    image_size: int | None = None
    dim: int | None = None

    def __init__(
        self,
        workspace: Workspace,
        settings: Settings,
        *,
        http_client: httpx.Client | httpx.AsyncClient | None = None,
    ) -> None:
        self.workspace = workspace
        self.settings = settings
        self.max_request_bytes: int | None = settings.max_request_bytes
        self._timeout = settings.timeout
        self._headers = {"Content-Type": "application/json", "User-Agent": user_agent()}
        self._client = http_client if isinstance(http_client, httpx.Client) else None
        self._aclient = http_client if isinstance(http_client, httpx.AsyncClient) else None
        self._owns_client = self._client is None
        self._owns_aclient = self._aclient is None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        given = settings.max_concurrency
        # "auto" starts at the default and takes the endpoint's number on the first call to it.
        self.limit = AIMDLimit(given if isinstance(given, int) else C.DEFAULT_MAX_CONCURRENCY)
        self._thread_slots = ThreadLimiter(self.limit)
        self._task_slots = AsyncLimiter(self.limit)
        # The endpoints' states, and what preparing each endpoint learnt (its route, whether it is
        # starting, the ceiling of "auto"). Its GETs go through this backend's connection pools.
        self.control = RemoteControlPlane(
            workspace,
            settings,
            headers=self._headers,
            sync_client=self._sync_client,
            async_client=self._async_client,
            set_ceiling=self._thread_slots.set_ceiling,
            aset_ceiling=self._task_slots.set_ceiling,
        )
        self._retry = {
            kind: retry_arguments(
                max_retries=settings.max_retries,
                deadline=settings.retry_deadline,
                backoff=settings.retry_backoff,
                backoff_max=settings.retry_backoff_max,
                expected=partial(self._expected, kind),
            )
            for kind in ("text", "image")
        }

    def __repr__(self) -> str:
        return (
            f"RemoteBackend(host={self.workspace.host!r}, text_endpoint={self.endpoint('text')!r}, "
            f"image_endpoint={self.endpoint('image')!r})"
        )

    def endpoint(self, kind: InputKind) -> str:
        return self.control.endpoint(kind)

    def concurrency_limit(self) -> int:
        return self.limit.current

    # -- the ControlPlane protocol, by delegation ---------------------------------------------------

    def concurrency_ceiling(self) -> int:
        """The ceiling of the adaptive limit: `max_concurrency`, or what `"auto"` resolved to (the
        largest of the endpoints prepared so far; the default before the first)."""
        return self.limit.maximum

    def endpoint_state(
        self, kind: InputKind, *, refresh: bool = False, timeout: float = STATE_TIMEOUT
    ) -> EndpointState:
        """`RemoteControlPlane.endpoint_state`: the endpoint's state, read once per client."""
        return self.control.endpoint_state(kind, refresh=refresh, timeout=timeout)

    async def aendpoint_state(
        self, kind: InputKind, *, refresh: bool = False, timeout: float = STATE_TIMEOUT
    ) -> EndpointState:
        """`endpoint_state`, from an event loop."""
        return await self.control.aendpoint_state(kind, refresh=refresh, timeout=timeout)

    def cache_identity(self, kind: InputKind) -> str:
        """`RemoteControlPlane.cache_identity`: the invocations URL and the served model versions."""
        return self.control.cache_identity(kind)

    def cache_identity_confirmed(self, kind: InputKind) -> bool:
        """`RemoteControlPlane.cache_identity_confirmed`: the state named the served versions."""
        return self.control.cache_identity_confirmed(kind)

    def invocations_url(self, kind: InputKind) -> str:
        """Where `kind`'s requests go unless a route-optimized endpoint's data plane says otherwise."""
        return self.control.invocations_url(kind)

    def prepare(self, kind: InputKind, ctx: CallContext | None = None) -> None:
        """`RemoteControlPlane.prepare`: read `kind`'s endpoint state once and act on it."""
        self.control.prepare(kind, ctx)

    async def aprepare(self, kind: InputKind, ctx: CallContext | None = None) -> None:
        """`prepare`, from an event loop."""
        await self.control.aprepare(kind, ctx)

    def _expected(self, kind: InputKind, exc: BaseException) -> bool:
        """Whether a failure was expected: a 555 (the endpoint says it is scaling up from zero), or a
        503 while the endpoint may still be starting."""
        if not isinstance(exc, APIStatusError):
            return False
        return exc.status_code == C.SCALING_FROM_ZERO_STATUS or (
            exc.status_code == 503 and self.control.starting(kind)
        )

    # -- payloads ------------------------------------------------------------------------------------

    def payload(self, kind: InputKind, item: str | PreparedImage) -> tuple[bytes, int]:
        value = encode_record(item if isinstance(item, str) else item.b64())
        return value, record_size(value)

    # -- sync ----------------------------------------------------------------------------------------

    def embed(
        self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext | None = None
    ) -> EmbeddingArray:
        self.prepare(kind, ctx)  # at once, unless this is the backend's first request to the endpoint
        body = encode_body(payloads)
        endpoint = self.endpoint(kind)
        from tenacity import Retrying  # on first use: import cost

        retrying = Retrying(**self._retry_arguments(kind, ctx, ctx.sleep if ctx else None))
        for attempt in retrying:
            with attempt:
                with self._thread_slots.slot(ctx, endpoint) as slot:
                    client = self._sync_client()
                    number = attempt.retry_state.attempt_number
                    request, clock, route = self._request(client, kind, body, ctx, number)
                    slot.expected_503 = self.control.starting(kind)  # as it stands when this one is sent
                    try:
                        with clock.bounding_sockets(ctx.cancelled if ctx else None):
                            response = client.send(request, auth=route.auth, stream=True)
                            clock.read_body(response)
                        failure = None
                    except httpx.HTTPError as exc:
                        failure = self._attempt_error(exc, kind, len(body), clock, ctx)
                    if failure is not None:  # raised outside the handler: see _attempt_error
                        if ctx is not None and ctx.cancelled.is_set():  # nobody wants the answer
                            raise CallCancelled("the call was cancelled")
                        raise failure
                    self._grade(response, slot, ctx, kind)
                # The slot is free once the answer is in: the next request goes out while this
                # thread/task parses, so no endpoint slot idles on the client's JSON work.
                return self._handle(response, kind, len(payloads), len(body), route)
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _sync_client(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = sync_client(self._timeout, self._limits())
        return self._client

    # -- async ---------------------------------------------------------------------------------------

    async def aembed(
        self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext | None = None
    ) -> EmbeddingArray:
        await self.aprepare(kind, ctx)  # at once, unless this is the first request to the endpoint
        body = encode_body(payloads)
        endpoint = self.endpoint(kind)
        client = self._async_client()
        from tenacity import AsyncRetrying  # on first use: import cost

        retrying = AsyncRetrying(**self._retry_arguments(kind, ctx, ctx.asleep if ctx else None))
        async for attempt in retrying:
            with attempt:
                async with self._task_slots.slot(ctx, endpoint) as slot:
                    number = attempt.retry_state.attempt_number
                    request, clock, route = self._request(client, kind, body, ctx, number)
                    slot.expected_503 = self.control.starting(kind)  # as it stands when this one is sent
                    try:
                        # A cancelled attempt closes its connection (httpcore shields that cleanup),
                        # so a half-read answer never goes back to the pool.
                        response = await asyncio.wait_for(client.send(request, auth=route.auth), clock.left())
                        failure = None
                    except asyncio.TimeoutError as exc:
                        timeout = httpx.TimeoutException("the attempt's time ran out", request=request)
                        timeout.__cause__ = exc
                        failure = self._attempt_error(timeout, kind, len(body), clock, ctx)
                    except httpx.HTTPError as exc:
                        failure = self._attempt_error(exc, kind, len(body), clock, ctx)
                    if failure is not None:  # raised outside the handler: see _attempt_error
                        raise failure
                    self._grade(response, slot, ctx, kind)
                # The slot is free once the answer is in: the next request goes out while this
                # thread/task parses, so no endpoint slot idles on the client's JSON work.
                return self._handle(response, kind, len(payloads), len(body), route)
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _async_client(self) -> httpx.AsyncClient:
        """The pooled async client, bound to the running event loop. A client used from another loop
        (a second `asyncio.run`) gets a fresh pool: pooled connections belong to the loop that
        opened them, and the old loop may be closed, so they can be neither reused nor closed."""
        loop = asyncio.get_running_loop()
        if self._aclient is None or (self._owns_aclient and self._aclient_loop is not loop):
            self._aclient = httpx.AsyncClient(timeout=self._timeout, limits=self._limits())
            self._aclient_loop = loop
        return self._aclient

    # -- shared --------------------------------------------------------------------------------------

    def _retry_arguments(self, kind: InputKind, ctx: CallContext | None, sleep: Any) -> dict[str, Any]:
        if ctx is None:
            return self._retry[kind]
        return call_retry_arguments(self._retry[kind], ctx, self.endpoint(kind), sleep)

    def _request(
        self,
        client: httpx.Client | httpx.AsyncClient,
        kind: InputKind,
        body: bytes,
        ctx: CallContext | None,
        number: int,
    ) -> tuple[httpx.Request, AttemptClock, Route]:
        """One attempt's POST, its time bound and its route (URL and auth), made once a slot is ours:
        the call may have been cancelled, or its deadline come nearer, while the attempt waited.

        A client the library created bounds the attempt as a whole by `timeout` (connect by
        `min(10, timeout)`); an injected client keeps its own timeouts. Either way the call's
        deadline, when nearer, shortens both."""
        endpoint = self.endpoint(kind)
        left = None
        if ctx is not None:
            ctx.check(endpoint)
            left = ctx.remaining()
            ctx.attempted(number)
        if self._owns_client if isinstance(client, httpx.Client) else self._owns_aclient:
            clock = AttemptClock.start(self._timeout, left, f"timeout={self._timeout:g}s")
            seconds = max(clock.left() or 0.0, MIN_TIMEOUT)
            timeout = httpx.Timeout(seconds, connect=min(C.DEFAULT_CONNECT_TIMEOUT, seconds))
        else:
            clock = AttemptClock.start(None, left, "the http_client's timeouts")
            bound = clock.left()
            timeout = _shortened(client.timeout, None if bound is None else max(bound, MIN_TIMEOUT))
        route = self.control.route(kind)
        request = client.build_request(
            "POST", route.url, content=body, headers=self._headers, timeout=timeout
        )
        return request, clock, route

    def _attempt_error(
        self,
        exc: httpx.HTTPError,
        kind: InputKind,
        nbytes: int,
        clock: AttemptClock,
        ctx: CallContext | None,
    ) -> APIError:
        """The typed error for a failed attempt, chained to `exc` unless `exc` shows a
        credential (a protocol error quoting a header the server echoed). A timeout that fired
        because the call's deadline came first gives the deadline's error instead ("raise timeout="
        would be the wrong advice), chained to the call's last failure before it.

        The caller raises it outside its `except` block, so that the httpx exception is not
        attached as the implicit `__context__` either."""
        endpoint = self.endpoint(kind)
        cause = safe_cause(exc)
        if (
            isinstance(exc, httpx.TimeoutException)
            and ctx is not None
            and clock.by_deadline
            and ctx.expires_within(_CLOCK_SLACK)
        ):
            waiting = f"for the endpoint's answer ({type(exc).__name__})"
            return ctx.expired_error(endpoint, waiting=waiting, cut=cause)
        advice = (
            "raise timeout= if the model is slow"
            if clock.bound.startswith("timeout=")
            else "raise the http_client's timeout if the model is slow"
        )
        error = map_transport_error(exc, endpoint, nbytes, bound=clock.bound, advice=advice)
        error.__cause__ = cause
        error.__suppress_context__ = True
        return error

    def _limits(self) -> httpx.Limits:
        # Made before "auto" is resolved (the state GET goes through the same pool): room for the
        # highest ceiling it may choose. Connections open only as requests need them.
        given = self.settings.max_concurrency
        n = given if isinstance(given, int) else C.MAX_CONCURRENCY
        return httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n, keepalive_expiry=60)

    def _grade(self, response: httpx.Response, slot: Slot, ctx: CallContext | None, kind: InputKind) -> None:
        """What the adaptive limit learns from an answer: 429/503 mean overload, except the 503s of an
        endpoint that may be starting, until its first answer that succeeds."""
        status = response.status_code
        if status == C.SCALING_FROM_ZERO_STATUS:
            self.control.waiting_for_start(kind, "it is scaling up from zero, and answered 555")
        elif status == 503 and (slot.expected_503 or self.control.starting(kind)):
            # A 503 to a request sent while the endpoint was starting is a start-up answer, even
            # when it arrives after a later request already succeeded.
            self.control.waiting_for_start(kind, "it may have scaled to zero, and answered 503")
        elif status in (429, 503):
            slot.overloaded = True
            if ctx is not None:
                ctx.overloaded()
        else:
            slot.succeeded = status < 400
            if slot.succeeded:
                self.control.started(kind)  # from now on a 503 is overload again

    def _handle(
        self, response: httpx.Response, kind: InputKind, rows: int, nbytes: int, route: Route
    ) -> EmbeddingArray:
        endpoint = self.endpoint(kind)
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
            error = error_from_response(response, endpoint)
            if route.fallback is not None and response.status_code in (401, 403, 404):
                error.message += (
                    f" (the endpoint is route-optimized and was queried at the workspace URL, since "
                    f"{route.fallback}; use OAuth credentials to query its data plane)"
                )
            raise error
        return parse_predictions(response.content, rows, endpoint=endpoint, request_id=request_id)

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


def _shortened(timeout: httpx.Timeout, seconds: float | None) -> httpx.Timeout:
    """An injected client's own timeouts, each cut to `seconds` when that is shorter."""
    if seconds is None:
        return timeout

    def cut(value: float | None) -> float:
        return seconds if value is None else min(value, seconds)

    return httpx.Timeout(
        connect=cut(timeout.connect), read=cut(timeout.read), write=cut(timeout.write), pool=cut(timeout.pool)
    )
