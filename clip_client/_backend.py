"""Backends: whatever turns one batch of texts or prepared images into a float32 array.

The remote endpoints and the in-process model answer the same calls, so batching, ordering,
normalisation and progress sit above them in the client, written once.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import httpx
from tenacity import AsyncRetrying, Retrying

from . import _constants as C
from ._core import FloatArray, Kind, encode_body, encode_record, parse_predictions
from ._images import PreparedImage
from ._transport import (
    Workspace,
    error_from_response,
    map_transport_error,
    request_id_of,
    retry_arguments,
)
from ._version import __version__
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

    def embed(self, kind: Kind, payloads: Sequence[Any]) -> FloatArray:
        """One batch, synchronously; may be called from several threads at once."""
        ...

    async def aembed(self, kind: Kind, payloads: Sequence[Any]) -> FloatArray:
        """One batch, from an event loop."""
        ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...


def user_agent() -> str:
    return f"clip-serving-client/{__version__} python/{platform.python_version()} httpx/{httpx.__version__}"


class RemoteBackend:
    """Databricks Model Serving: one POST per batch, with retries, to the text or image endpoint.

    Owns a pooled ``httpx.Client`` and/or ``httpx.AsyncClient`` (created on first use, kept alive
    across calls) unless the caller injects their own, which it then leaves open on ``close``.
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
        connect = min(C.DEFAULT_CONNECT_TIMEOUT, settings.timeout)
        self._timeout = httpx.Timeout(settings.timeout, connect=connect)
        self._headers = {"Content-Type": "application/json", "User-Agent": user_agent()}
        self._client = http_client
        self._aclient = async_http_client
        self._owns_client = http_client is None
        self._owns_aclient = async_http_client is None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"RemoteBackend(host={self.workspace.host!r}, text_endpoint={self._endpoints['text']!r}, "
            f"image_endpoint={self._endpoints['image']!r})"
        )

    def endpoint(self, kind: Kind) -> str:
        return self._endpoints[kind]

    # -- payloads ------------------------------------------------------------------------------------

    def payload(self, kind: Kind, item: str | PreparedImage) -> tuple[bytes, int]:
        record = encode_record(item if isinstance(item, str) else item.b64())
        return record, len(record)

    # -- sync ----------------------------------------------------------------------------------------

    def embed(self, kind: Kind, payloads: Sequence[Any]) -> FloatArray:
        body = encode_body(payloads)
        for attempt in Retrying(**self._retry):
            with attempt:
                return self._post(kind, body, len(payloads))
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _post(self, kind: Kind, body: bytes, rows: int) -> FloatArray:
        endpoint = self._endpoints[kind]
        started = time.perf_counter()
        try:
            response = self._sync_client().post(
                self._urls[kind], content=body, headers=self._headers, auth=self.workspace.auth
            )
        except httpx.TransportError as exc:
            raise map_transport_error(exc, endpoint) from exc
        return self._handle(response, kind, rows, len(body), started)

    def _sync_client(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(timeout=self._timeout, limits=self._limits())
        return self._client

    # -- async ---------------------------------------------------------------------------------------

    async def aembed(self, kind: Kind, payloads: Sequence[Any]) -> FloatArray:
        body = encode_body(payloads)
        async for attempt in AsyncRetrying(**self._retry):
            with attempt:
                return await self._apost(kind, body, len(payloads))
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _apost(self, kind: Kind, body: bytes, rows: int) -> FloatArray:
        endpoint = self._endpoints[kind]
        started = time.perf_counter()
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(timeout=self._timeout, limits=self._limits())
        try:
            response = await self._aclient.post(
                self._urls[kind], content=body, headers=self._headers, auth=self.workspace.auth
            )
        except httpx.TransportError as exc:
            raise map_transport_error(exc, endpoint) from exc
        return self._handle(response, kind, rows, len(body), started)

    # -- shared --------------------------------------------------------------------------------------

    def _limits(self) -> httpx.Limits:
        n = self.settings.max_concurrency
        return httpx.Limits(max_connections=2 * n, max_keepalive_connections=2 * n, keepalive_expiry=60)

    def _handle(
        self, response: httpx.Response, kind: Kind, rows: int, nbytes: int, started: float
    ) -> FloatArray:
        endpoint = self._endpoints[kind]
        request_id = request_id_of(response)
        logger.debug(
            "POST %s: %d records, %d bytes -> HTTP %d in %.3fs (request_id=%s)",
            endpoint,
            rows,
            nbytes,
            response.status_code,
            time.perf_counter() - started,
            request_id,
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
            await self._aclient.aclose()
            self._aclient = None
        self.close()
