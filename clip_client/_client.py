"""``ClipClient`` and ``AsyncClipClient``: thin shells around the shared core.

Everything that decides something (input checks, batch plans, splitting refused batches, ordering,
retries, response checks) lives in ``_core``, ``_images``, ``_transport`` and the backend. The shells
only schedule: the sync client on a thread pool shared by all threads using it, the async client
on the event loop. Every call is a stream underneath: ``embed_*`` collects it into one array,
``iter_embed_*`` hands it over row by row with memory bounded by a few batches.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, overload

import httpx
import numpy as np
import numpy.typing as npt

from ._backend import Backend, RemoteBackend
from ._concurrency import CallContext
from ._core import (
    Batch,
    BatchPlanner,
    Collector,
    EmbedJob,
    FloatArray,
    Kind,
    Piece,
    adrive,
    batch_flow,
    check_image_list,
    check_text,
    check_text_list,
    drive,
    empty_result,
    refuse_single_image,
    refuse_single_text,
)
from ._images import ImageOptions, PreparedImage, prepare_image
from ._transport import resolve_workspace
from .errors import ClipClientError, InvalidInputError
from .types import (
    ClientStats,
    EmbeddingFailure,
    EmbeddingResult,
    HighBitDepth,
    ImageFormat,
    ImageInput,
    OnError,
    Settings,
)

if TYPE_CHECKING:
    from databricks.sdk.core import Config
    from typing_extensions import Self

__all__ = ["AsyncClipClient", "AsyncEmbeddingStream", "ClipClient", "EmbeddingStream"]

_PREP_WORKERS = max(1, min(32, os.cpu_count() or 1))

#: One item on its way to a batch: (index, payload or the error that stopped it, payload bytes).
Item = tuple[int, Any, int]
#: One row on its way out: (index, row, error). Failed rows are NaN and carry their error.
Row = tuple[int, FloatArray, ClipClientError | None]


class EmbeddingStream:
    """``(index, vector)`` pairs in input order, from ``ClipClient.iter_embed_*``.

    Memory stays bounded by a few batches whatever the input's length. With ``on_error="mark"`` a
    failed input yields a NaN vector and is listed in :attr:`failures`; otherwise the stream stops
    with the error. Closing the stream (or leaving a ``with`` block) cancels the work in flight.
    """

    def __init__(self, rows: Iterator[Row]) -> None:
        self._rows = rows
        self.failures: list[EmbeddingFailure] = []

    def __iter__(self) -> EmbeddingStream:
        return self

    def __next__(self) -> tuple[int, FloatArray]:
        index, row, error = next(self._rows)
        if error is not None:
            self.failures.append(EmbeddingFailure(index, error))
        return index, row

    def close(self) -> None:
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> EmbeddingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEmbeddingStream:
    """The async twin of :class:`EmbeddingStream`, from ``AsyncClipClient.iter_embed_*``."""

    def __init__(self, rows: AsyncIterator[Row]) -> None:
        self._rows = rows
        self.failures: list[EmbeddingFailure] = []

    def __aiter__(self) -> AsyncEmbeddingStream:
        return self

    async def __anext__(self) -> tuple[int, FloatArray]:
        index, row, error = await self._rows.__anext__()
        if error is not None:
            self.failures.append(EmbeddingFailure(index, error))
        return index, row

    async def aclose(self) -> None:
        aclose = getattr(self._rows, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncEmbeddingStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


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
        fast_decode: bool | None = None,
        high_bit_depth: HighBitDepth | None = None,
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
            fast_decode=fast_decode,
            high_bit_depth=high_bit_depth,
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
        self._splits = 0

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

    @property
    def stats(self) -> ClientStats:
        """Counters since the client was created: requests, retries, overloads, splits, and the
        adaptive concurrency limit as it stands now."""
        backend_stats = getattr(self.backend, "stats", None)
        counts: dict[str, int] = backend_stats() if callable(backend_stats) else {}
        maximum = self.settings.max_concurrency
        return ClientStats(
            requests=counts.get("requests", 0),
            retries=counts.get("retries", 0),
            overloads=counts.get("overloads", 0),
            splits=self._splits,
            concurrency_limit=counts.get("concurrency_limit", maximum),
            max_concurrency=counts.get("max_concurrency", maximum),
        )

    # -- planning ------------------------------------------------------------------------------------

    def _call_settings(
        self,
        batch_size: int | None,
        normalize: bool | None,
        progress: bool | None,
        on_error: OnError = "raise",
    ) -> Settings:
        """The settings of one call, checked before anything starts (streams included)."""
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")
        if on_error not in ("raise", "mark"):
            raise ValueError(f"on_error must be 'raise' or 'mark', got {on_error!r}")
        return self.settings.merged(batch_size=batch_size, normalize=normalize, progress=progress)

    def _new_job(self, kind: Kind, settings: Settings, on_error: OnError, total: int | None) -> EmbedJob:
        bar = None
        if settings.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit=kind, desc=f"embedding {kind}s")
        endpoint = getattr(self.backend, "endpoint", None)
        return EmbedJob(
            BatchPlanner(settings.batch_size, self.backend.max_request_bytes),
            mark=on_error == "mark",
            normalize=settings.normalize,
            endpoint=endpoint(kind) if callable(endpoint) else None,
            progress=bar,
            dim_hint=self._dim(),
            window=self._window(settings),
        )

    def _dim(self) -> int | None:
        dim = getattr(self.backend, "dim", None)
        return dim if isinstance(dim, int) else None

    def _empty(self, on_error: OnError) -> FloatArray | EmbeddingResult:
        """``(0, dim)``: the backend's width when it knows it (a local model), else the default."""
        empty = empty_result(self._dim())
        return EmbeddingResult(empty) if on_error == "mark" else empty

    def _check_call(self, kind: Kind, ctx: CallContext) -> None:
        """Before each (sub-)batch goes out: stop if the call was cancelled or its deadline passed.
        Raised inside the batch's flow, so with ``on_error="mark"`` a batch the deadline caught
        before it was sent is marked failed like any other, rather than sinking the whole call."""
        ctx.check(getattr(self.backend, "endpoint", lambda _: None)(kind))

    def _count_split(self) -> None:
        with self._pool_lock:  # called from request threads
            self._splits += 1

    def _image_options(self) -> ImageOptions:
        s = self.settings
        return ImageOptions(
            size=s.image_size,
            format=s.image_format,
            jpeg_quality=s.jpeg_quality,
            max_pixels=s.max_image_pixels,
            fast_decode=s.fast_decode,
            high_bit_depth=s.high_bit_depth,
            want=self.backend.image_input,
        )

    def _window(self, settings: Settings) -> int:
        """Batches one call keeps in flight or ready: enough to keep every slot busy, few enough
        that memory stays bounded by a few batches whatever the input size."""
        return 2 * settings.max_concurrency

    def _text_items(self, texts: Iterable[object]) -> Iterator[Item]:
        for i, text in enumerate(texts):
            try:
                payload, nbytes = self.backend.payload("text", check_text(text, i))
            except InvalidInputError as exc:
                yield i, exc, 0
            else:
                yield i, payload, nbytes

    def _images_ahead(
        self, images: Iterable[object], settings: Settings
    ) -> Generator[tuple[int, Future[PreparedImage]], None, None]:
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

    def _image_item(self, index: int, prepared: PreparedImage) -> Item:
        payload, nbytes = self.backend.payload("image", prepared)
        return index, payload, nbytes

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


