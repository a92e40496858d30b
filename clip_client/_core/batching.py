"""Batches and ordering: plan batches by count and bytes, split what an endpoint refuses as too large,
isolate a bad input, and reassemble rows in input order.

The sans-I/O heart shared by the sync and async clients. Nothing here opens a socket, starts a
thread or sleeps: the client shells feed it items and responses (`drive` / `adrive`) and do
the waiting themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from .._constants import DEFAULT_EMBEDDING_DIM
from ..errors import (
    AuthenticationError,
    BadRequestError,
    ClipClientError,
    CredentialsError,
    EndpointNotFoundError,
    InvalidInputError,
    PayloadTooLargeError,
    PermissionDeniedError,
    ResponseFormatError,
)
from ..types import EmbeddingArray, EmbeddingFailure, EmbeddingResult
from .wire import BACKEND_HINT, BODY_OVERHEAD, empty_result, l2_normalize

if TYPE_CHECKING:
    from ..cache import CacheView

__all__ = ["Batch", "BatchOutcome", "BatchPlanner", "Collector", "EmbedJob", "adrive", "batch_flow", "drive"]


# --------------------------------------------------------------------------------------------------
# Batch planning


@dataclass
class Batch:
    """Consecutive inputs sent together. `indices` are positions in the caller's input."""

    indices: list[int] = field(default_factory=list)
    payloads: list[Any] = field(default_factory=list)
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.indices)

    def halves(self) -> tuple[Batch, Batch]:
        mid = len(self) // 2
        return (
            Batch(self.indices[:mid], self.payloads[:mid]),
            Batch(self.indices[mid:], self.payloads[mid:]),
        )


class BatchPlanner:
    """Packs items into batches of at most `max_items` and, when `max_bytes` is set, at most
    `max_bytes` of request body. Batches hold consecutive inputs, so order is never in doubt."""

    def __init__(self, max_items: int, max_bytes: int | None) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._current = Batch(nbytes=BODY_OVERHEAD if max_bytes is not None else 0)

    def add(self, index: int, payload: Any, nbytes: int = 0) -> Batch | None:
        """Add one item; returns the batch it closed, if adding it closed one."""
        if self.max_bytes is not None and BODY_OVERHEAD + nbytes > self.max_bytes:
            raise InvalidInputError(
                f"this input alone makes a {BODY_OVERHEAD + nbytes:,}-byte request, over "
                f"max_request_bytes={self.max_bytes:,}",
                index=index,
                setting="max_request_bytes",
                advice="shorten it (for an image: {image_preparation='client'} sends a 224x224 crop, "
                "{image_format='jpeg'} a smaller one)",
            )
        closed = None
        current = self._current
        if current.indices and (
            len(current) >= self.max_items
            or (self.max_bytes is not None and current.nbytes + 1 + nbytes > self.max_bytes)
        ):
            closed = self.flush()
            current = self._current
        cost = nbytes + 1 if current.indices else nbytes  # n records are joined by n - 1 commas
        current.indices.append(index)
        current.payloads.append(payload)
        if self.max_bytes is not None:
            current.nbytes += cost
        return closed

    def flush(self) -> Batch | None:
        """Close the open batch, if it holds anything."""
        if not self._current.indices:
            return None
        batch = self._current
        self._current = Batch(nbytes=BODY_OVERHEAD if self.max_bytes is not None else 0)
        return batch


# --------------------------------------------------------------------------------------------------
# One batch's fate: send, split when refused as too large, isolate a bad input


BatchOutcome = tuple[Batch, "EmbeddingArray | ClipClientError"]
"""What sending one batch ends in, per (sub-)batch: its rows, or (with on_error="mark") the error that
sank it. A batch split in half ends in one outcome per part.
"""


_ABOUT_AN_INPUT = (PayloadTooLargeError, BadRequestError)
"""Errors that concern the input sent, not the endpoint: a body too large for the endpoint, and a 400
(what any exception inside the model's `predict` becomes).
"""
_FATAL_TO_THE_CALL = (AuthenticationError, PermissionDeniedError, EndpointNotFoundError, CredentialsError)
"""Errors that every other batch of the call would meet too: bad credentials, no permission, no such
endpoint. They stop the call even with `on_error="mark"`, which is for failures of some inputs;
a revoked token must not send every batch of a million-image job to collect a million failures.
"""


