"""The remote backend: one workspace's two serving endpoints behind the ``Backend`` protocol."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

import httpx
from tenacity import AsyncRetrying, Retrying

from .. import _constants as C
from .._core.concurrency import AIMDLimit, AsyncLimiter, CallContext, Slot, ThreadLimiter
from .._core.images import PreparedImage
from .._core.secrets import safe_cause
from .._core.wire import decode_json, encode_body, encode_record, parse_predictions, record_size
from .._version import __version__
from ..errors import APIError, APIStatusError
from ..types import EmbeddingArray, InputKind, Settings
from .endpoint_state import EndpointState, parse_endpoint_state, unknown_state
from .preflight import Preflight, preflight
from .retry import call_retry_arguments, retry_arguments
from .status import error_from_response, map_transport_error, request_id_of
from .timeouts import AttemptClock, sync_client
from .workspace import DataPlaneUnavailable, Workspace, data_plane_url

__all__ = ["STATE_TIMEOUT", "RemoteBackend", "Route", "state_timeout", "user_agent"]

logger = logging.getLogger(C.LOGGER_NAME)


#: A socket timeout can fire a hair before the time it was set for: within this many seconds of the
#: call's deadline, a timeout of an attempt the deadline bounded is the deadline's.
_CLOCK_SLACK = 0.05
#: Seconds the state GET may take as a whole: it is best-effort, and the answer comes from the
#: control plane, not the model.
STATE_TIMEOUT = 10.0
#: The share of a call's time left that it may spend waiting for its endpoint's state.
_STATE_SHARE_OF_DEADLINE = 0.25
#: The shortest timeout handed to httpx: a socket timeout of 0 would mean "non-blocking", not "now".
_MIN_TIMEOUT = 0.001


def user_agent() -> str:
    return f"clip-serving-client/{__version__} python/{platform.python_version()} httpx/{httpx.__version__}"


@dataclass(frozen=True)
class Route:
    """Where one endpoint's requests go and how they authenticate: the workspace's invocations URL
    with the workspace's credentials, or a route-optimized endpoint's data plane with a data-plane
    token. Everything else about a request (retries, the adaptive limit, time bounds, error mapping)
    is the same on either."""

    url: str
    auth: httpx.Auth
    data_plane: bool = False
    #: Why a route-optimized endpoint is queried at the workspace URL nevertheless; None otherwise.
    fallback: str | None = None


class RemoteBackend:
    """Databricks Model Serving: one POST per batch, with retries, to the text or image endpoint.

    Owns a pooled ``httpx.Client`` and/or ``httpx.AsyncClient`` (created on first use, kept alive
    across calls) unless the caller injects their own, which it then leaves open on ``close``.
    Every attempt takes a slot from one adaptive limit shared by all calls, threads and tasks on the
    client: 429 and 503 answers halve it, successes grow it back up to ``max_concurrency``.

    Before its first request to an endpoint, it reads the endpoint's state once (:meth:`prepare`,
    one ``GET /api/2.0/serving-endpoints/{name}`` per endpoint per backend) and acts on it
    (``_preflight``): the ceiling of ``max_concurrency="auto"``, the data-plane URL of a
    route-optimized endpoint, and whether its 503s are those of an endpoint that is starting.
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
        #: Invocations URLs given as such (text_url/image_url): a scoring server with no control plane,
        #: named by its URL in errors and logs; None for a workspace's serving endpoints.
        self._urls: dict[InputKind, str] | None = None
        if settings.text_url and settings.image_url:
            self._urls = {"text": settings.text_url.strip(), "image": settings.image_url.strip()}
        self._endpoints: dict[InputKind, str] = self._urls or {
            "text": settings.text_endpoint,
            "image": settings.image_endpoint,
        }
        #: Where each endpoint's requests go: the workspace URL until :meth:`prepare` learns otherwise.
        self._routes: dict[InputKind, Route] = {
            kind: Route(self.invocations_url(kind), workspace.auth) for kind in self._endpoints
        }
        self._retry = {
            kind: retry_arguments(
                max_retries=settings.max_retries,
                deadline=settings.retry_deadline,
                backoff=settings.retry_backoff,
                backoff_max=settings.retry_backoff_max,
                expected=partial(self._expected, kind),
            )
            for kind in self._endpoints
        }
        self._timeout = settings.timeout
        self._headers = {"Content-Type": "application/json", "User-Agent": user_agent()}
        self._client = http_client if isinstance(http_client, httpx.Client) else None
        self._aclient = http_client if isinstance(http_client, httpx.AsyncClient) else None
        self._owns_client = self._client is None
        self._owns_aclient = self._aclient is None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._auto = settings.max_concurrency == "auto"
        given = settings.max_concurrency
        # "auto" starts at the default and takes the endpoint's number on the first call to it.
        self.limit = AIMDLimit(given if isinstance(given, int) else C.DEFAULT_MAX_CONCURRENCY)
        self._thread_slots = ThreadLimiter(self.limit)
        self._task_slots = AsyncLimiter(self.limit)
        self._states: dict[InputKind, EndpointState] = {}
        # What prepare() learnt, and its progress: the kinds done, the ceilings "auto" resolved, the
        # endpoints whose 503s are expected until an answer succeeds, the start logged once each.
        self._prepared: set[InputKind] = set()
        self._preparing: dict[InputKind, Future[None]] = {}
        self._apreparing: dict[InputKind, asyncio.Task[None]] = {}
        self._ceilings: dict[InputKind, int] = {}
        self._starting: set[InputKind] = set()
        self._start_logged: set[InputKind] = set()
        if self._urls is not None:  # nothing to prepare: a scoring server by URL has no control plane
            self._prepared.update(self._urls)

    def __repr__(self) -> str:
        return (
            f"RemoteBackend(host={self.workspace.host!r}, text_endpoint={self._endpoints['text']!r}, "
            f"image_endpoint={self._endpoints['image']!r})"
        )

    def endpoint(self, kind: InputKind) -> str:
        return self._endpoints[kind]

    def concurrency_limit(self) -> int:
        return self.limit.current

    def concurrency_ceiling(self) -> int:
        """The ceiling of the adaptive limit: ``max_concurrency``, or what ``"auto"`` resolved to (the
        largest of the endpoints prepared so far; the default before the first)."""
        return self.limit.maximum

    # -- the endpoint's own account of itself ---------------------------------------------------------

    def endpoint_state(
        self, kind: InputKind, *, refresh: bool = False, timeout: float = STATE_TIMEOUT
    ) -> EndpointState:
        """``GET /api/2.0/serving-endpoints/{name}``, read once per client (``refresh`` reads it
        again). A refusal (403: the caller may hold CAN QUERY only), a failure to connect or a
        timeout of ``timeout`` seconds (default :data:`STATE_TIMEOUT`) gives a state marked unknown,
        not an error.

        Raises:
            AuthenticationError: 401, the credentials are wrong.
            EndpointNotFoundError: 404, no endpoint of that name.
        """
        if self._urls is not None:
            return self._no_control_plane(kind)
        if refresh or kind not in self._states:
            url = self._state_url(kind)
            response: httpx.Response | httpx.HTTPError
            try:
                response = self._sync_client().get(
                    url, auth=self.workspace.auth, headers=self._headers, timeout=timeout
                )
            except httpx.HTTPError as exc:
                response = exc
            self._states[kind] = self._state_of(kind, response)
        return self._states[kind]

    async def aendpoint_state(
        self, kind: InputKind, *, refresh: bool = False, timeout: float = STATE_TIMEOUT
    ) -> EndpointState:
        """:meth:`endpoint_state`, from an event loop."""
        if self._urls is not None:
            return self._no_control_plane(kind)
        if refresh or kind not in self._states:
            url = self._state_url(kind)
            response: httpx.Response | httpx.HTTPError
            try:
                response = await self._async_client().get(
                    url, auth=self.workspace.auth, headers=self._headers, timeout=timeout
                )
            except httpx.HTTPError as exc:
                response = exc
            self._states[kind] = self._state_of(kind, response)
        return self._states[kind]

    def cache_identity(self, kind: InputKind) -> str:
        """Who computes ``kind``'s rows, for the embedding cache: the endpoint's invocations URL at the
        workspace and, when its state has been read (no I/O here), the registered model versions its
        served entities serve; the URL alone when they are unknown."""
        url = self.invocations_url(kind)
        state = self._states.get(kind)
        versions = sorted(
            f"{entity.entity_name}@{entity.entity_version}"
            for entity in (state.served_entities if state is not None and state.known else ())
            if entity.entity_version is not None
        )
        return " ".join([url, *versions])

    def invocations_url(self, kind: InputKind) -> str:
        """Where ``kind``'s requests go unless a route-optimized endpoint's data plane says otherwise."""
        if self._urls is not None:
            return self._urls[kind]
        return f"{self.workspace.host}/serving-endpoints/{self._endpoints[kind]}/invocations"

    def _no_control_plane(self, kind: InputKind) -> EndpointState:
        return unknown_state(
            self._endpoints[kind],
            "a scoring server addressed by URL (text_url/image_url) has no control plane to ask",
        )

    def _state_url(self, kind: InputKind) -> str:
        return f"{self.workspace.host}/api/2.0/serving-endpoints/{self._endpoints[kind]}"

    def _state_of(self, kind: InputKind, answer: httpx.Response | httpx.HTTPError) -> EndpointState:
        name = self._endpoints[kind]
        if isinstance(answer, httpx.HTTPError):
            error = map_transport_error(
                answer,
                name,
                bound=f"the state read's own bound of {STATE_TIMEOUT:g}s",
                advice="the control plane did not answer in time; calls go on without its state",
            )
            return unknown_state(name, f"no answer from the control plane: {error.message}")
        if answer.status_code in (401, 404):
            raise error_from_response(answer, name)
        if answer.status_code >= 400:
            error = error_from_response(answer, name)
            why = (
                "reading the endpoint's configuration needs CAN VIEW (or more) on it; CAN QUERY "
                "alone does not allow it"
                if answer.status_code == 403
                else str(error)
            )
            return unknown_state(name, why)
        try:
            body = decode_json(answer.content)
            if not isinstance(body, dict):
                raise TypeError(f"a JSON {type(body).__name__}")
            return parse_endpoint_state(body, name)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return unknown_state(name, f"the endpoint's state did not parse ({type(exc).__name__}: {exc})")

    # -- before the first request to an endpoint: one decision, two shells -----------------------------

    def prepare(self, kind: InputKind, ctx: CallContext | None = None) -> None:
        """Read ``kind``'s endpoint state and act on it (:func:`~clip_client._remote.preflight.preflight`),
        once per backend: the first caller starts it, every caller (any thread) waits for it, and
        later calls return at once. Best-effort: a state that cannot be read changes nothing but an
        ``"auto"`` ceiling, which then stays at the default; nothing here raises.

        The read runs in a thread of its own, so a caller with a deadline waits no more than a
        quarter of its time left (:func:`_preparation_wait`), even when the GET is held where no
        time bound reaches (a DNS lookup, a credentials refresh); it then goes on with the defaults
        while the read finishes in the background, for the calls after it.
        """
        if kind in self._prepared:
            return
        with self._lock:
            future = self._preparing.get(kind)
            if future is None:
                future = self._preparing[kind] = Future()
                threading.Thread(
                    target=self._prepare_in_thread,
                    args=(kind, ctx, future),
                    name=f"clip-endpoint-state-{kind}",
                    daemon=True,
                ).start()
        with contextlib.suppress(FutureTimeout):  # waited its share: the call goes on with the defaults
            future.result(timeout=_preparation_wait(ctx))

    async def aprepare(self, kind: InputKind, ctx: CallContext | None = None) -> None:
        """:meth:`prepare`, from an event loop: the first task starts it, every task awaits the same
        preparation (no task blocks the loop), each no longer than its call's deadline."""
        if kind in self._prepared:
            return
        loop = asyncio.get_running_loop()
        task = self._apreparing.get(kind)
        if task is None or task.get_loop() is not loop or task.cancelled():  # none, or not of use
            task = self._apreparing[kind] = loop.create_task(self._aprepare_now(kind, ctx))
        with contextlib.suppress(asyncio.TimeoutError):  # waited its share, as above
            await asyncio.wait_for(asyncio.shield(task), _preparation_wait(ctx))

    def _prepare_in_thread(self, kind: InputKind, ctx: CallContext | None, done: Future[None]) -> None:
        try:
            try:
                state = self.endpoint_state(kind, timeout=state_timeout(ctx))
            except Exception as exc:  # the GET's failure never fails a call
                state = self._unreadable(kind, exc)
            plan = preflight(state, auto=self._auto)
            self._adopt(kind, plan, self._route(kind, plan), self._thread_slots.set_ceiling)
        except Exception:  # a bug here must not fail calls either: they go ahead with the defaults
            logger.exception("preparing endpoint %r failed; using the defaults", self._endpoints[kind])
        finally:
            self._prepared.add(kind)
            done.set_result(None)

    async def _aprepare_now(self, kind: InputKind, ctx: CallContext | None) -> None:
        """Not marked done if cancelled (its loop closing): the next call prepares afresh."""
        try:
            try:
                state = await self.aendpoint_state(kind, timeout=state_timeout(ctx))
            except Exception as exc:  # the GET's failure never fails a call
                state = self._unreadable(kind, exc)
            plan = preflight(state, auto=self._auto)
            route = await asyncio.to_thread(self._route, kind, plan)  # may refresh an OAuth token
            self._adopt(kind, plan, route, self._task_slots.set_ceiling)
        except Exception:  # a bug here must not fail calls either: they go ahead with the defaults
            logger.exception("preparing endpoint %r failed; using the defaults", self._endpoints[kind])
        self._prepared.add(kind)

    def _unreadable(self, kind: InputKind, exc: Exception) -> EndpointState:
        return unknown_state(self._endpoints[kind], f"{type(exc).__name__}: {exc}")

    def _route(self, kind: InputKind, plan: Preflight) -> Route:
        """Where ``kind``'s requests go: a route-optimized endpoint's data plane when the credentials
        can get its token, else the workspace URL, saying why. May block (an OAuth token check)."""
        workspace_route = self._routes[kind]
        if plan.data_plane_url is None:
            if plan.route_note is None:
                return workspace_route
            return replace(workspace_route, fallback=plan.route_note)
        try:
            url = data_plane_url(plan.data_plane_url)
            auth = self.workspace.data_plane_auth(url, plan.data_plane_authorization)
        except DataPlaneUnavailable as exc:
            return replace(workspace_route, fallback=str(exc))
        return Route(url, auth, data_plane=True)

    def _adopt(self, kind: InputKind, plan: Preflight, route: Route, set_ceiling: Any) -> None:
        """Act on ``plan``: the route, the expected 503s, the ceiling (through the limiter of the
        shell that prepared, which wakes its waiters), and one log line for each thing learnt."""
        name = self._endpoints[kind]
        with self._lock:
            self._routes[kind] = route
            if plan.starting:
                self._starting.add(kind)
            if plan.ceiling is not None:
                self._ceilings[kind] = plan.ceiling
            ceiling = max(self._ceilings.values(), default=None)
        if ceiling is not None:
            set_ceiling(ceiling)
        if plan.ceiling_note is not None:
            level = logging.DEBUG if plan.ceiling_known else logging.INFO
            logger.log(level, "endpoint %r: max_concurrency='auto': %s", name, plan.ceiling_note)
        if route.data_plane:
            logger.debug("endpoint %r is route-optimized: sending its requests to %s", name, route.url)
        elif route.fallback is not None:
            logger.warning(
                "endpoint %r is route-optimized, but %s: sending its requests to the workspace URL %s "
                "instead, which only endpoints created before 2025-09-22 answer (without route "
                "optimization's gains). Use OAuth credentials (a service principal's client id and "
                "secret, or `databricks auth login`) to query its data plane",
                name,
                route.fallback,
                route.url,
            )
        if plan.start_note is not None:
            self._waiting_for_start(kind, plan.start_note)

    def _waiting_for_start(self, kind: InputKind, why: str) -> None:
        """Say once per endpoint that the client waits for it to start, and for how long."""
        with self._lock:
            if kind in self._start_logged:
                return
            self._start_logged.add(kind)
        logger.info(
            "endpoint %r: %s; waiting for it to start, up to retry_deadline=%gs per batch (its 503 "
            "answers meanwhile are expected: they do not lower the concurrency limit nor use up "
            "max_retries)",
            self._endpoints[kind],
            why,
            self.settings.retry_deadline,
        )

    def _expected(self, kind: InputKind, exc: BaseException) -> bool:
        """Whether a failure was expected: a 503 while the endpoint may still be starting."""
        return isinstance(exc, APIStatusError) and exc.status_code == 503 and kind in self._starting

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
        endpoint = self._endpoints[kind]
        retrying = Retrying(**self._retry_arguments(kind, ctx, ctx.sleep if ctx else None))
        for attempt in retrying:
            with attempt:
                with self._thread_slots.slot(ctx, endpoint) as slot:
                    client = self._sync_client()
                    number = attempt.retry_state.attempt_number
                    request, clock, route = self._request(client, kind, body, ctx, number)
                    slot.expected_503 = kind in self._starting  # as it stands when this one is sent
                    try:
                        with clock.bounding_sockets():
                            response = client.send(request, auth=route.auth, stream=True)
                            clock.read_body(response)
                        failure = None
                    except httpx.HTTPError as exc:
                        failure = self._failure(exc, kind, len(body), clock, ctx)
                    if failure is not None:  # raised outside the handler: see _failure
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
        endpoint = self._endpoints[kind]
        client = self._async_client()
        retrying = AsyncRetrying(**self._retry_arguments(kind, ctx, ctx.asleep if ctx else None))
        async for attempt in retrying:
            with attempt:
                async with self._task_slots.slot(ctx, endpoint) as slot:
                    number = attempt.retry_state.attempt_number
                    request, clock, route = self._request(client, kind, body, ctx, number)
                    slot.expected_503 = kind in self._starting  # as it stands when this one is sent
                    try:
                        # A cancelled attempt closes its connection (httpcore shields that cleanup),
                        # so a half-read answer never goes back to the pool.
                        response = await asyncio.wait_for(client.send(request, auth=route.auth), clock.left())
                        failure = None
                    except asyncio.TimeoutError as exc:
                        timeout = httpx.TimeoutException("the attempt's time ran out", request=request)
                        timeout.__cause__ = exc
                        failure = self._failure(timeout, kind, len(body), clock, ctx)
                    except httpx.HTTPError as exc:
                        failure = self._failure(exc, kind, len(body), clock, ctx)
                    if failure is not None:  # raised outside the handler: see _failure
                        raise failure
                    self._grade(response, slot, ctx, kind)
                # The slot is free once the answer is in: the next request goes out while this
                # thread/task parses, so no endpoint slot idles on the client's JSON work.
                return self._handle(response, kind, len(payloads), len(body), route)
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

    def _retry_arguments(self, kind: InputKind, ctx: CallContext | None, sleep: Any) -> dict[str, Any]:
        if ctx is None:
            return self._retry[kind]
        return call_retry_arguments(self._retry[kind], ctx, self._endpoints[kind], sleep)

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

        A client the library created bounds the attempt as a whole by ``timeout`` (connect by
        ``min(10, timeout)``); an injected client keeps its own timeouts. Either way the call's
        deadline, when nearer, shortens both."""
        endpoint = self._endpoints[kind]
        left = None
        if ctx is not None:
            ctx.check(endpoint)
            left = ctx.remaining()
            ctx.attempted(number)
        if self._owns_client if isinstance(client, httpx.Client) else self._owns_aclient:
            clock = AttemptClock.start(self._timeout, left, f"timeout={self._timeout:g}s")
            seconds = max(clock.left() or 0.0, _MIN_TIMEOUT)
            timeout = httpx.Timeout(seconds, connect=min(C.DEFAULT_CONNECT_TIMEOUT, seconds))
        else:
            clock = AttemptClock.start(None, left, "the http_client's timeouts")
            bound = clock.left()
            timeout = _shortened(client.timeout, None if bound is None else max(bound, _MIN_TIMEOUT))
        route = self._routes[kind]
        request = client.build_request(
            "POST", route.url, content=body, headers=self._headers, timeout=timeout
        )
        return request, clock, route

    def _failure(
        self,
        exc: httpx.HTTPError,
        kind: InputKind,
        nbytes: int,
        clock: AttemptClock,
        ctx: CallContext | None,
    ) -> APIError:
        """The typed error for a failed attempt, chained to ``exc`` unless ``exc`` shows a
        credential (a protocol error quoting a header the server echoed). A timeout that fired
        because the call's deadline came first gives the deadline's error instead ("raise timeout="
        would be the wrong advice), chained to the call's last failure before it.

        The caller raises it outside its ``except`` block, so that the httpx exception is not
        attached as the implicit ``__context__`` either."""
        endpoint = self._endpoints[kind]
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
        if status == 503 and (slot.expected_503 or kind in self._starting):
            # A 503 to a request sent while the endpoint was starting is a start-up answer, even
            # when it arrives after a later request already succeeded.
            self._waiting_for_start(kind, "it may have scaled to zero, and answered 503")
        elif status in (429, 503):
            slot.overloaded = True
            if ctx is not None:
                ctx.overloaded()
        else:
            slot.succeeded = status < 400
            if slot.succeeded:
                self._starting.discard(kind)  # started: from now on a 503 is overload again

    def _handle(
        self, response: httpx.Response, kind: InputKind, rows: int, nbytes: int, route: Route
    ) -> EmbeddingArray:
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


def _preparation_wait(ctx: CallContext | None) -> float | None:
    """How long a call waits for its endpoint's state before it goes on without it: the state read's
    own bound (:data:`STATE_TIMEOUT`) at most, and with a deadline no more than a quarter of the time
    left, so a slow control plane never costs a call its deadline. The read goes on in the
    background; the calls after it use what it learns."""
    left = None if ctx is None else ctx.remaining()
    if left is None:
        return None
    return max(0.0, min(STATE_TIMEOUT, left * _STATE_SHARE_OF_DEADLINE))


def state_timeout(ctx: CallContext | None) -> float:
    """The state GET's time bound: :data:`STATE_TIMEOUT`, or the call's time left when less."""
    left = None if ctx is None else ctx.remaining()
    return STATE_TIMEOUT if left is None else max(_MIN_TIMEOUT, min(STATE_TIMEOUT, left))


def _shortened(timeout: httpx.Timeout, seconds: float | None) -> httpx.Timeout:
    """An injected client's own timeouts, each cut to ``seconds`` when that is shorter."""
    if seconds is None:
        return timeout

    def cut(value: float | None) -> float:
        return seconds if value is None else min(value, seconds)

    return httpx.Timeout(
        connect=cut(timeout.connect), read=cut(timeout.read), write=cut(timeout.write), pool=cut(timeout.pool)
    )
