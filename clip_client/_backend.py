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
from tenacity import AsyncRetrying, Retrying

from . import _constants as C
from ._concurrency import AIMDLimit, AsyncLimiter, CallContext, Slot, ThreadLimiter
from ._core import FloatArray, decode_json, encode_body, encode_record, parse_predictions, record_size
from ._endpoint import EndpointState, parse_endpoint_state, unknown_state
from ._http import (
    AttemptClock,
    Workspace,
    call_retry_arguments,
    error_from_response,
    map_transport_error,
    request_id_of,
    retry_arguments,
    sync_client,
)
from ._images import PreparedImage
from ._secrets import safe_cause
from ._version import __version__
from .errors import APIError
from .types import InputKind, Settings

logger = logging.getLogger(C.LOGGER_NAME)

__all__ = ["Backend", "RemoteBackend"]

#: A socket timeout can fire a hair before the time it was set for: within this many seconds of the
#: call's deadline, a timeout of an attempt the deadline bounded is the deadline's.
_CLOCK_SLACK = 0.05
#: Seconds the state GET may take as a whole: it is best-effort, and the answer comes from the
#: control plane, not the model.
STATE_TIMEOUT = 10.0
#: The shortest timeout handed to httpx: a socket timeout of 0 would mean "non-blocking", not "now".
_MIN_TIMEOUT = 0.001


@runtime_checkable
class Backend(Protocol):
    """What a client needs from the thing that computes embeddings: the serving endpoints
    (``RemoteBackend``), the model in-process (:class:`~clip_client.LocalBackend`), or your own.

    A client does everything above the backend, once for every backend: input checks, image
    preparation (decode, CLIP-exact resize and crop), batching by count and bytes, splitting refused
    batches, ordering, normalisation, progress and ``client.stats``. A backend only turns one batch
    into rows. Pass one with ``ClipClient(backend=...)``. Everything a backend needs is public:
    :class:`~clip_client.CallContext`, :class:`~clip_client.PreparedImage` and
    :data:`~clip_client.InputKind`. ``tests/test_backend_protocol.py`` runs a backend written against
    these names alone, end to end.

    Attributes:
        image_input: ``"encoded"`` to receive images as encoded files (PNG by default,
            ``PreparedImage.encoded``), ``"pixels"`` for ``(image_size, image_size, 3)`` uint8 arrays
            (``PreparedImage.pixels``).
        max_request_bytes: the most bytes the payloads of one batch may add up to (the client packs
            batches under it and splits any the backend refuses with ``PayloadTooLargeError``), or
            None when batches have no size limit.
        batch_size: the records per batch this backend prefers, used when the client is not given
            ``batch_size=``; None for the client's default (32).
        image_size: the side, in pixels, of the square images the model takes, used when the client
            is not given ``image_size=``; None for the client's default (224).
        dim: the embedding width when known before the first answer (the shape of an empty result,
            and of NaN rows in ``on_error="mark"`` results); None when only answers tell (768 until
            then).
    """

    # Read-only properties, so that a plain attribute of a narrower type (``dim: int``) satisfies them.
    @property
    def image_input(self) -> Literal["encoded", "pixels"]: ...
    @property
    def max_request_bytes(self) -> int | None: ...
    @property
    def batch_size(self) -> int | None: ...
    @property
    def image_size(self) -> int | None: ...
    @property
    def dim(self) -> int | None: ...

    def endpoint(self, kind: InputKind) -> str | None:
        """The name errors and logs give for where ``kind`` inputs go (a serving endpoint's name), or
        None when there is none to name."""
        ...

    def payload(self, kind: InputKind, item: str | PreparedImage) -> tuple[Any, int]:
        """One input as a batch carries it, and the bytes it adds to the batch (0 when batches have
        no size limit). ``item`` is the text, or the image prepared as :attr:`image_input` asks.
        Raises ``InvalidInputError`` for an input the backend cannot take."""
        ...

    def embed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> FloatArray:
        """One batch, blocking: float32 ``(len(payloads), dim)``, rows in payload order. Called from
        several threads at once. ``ctx`` carries the call's deadline and cancellation (call
        ``ctx.check()`` before each request) and counts requests (``ctx.attempted(n)``). Raises
        ``ClipClientError`` subclasses: ``PayloadTooLargeError`` makes the client split the batch,
        ``BadRequestError`` (with ``on_error="mark"``) isolate the input it was about."""
        ...

    async def aembed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> FloatArray:
        """One batch, from an event loop; as :meth:`embed`. Called from several tasks at once."""
        ...

    def concurrency_limit(self) -> int | None:
        """Requests the backend admits at once right now, when it adapts that number itself (the
        remote backend halves it on 429/503); None when it does not."""
        ...

    def close(self) -> None:
        """Release what the backend holds (connections, threads). Idempotent."""
        ...

    async def aclose(self) -> None:
        """:meth:`close`, from an event loop."""
        ...