def batch_flow(
    batch: Batch, *, mark: bool, on_split: Callable[[], None]
) -> Generator[Batch, EmbeddingArray, list[BatchOutcome]]:
    """The decisions about one batch, as a generator the shells drive (like httpx's auth flows).

    It yields each (sub-)batch to send and is sent the rows, or thrown the error. A batch the
    endpoint refuses as too large is split in half, down to a single input, which then fails alone
    with its index. With `mark` a 400 is split the same way to find the input it was about, and
    errors come back as outcomes instead of being raised, except those fatal to the whole call
    (401, 403, 404, credentials), which are raised whatever `mark` says.
    """
    try:
        rows = yield batch
    except ClipClientError as exc:
        too_large = isinstance(exc, PayloadTooLargeError)
        if len(batch) > 1 and (too_large or (mark and isinstance(exc, BadRequestError))):
            on_split()
            left, right = batch.halves()
            first = yield from batch_flow(left, mark=mark, on_split=on_split)
            return first + (yield from batch_flow(right, mark=mark, on_split=on_split))
        if len(batch) == 1 and isinstance(exc, _ABOUT_AN_INPUT):
            # Only a refusal of the input itself names it; a 404, 401, 403, 5xx or timeout is about
            # the endpoint, the credentials or the network, whichever input happened to be sent.
            exc.index = batch.indices[0]
        if not mark or isinstance(exc, _FATAL_TO_THE_CALL):
            raise
        return [(batch, exc)]
    return [(batch, rows)]


_Request = TypeVar("_Request")
_Answer = TypeVar("_Answer")
_Result = TypeVar("_Result")


def drive(flow: Generator[_Request, _Answer, _Result], send: Callable[[_Request], _Answer]) -> _Result:
    """Run a `batch_flow` (or any flow that yields requests and is sent their answers or
    thrown their `ClipClientError`, such as `_check.check_flow`) with a blocking `send`."""
    request = next(flow)
    while True:
        try:
            rows = send(request)
        except ClipClientError as exc:
            step = partial(flow.throw, exc)
        else:
            step = partial(flow.send, rows)
        try:
            request = step()
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def adrive(
    flow: Generator[_Request, _Answer, _Result], send: Callable[[_Request], Awaitable[_Answer]]
) -> _Result:
    """`drive` with an awaitable `send`."""
    request = next(flow)
    while True:
        try:
            rows = await send(request)
        except ClipClientError as exc:
            step = partial(flow.throw, exc)
        else:
            step = partial(flow.send, rows)
        try:
            request = step()
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------------
# One embed call's state


