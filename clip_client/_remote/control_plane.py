"""The control plane of a workspace's two serving endpoints: what the workspace says about each
endpoint (`GET /api/2.0/serving-endpoints/{name}`), and what the client does about it before its
first request to it (`preflight`): the ceiling of `max_concurrency="auto"`, the data-plane URL
of a route-optimized endpoint, and whether its 503s are those of an endpoint that is starting.

The data plane (`RemoteBackend`: payloads, requests, retries,
the adaptive limit) holds one and asks it where each request goes (`RemoteControlPlane.route`)
and whether a 503 is expected (`RemoteControlPlane.starting`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace

import httpx

from .. import _constants as C
from .._core.concurrency import CallContext
from .._core.wire import decode_json
from ..types import InputKind, Settings
from .endpoint_state import EndpointState, parse_endpoint_state, unknown_state
from .preflight import Preflight, preflight
from .status import error_from_response, map_transport_error
from .workspace import DataPlaneUnavailable, Workspace, data_plane_url

__all__ = ["STATE_TIMEOUT", "RemoteControlPlane", "Route", "state_timeout"]

logger = logging.getLogger(C.LOGGER_NAME)

STATE_TIMEOUT = 10.0
"""Seconds the state GET may take as a whole: it is best-effort, and the answer comes from the
control plane, not the model.
"""
_STATE_SHARE_OF_DEADLINE = 0.25
"""The share of a call's time left that it may spend waiting for its endpoint's state."""
MIN_TIMEOUT = 0.001
"""The shortest timeout handed to httpx: a socket timeout of 0 would mean "non-blocking", not "now"."""


@dataclass(frozen=True)
class Route:
    """Where one endpoint's requests go and how they authenticate: the workspace's invocations URL
    with the workspace's credentials, or a route-optimized endpoint's data plane with a data-plane
    token. Everything else about a request (retries, the adaptive limit, time bounds, error mapping)
    is the same on either."""

    url: str
    auth: httpx.Auth
    data_plane: bool = False
    fallback: str | None = None
    """Why a route-optimized endpoint is queried at the workspace URL nevertheless; None otherwise."""


class RemoteControlPlane:
    """One workspace's two endpoints as the workspace describes them, and what preparing them learnt.

    Reads each endpoint's state once (`prepare`, one GET per endpoint) and acts on it. The
    GETs go through the data plane's own connection pools (`sync_client`/`async_client`), and a
    resolved `"auto"` ceiling goes to the data plane's limiter of the shell that prepared
    (`set_ceiling` for threads, `aset_ceiling` for tasks), which wakes its waiters.
    """

    def __init__(
        self,
        workspace: Workspace,
        settings: Settings,
        *,
        headers: Mapping[str, str],
        sync_client: Callable[[], httpx.Client],
        async_client: Callable[[], httpx.AsyncClient],
        set_ceiling: Callable[[int], None],
        aset_ceiling: Callable[[int], None],
    ) -> None:
        self.workspace = workspace
        self.settings = settings
        self._urls: dict[InputKind, str] | None = None
        """Invocations URLs given as such (text_url/image_url): a scoring server with no control plane,
        named by its URL in errors and logs; None for a workspace's serving endpoints.
        """
        if settings.text_url and settings.image_url:
            self._urls = {"text": settings.text_url.strip(), "image": settings.image_url.strip()}
        self._endpoints: dict[InputKind, str] = self._urls or {
            "text": settings.text_endpoint,
            "image": settings.image_endpoint,
        }
        self._headers = headers
        self._sync_client = sync_client
        self._async_client = async_client
        self._set_ceiling = set_ceiling
        self._aset_ceiling = aset_ceiling
        self._auto = settings.max_concurrency == "auto"
        self._lock = threading.Lock()
        # Where each endpoint's requests go: the workspace URL until `prepare` learns otherwise.
        self._routes: dict[InputKind, Route] = {
            kind: Route(self.invocations_url(kind), workspace.auth) for kind in self._endpoints
        }
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

    # -- what the data plane asks ---------------------------------------------------------------------

    def endpoint(self, kind: InputKind) -> str:
        """`kind`'s endpoint name (its URL for a scoring server addressed by URL)."""
        return self._endpoints[kind]

    def route(self, kind: InputKind) -> Route:
        """Where `kind`'s next request goes, and with which auth."""
        return self._routes[kind]

    def starting(self, kind: InputKind) -> bool:
        """Whether `kind`'s endpoint may still be starting: its 503s are expected, not overload."""
        return kind in self._starting

    def started(self, kind: InputKind) -> None:
        """`kind`'s endpoint answered a request successfully: from now on a 503 is overload again."""
        self._starting.discard(kind)

    def waiting_for_start(self, kind: InputKind, why: str) -> None:
        """Say once per endpoint that the client waits for it to start, and for how long."""
        with self._lock:
            if kind in self._start_logged:
                return
            self._start_logged.add(kind)
        logger.info(
            "endpoint %r: %s; waiting for it to start, up to retry_deadline=%gs per batch (its 503 "
            "and 555 answers meanwhile are expected: they do not lower the concurrency limit nor use up "
            "max_retries)",
            self._endpoints[kind],
            why,
            self.settings.retry_deadline,
        )

    def invocations_url(self, kind: InputKind) -> str:
        """Where `kind`'s requests go unless a route-optimized endpoint's data plane says otherwise."""
        if self._urls is not None:
            return self._urls[kind]
        return f"{self.workspace.host}/serving-endpoints/{self._endpoints[kind]}/invocations"

    # -- the endpoint's own account of itself ---------------------------------------------------------

    def endpoint_state(
        self, kind: InputKind, *, refresh: bool = False, timeout: float = STATE_TIMEOUT
    ) -> EndpointState:
        """`GET /api/2.0/serving-endpoints/{name}`, read once per client (`refresh` reads it
        again). A refusal (403: the caller may hold CAN QUERY only), a failure to connect or a
        timeout of `timeout` seconds (default `STATE_TIMEOUT`) gives a state marked unknown,
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
        """`endpoint_state`, from an event loop."""
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
        """Who computes `kind`'s rows, for the embedding cache: the endpoint's invocations URL at the
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

    def cache_identity_confirmed(self, kind: InputKind) -> bool:
        """Whether the state was read and names the model versions the endpoint serves: not with a
        token that has `CAN QUERY` only, whose state GET is refused (403)."""
        state = self._states.get(kind)
        return (
            state is not None
            and state.known
            and any(entity.entity_version is not None for entity in state.served_entities)
        )

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
        """Read `kind`'s endpoint state and act on it (`preflight`),
        once per backend: the first caller starts it, every caller (any thread) waits for it, and
        later calls return at once. Best-effort: a state that cannot be read changes nothing but an
        `"auto"` ceiling, which then stays at the default; nothing here raises.

        The read runs in a thread of its own, so a caller with a deadline waits no more than a
        quarter of its time left (`_preparation_wait`), even when the GET is held where no
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
        """`prepare`, from an event loop: the first task starts it, every task awaits the same
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
            self._adopt(kind, plan, self._route_for(kind, plan), self._set_ceiling)
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
            route = await asyncio.to_thread(self._route_for, kind, plan)  # may refresh an OAuth token
            self._adopt(kind, plan, route, self._aset_ceiling)
        except Exception:  # a bug here must not fail calls either: they go ahead with the defaults
            logger.exception("preparing endpoint %r failed; using the defaults", self._endpoints[kind])
        self._prepared.add(kind)

    def _unreadable(self, kind: InputKind, exc: Exception) -> EndpointState:
        return unknown_state(self._endpoints[kind], f"{type(exc).__name__}: {exc}")

    def _route_for(self, kind: InputKind, plan: Preflight) -> Route:
        """Where `kind`'s requests go: a route-optimized endpoint's data plane when the credentials
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

    def _adopt(
        self, kind: InputKind, plan: Preflight, route: Route, set_ceiling: Callable[[int], None]
    ) -> None:
        """Act on `plan`: the route, the expected 503s, the ceiling (through the limiter of the
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
            self.waiting_for_start(kind, plan.start_note)


def _preparation_wait(ctx: CallContext | None) -> float | None:
    """How long a call waits for its endpoint's state before it goes on without it: the state read's
    own bound (`STATE_TIMEOUT`) at most, and with a deadline no more than a quarter of the time
    left, so a slow control plane never costs a call its deadline. The read goes on in the
    background; the calls after it use what it learns."""
    left = None if ctx is None else ctx.remaining()
    if left is None:
        return None
    return max(0.0, min(STATE_TIMEOUT, left * _STATE_SHARE_OF_DEADLINE))


def state_timeout(ctx: CallContext | None) -> float:
    """The state GET's time bound: `STATE_TIMEOUT`, or the call's time left when less."""
    left = None if ctx is None else ctx.remaining()
    return STATE_TIMEOUT if left is None else max(MIN_TIMEOUT, min(STATE_TIMEOUT, left))