def user_agent() -> str:
    return f"clip-serving-client/{__version__} python/{platform.python_version()} httpx/{httpx.__version__}"


class RemoteBackend:
    """Databricks Model Serving: one POST per batch, with retries, to the text or image endpoint.

    Owns a pooled ``httpx.Client`` and/or ``httpx.AsyncClient`` (created on first use, kept alive
    across calls) unless the caller injects their own, which it then leaves open on ``close``.
    Every attempt takes a slot from one adaptive limit shared by all calls, threads and tasks on the
    client: 429 and 503 answers halve it, successes grow it back up to ``max_concurrency``.
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
        self._endpoints: dict[InputKind, str] = {
            "text": settings.text_endpoint,
            "image": settings.image_endpoint,
        }
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
        self._client = http_client if isinstance(http_client, httpx.Client) else None
        self._aclient = http_client if isinstance(http_client, httpx.AsyncClient) else None
        self._owns_client = self._client is None
        self._owns_aclient = self._aclient is None
        self._aclient_loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.limit = AIMDLimit(settings.max_concurrency)
        self._thread_slots = ThreadLimiter(self.limit)
        self._task_slots = AsyncLimiter(self.limit)
        self._states: dict[InputKind, EndpointState] = {}

    def __repr__(self) -> str:
        return (
            f"RemoteBackend(host={self.workspace.host!r}, text_endpoint={self._endpoints['text']!r}, "
            f"image_endpoint={self._endpoints['image']!r})"
        )

    def endpoint(self, kind: InputKind) -> str:
        return self._endpoints[kind]

    def concurrency_limit(self) -> int:
        return self.limit.current

    # -- the endpoint's own account of itself ---------------------------------------------------------

    def endpoint_state(self, kind: InputKind, *, refresh: bool = False) -> EndpointState:
        """``GET /api/2.0/serving-endpoints/{name}``, read once per client (``refresh`` reads it
        again). A refusal (403: the caller may hold CAN QUERY only), a failure to connect or a
        timeout of :data:`STATE_TIMEOUT` seconds gives a state marked unknown, not an error.

        Raises:
            AuthenticationError: 401, the credentials are wrong.
            EndpointNotFoundError: 404, no endpoint of that name.
        """
        if refresh or kind not in self._states:
            url = self._state_url(kind)
            response: httpx.Response | httpx.HTTPError
            try:
                response = self._sync_client().get(
                    url, auth=self.workspace.auth, headers=self._headers, timeout=STATE_TIMEOUT
                )
            except httpx.HTTPError as exc:
                response = exc
            self._states[kind] = self._state_of(kind, response)
        return self._states[kind]

    async def aendpoint_state(self, kind: InputKind, *, refresh: bool = False) -> EndpointState:
        """:meth:`endpoint_state`, from an event loop."""
        if refresh or kind not in self._states:
            url = self._state_url(kind)
            response: httpx.Response | httpx.HTTPError
            try:
                response = await self._async_client().get(
                    url, auth=self.workspace.auth, headers=self._headers, timeout=STATE_TIMEOUT
                )
            except httpx.HTTPError as exc:
                response = exc
            self._states[kind] = self._state_of(kind, response)
        return self._states[kind]

    def _state_url(self, kind: InputKind) -> str:
        return f"{self.workspace.host}/api/2.0/serving-endpoints/{self._endpoints[kind]}"

    def _state_of(self, kind: InputKind, answer: httpx.Response | httpx.HTTPError) -> EndpointState:
        name = self._endpoints[kind]
        if isinstance(answer, httpx.HTTPError):
            error = map_transport_error(answer, name)
            return unknown_state(name, f"the endpoint's state could not be read: {error}")
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

    # -- payloads ------------------------------------------------------------------------------------

    def payload(self, kind: InputKind, item: str | PreparedImage) -> tuple[bytes, int]:
        value = encode_record(item if isinstance(item, str) else item.b64())
        return value, record_size(value)

    # -- sync ----------------------------------------------------------------------------------------

    def embed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext | None = None) -> FloatArray:
        body = encode_body(payloads)
        endpoint = self._endpoints[kind]
        retrying = Retrying(**self._retry_arguments(endpoint, ctx, ctx.sleep if ctx else None))
        for attempt in retrying:
            with attempt:
                with self._thread_slots.slot(ctx, endpoint) as slot:
                    client = self._sync_client()
                    number = attempt.retry_state.attempt_number
                    request, clock = self._request(client, kind, body, ctx, number)
                    try:
                        with clock.bounding_sockets():
                            response = client.send(request, auth=self.workspace.auth, stream=True)
                            clock.read_body(response)
                        failure = None
                    except httpx.HTTPError as exc:
                        failure = self._failure(exc, kind, len(body), clock, ctx)
                    if failure is not None:  # raised outside the handler: see _failure
                        raise failure
                    self._grade(response, slot, ctx)
                # The slot is free once the answer is in: the next request goes out while this
                # thread/task parses, so no endpoint slot idles on the client's JSON work.
                return self._handle(response, kind, len(payloads), len(body))
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
    ) -> FloatArray:
        body = encode_body(payloads)
        endpoint = self._endpoints[kind]
        client = self._async_client()
        retrying = AsyncRetrying(**self._retry_arguments(endpoint, ctx, ctx.asleep if ctx else None))
        async for attempt in retrying:
            with attempt:
                async with self._task_slots.slot(ctx, endpoint) as slot:
                    number = attempt.retry_state.attempt_number
                    request, clock = self._request(client, kind, body, ctx, number)
                    try:
                        # A cancelled attempt closes its connection (httpcore shields that cleanup),
                        # so a half-read answer never goes back to the pool.
                        response = await asyncio.wait_for(
                            client.send(request, auth=self.workspace.auth), clock.left()
                        )
                        failure = None
                    except asyncio.TimeoutError as exc:
                        timeout = httpx.TimeoutException("the attempt's time ran out", request=request)
                        timeout.__cause__ = exc
                        failure = self._failure(timeout, kind, len(body), clock, ctx)
                    except httpx.HTTPError as exc:
                        failure = self._failure(exc, kind, len(body), clock, ctx)
                    if failure is not None:  # raised outside the handler: see _failure
                        raise failure
                    self._grade(response, slot, ctx)
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

    def _retry_arguments(self, endpoint: str, ctx: CallContext | None, sleep: Any) -> dict[str, Any]:
        if ctx is None:
            return self._retry
        return call_retry_arguments(self._retry, ctx, endpoint, sleep)

    def _request(
        self,
        client: httpx.Client | httpx.AsyncClient,
        kind: InputKind,
        body: bytes,
        ctx: CallContext | None,
        number: int,
    ) -> tuple[httpx.Request, AttemptClock]:
        """One attempt's POST and its time bound, made once a slot is ours: the call may have been
        cancelled, or its deadline come nearer, while the attempt waited for one.

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
        request = client.build_request(
            "POST", self._urls[kind], content=body, headers=self._headers, timeout=timeout
        )
        return request, clock

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
        n = self.settings.max_concurrency
        return httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n, keepalive_expiry=60)

    def _grade(self, response: httpx.Response, slot: Slot, ctx: CallContext | None) -> None:
        """What the adaptive limit learns from an answer: 429/503 mean overload."""
        if response.status_code in (429, 503):
            slot.overloaded = True
            if ctx is not None:
                ctx.overloaded()
        else:
            slot.succeeded = response.status_code < 400

    def _handle(self, response: httpx.Response, kind: InputKind, rows: int, nbytes: int) -> FloatArray:
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
    """An injected client's own timeouts, each cut to ``seconds`` when that is shorter."""
    if seconds is None:
        return timeout

    def cut(value: float | None) -> float:
        return seconds if value is None else min(value, seconds)

    return httpx.Timeout(
        connect=cut(timeout.connect), read=cut(timeout.read), write=cut(timeout.write), pool=cut(timeout.pool)
    )
