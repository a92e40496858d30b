"""A real HTTP server on 127.0.0.1 that speaks Databricks Model Serving's invocation protocol.

Used by the end-to-end tests (and the benchmarks): it checks each request's shape with the same
pydantic models the client documents, records what it received, and answers with deterministic
embeddings derived from each input, so a test can check every returned row. Behaviour per request
can be scripted (errors, delays) through ``ServingServer.script``, and faults can be injected at
random, reproducibly, through ``ServingServer.faults`` (a :class:`Faults`): the 429 storms, 503s,
504s, dropped connections, slow replies, malformed 200s and body-size limits of a real endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qsl

import numpy as np
from pydantic import BaseModel, ConfigDict

DIM = 768
#: The token test clients send (``ServingServer.client_kwargs``); tests check it never leaks.
TOKEN = "dapi-e2e-secret-0123456789abcdef"


class InvocationRecord(BaseModel):
    """One row of ``dataframe_records``: a text, or the base64 of an encoded image."""

    model_config = ConfigDict(extra="forbid")

    input: str


class InvocationRequest(BaseModel):
    """The body POSTed to ``/serving-endpoints/{name}/invocations``, as the server accepts it: exactly
    ``dataframe_records`` of ``{"input": ...}`` (the client's hand-written encoder must match it)."""

    model_config = ConfigDict(extra="forbid")

    dataframe_records: list[InvocationRecord]


def dumps(value: Any) -> bytes:
    """JSON for an answer: orjson when installed (many times faster on 768-float rows, so the server
    is not what a benchmark measures), else the standard library. Both write floats round-trip exact."""
    try:
        import orjson
    except ImportError:
        return json.dumps(value).encode()
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


def expected_vector(kind: str, value: str | bytes, dim: int = DIM) -> np.ndarray:
    """The embedding the server answers for one input: a pure function of the input's bytes."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    seed = int.from_bytes(hashlib.sha256(kind.encode() + b"\0" + data).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def image_pixels(b64: str) -> np.ndarray:
    """What the served model would decode from an image record: RGB uint8 pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
        return np.asarray(img.convert("RGB"))


@dataclass
class Received:
    endpoint: str
    inputs: list[str]
    headers: dict[str, str]
    nbytes: int
    started: float
    finished: float = 0.0


@dataclass
class Reply:
    """A scripted answer: status, body (bytes or JSON-able, or a function of the request's headers
    that returns one: a server that echoes what it was sent) and headers; or drop the connection.

    ``delay`` waits that many seconds before answering. ``trickle`` sends the whole answer, status
    line and headers included, one byte every ``trickle`` seconds: a server, proxy or dying link that
    keeps every read busy without ever finishing in time (with ``trickle_body``, the status line and
    headers go at once and only the body trickles). ``answer=True`` sends the correct answer for the
    request's inputs (status 200; ``body`` is ignored), as the other fields say. ``raw`` (bytes, or
    a function of the request's headers returning them) is written to the socket as the whole
    answer, status line and headers included, and the connection closed: malformed HTTP.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    trickle: float = 0.0
    trickle_body: bool = False
    answer: bool = False
    raw: Any = None


#: The kinds of fault :class:`Faults` injects, by the name ``ServingServer.injected`` counts them under.
FAULT_KINDS = (
    "rate_limit",  # 429 REQUEST_LIMIT_EXCEEDED with ``Retry-After: <retry_after>``
    "rate_limit_bare",  # 429 REQUEST_LIMIT_EXCEEDED without Retry-After
    "unavailable",  # 503 TEMPORARILY_UNAVAILABLE (scale from zero)
    "server_error",  # 500 INTERNAL_ERROR
    "gateway_timeout",  # 504, plain-text body "upstream request timeout"
    "drop",  # the body is read, then the connection is closed without an answer
    "slow",  # a correct answer after ``slow_delay`` s, which a client with a shorter timeout abandoned
    "short",  # 200 with one row too few
    "html",  # 200 with an HTML "502 Bad Gateway" page
)
#: Kinds that happen outside the random draw, also counted in ``ServingServer.injected``.
#: "body_limit": Content-Length over ``Faults.body_limit``; "status": ``Faults.status_for_all``.

_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "REQUEST_ENTITY_TOO_LARGE",
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
}

HTML_BAD_GATEWAY = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n"
    b"<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


@dataclass
class Faults:
    """What goes wrong, and how often, on a :class:`ServingServer` (``ServingServer(faults=...)`` or
    ``server.faults = ...``).

    Each field named in :data:`FAULT_KINDS` is the probability that one POST gets that fault. The
    kinds exclude one another (one uniform draw per POST picks at most one), so each probability is
    exactly what it says whatever the others are, and their sum is the share of POSTs that fail.
    Draws come from ``random.Random(seed)`` under a lock: the same seed gives the same sequence of
    faults (the requests they land on depend on arrival order, which concurrency can shuffle).

    Outside the draw: a request whose ``Content-Length`` exceeds ``body_limit`` has its connection
    dropped before the body is read and without an answer, as a proxy does (or, with
    ``body_limit_status=413``, gets a clean 413 once the body is read); ``status_for_all`` answers
    every POST with that status and a JSON error body (401/403/404 tests).

    ``malformed_once`` (the default of :meth:`spread`) makes the malformed 200s ("short", "html")
    glitches of the moment, as a gateway's are: a request body that got one is answered normally
    when it comes again (the draw for it counts as no fault). The client retries a malformed 200 only
    once per batch, since a model that answers the wrong shape answers it every time; without this,
    a random mix would sometimes hit one batch twice and fail it, as it should.
    """

    rate_limit: float = 0.0
    rate_limit_bare: float = 0.0
    unavailable: float = 0.0
    server_error: float = 0.0
    gateway_timeout: float = 0.0
    drop: float = 0.0
    slow: float = 0.0
    short: float = 0.0
    html: float = 0.0
    retry_after: str = "0"
    slow_delay: float = 1.0
    body_limit: int | None = None
    body_limit_status: int | None = None
    status_for_all: int | None = None
    seed: int = 0
    malformed_once: bool = False
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _lock: threading.Lock = field(init=False, repr=False, compare=False)
    _malformed: set[str] = field(init=False, repr=False, compare=False, default_factory=set)

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            if not 0.0 <= getattr(self, kind) <= 1.0:
                raise ValueError(f"Faults.{kind} is a probability, got {getattr(self, kind)!r}")
        if self.total > 1.0 + 1e-9:
            raise ValueError(f"the fault probabilities add up to {self.total:.3f}, more than 1")
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()

    @classmethod
    def spread(cls, total: float, **options: Any) -> Faults:
        """``total`` spread evenly over every kind in :data:`FAULT_KINDS`, malformed 200s once per
        request body; ``options`` set the other fields (or override one kind's probability)."""
        share = {kind: total / len(FAULT_KINDS) for kind in FAULT_KINDS}
        return cls(**{**share, "malformed_once": True, **options})

    @property
    def total(self) -> float:
        """The share of POSTs that get a fault from the draw."""
        return float(sum(getattr(self, kind) for kind in FAULT_KINDS))

    def draw(self, body: bytes = b"") -> str | None:
        """The fault for the next POST (of ``body``), or None for a normal answer. Thread-safe."""
        with self._lock:
            u = self._rng.random()
            edge = 0.0
            for kind in FAULT_KINDS:
                edge += getattr(self, kind)
                if u < edge:
                    break
            else:
                return None
            if self.malformed_once and kind in ("short", "html"):
                key = hashlib.sha256(body).hexdigest()
                if key in self._malformed:
                    return None
                self._malformed.add(key)
            return kind

    def settings(self) -> dict[str, Any]:
        """The configuration, for printing."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def answer_rows(
    model: Callable[[str, list[str]], list[list[float]]] | None, dim: int, kind: str, inputs: list[str]
) -> list[list[float]]:
    """The rows a server with ``model`` (None: :func:`expected_vector` rows of width ``dim``) answers."""
    if model is not None:
        return model(kind, inputs)
    if kind == "text":
        return [expected_vector("text", x, dim).tolist() for x in inputs]
    return [expected_vector("image", base64.b64decode(x), dim).tolist() for x in inputs]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (a timed-out reply, a dropped connection) is business as usual."""
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


def endpoint_state(
    name: str,
    *,
    ready: bool = True,
    config_update: str = "NOT_UPDATING",
    workload_size: str | None = "Small",
    workload_type: str = "CPU",
    scale_to_zero: bool = False,
    max_concurrency: int | None = None,
    entities: int = 1,
    route_optimized: bool | None = None,
    data_plane_url: str | None = None,
    deployment_message: str | None = None,
) -> dict[str, Any]:
    """The JSON of ``GET /api/2.0/serving-endpoints/{name}`` for an endpoint in the given state, in
    the shape Databricks answers (databricks-sdk's ``ServingEndpointDetailed``)."""
    served = [
        {
            "name": f"{name}-{i + 1}",
            "entity_name": f"main.default.{name.replace('-', '_')}",
            "entity_version": str(i + 1),
            "workload_type": workload_type,
            "scale_to_zero_enabled": scale_to_zero,
            **({"workload_size": workload_size} if workload_size else {}),
            **({"max_provisioned_concurrency": max_concurrency} if max_concurrency is not None else {}),
            "state": {
                "deployment": "DEPLOYMENT_READY" if ready else "DEPLOYMENT_CREATING",
                "deployment_state_message": deployment_message or ("" if ready else "Starting"),
            },
        }
        for i in range(entities)
    ]
    body: dict[str, Any] = {
        "name": name,
        "state": {"ready": "READY" if ready else "NOT_READY", "config_update": config_update},
        "config": {"served_entities": served},
    }
    if route_optimized is not None:
        body["route_optimized"] = route_optimized
    if data_plane_url is not None:
        body["data_plane_info"] = {
            "query_info": {
                "endpoint_url": data_plane_url,
                "authorization_details": '[{"type":"workspace_permission"}]',
            }
        }
    return body


class ServingServer:
    """``with ServingServer() as server: ClipClient(host=server.url, token="t")``.

    It also answers the control plane's ``GET /api/2.0/serving-endpoints/{name}`` for its two
    endpoints: a ready, Small, CPU endpoint unless ``states[name]`` says otherwise (a JSON body from
    :func:`endpoint_state`, or a :class:`Reply` such as a 403).

    ``received`` holds only the requests answered with a real, correct 200 (scripted replies and
    injected faults are not in it); ``requests`` holds every request; ``injected`` counts the faults
    injected, by kind (:data:`FAULT_KINDS`, plus "body_limit" and "status").

    Each test gets a server of its own (the ``server`` fixture), so no test can see another's
    requests: no two servers of one process ever listen on the same port (:meth:`_listen`), and a
    request that a finished test's client still sends reaches that test's server, which nobody reads
    any more. :meth:`reset` puts back everything a test can change, for a test that starts over.
    """

    def __init__(
        self,
        *,
        dim: int = DIM,
        text_endpoint: str = "clip-text-embedding",
        image_endpoint: str = "clip-image-embedding",
        model: Callable[[str, list[str]], list[list[float]]] | None = None,
        latency: float = 0.0,
        faults: Faults | None = None,
    ) -> None:
        self.dim = dim
        self.endpoints = {text_endpoint: "text", image_endpoint: "image"}
        self.model = model
        self.latency = latency
        self.faults = faults
        self.received: list[Received] = []
        #: (method, path) of every request, errors and scripted replies included, in arrival order.
        self.requests: list[tuple[str, str]] = []
        self.script: list[Reply] = []  # consumed one per invocation, before faults and normal handling
        #: What the control-plane GET answers, by endpoint name: a JSON body or a Reply.
        self.states: dict[str, Any] = {}
        self.injected: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        #: Bumped by :meth:`reset`: a request that arrived before it records nothing after it.
        self.generation = 0
        self._initial = (dim, model, latency, faults)
        self._server = self._listen()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )  # a short poll interval: shutdown() waits up to one interval

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)
        return f"http://{host}:{port}"

    def client_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keywords for a ``ClipClient``/``AsyncClipClient`` of this server: explicit host and token,
        no retry backoff (retries cost no time) and a timeout that turns a hang into a failure."""
        return {"host": self.url, "token": TOKEN, "retry_backoff": 0, "timeout": 30, **overrides}

    def reset(self) -> None:
        """Back to the state it started in, for a test that starts over (a rerun of a command): no
        script, the faults, latency, model and width it was made with (the faults' random draws from
        their start again), and empty histories and counters. Requests already being answered (a
        slow or trickled reply its client gave up on) finish with the model they started with and
        are recorded nowhere; one that a client sends after the reset counts as new."""
        dim, model, latency, faults = self._initial
        with self.lock:
            self.generation += 1
            self.dim = dim
            self.model = model
            self.latency = latency
            self.faults = replace(faults) if faults is not None else None
            self.script = []
            self.states = {}
            self.received = []
            self.requests = []
            self.injected = Counter()
            self.in_flight = 0
            self.max_in_flight = 0

    def __enter__(self) -> ServingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def stop_soon(self) -> None:
        """Stop in the background: ``__exit__`` without waiting for the serving loop's next poll
        (up to 20 ms, which a suite of server tests would otherwise spend once per test). Safe because
        no later server takes this port: whatever still arrives here reaches no other test."""
        threading.Thread(target=self.__exit__, name="ServingServer.stop", daemon=True).start()

    #: Every port a server of this process has listened on (:meth:`_listen`).
    _ports_taken: ClassVar[set[int]] = set()
    _ports_lock: ClassVar[threading.Lock] = threading.Lock()

    def _listen(self) -> _Server:
        """A listening socket on a port no server of this process has had before: a retry, or a
        request of a client that outlived its test, can then never reach a later test's server."""
        held: list[_Server] = []  # ports taken before, kept bound so that the next bind picks another
        try:
            with ServingServer._ports_lock:
                while True:
                    listener = _Server(("127.0.0.1", 0), self._handler())
                    port = listener.server_address[1]
                    if port not in ServingServer._ports_taken:
                        ServingServer._ports_taken.add(port)
                        return listener
                    held.append(listener)
        finally:
            for listener in held:
                listener.server_close()

    # ------------------------------------------------------------------------------------------

    def answer(self, kind: str, inputs: list[str]) -> list[list[float]]:
        return answer_rows(self.model, self.dim, kind, inputs)

    def posts(self, endpoint: str | None = None) -> int:
        """POSTs received (for ``endpoint``, when given), answered or not."""
        return sum(
            m == "POST" and (endpoint is None or p.split("/")[2:3] == [endpoint]) for m, p in self.requests
        )

    def inputs(self, endpoint: str | None = None) -> list[str]:
        return [x for r in self.received if endpoint is None or r.endpoint == endpoint for x in r.inputs]

    def _inject(self, kind: str, generation: int) -> None:
        with self.lock:
            if generation == self.generation:
                self.injected[kind] += 1

    def _snapshot(self) -> tuple[int, Callable[[str, list[str]], list[list[float]]] | None, int]:
        """What a request that arrives now is answered under: the generation, model and width."""
        with self.lock:
            return self.generation, self.model, self.dim

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each reply stalls ~40 ms on loopback (delayed ACK)
            #: The server's generation, model and width when the request being handled arrived.
            generation = 0
            model: Callable[[str, list[str]], list[list[float]]] | None = None
            dim = DIM

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(
                self,
                status: int,
                body: bytes,
                headers: dict[str, str] | None = None,
                reply: Reply | None = None,
            ) -> None:
                hdrs = {"Content-Type": "application/json", **(headers or {})}
                if reply is not None and reply.trickle:
                    return self._trickle(status, body, hdrs, reply.trickle, reply.trickle_body)
                self.send_response(status)
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return None

            def _trickle(
                self, status: int, body: bytes, headers: dict[str, str], interval: float, body_only: bool
            ) -> None:
                """The answer one byte per ``interval``, from the first byte of its status line (or,
                with ``body_only``, of its body)."""
                head = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
                head += [f"{k}: {v}" for k, v in {**headers, "Content-Length": str(len(body))}.items()]
                data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
                if body_only:
                    self.wfile.write(data)
                    data = b""
                data += body
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    time.sleep(interval)

            def _error(
                self, status: int, code: str, message: str, headers: dict[str, str] | None = None
            ) -> None:
                body = json.dumps({"error_code": code, "message": message}).encode()
                self._send(status, body, {"x-request-id": "req-err", **(headers or {})})

            def _drop(self) -> None:
                """Hang up without a word (what a proxy does to a body it will not take)."""
                self.close_connection = True
                self.connection.close()

            def _arrived(self, method: str) -> None:
                with server.lock:
                    if self.generation == server.generation:
                        server.requests.append((method, self.path))

            def do_GET(self) -> None:
                self.generation, self.model, self.dim = server._snapshot()
                self._arrived("GET")
                prefix = "/api/2.0/serving-endpoints/"
                name = self.path[len(prefix) :] if self.path.startswith(prefix) else None
                if name is None or "/" in name:
                    return self._error(404, "ENDPOINT_NOT_FOUND", f"No API found for {self.path}")
                state = server.states.get(name)
                if isinstance(state, Reply):
                    if state.delay:  # a control plane that is slow to answer
                        time.sleep(state.delay)
                    body = state.body if isinstance(state.body, bytes) else json.dumps(state.body).encode()
                    return self._send(state.status, body, state.headers)
                if state is None and name not in server.endpoints:
                    return self._error(
                        404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist."
                    )
                return self._send(200, json.dumps(state or endpoint_state(name)).encode())

            def do_POST(self) -> None:
                self.generation, self.model, self.dim = server._snapshot()
                # Recorded once the request line and headers are in, before the body: a client that
                # gives up while its body is still on the wire (a short timeout on a loaded machine)
                # has still made the attempt it counts.
                self._arrived("POST")
                length = int(self.headers.get("Content-Length", "0"))
                faults = server.faults
                if faults is not None and faults.body_limit is not None and length > faults.body_limit:
                    server._inject("body_limit", self.generation)
                    if faults.body_limit_status is None:
                        return self._drop()  # the body is never read
                    self.rfile.read(length)
                    return self._error(
                        faults.body_limit_status,
                        _ERROR_CODES.get(faults.body_limit_status, "BAD_REQUEST"),
                        f"Request body of {length} bytes exceeds the limit of {faults.body_limit} bytes",
                    )
                raw = self.rfile.read(length)
                if faults is not None and faults.status_for_all is not None:
                    status = faults.status_for_all
                    server._inject("status", self.generation)
                    return self._error(
                        status, _ERROR_CODES.get(status, "ERROR"), f"Injected HTTP {status} for every request"
                    )
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "serving-endpoints" or parts[2] != "invocations":
                    return self._error(404, "ENDPOINT_NOT_FOUND", f"No API found for {self.path}")
                name = parts[1]
                if name not in server.endpoints:
                    return self._error(
                        404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist."
                    )
                with server.lock:
                    current = self.generation == server.generation
                    reply = server.script.pop(0) if server.script and current else None
                    if current:
                        server.in_flight += 1
                        server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if reply is not None:
                        if reply.delay:
                            time.sleep(reply.delay)
                        if reply.drop:
                            return self._drop()
                        if reply.raw is not None:
                            raw_answer = reply.raw(dict(self.headers)) if callable(reply.raw) else reply.raw
                            self.wfile.write(raw_answer)
                            self.close_connection = True
                            return None
                        if reply.answer:
                            return self._answer(name, raw, None, faults, reply)
                        body = reply.body(dict(self.headers)) if callable(reply.body) else reply.body
                        body = body if isinstance(body, bytes) else json.dumps(body).encode()
                        return self._send(reply.status, body, reply.headers, reply)
                    fault = faults.draw(raw) if faults is not None else None
                    if fault is not None:
                        server._inject(fault, self.generation)
                        if fault not in ("slow", "short"):
                            return self._fault(fault, faults)
                    return self._answer(name, raw, fault, faults)
                finally:
                    with server.lock:
                        if current and self.generation == server.generation:
                            server.in_flight -= 1

            def _fault(self, fault: str, faults: Any) -> None:
                if fault == "rate_limit":
                    return self._error(
                        429,
                        "REQUEST_LIMIT_EXCEEDED",
                        "Exceeded rate limit",
                        {"Retry-After": faults.retry_after},
                    )
                if fault == "rate_limit_bare":
                    return self._error(429, "REQUEST_LIMIT_EXCEEDED", "Exceeded rate limit")
                if fault == "unavailable":
                    return self._error(503, "TEMPORARILY_UNAVAILABLE", "The endpoint is scaling up from zero")
                if fault == "server_error":
                    return self._error(500, "INTERNAL_ERROR", "Internal error")
                if fault == "gateway_timeout":
                    return self._send(504, b"upstream request timeout", {"Content-Type": "text/plain"})
                if fault == "drop":
                    return self._drop()
                if fault == "html":
                    return self._send(200, HTML_BAD_GATEWAY, {"Content-Type": "text/html"})
                raise AssertionError(f"unknown fault {fault!r}")

            def _answer(
                self, name: str, raw: bytes, fault: str | None, faults: Any, reply: Reply | None = None
            ) -> None:
                """The normal answer; for a "slow" fault late, for a "short" one a row short; sent as
                ``reply`` says (headers, trickle) when a scripted reply asked for the correct answer.
                Only a correct answer in time is recorded in ``received``."""
                started = time.monotonic()
                try:
                    request = InvocationRequest.model_validate_json(raw)
                except ValueError as exc:
                    return self._error(400, "BAD_REQUEST", f"Invalid request body: {exc}")
                inputs = [r.input for r in request.dataframe_records]
                if server.latency:
                    time.sleep(server.latency)
                if fault == "slow":
                    time.sleep(faults.slow_delay)
                try:
                    rows = answer_rows(self.model, self.dim, server.endpoints[name], inputs)
                except Exception as exc:  # what MLflow does with an exception in predict()
                    return self._error(400, "BAD_REQUEST", f"Encountered an unexpected error: {exc}")
                if fault == "short":
                    rows = rows[:-1]
                if fault is None:
                    with server.lock:
                        if self.generation == server.generation:
                            server.received.append(
                                Received(
                                    name, inputs, dict(self.headers), len(raw), started, time.monotonic()
                                )
                            )
                        request_id = f"req-{len(server.received)}"
                else:
                    request_id = f"req-{fault}"
                headers = {"x-request-id": request_id, **(reply.headers if reply else {})}
                return self._send(200, dumps({"predictions": rows}), headers, reply)

        return Handler


