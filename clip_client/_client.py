"""``ClipClient`` and ``AsyncClipClient``: thin shells around the shared core.

Everything that decides something (input checks, batch plans, ordering, retries, response checks)
lives in ``_core``, ``_images``, ``_transport`` and the backend. The shells only schedule: the sync
client on a thread pool shared by all threads using it, the async client on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import numpy.typing as npt

from ._backend import Backend, RemoteBackend
from ._core import (
    Batch,
    BatchPlanner,
    EmbedJob,
    FloatArray,
    Kind,
    check_image_list,
    check_text,
    check_text_list,
    empty_result,
)
from ._images import ImageOptions, PreparedImage, prepare_image
from ._transport import resolve_workspace
from .errors import InvalidInputError
from .types import ImageFormat, ImageInput, Settings

if TYPE_CHECKING:
    from databricks.sdk.core import Config
    from typing_extensions import Self

__all__ = ["AsyncClipClient", "ClipClient"]

_PREP_WORKERS = max(1, min(32, os.cpu_count() or 1))


class _BaseClient:
    """State and planning shared by both clients; no I/O of its own."""

    def __init__(
        self,
        *,
        host: str | None = None,
        token: str | None = None,
        profile: str | None = None,
        config: Config | None = None,
        text_endpoint: str | None = None,
        image_endpoint: str | None = None,
        batch_size: int | None = None,
        max_request_bytes: int | None = None,
        max_concurrency: int | None = None,
        max_retries: int | None = None,
        retry_deadline: float | None = None,
        retry_backoff: float | None = None,
        retry_backoff_max: float | None = None,
        timeout: float | None = None,
        image_size: int | None = None,
        image_format: ImageFormat | None = None,
        jpeg_quality: int | None = None,
        max_image_pixels: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        backend: Backend | None = None,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = Settings().merged(
            text_endpoint=text_endpoint,
            image_endpoint=image_endpoint,
            batch_size=batch_size,
            max_request_bytes=max_request_bytes,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            retry_deadline=retry_deadline,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            timeout=timeout,
            image_size=image_size,
            image_format=image_format,
            jpeg_quality=jpeg_quality,
            max_image_pixels=max_image_pixels,
            normalize=normalize,
            progress=progress,
        )
        if backend is None:
            workspace = resolve_workspace(host=host, token=token, profile=profile, config=config)
            backend = RemoteBackend(
                workspace, self.settings, http_client=http_client, async_http_client=async_http_client
            )
        elif host or token or profile or config:
            raise ValueError("pass either backend= or workspace options (host/token/profile/config)")
        self.backend: Backend = backend
        self._pool_lock = threading.Lock()
        self._prep_pool: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r})"

    @classmethod
    def local(
        cls,
        model: str | os.PathLike[str] = "openai/clip-vit-large-patch14",
        *,
        device: str | None = None,
        dtype: str | None = None,
        compile: bool = False,
        **client_options: Any,
    ) -> Self:
        """A client whose backend is the CLIP model in this process (:class:`LocalBackend`).

        Needs no workspace. ``client_options`` are the usual client keywords (``batch_size``,
        ``normalize``, ``progress``...); everything above the backend is the same code as remote.
        """
        from .local import LocalBackend

        backend = LocalBackend(
            model, device=device, dtype=dtype, batch_size=client_options.get("batch_size"), compile=compile
        )
        client_options.setdefault("batch_size", backend.batch_size)
        client_options.setdefault("image_size", backend.image_size)
        # Two batches in flight: one on the device while the next is tokenised/stacked and copied.
        client_options.setdefault("max_concurrency", 2)
        return cls(backend=backend, **client_options)

    # -- planning ------------------------------------------------------------------------------------

    def _call_settings(
        self, batch_size: int | None, normalize: bool | None, progress: bool | None
    ) -> Settings:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        return self.settings.merged(batch_size=batch_size, normalize=normalize, progress=progress)

    def _new_job(self, kind: Kind, total: int, settings: Settings) -> EmbedJob:
        bar = None
        if settings.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit=kind, desc=f"embedding {kind}s")
        endpoint = getattr(self.backend, "endpoint", None)
        return EmbedJob(
            total,
            BatchPlanner(settings.batch_size, self.backend.max_request_bytes),
            endpoint=endpoint(kind) if callable(endpoint) else None,
            progress=bar,
        )

    def _empty(self) -> FloatArray:
        """``(0, dim)``: the backend's width when it knows it (a local model), else the default."""
        dim = getattr(self.backend, "dim", None)
        return empty_result(dim if isinstance(dim, int) else None)

    def _image_options(self) -> ImageOptions:
        s = self.settings
        return ImageOptions(
            size=s.image_size,
            format=s.image_format,
            jpeg_quality=s.jpeg_quality,
            max_pixels=s.max_image_pixels,
            want=self.backend.image_input,
        )

    def _window(self, settings: Settings) -> int:
        """Batches one call keeps in flight or ready: enough to keep every slot busy, few enough
        that memory stays bounded by a few batches whatever the input size."""
        return 2 * settings.max_concurrency

    def _text_payloads(self, texts: list[str]) -> Iterator[tuple[int, Any, int]]:
        for i, text in enumerate(texts):
            payload, nbytes = self.backend.payload("text", text)
            yield i, payload, nbytes

    def _images_ahead(
        self, images: Iterable[object], settings: Settings
    ) -> Iterator[tuple[int, Future[PreparedImage]]]:
        """Images decoded and resized in a thread pool, a bounded number ahead of the consumer,
        yielded in input order. Pending work is cancelled if the consumer stops early."""
        pool = self._preparation_pool()
        opts = self._image_options()
        lookahead = max(2 * _PREP_WORKERS, settings.batch_size)
        ahead: deque[tuple[int, Future[PreparedImage]]] = deque()
        try:
            for i, image in enumerate(images):
                ahead.append((i, pool.submit(prepare_image, image, i, opts)))
                if len(ahead) >= lookahead:
                    yield ahead.popleft()
            while ahead:
                yield ahead.popleft()
        finally:
            for _, fut in ahead:
                fut.cancel()

    def _preparation_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._prep_pool is None:
                self._prep_pool = ThreadPoolExecutor(_PREP_WORKERS, thread_name_prefix="clip-prep")
            return self._prep_pool

    def _shutdown_pools(self) -> None:
        self._closed = True
        with self._pool_lock:
            if self._prep_pool is not None:
                self._prep_pool.shutdown(wait=False, cancel_futures=True)
                self._prep_pool = None