class EmbedJob:
    """Plans the batches of one embed call and hands the answers back in input order.

    The shells feed it items (`add`, `input_failed`), send the batches it closes however they
    like (threads, tasks), report each batch's outcomes (`settle`) and take the rows that are ready
    (`ready`), strictly in input order. Rows wait here only until the ones before them are done,
    so memory is bounded by the batches in flight, not by the input. It owns no I/O.
    """

    def __init__(
        self,
        planner: BatchPlanner,
        *,
        mark: bool = False,
        deliver_first: bool = False,
        normalize: bool = False,
        endpoint: str | None = None,
        progress: Any | None = None,
        dim_hint: int | None = None,
        window: int = 8,
        cache: CacheView | None = None,
        answer_hint: str | None = BACKEND_HINT,
    ) -> None:
        self.planner = planner
        self.answer_hint = answer_hint
        """What a wrong answer's error advises: a backend's contract (the default), or None for a
        serving endpoint's (`ResponseFormatError`'s own: the endpoint must serve a CLIP model)."""
        # The embedding cache, looked up as each input is planned; its misses' digests wait in
        # `_digests` until their batch's rows come back, and are stored then (never a failure).
        self.cache = cache
        self._digests: dict[int, bytes | None] = {}
        self.window = window
        # Rows finished but held behind an earlier, slower batch: up to another window's worth, so
        # the other request slots keep working past a slow reply, and memory stays bounded by about
        # two windows of batches whatever the input's length.
        self.backlog_cap = window * planner.max_items
        self.mark = mark
        self.deliver_first = deliver_first
        """Without `mark`: a bad input's error waits in line, so every row before it is handed over
        first (`ready` raises it when its turn comes); the shell stops planning (`halted`)."""
        self.halted = False
        self.normalize = normalize
        self.endpoint = endpoint
        self.progress = progress
        self.dim: int | None = None
        self.dim_hint = dim_hint
        self.failures: list[EmbeddingFailure] = []
        self._dim_lock = threading.Lock()
        self._waiting: dict[int, EmbeddingArray | BaseException] = {}
        self._next = 0

    def add(self, index: int, payload: Any, nbytes: int = 0) -> Batch | None:
        """Plan one input; returns the batch it closed, if any. An input found in the cache is done
        at once (no batch, no request). An input too large for a request on its own fails alone,
        like any other bad input (raised, or marked with `mark`)."""
        if self.cache is not None:
            answered = self.dim is not None
            width = self.dim if answered else self.dim_hint
            digest, row = self.cache.lookup(payload, width=width, answered=answered)
            if row is not None:
                self._waiting[index] = self._checked(row[None, :])[0]
                self._tick(1)
                return None
            self._digests[index] = digest
        try:
            batch = self.planner.add(index, payload, nbytes)
            if batch is None and self._awaiting_width():
                # The cache trusts no row before the backend's first answer fixes the width: send
                # this one input alone now, and plan the rest once it has answered (`must_wait`).
                batch = self.planner.flush()
            return batch
        except InvalidInputError as exc:
            self._digests.pop(index, None)
            self.input_failed(index, exc)
            return None

    def flush(self) -> Batch | None:
        return self.planner.flush()

    def input_failed(self, index: int, error: ClipClientError) -> None:
        """An input that could not be prepared: raised (at once, or with `deliver_first` when its
        turn comes, the shell planning nothing after it), or marked and skipped (it costs no
        request)."""
        if not self.mark and not self.deliver_first:
            raise error
        self._waiting[index] = error
        self.halted = not self.mark
        if self.mark:
            self._tick(1)

    def settle(self, outcomes: list[BatchOutcome]) -> None:
        for batch, outcome in outcomes:
            digests = [self._digests.pop(i, None) for i in batch.indices]
            if isinstance(outcome, BaseException):
                for i in batch.indices:
                    self._waiting[i] = outcome
            else:
                if self.cache is not None:
                    self.cache.store_rows(digests, outcome)  # raw rows, before normalisation
                rows = self._checked(outcome)
                for i, row in zip(batch.indices, rows, strict=True):
                    self._waiting[i] = row
            self._tick(len(batch))

    def ready(self, final: bool = False) -> Iterator[tuple[int, EmbeddingArray, ClipClientError | None]]:
        """`(index, row, error)` for each input whose turn has come. A failed input's NaN row needs
        the embedding width, so it waits for the first success (or for `final`)."""
        while self._next in self._waiting:
            item = self._waiting[self._next]
            if isinstance(item, ClipClientError):
                if not self.mark:  # a stream's bad input, reached after every row before it
                    del self._waiting[self._next]
                    raise item
                if self.dim is None and not final:
                    return
                row = np.full(self.dim or self.dim_hint or DEFAULT_EMBEDDING_DIM, np.nan, dtype=np.float32)
                self.failures.append(EmbeddingFailure(self._next, item))
                yield self._next, row, item
            else:
                assert not isinstance(item, BaseException)
                yield self._next, item, None
            del self._waiting[self._next]
            self._next += 1

    @property
    def emitted(self) -> int:
        return self._next

    def resize(self, window: int) -> None:
        """Keep up to `window` batches in flight from now on (set once the backend knows how many
        requests it runs at once: `max_concurrency="auto"` learns it on the first request)."""
        self.window = window
        self.backlog_cap = window * self.planner.max_items

    def must_wait(self, in_flight: int) -> bool:
        """Whether the shell should wait for a batch to finish before sending more: when `window`
        batches are in flight, too many finished rows wait behind a slow one, or the cache waits
        for the call's first answer to confirm the width. Batches are waited on as they finish, in
        any order, so one slow reply never idles the other request slots."""
        return in_flight > 0 and (
            in_flight >= self.window or len(self._waiting) > self.backlog_cap or self._awaiting_width()
        )

    def _awaiting_width(self) -> bool:
        """Whether the call waits for the backend's first answer before it trusts the cache: a
        backend whose identity in the cache key is not confirmed (`CacheView.confirmed`), and no
        answer yet."""
        return self.cache is not None and not self.cache.confirmed and self.dim is None

    def accept(self, batch: Batch, rows: object) -> EmbeddingArray:
        """What a backend answered for `batch`, checked before it is taken as rows: a 2-D array of
        finite numbers, one row per input, as wide as the backend declared and as every other batch
        of the call. Called where the batch is sent (any thread or task), inside the batch's flow,
        so a wrong answer is marked like any other failure with `on_error="mark"`.

        Raises:
            ResponseFormatError: the answer is not such an array.
        """

        def fail(message: str) -> ResponseFormatError:
            return ResponseFormatError(message, endpoint=self.endpoint, hint=self.answer_hint)

        if not isinstance(rows, np.ndarray):
            raise fail(f"the backend answered a {type(rows).__name__}, not a float32 array")
        if rows.ndim != 2 or rows.shape[0] != len(batch):
            raise fail(f"sent {len(batch)} inputs but got an array of shape {rows.shape} back")
        if rows.dtype.kind not in "iuf":
            raise fail(f"the backend answered {rows.dtype} values, not numbers")
        width = int(rows.shape[1])
        if self.dim_hint is not None and width != self.dim_hint:
            raise fail(f"the backend declares dim={self.dim_hint} but answered rows of {width}")
        with self._dim_lock:
            if self.dim is None:
                self.dim = width
            elif width != self.dim:
                raise fail(f"embedding width changed between requests ({self.dim} then {width})")
        out = rows.astype(np.float32, copy=False)
        if not np.isfinite(out).all():
            bad = int(np.argwhere(~np.isfinite(out))[0][0])
            raise fail(f"row {bad} holds NaN or infinite values")
        return out

    def _checked(self, rows: EmbeddingArray) -> EmbeddingArray:
        """Rows `accept` let through (or a test handed in), normalised if asked; the first
        width seen is the call's, for the NaN rows of failures."""
        if self.dim is None:
            with self._dim_lock:
                self.dim = self.dim if self.dim is not None else int(rows.shape[1])
        return l2_normalize(rows) if self.normalize else rows

    def _tick(self, n: int) -> None:
        if self.progress is not None:
            self.progress.update(n)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.cache is not None:
            self.cache.finish()  # the call's rows are in the cache file when the call returns


class Collector:
    """The rows of one `embed_*` call, as they come out of `EmbedJob.ready`, into one float32
    array of known length; with `mark`, into an [`EmbeddingResult`][clip_client.EmbeddingResult] listing the
    failures."""

    def __init__(self, total: int, *, mark: bool = False) -> None:
        self.total = total
        self.mark = mark
        self.failures: list[EmbeddingFailure] = []
        self._out: EmbeddingArray | None = None
        self._filled = 0

    def put(self, index: int, row: EmbeddingArray, error: ClipClientError | None = None) -> None:
        if self._out is None:
            self._out = np.empty((self.total, row.shape[0]), dtype=np.float32)
        self._out[index] = row
        self._filled += 1
        if error is not None:
            self.failures.append(EmbeddingFailure(index, error))

    def result(self, dim: int | None = None) -> EmbeddingArray | EmbeddingResult:
        if self._filled != self.total:  # a bug, never a user error: refuse to return a partial array
            raise RuntimeError(f"internal error: {self._filled} of {self.total} rows filled")
        array = self._out if self._out is not None else empty_result(dim)
        return EmbeddingResult(array, self.failures) if self.mark else array