def _text_list(texts: object, on_error: OnError) -> Sequence[object]:
    """With "raise", every text is checked before the first request (cheap, and a bad one then costs
    nothing); with "mark", bad texts are marked as they come and the others still go out."""
    return check_text_list(texts) if on_error == "raise" else list(refuse_single_text(texts))


def _collect(
    rows: Iterable[Row], total: int, on_error: OnError, dim: int | None
) -> FloatArray | EmbeddingResult:
    out = Collector(total)
    failures = []
    for index, row, error in rows:
        out.put(index, row)
        if error is not None:
            failures.append(EmbeddingFailure(index, error))
    array = out.result(dim)
    return EmbeddingResult(array, failures) if on_error == "mark" else array


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

    @overload
    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["raise"] = ...,
        deadline: float | None = ...,
    ) -> FloatArray: ...
    @overload
    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["mark"],
        deadline: float | None = ...,
    ) -> EmbeddingResult: ...
    def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> FloatArray | EmbeddingResult:
        """Embed texts; float32 of shape ``(len(texts), dim)``, rows in input order.

        ``on_error="mark"`` returns an :class:`EmbeddingResult` instead of raising: failed rows are
        NaN and listed with their errors. ``deadline`` bounds the whole call, retries included.
        """
        settings = self._call_settings(batch_size, normalize, progress, on_error)
        checked = _text_list(texts, on_error)
        if not checked:
            return self._empty(on_error)
        rows = self._stream("text", self._text_items(checked), settings, on_error, deadline, len(checked))
        return _collect(rows, len(checked), on_error, self._dim())

    def embed_text(
        self, text: str, *, normalize: bool | None = None, deadline: float | None = None
    ) -> FloatArray:
        """Embed one text; returns float32 of shape ``(dim,)``."""
        try:
            check_text(text, None)
        except InvalidInputError as exc:
            raise _single(exc) from None
        row: FloatArray = self.embed_texts([text], normalize=normalize, deadline=deadline)[0]
        return row

    @overload
    def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["raise"] = ...,
        deadline: float | None = ...,
    ) -> FloatArray: ...
    @overload
    def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["mark"],
        deadline: float | None = ...,
    ) -> EmbeddingResult: ...
    def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> FloatArray | EmbeddingResult:
        """Embed images (paths, data URIs, bytes, PIL images, uint8 arrays); float32
        ``(len(images), dim)``, rows in input order. ``on_error`` and ``deadline`` as for
        :meth:`embed_texts`."""
        settings = self._call_settings(batch_size, normalize, progress, on_error)
        items = check_image_list(images)
        if not items:
            return self._empty(on_error)
        rows = self._stream(
            "image", self._image_items(items, settings), settings, on_error, deadline, len(items)
        )
        return _collect(rows, len(items), on_error, self._dim())

    def embed_image(
        self, image: ImageInput, *, normalize: bool | None = None, deadline: float | None = None
    ) -> FloatArray:
        """Embed one image; returns float32 of shape ``(dim,)``."""
        try:
            row: FloatArray = self.embed_images([image], normalize=normalize, deadline=deadline)[0]
        except InvalidInputError as exc:
            raise _single(exc) from exc.__cause__
        return row

    def iter_embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> EmbeddingStream:
        """Embed an iterable of any length (a generator, a file read line by line), yielding
        ``(index, vector)`` in input order with memory bounded by a few batches."""
        settings = self._call_settings(batch_size, normalize, progress, on_error)
        source = refuse_single_text(texts)
        rows = self._stream("text", self._text_items(source), settings, on_error, deadline, _length(source))
        return EmbeddingStream(rows)

    def iter_embed_images(
        self,
        images: Iterable[ImageInput],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> EmbeddingStream:
        """Embed an iterable of images of any length, yielding ``(index, vector)`` in input order;
        images are read a bounded number ahead, so memory does not grow with the input."""
        settings = self._call_settings(batch_size, normalize, progress, on_error)
        items = self._image_items(refuse_single_image(images), settings)
        return EmbeddingStream(self._stream("image", items, settings, on_error, deadline, _length(images)))

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

    def _image_items(self, images: Iterable[object], settings: Settings) -> Iterator[Item]:
        for i, fut in self._images_ahead(images, settings):
            try:
                prepared = fut.result()
            except InvalidInputError as exc:
                yield i, exc, 0
            else:
                yield self._image_item(i, prepared)

    def _stream(
        self,
        kind: Kind,
        items: Iterator[Item],
        settings: Settings,
        on_error: OnError,
        deadline: float | None,
        total: int | None,
    ) -> Iterator[Row]:
        job = self._new_job(kind, settings, on_error, total)
        ctx = CallContext(deadline)
        pool = self._requests()
        pending: dict[Future[list[Piece]], Any] = {}  # each batch in flight, by its future

        def settle_some() -> None:
            done, _ = wait(pending, timeout=ctx.wait_limit(), return_when=FIRST_COMPLETED)
            if not done:  # the deadline passed and no worker could say so: one is stuck (DNS...)
                error = ctx.expired_error(job.endpoint, waiting="for a request that no time bound reaches")
                if not job.mark:
                    raise error
                job.settle([(batch, error) for batch in pending.values()])
                for fut in pending:
                    fut.cancel()
                pending.clear()
            for fut in done:
                del pending[fut]
                job.settle(fut.result())

        try:
            for index, payload, nbytes in items:
                if isinstance(payload, ClipClientError):
                    job.input_failed(index, payload)
                elif (batch := job.add(index, payload, nbytes)) is not None:
                    pending[pool.submit(self._send, kind, batch, ctx, job.mark)] = batch
                while job.must_wait(len(pending)):
                    settle_some()
                yield from job.ready()
            if (batch := job.flush()) is not None:
                pending[pool.submit(self._send, kind, batch, ctx, job.mark)] = batch
            while pending:
                settle_some()
                yield from job.ready()
            yield from job.ready(final=True)
        except BaseException:  # an error, Ctrl-C, or the consumer closing the stream early
            ctx.cancelled.set()
            for fut in pending:
                fut.cancel()
            raise
        finally:
            job.close()
            items.close()  # type: ignore[attr-defined]

    def _send(self, kind: Kind, batch: Any, ctx: CallContext, mark: bool) -> list[Piece]:
        def send(b: Batch) -> FloatArray:
            self._check_call(kind, ctx)
            return self.backend.embed(kind, b.payloads, ctx)

        return drive(batch_flow(batch, mark=mark, on_split=self._count_split), send)

    def _requests(self) -> ThreadPoolExecutor:
        """One pool per client, shared by every thread. Two threads more than ``max_concurrency``:
        the backend's limit caps what is on the wire, and the spare threads build the next bodies
        and parse answers while every endpoint slot stays busy."""
        with self._pool_lock:
            if self._request_pool is None:
                self._request_pool = ThreadPoolExecutor(
                    self.settings.max_concurrency + 2, thread_name_prefix="clip-request"
                )
            return self._request_pool


class AsyncClipClient(_BaseClient):
    """The asyncio twin of :class:`ClipClient`: same arguments, same results, awaitable.

    ``max_concurrency`` bounds the requests in flight across all tasks using the client. Image
    decoding runs in worker threads so the event loop stays responsive.
    """

    @overload
    async def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["raise"] = ...,
        deadline: float | None = ...,
    ) -> FloatArray: ...
    @overload
    async def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["mark"],
        deadline: float | None = ...,
    ) -> EmbeddingResult: ...
    async def embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> FloatArray | EmbeddingResult:
        """Embed texts; float32 of shape ``(len(texts), dim)``, rows in input order."""
        settings = self._call_settings(batch_size, normalize, progress, on_error)
        checked = _text_list(texts, on_error)
        if not checked:
            return self._empty(on_error)
        rows = self._stream(
            "text", _aiter(self._text_items(checked)), settings, on_error, deadline, len(checked)
        )
        return _collect([row async for row in rows], len(checked), on_error, self._dim())

    async def embed_text(
        self, text: str, *, normalize: bool | None = None, deadline: float | None = None
    ) -> FloatArray:
        """Embed one text; returns float32 of shape ``(dim,)``."""
        try:
            check_text(text, None)
        except InvalidInputError as exc:
            raise _single(exc) from None
        row: FloatArray = (await self.embed_texts([text], normalize=normalize, deadline=deadline))[0]
        return row

    @overload
    async def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["raise"] = ...,
        deadline: float | None = ...,
    ) -> FloatArray: ...
    @overload
    async def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = ...,
        normalize: bool | None = ...,
        progress: bool | None = ...,
        on_error: Literal["mark"],
        deadline: float | None = ...,
    ) -> EmbeddingResult: ...
    async def embed_images(
        self,
        images: Iterable[ImageInput] | npt.NDArray[np.uint8],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> FloatArray | EmbeddingResult:
        """Embed images; float32 ``(len(images), dim)``, rows in input order."""
        settings = self._call_settings(batch_size, normalize, progress, on_error)
        items = check_image_list(images)
        if not items:
            return self._empty(on_error)
        rows = self._stream(
            "image", self._image_items(items, settings), settings, on_error, deadline, len(items)
        )
        return _collect([row async for row in rows], len(items), on_error, self._dim())

    async def embed_image(
        self, image: ImageInput, *, normalize: bool | None = None, deadline: float | None = None
    ) -> FloatArray:
        """Embed one image; returns float32 of shape ``(dim,)``."""
        try:
            row: FloatArray = (await self.embed_images([image], normalize=normalize, deadline=deadline))[0]
        except InvalidInputError as exc:
            raise _single(exc) from exc.__cause__
        return row

    def iter_embed_texts(
        self,
        texts: Iterable[str],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> AsyncEmbeddingStream:
        """``async for index, vector in client.iter_embed_texts(texts)``: input order, bounded memory."""
        settings = self._call_settings(batch_size, normalize, progress, on_error)
        source = refuse_single_text(texts)
        items = _aiter(self._text_items(source))
        return AsyncEmbeddingStream(
            self._stream("text", items, settings, on_error, deadline, _length(source))
        )

    def iter_embed_images(
        self,
        images: Iterable[ImageInput],
        *,
        batch_size: int | None = None,
        normalize: bool | None = None,
        progress: bool | None = None,
        on_error: OnError = "raise",
        deadline: float | None = None,
    ) -> AsyncEmbeddingStream:
        """``async for index, vector in client.iter_embed_images(images)``: input order, bounded memory."""
        settings = self._call_settings(batch_size, normalize, progress, on_error)
        items = self._image_items(refuse_single_image(images), settings)
        return AsyncEmbeddingStream(
            self._stream("image", items, settings, on_error, deadline, _length(images))
        )

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

    async def _image_items(self, images: Iterable[object], settings: Settings) -> AsyncIterator[Item]:
        ahead = self._images_ahead(images, settings)
        try:
            for i, fut in ahead:
                try:
                    prepared: PreparedImage = await asyncio.wrap_future(fut)
                except InvalidInputError as exc:
                    yield i, exc, 0
                else:
                    yield self._image_item(i, prepared)
        finally:
            ahead.close()

    async def _stream(
        self,
        kind: Kind,
        items: AsyncIterator[Item],
        settings: Settings,
        on_error: OnError,
        deadline: float | None,
        total: int | None,
    ) -> AsyncIterator[Row]:
        job = self._new_job(kind, settings, on_error, total)
        ctx = CallContext(deadline)
        pending: set[asyncio.Future[list[Piece]]] = set()

        async def settle_some() -> None:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                pending.discard(task)
                job.settle(task.result())

        try:
            async for index, payload, nbytes in items:
                if isinstance(payload, ClipClientError):
                    job.input_failed(index, payload)
                elif (batch := job.add(index, payload, nbytes)) is not None:
                    pending.add(asyncio.ensure_future(self._send(kind, batch, ctx, job.mark)))
                while job.must_wait(len(pending)):
                    await settle_some()
                for row in job.ready():
                    yield row
            if (batch := job.flush()) is not None:
                pending.add(asyncio.ensure_future(self._send(kind, batch, ctx, job.mark)))
            while pending:
                await settle_some()
                for row in job.ready():
                    yield row
            for row in job.ready(final=True):
                yield row
        except BaseException:  # an error, cancellation, or the consumer closing the stream early
            ctx.cancelled.set()
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        finally:
            job.close()
            await items.aclose()  # type: ignore[attr-defined]

    async def _send(self, kind: Kind, batch: Any, ctx: CallContext, mark: bool) -> list[Piece]:
        async def send(b: Batch) -> FloatArray:
            self._check_call(kind, ctx)
            return await self.backend.aembed(kind, b.payloads, ctx)

        return await adrive(batch_flow(batch, mark=mark, on_split=self._count_split), send)


# --------------------------------------------------------------------------------------------------


def _length(items: Iterable[object]) -> int | None:
    return len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]


async def _aiter(items: Iterator[Item]) -> AsyncIterator[Item]:
    for item in items:
        yield item
