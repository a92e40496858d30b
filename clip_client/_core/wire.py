"""The wire format of a serving endpoint's `/invocations`: request bodies out, predictions in.

MLflow's scoring protocol (`dataframe_records`) encoded without building the JSON tree, and the
answer parsed and checked row by row; DESIGN.md has the protocol facts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import DEFAULT_EMBEDDING_DIM
from ..errors import (
    ResponseFormatError,
)
from ..types import EmbeddingArray
from .secrets import excerpt

if TYPE_CHECKING:
    pass

_orjson: Any
try:  # optional: parses the predictions several times faster than the standard library
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised in environments without the extra
    _orjson = None

__all__ = [
    "BACKEND_HINT",
    "BODY_OVERHEAD",
    "RECORD_OVERHEAD",
    "decode_json",
    "empty_result",
    "encode_body",
    "encode_record",
    "l2_normalize",
    "parse_predictions",
    "record_size",
]


# --------------------------------------------------------------------------------------------------
# Wire encoding

_BODY_HEAD = b'{"dataframe_records":['
_BODY_TAIL = b"]}"
_RECORD_OPEN = b'{"input":"'
_RECORD_CLOSE = b'"}'
_RECORD_SEP = _RECORD_CLOSE + b"," + _RECORD_OPEN
# Bytes of an empty body; each record adds `record_size` plus one separating comma.
BODY_OVERHEAD = len(_BODY_HEAD) + len(_BODY_TAIL)
RECORD_OVERHEAD = len(_RECORD_OPEN) + len(_RECORD_CLOSE)


def encode_record(value: str | bytes) -> bytes:
    """The JSON string content of one record's `input`: base64 `bytes` as they are (they need no
    escaping), a text JSON-escaped to ASCII, so its length is its exact size on the wire."""
    if isinstance(value, bytes):
        return value
    return json.dumps(value)[1:-1].encode("ascii")


def record_size(payload: bytes) -> int:
    """Bytes one record adds to a body (`{"input":"..."}`), separator not included."""
    return len(payload) + RECORD_OVERHEAD


def encode_body(payloads: Sequence[bytes]) -> bytes:
    """The request body in one join: every image's base64 is copied exactly once, into the body."""
    if not payloads:
        return _BODY_HEAD + _BODY_TAIL
    parts = [_BODY_HEAD + _RECORD_OPEN]
    for payload in payloads:
        parts.append(payload)
        parts.append(_RECORD_SEP)
    parts[-1] = _RECORD_CLOSE + _BODY_TAIL
    return b"".join(parts)


# --------------------------------------------------------------------------------------------------
# Responses


def decode_json(content: bytes) -> Any:
    """JSON, with orjson when installed. What orjson refuses is read again by the standard library,
    which takes the bare `NaN`/`Infinity` that Python's json (MLflow's scoring server among its
    users) writes for non-finite floats: such an answer is then refused for its values, by name,
    rather than as "not JSON"."""
    if _orjson is not None:
        try:
            return _orjson.loads(content)
        except ValueError:
            pass
    return json.loads(content)


_NOT_JSON = object()
BACKEND_HINT = (
    "A Backend's embed()/aembed() must return a float32 array of shape (len(payloads), dim) with finite "
    "values, rows in payload order"
)
"""What to check when a backend's answer is not rows: the one contract every backend keeps."""


def parse_predictions(
    content: bytes, expected_rows: int, *, endpoint: str | None = None, request_id: str | None = None
) -> EmbeddingArray:
    """Validate a 200 answer and return its rows as float32.

    Accepts rows shaped `[floats]` or `{"<one key>": [floats]}`; insists on one row per record,
    equal row lengths and finite values, so a wrong answer is an error, never a wrong array.
    """

    def fail(msg: str) -> ResponseFormatError:
        return ResponseFormatError(msg, endpoint=endpoint, request_id=request_id)

    try:
        doc = decode_json(content)
    except ValueError:
        doc = _NOT_JSON  # raised below, outside the handler: the parser's error holds the whole body
    if doc is _NOT_JSON:
        raise fail(f"the answer is not JSON (starts with {excerpt(content, 120)!r})")
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
    # The element type is inferred first, then checked: asking for float32 outright would take
    # numbers written as strings ("0.1") and booleans for numbers without a word. A JSON null makes
    # the inferred type "object"; converted, it is NaN, refused below with the row that holds it.
    try:
        arr = np.asarray(rows)
        if arr.dtype.kind == "O":
            arr = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError):
        lengths = sorted({len(r) if isinstance(r, list) else -1 for r in rows})
        raise fail(f"rows are not equal-length lists of numbers (row lengths seen: {lengths[:5]})") from None
    if arr.size and arr.dtype.kind not in "iuf":
        kind = {"U": "strings", "S": "strings", "b": "booleans"}.get(arr.dtype.kind, str(arr.dtype))
        raise fail(f"rows are not equal-length lists of numbers (they hold {kind})")
    arr = arr.astype(np.float32, copy=False)
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


def l2_normalize(arr: EmbeddingArray) -> EmbeddingArray:
    # Norms in float64: float32 squares of tiny values would underflow to a zero norm.
    norms = np.linalg.norm(arr.astype(np.float64), axis=1, keepdims=True)
    np.maximum(norms, np.finfo(np.float64).tiny, out=norms)
    out: EmbeddingArray = (arr / norms).astype(np.float32, copy=False)
    return out


def empty_result(dim: int | None = None) -> EmbeddingArray:
    return np.zeros((0, dim or DEFAULT_EMBEDDING_DIM), dtype=np.float32)
