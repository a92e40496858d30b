"""The streams `iter_embed_texts` / `iter_embed_images` return: rows in input order, one at a time,
with memory bounded by a few batches whatever the input's length."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np
import numpy.typing as npt

from ..errors import ClipClientError
from ..types import EmbeddingFailure

__all__ = ["AsyncEmbeddingStream", "EmbeddingStream", "Row"]

Row = tuple[int, npt.NDArray[np.float32], ClipClientError | None]
"""One row on its way out of a call: (index, row, error). A failed input's row is NaN and carries its
error (only with `on_error="mark"`; otherwise the error is raised).
"""


class EmbeddingStream:
    """`(index, vector)` pairs in input order, from `ClipClient.iter_embed_texts` /
    `iter_embed_images`: `index` an `int`, `vector` float32 of shape `(dim,)`.

    Memory stays bounded by a few batches whatever the input's length. With `on_error="mark"` a
    failed input yields a NaN vector and is listed in [`failures`][clip_client.EmbeddingStream.failures] (as
    it is reached); otherwise the stream stops by raising the error. Closing the stream (or leaving a `with`
    block, or breaking out of a `for` loop over it inside one) cancels the work in flight.

    ```python
    with client.iter_embed_texts(lines) as stream:
        for index, vector in stream:
            sink.write(index, vector)
    ```
    """

    def __init__(self, rows: Iterator[Row]) -> None:
        self._rows = rows
        self.failures: list[EmbeddingFailure] = []
        """The failed inputs met so far, in index order (`on_error="mark"` only)."""

    def __iter__(self) -> EmbeddingStream:
        return self

    def __next__(self) -> tuple[int, npt.NDArray[np.float32]]:
        index, row, error = next(self._rows)
        if error is not None:
            self.failures.append(EmbeddingFailure(index, error))
        return index, row

    def close(self) -> None:
        """Stop the call: queued batches are cancelled, nothing more is read from the input."""
        close = getattr(self._rows, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> EmbeddingStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEmbeddingStream:
    """The async twin of [`EmbeddingStream`][clip_client.EmbeddingStream], from
    `AsyncClipClient.iter_embed_*`: use it with `async with` and `async for`.

    ```python
    async with client.iter_embed_texts(lines) as stream:
        async for index, vector in stream:
            sink.write(index, vector)
    ```
    """

    def __init__(self, rows: AsyncIterator[Row]) -> None:
        self._rows = rows
        self.failures: list[EmbeddingFailure] = []
        """The failed inputs met so far, in index order (`on_error="mark"` only)."""

    def __aiter__(self) -> AsyncEmbeddingStream:
        return self

    async def __anext__(self) -> tuple[int, npt.NDArray[np.float32]]:
        index, row, error = await self._rows.__anext__()
        if error is not None:
            self.failures.append(EmbeddingFailure(index, error))
        return index, row

    async def aclose(self) -> None:
        """Stop the call: tasks in flight are cancelled, nothing more is read from the input."""
        aclose = getattr(self._rows, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> AsyncEmbeddingStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
