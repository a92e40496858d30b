"""A real HTTP server on 127.0.0.1 that speaks Databricks Model Serving's invocation protocol.

Used by the end-to-end tests (and the benchmarks): it checks each request's shape with the same
pydantic models the client documents, records what it received, and answers with deterministic
embeddings derived from each input, so a test can check every returned row. Behaviour per request
can be scripted (errors, delays) through ``ServingServer.script``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from clip_client.types import InvocationRequest

DIM = 768
#: The token test clients send (``ServingServer.client_kwargs``); tests check it never leaks.
TOKEN = "dapi-e2e-secret-0123456789abcdef"


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
    """A scripted answer: status, body (bytes or JSON-able) and headers; or drop the connection."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


class ServingServer:
    """``with ServingServer() as server: ClipClient(host=server.url, token="t")``."""

    def __init__(
        self,
        *,
        dim: int = DIM,
        text_endpoint: str = "clip-text-embedding",
        image_endpoint: str = "clip-image-embedding",
        model: Callable[[str, list[str]], list[list[float]]] | None = None,
        latency: float = 0.0,
    ) -> None:
        self.dim = dim
        self.endpoints = {text_endpoint: "text", image_endpoint: "image"}
        self.model = model
        self.latency = latency
        self.received: list[Received] = []
        #: (method, path) of every request, errors and scripted replies included, in arrival order.
        self.requests: list[tuple[str, str]] = []
        self.script: list[Reply] = []  # consumed one per invocation, before normal handling
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )  # a short poll interval: shutdown() waits up to one interval

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def client_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Keywords for a ``ClipClient``/``AsyncClipClient`` of this server: explicit host and token,
        no retry backoff (retries cost no time) and a timeout that turns a hang into a failure."""
        return {"host": self.url, "token": TOKEN, "retry_backoff": 0, "timeout": 30, **overrides}

    def __enter__(self) -> ServingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------------------

    def answer(self, kind: str, inputs: list[str]) -> list[list[float]]:
        if self.model is not None:
            return self.model(kind, inputs)
        if kind == "text":
            return [expected_vector("text", x, self.dim).tolist() for x in inputs]
        return [expected_vector("image", base64.b64decode(x), self.dim).tolist() for x in inputs]

    def posts(self, endpoint: str | None = None) -> int:
        """POSTs received (for ``endpoint``, when given), answered or not."""
        return sum(
            m == "POST" and (endpoint is None or p.split("/")[2:3] == [endpoint]) for m, p in self.requests
        )

    def inputs(self, endpoint: str | None = None) -> list[str]:
        return [x for r in self.received if endpoint is None or r.endpoint == endpoint for x in r.inputs]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                hdrs = {"Content-Type": "application/json", **(headers or {})}
                for k, v in hdrs.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(
                self, status: int, code: str, message: str, headers: dict[str, str] | None = None
            ) -> None:
                body = json.dumps({"error_code": code, "message": message}).encode()
                self._send(status, body, {"x-request-id": "req-err", **(headers or {})})

            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append(("GET", self.path))
                self._error(404, "ENDPOINT_NOT_FOUND", f"No API found for {self.path}")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                with server.lock:
                    server.requests.append(("POST", self.path))
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "serving-endpoints" or parts[2] != "invocations":
                    return self._error(404, "ENDPOINT_NOT_FOUND", f"No API found for {self.path}")
                name = parts[1]
                if name not in server.endpoints:
                    return self._error(
                        404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist."
                    )
                with server.lock:
                    reply = server.script.pop(0) if server.script else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if reply is not None:
                        if reply.delay:
                            time.sleep(reply.delay)
                        if reply.drop:
                            self.close_connection = True
                            self.connection.close()
                            return None
                        body = (
                            reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                        )
                        return self._send(reply.status, body, reply.headers)
                    started = time.monotonic()
                    try:
                        request = InvocationRequest.model_validate_json(raw)
                    except ValueError as exc:
                        return self._error(400, "BAD_REQUEST", f"Invalid request body: {exc}")
                    inputs = [r.input for r in request.dataframe_records]
                    if server.latency:
                        time.sleep(server.latency)
                    try:
                        rows = server.answer(server.endpoints[name], inputs)
                    except Exception as exc:  # what MLflow does with an exception in predict()
                        return self._error(400, "BAD_REQUEST", f"Encountered an unexpected error: {exc}")
                    with server.lock:
                        server.received.append(
                            Received(name, inputs, dict(self.headers), len(raw), started, time.monotonic())
                        )
                    return self._send(
                        200,
                        json.dumps({"predictions": rows}).encode(),
                        {"x-request-id": f"req-{len(server.received)}"},
                    )
                finally:
                    with server.lock:
                        server.in_flight -= 1

        return Handler
