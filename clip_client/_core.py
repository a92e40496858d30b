"""The sans-I/O heart shared by the sync and async clients.

Input checks, batch planning by count and bytes, wire encoding, response validation and
order-preserving reassembly all live here, once. Nothing in this module opens a socket, starts a
thread or sleeps: the client shells feed it items and responses and do the waiting themselves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ._constants import DEFAULT_EMBEDDING_DIM
from .errors import InvalidInputError, ResponseFormatError

_orjson: Any
try:  # optional: parses the predictions several times faster than the standard library
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised in environments without the extra
    _orjson = None

Kind = Literal["text", "image"]
FloatArray = npt.NDArray[np.float32]

__all__ = [
    "Batch",
    "BatchPlanner",
    "EmbedJob",
    "Kind",
    "check_image_list",
    "check_text",
    "check_text_list",
    "decode_json",
    "empty_result",
    "encode_body",
    "encode_record",
    "l2_normalize",
    "parse_predictions",
]


# --------------------------------------------------------------------------------------------------
# Input checks


def check_text(text: object, index: int | None) -> str:
    """A text the model can take, or an :class:`InvalidInputError` naming ``index``."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raise InvalidInputError("texts must be str, got bytes; decode them first", index=index)
    if not isinstance(text, str):
        raise InvalidInputError(f"texts must be str, got {type(text).__name__}", index=index)
    if not text:
        raise InvalidInputError("text is empty; CLIP has nothing to embed", index=index)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"text is not valid Unicode (lone surrogate at character {exc.start}); it was probably "
            "decoded from bytes with errors='surrogateescape'",
            index=index,
        ) from None
    return text


def check_text_list(texts: object) -> list[str]:
    """Every text checked up front: text checks are cheap, so a bad one costs no request at all."""
    if isinstance(texts, str):
        raise TypeError("embed_texts() takes a list of strings; for one string use embed_text(text)")
    if isinstance(texts, (bytes, bytearray, memoryview)) or not isinstance(texts, Iterable):
        raise TypeError(f"embed_texts() takes a list of strings, got {type(texts).__name__}")
    return [check_text(t, i) for i, t in enumerate(texts)]


def check_image_list(images: object) -> Sequence[object]:
    """The images as a sequence, refusing a single image passed where a list belongs."""
    from PIL import Image

    single = (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)
    if isinstance(images, single) or (isinstance(images, np.ndarray) and images.ndim < 4):
        raise TypeError(
            f"embed_images() takes a list of images, got a single {type(images).__name__}; "
            "for one image use embed_image(image)"
        )
    if isinstance(images, np.ndarray):  # a stack of images, N x H x W x C
        return list(images)
    if not isinstance(images, Iterable):
        raise TypeError(f"embed_images() takes a list of images, got {type(images).__name__}")
    return images if isinstance(images, Sequence) else list(images)


# --------------------------------------------------------------------------------------------------
# Wire encoding

_BODY_HEAD = b'{"dataframe_records":['
_BODY_TAIL = b"]}"
#: Bytes of an empty body; each record adds its own length plus one separator.
BODY_OVERHEAD = len(_BODY_HEAD) + len(_BODY_TAIL)


def encode_record(value: str | bytes) -> bytes:
    """One ``{"input": ...}`` record. ``bytes`` must be base64 (needs no JSON escaping)."""
    if isinstance(value, bytes):
        return b'{"input":"' + value + b'"}'
    return b'{"input":' + json.dumps(value).encode("ascii") + b"}"


def encode_body(records: Sequence[bytes]) -> bytes:
    """The request body, joined once from pre-encoded records (no image byte is copied twice)."""
    return _BODY_HEAD + b",".join(records) + _BODY_TAIL


# --------------------------------------------------------------------------------------------------
# Batch planning


@dataclass
class Batch:
    """Consecutive inputs sent together. ``indices`` are positions in the caller's input."""

    indices: list[int] = field(default_factory=list)
    payloads: list[Any] = field(default_factory=list)
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.indices)