def _single(exc: InvalidInputError) -> InvalidInputError:
    """The same error without an index, for the one-item methods."""
    return type(exc)(exc.reason, index=None, path=exc.path)


class ClipClient(_BaseClient):
    """Embeds texts and images with CLIP ViT-L/14 on Databricks Model Serving.

    One client is safe to share across threads; ``max_concurrency`` bounds the requests in flight
    across all of them. Use it as a context manager, or call :meth:`close`.

    >>> client = ClipClient()                      # workspace from the databricks-sdk config chain
    >>> client.embed_texts(["a red car", "a dog"]).shape
    (2, 768)
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._request_pool: ThreadPoolExecutor | None = None

    # -- public API ----------------------------------------------------------------------------------

    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
    ) -> FloatArray:
        """Embed texts; returns float32 of shape ``(len(texts), dim)``, rows in input order."""
        settings = self._call_settings(batch_size, normalize, progress)
        checked = check_text_list(texts)
        return self._run("text", len(checked), self._text_payloads(checked), settings)

    def embed_text(self, text: str, *, normalize: bool | None = None) -> FloatArray:
        """Embed one text; returns float32 of shape ``(dim,)``."""
        try:
            check_text(text, None)
        except InvalidInputError as exc:
            raise _single(exc) from None
        row: FloatArray = self.embed_texts([text], normalize=normalize)[0]
        return row

    def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
    ) -> FloatArray:
        """Embed images (paths, data URIs, bytes, PIL images, uint8 arrays); float32
        ``(len(images), dim)``, rows in input order."""
        settings = self._call_settings(batch_size, normalize, progress)
        items = check_image_list(images)
        return self._run("image", len(items), self._image_payloads(items, settings), settings)

    def embed_image(self, image: ImageInput, *, normalize: bool | None = None) -> FloatArray:
        """Embed one image; returns float32 of shape ``(dim,)``."""
        try:
            row: FloatArray = self.embed_images([image], normalize=normalize)[0]
        except InvalidInputError as exc:
            raise _single(exc) from exc.__cause__
        return row

    def close(self) -> None:
        """Release connections and threads. Idempotent."""
        self._shutdown_pools()
        with self._pool_lock:
            if self._request_pool is not None:
                self._request_pool.shutdown(wait=False, cancel_futures=True)
                self._request_pool = None
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- scheduling ----------------------------------------------------------------------------------

    def _image_payloads(self, images: Iterable[object], settings: Settings) -> Iterator[tuple[int, Any, int]]:
        for i, fut in self._images_ahead(images, settings):
            payload, nbytes = self.backend.payload("image", fut.result())
            yield i, payload, nbytes

    def _run(
        self, kind: Kind, total: int, payloads: Iterator[tuple[int, Any, int]], settings: Settings
    ) -> FloatArray:
        if total == 0:
            return self._empty()
        job = self._new_job(kind, total, settings)
        pool = self._requests()
        window: deque[tuple[Batch, Future[FloatArray]]] = deque()
        limit = self._window(settings)

        def submit(batch: Batch | None, drain: bool = False) -> None:
            if batch is not None:
                window.append((batch, pool.submit(self.backend.embed, kind, batch.payloads)))
            while len(window) > limit or (drain and window):
                done, fut = window.popleft()
                job.complete(done, fut.result())

        try:
            for index, payload, nbytes in payloads:
                submit(job.add(index, payload, nbytes))
            submit(job.flush(), drain=True)
        except BaseException:
            for _, fut in window:
                fut.cancel()
            raise
        finally:
            job.close()
            if hasattr(payloads, "close"):
                payloads.close()
        return job.result(settings.normalize)

    def _requests(self) -> ThreadPoolExecutor:
        """One pool per client: its size is the cap on requests in flight, shared by every thread."""
        with self._pool_lock:
            if self._request_pool is None:
                self._request_pool = ThreadPoolExecutor(
                    self.settings.max_concurrency, thread_name_prefix="clip-request"
                )
            return self._request_pool


class AsyncClipClient(_BaseClient):
    """The asyncio twin of :class:`ClipClient`: same arguments, same results, awaitable.

    ``max_concurrency`` bounds the requests in flight across all tasks using the client. Image
    decoding runs in worker threads so the event loop stays responsive.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._semaphore: asyncio.Semaphore | None = None

    async def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
    ) -> FloatArray:
        """Embed texts; returns float32 of shape ``(len(texts), dim)``, rows in input order."""
        settings = self._call_settings(batch_size, normalize, progress)
        checked = check_text_list(texts)
        return await self._run("text", len(checked), self._atext_payloads(checked), settings)

    async def embed_text(self, text: str, *, normalize: bool | None = None) -> FloatArray:
        """Embed one text; returns float32 of shape ``(dim,)``."""
        try:
            check_text(text, None)
        except InvalidInputError as exc:
            raise _single(exc) from None
        row: FloatArray = (await self.embed_texts([text], normalize=normalize))[0]
        return row

    async def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
    ) -> FloatArray:
        """Embed images; float32 ``(len(images), dim)``, rows in input order."""
        settings = self._call_settings(batch_size, normalize, progress)
        items = check_image_list(images)
        return await self._run("image", len(items), self._image_payloads(items, settings), settings)

    async def embed_image(self, image: ImageInput, *, normalize: bool | None = None) -> FloatArray:
        """Embed one image; returns float32 of shape ``(dim,)``."""
        try:
            row: FloatArray = (await self.embed_images([image], normalize=normalize))[0]
        except InvalidInputError as exc:
            raise _single(exc) from exc.__cause__
        return row

    async def close(self) -> None:
        """Release connections and threads. Idempotent."""
        self._shutdown_pools()
        await self.backend.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- scheduling ----------------------------------------------------------------------------------

    async def _atext_payloads(self, texts: list[str]) -> Any:
        for item in self._text_payloads(texts):
            yield item

    async def _image_payloads(self, images: Iterable[object], settings: Settings) -> Any:
        for i, fut in self._images_ahead(images, settings):
            prepared: PreparedImage = await asyncio.wrap_future(fut)
            payload, nbytes = self.backend.payload("image", prepared)
            yield i, payload, nbytes

    async def _send(self, kind: Kind, batch: Batch) -> FloatArray:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.settings.max_concurrency)
        async with self._semaphore:
            return await self.backend.aembed(kind, batch.payloads)

    async def _run(self, kind: Kind, total: int, payloads: Any, settings: Settings) -> FloatArray:
        if total == 0:
            return self._empty()
        job = self._new_job(kind, total, settings)
        window: deque[tuple[Batch, asyncio.Task[FloatArray]]] = deque()
        limit = self._window(settings)

        async def submit(batch: Batch | None, drain: bool = False) -> None:
            if batch is not None:
                window.append((batch, asyncio.ensure_future(self._send(kind, batch))))
            while len(window) > limit or (drain and window):
                done, task = window.popleft()
                job.complete(done, await task)

        try:
            async for index, payload, nbytes in payloads:
                await submit(job.add(index, payload, nbytes))
            await submit(job.flush(), drain=True)
        except BaseException:
            tasks = [task for _, task in window]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            job.close()
            if hasattr(payloads, "aclose"):
                await payloads.aclose()
        return job.result(settings.normalize)
