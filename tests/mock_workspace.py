"""A mocked Databricks workspace for the respx unit tests of the HTTP layer.

httpx is mocked with respx (the ``router`` fixture in ``conftest.py``; its router serves both
``httpx.Client`` and ``httpx.AsyncClient``). Routes answer with :func:`echo` (one deterministic row
per record), :func:`error_response`, or a :func:`scripted` sequence of both and of transport errors.
``make`` builds clients of this workspace (:func:`client_kwargs`) in a test that uses ``router``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
from serving_server import expected_vector

HOST = "https://example.cloud.databricks.com"
TOKEN = "dapi-SECRET-123"
TEXT_URL = f"{HOST}/serving-endpoints/clip-text-embedding/invocations"
IMAGE_URL = f"{HOST}/serving-endpoints/clip-image-embedding/invocations"
DIM = 8
#: A :func:`scripted` step: answer as :func:`echo` does.
OK = "ok"


def client_kwargs(**overrides: Any) -> dict[str, Any]:
    """Keywords for a client of the mocked workspace: its host and token, no retry backoff."""
    return {"host": HOST, "token": TOKEN, "retry_backoff": 0, **overrides}


def vector(value: str) -> list[float]:
    return expected_vector("x", value, DIM).tolist()


def expected(values: list[str]) -> np.ndarray:
    return np.array([vector(v) for v in values], dtype=np.float32)


def echo(request: httpx.Request) -> httpx.Response:
    """A well-behaved endpoint: one deterministic row per record."""
    doc = json.loads(request.content)
    rows = [vector(record["input"]) for record in doc["dataframe_records"]]
    return httpx.Response(200, json={"predictions": rows}, headers={"x-request-id": "req-ok"})


def error_response(
    status: int, code: str | None = None, message: str = "boom", **headers: str
) -> httpx.Response:
    body = {"error_code": code, "message": message} if code else {"message": message}
    return httpx.Response(status, json=body, headers={"x-request-id": f"req-{status}", **headers})


def scripted(*steps: Any) -> Callable[[httpx.Request], httpx.Response]:
    """A respx side effect that plays ``steps`` in order, then echoes.

    A step is ``OK`` (echo), an ``httpx.Response``, a callable building one, or an httpx exception
    class (raised with the request attached, as httpx itself would).
    """
    queue = list(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        step = queue.pop(0) if queue else OK
        if step == OK:
            return echo(request)
        if isinstance(step, type) and issubclass(step, httpx.TransportError):
            raise step(f"simulated {step.__name__}", request=request)
        if callable(step):
            return step()
        return step

    return handler