class BatchPlanner:
    """Packs items into batches of at most ``max_items`` and, when ``max_bytes`` is set, at most
    ``max_bytes`` of request body. Batches hold consecutive inputs, so order is never in doubt."""

    def __init__(self, max_items: int, max_bytes: int | None) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._current = Batch(nbytes=BODY_OVERHEAD if max_bytes is not None else 0)

    def add(self, index: int, payload: Any, nbytes: int = 0) -> Batch | None:
        """Add one item; returns the batch it closed, if adding it closed one."""
        if self.max_bytes is not None and BODY_OVERHEAD + nbytes > self.max_bytes:
            raise InvalidInputError(
                f"this input alone makes a {BODY_OVERHEAD + nbytes:,}-byte request, over "
                f"max_request_bytes={self.max_bytes:,}; shorten it (or, for an image, use "
                "image_format='jpeg')",
                index=index,
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
# Responses


def decode_json(content: bytes) -> Any:
    if _orjson is not None:
        return _orjson.loads(content)
    return json.loads(content)


def parse_predictions(
    content: bytes, expected_rows: int, *, endpoint: str | None = None, request_id: str | None = None
) -> FloatArray:
    """Validate a 200 answer and return its rows as float32.

    Accepts rows shaped ``[floats]`` or ``{"<one key>": [floats]}``; insists on one row per record,
    equal row lengths and finite values, so a wrong answer is an error, never a wrong array.
    """

    def fail(msg: str) -> ResponseFormatError:
        return ResponseFormatError(msg, endpoint=endpoint, request_id=request_id)

    try:
        doc = decode_json(content)
    except ValueError:
        excerpt = content[:120].decode("utf-8", "replace").strip()
        raise fail(f"the answer is not JSON (starts with {excerpt!r})") from None
    rows: Any
    if isinstance(doc, dict) and "predictions" in doc:
        rows = doc["predictions"]
    elif isinstance(doc, dict):
        raise fail(f"the answer has no 'predictions' key (keys: {sorted(doc)[:5]})")
    else:
        raise fail(f"the answer is a JSON {type(doc).__name__}, expected an object with 'predictions'")
    if isinstance(rows, dict) and len(rows) == 1:  # {"predictions": {"embedding": [[...], ...]}}
        rows = next(iter(rows.values()))
    if not isinstance(rows, list):
        raise fail(f"'predictions' is a {type(rows).__name__}, expected a list of rows")
    if len(rows) != expected_rows:
        raise fail(f"sent {expected_rows} records but got {len(rows)} rows back")
    if rows and isinstance(rows[0], dict):
        rows = [_unwrap_row(r, i, fail) for i, r in enumerate(rows)]
    try:
        arr = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError):
        lengths = sorted({len(r) if isinstance(r, list) else -1 for r in rows})
        raise fail(f"rows are not equal-length lists of numbers (row lengths seen: {lengths[:5]})") from None
    if expected_rows and (arr.ndim != 2 or arr.shape[1] == 0):
        raise fail(f"expected a 2-D array of embeddings, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int(np.argwhere(~np.isfinite(arr))[0][0])
        raise fail(f"row {bad} holds NaN or infinite values")
    return arr


def _unwrap_row(row: Any, i: int, fail: Any) -> Any:
    if not isinstance(row, dict) or len(row) != 1:
        raise fail(f"row {i} is not a list of floats nor an object with a single key")
    return next(iter(row.values()))


def l2_normalize(arr: FloatArray) -> FloatArray:
    # Norms in float64: float32 squares of tiny values would underflow to a zero norm.
    norms = np.linalg.norm(arr.astype(np.float64), axis=1, keepdims=True)
    np.maximum(norms, np.finfo(np.float64).tiny, out=norms)
    out: FloatArray = (arr / norms).astype(np.float32, copy=False)
    return out


def empty_result(dim: int | None = None) -> FloatArray:
    return np.zeros((0, dim or DEFAULT_EMBEDDING_DIM), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# One embed call's state


class EmbedJob:
    """Plans the batches of one embed call and puts the answers back in input order.

    The shells feed it items (``add``), send the batches it hands back however they like (threads,
    tasks, in any order), and report each answer (``complete``). It owns no I/O.
    """

    def __init__(
        self,
        total: int,
        planner: BatchPlanner,
        *,
        endpoint: str | None = None,
        progress: Any | None = None,
    ) -> None:
        self.total = total
        self.planner = planner
        self.endpoint = endpoint
        self.progress = progress
        self._out: FloatArray | None = None
        self._filled = 0

    def add(self, index: int, payload: Any, nbytes: int = 0) -> Batch | None:
        return self.planner.add(index, payload, nbytes)

    def flush(self) -> Batch | None:
        return self.planner.flush()

    def complete(self, batch: Batch, rows: FloatArray) -> None:
        if rows.shape[0] != len(batch):
            raise ResponseFormatError(
                f"sent {len(batch)} inputs but got {rows.shape[0]} rows back", endpoint=self.endpoint
            )
        if self._out is None:
            self._out = np.empty((self.total, rows.shape[1]), dtype=np.float32)
        elif rows.shape[1] != self._out.shape[1]:
            raise ResponseFormatError(
                f"embedding width changed between requests ({self._out.shape[1]} then {rows.shape[1]})",
                endpoint=self.endpoint,
            )
        first = batch.indices[0]
        if batch.indices[-1] - first + 1 == len(batch):  # consecutive: one slice copy
            self._out[first : first + len(batch)] = rows
        else:
            self._out[batch.indices] = rows
        self._filled += len(batch)
        if self.progress is not None:
            self.progress.update(len(batch))

    def result(self, normalize: bool) -> FloatArray:
        if self._filled != self.total:  # a bug, never a user error: refuse to return a partial array
            raise RuntimeError(f"internal error: {self._filled} of {self.total} rows filled")
        out = self._out if self._out is not None else empty_result()
        return l2_normalize(out) if normalize else out

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