# --------------------------------------------------------------------------------------------------
# Route-optimized endpoints: the workspace's token exchange, and the data plane


#: Where databricks-sdk's ``DataPlaneTokenSource`` exchanges a workspace OAuth token for a data-plane
#: token (``databricks.sdk.data_plane.OIDC_TOKEN_PATH``).
OIDC_TOKEN_PATH = "/oidc/v1/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class ControlPlaneServer(ServingServer):
    """A :class:`ServingServer` that is also the workspace's OIDC token endpoint: ``POST
    /oidc/v1/token`` with the form databricks-sdk sends (``grant_type`` jwt-bearer, ``assertion``: the
    workspace OAuth token, ``authorization_details``) answers a fresh data-plane token,
    ``dp-token-<n>-<random>``. ``exchanges`` holds each exchange's form fields, ``issued`` the tokens
    handed out; ``refuse_exchange`` makes it answer 400 ``invalid_grant`` instead."""

    def __init__(self, **options: Any) -> None:
        self.exchanges: list[dict[str, str]] = []
        self.issued: list[str] = []
        self.refuse_exchange = False
        super().__init__(**options)

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.exchanges = []
            self.issued = []
            self.refuse_exchange = False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        base: Any = super()._handler()

        class Handler(base):  # type: ignore[misc,valid-type]
            def do_POST(self) -> None:
                if self.path.split("?", 1)[0] != OIDC_TOKEN_PATH:
                    super().do_POST()
                    return

                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                form = dict(parse_qsl(raw.decode("utf-8")))
                with server.lock:
                    server.requests.append(("POST", self.path))
                    server.exchanges.append(form)
                    refuse = server.refuse_exchange or form.get("grant_type") != JWT_BEARER_GRANT
                    token = f"dp-token-{len(server.exchanges)}-{random.getrandbits(64):016x}"
                    if not refuse:
                        server.issued.append(token)
                if refuse:
                    body = {"error": "invalid_grant", "error_description": "the assertion was refused"}
                    self._send(400, json.dumps(body).encode())
                else:
                    answer = {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
                    self._send(200, json.dumps(answer).encode())

        return Handler


class DataPlaneServer(ServingServer):
    """A route-optimized endpoint's data plane: a :class:`ServingServer` at its own address whose
    invocations live under ``/{workspace_id}/serving-endpoints/{name}/invocations`` (recorded without
    the prefix, so ``posts(name)`` counts them), and which answers 401 to any request whose
    ``Authorization`` is not ``Bearer`` one of the tokens ``accepted()`` returns (the control plane's
    ``issued``)."""

    def __init__(
        self, accepted: Callable[[], list[str]], workspace_id: str = "1234567890", **options: Any
    ) -> None:
        self.accepted = accepted
        self.workspace_id = workspace_id
        self.refused = 0
        super().__init__(**options)

    def invocations_url(self, name: str) -> str:
        """The ``data_plane_info.query_info.endpoint_url`` of endpoint ``name``."""
        return f"{self.url}/{self.workspace_id}/serving-endpoints/{name}/invocations"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        base: Any = super()._handler()

        class Handler(base):  # type: ignore[misc,valid-type]
            def do_POST(self) -> None:
                prefix = f"/{server.workspace_id}/serving-endpoints/"
                if self.path.startswith(prefix):
                    self.path = self.path[len(server.workspace_id) + 1 :]
                if self.headers.get("Authorization") not in {f"Bearer {t}" for t in server.accepted()}:
                    self.rfile.read(int(self.headers.get("Content-Length", "0")))
                    with server.lock:
                        server.refused += 1
                    self._error(401, "UNAUTHENTICATED", "Invalid data-plane token.")
                    return
                super().do_POST()

        return Handler


#: Where the Files API lives (databricks-sdk's ``FilesAPI``): a file's bytes and metadata, a
#: directory's listing and metadata, by absolute path (``/Volumes/catalog/schema/volume/...``).
FS_FILES = "/api/2.0/fs/files"
FS_DIRECTORIES = "/api/2.0/fs/directories"


class FilesServer(ServingServer):
    """A :class:`ServingServer` that is also the workspace's Files API over a Unity Catalog volume
    tree: ``/Volumes/...`` is served from the local folder ``root`` (``root/main/default/photos/a.jpg``
    is ``/Volumes/main/default/photos/a.jpg``), so one server answers a client's embeddings and its
    reads of a volume.

    - ``GET /api/2.0/fs/directories{path}``: the entries of a directory, sorted by name, ``page_size``
      a page (``page_token``, as the service pages); ``HEAD``: 200 or 404.
    - ``GET /api/2.0/fs/files{path}``: the file's bytes (streamed, with ``Content-Length`` and
      ``Last-Modified``); ``HEAD``: the same headers, no body.
    - Errors in Databricks' JSON shape: 404 ``NOT_FOUND`` for a path that is not there, 403
      ``PERMISSION_DENIED`` for a path in ``denied``, 401 for a request without ``Bearer TOKEN``.
    - ``transient``: statuses (429, 503...) answered, one each, to the next Files API requests,
      before any normal answer (a 429 with ``Retry-After: 0``).

    ``downloads`` counts the file GETs answered with bytes, by path; ``listings`` the directory
    pages answered; ``fs_requests`` holds ``(method, path, query)`` of every Files API request.
    """

    def __init__(self, root: Any, *, page_size: int = 2, **options: Any) -> None:
        from pathlib import Path

        self.root = Path(root)
        self.page_size = page_size
        self.denied: set[str] = set()
        self.transient: list[int] = []
        self.downloads: Counter[str] = Counter()
        self.listings = 0
        self.fs_requests: list[tuple[str, str, str]] = []
        super().__init__(**options)

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.denied = set()
            self.transient = []
            self.downloads = Counter()
            self.listings = 0
            self.fs_requests = []

    def local(self, volume_path: str) -> Any:
        """The local file or folder behind ``volume_path`` (``/Volumes/...``)."""
        return self.root / volume_path.removeprefix("/Volumes/").strip("/")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        base: Any = super()._handler()

        class Handler(base):  # type: ignore[misc,valid-type]
            def do_GET(self) -> None:
                if not self._files_api("GET"):
                    super().do_GET()

            def do_HEAD(self) -> None:
                if not self._files_api("HEAD"):
                    self._send(404, b"")

            def _fs_error(self, method: str, status: int, code: str, message: str) -> None:
                if method == "HEAD":  # a HEAD answer has no body
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {"Retry-After": "0"} if status == 429 else {}
                self._error(status, code, message, headers)

            def _files_api(self, method: str) -> bool:
                from email.utils import formatdate
                from urllib.parse import unquote, urlsplit

                parts = urlsplit(self.path)
                for prefix in (FS_FILES, FS_DIRECTORIES):
                    if parts.path.startswith(prefix + "/"):
                        break
                else:
                    return False
                path = unquote(parts.path[len(prefix) :])
                query = dict(parse_qsl(parts.query))
                with server.lock:
                    server.fs_requests.append((method, path, parts.query))
                    injected = server.transient.pop(0) if server.transient else None
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._fs_error(method, 401, "UNAUTHENTICATED", "Invalid access token.")
                    return True
                if injected is not None:
                    code = _ERROR_CODES.get(injected, "TEMPORARILY_UNAVAILABLE")
                    self._fs_error(method, injected, code, f"Injected HTTP {injected}")
                    return True
                if any(path == d or path.startswith(d.rstrip("/") + "/") for d in server.denied):
                    self._fs_error(
                        method, 403, "PERMISSION_DENIED", f"User does not have READ VOLUME on {path}."
                    )
                    return True
                local = server.local(path)
                if prefix == FS_FILES:
                    if not local.is_file():
                        self._fs_error(method, 404, "NOT_FOUND", "The file being accessed is not found.")
                        return True
                    st = local.stat()
                    headers = {
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(st.st_size),
                        "Last-Modified": formatdate(st.st_mtime, usegmt=True),
                    }
                    if method == "GET":
                        # Counted before the first byte is sent: a client that has the bytes,
                        # and a test that asks next, must find the download already counted.
                        with server.lock:
                            server.downloads[path] += 1
                    self.send_response(200)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if method == "GET":
                        with open(local, "rb") as f:
                            while chunk := f.read(4096):  # streamed, a chunk at a time
                                self.wfile.write(chunk)
                    return True
                if not local.is_dir():
                    self._fs_error(method, 404, "NOT_FOUND", "The directory being accessed is not found.")
                    return True
                if method == "HEAD":
                    self._send(200, b"")
                    return True
                names = sorted(p.name for p in local.iterdir())
                start = int(query.get("page_token") or 0)
                size = int(query.get("page_size") or server.page_size)
                size = min(size, server.page_size)
                page = names[start : start + size]
                contents = []
                for name in page:
                    child = local / name
                    entry: dict[str, Any] = {
                        "path": f"{path.rstrip('/')}/{name}" + ("/" if child.is_dir() else ""),
                        "name": name,
                        "is_directory": child.is_dir(),
                    }
                    if child.is_file():
                        st = child.stat()
                        entry["file_size"] = st.st_size
                        entry["last_modified"] = st.st_mtime_ns // 1_000_000
                    contents.append(entry)
                body: dict[str, Any] = {"contents": contents}
                if start + size < len(names):
                    body["next_page_token"] = str(start + size)
                with server.lock:
                    server.listings += 1
                self._send(200, json.dumps(body).encode())
                return True

        return Handler
