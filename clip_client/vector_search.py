"""Databricks Vector Search over CLIP embeddings: one call to index a table that
[`embed_table`][clip_client.spark.embed_table] wrote, one call to search it with a text, an image or a
vector, embedded by the client's own model.

```python
from clip_client import ClipClient
from clip_client.vector_search import VectorIndex, create_index

with ClipClient(normalize=True) as client:
    create_index("main.photos.clip_index", source_table="main.photos.embedded",
                 endpoint="clip-vs", client=client)
    hits = VectorIndex("main.photos.clip_index", client=client).search("a red car", k=5)
    hits.to_pandas()  # path, score (cosine), best first
```

Everything goes through databricks-sdk's `vector_search_endpoints` and `vector_search_indexes`
services (REST under `/api/2.0/vector-search/`, generally available in the pinned databricks-sdk;
its newer `/api/2.0/ai-search/` service is not used) and Unity Catalog's `tables.get`, with the
workspace and credentials the client already resolved (or `workspace=`, a `WorkspaceClient`).

Scores. Vector Search ranks by L2 distance and answers the similarity `1 / (1 + d^2)` (Databricks,
"Query a vector search index"). For unit vectors `d^2 = 2 - 2 cos`, so the ranking is the cosine
ranking and the cosine is `1 - (1/score - 1) / 2`: that is what `search` returns, the same scale as
[`cosine_topk`][clip_client.cosine_topk]. It holds when the indexed vectors are unit-length: `upsert`
normalises every row it sends; a Delta Sync index's table must hold normalised embeddings
(`embed_table(..., normalize=True)`, or a client built with `normalize=True`). Queries are
normalised here.

Limits (Databricks, "Vector Search limits" and the REST reference of `query`/`query-next-page`): a
query answers at most 10,000 results, in pages of 1,000 (`next_page_token`); `search` follows the
pages. Upserts are split into requests of at most `UPSERT_MAX_BYTES` each, measured on the JSON
body actually sent.

Sync and async: `VectorIndex` (with a `ClipClient`) and `AsyncVectorIndex` (with an `AsyncClipClient`)
drive the same plans (`_describe_steps`, `_search_steps`, `_write_steps`): generators that yield
each service call and receive its answer; the sync shell calls it, the async shell runs it in a
worker thread (databricks-sdk is blocking).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote, urlencode

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._constants import LOGGER_NAME
from ._core.secrets import redact, register
from .errors import (
    DimensionMismatchError,
    IndexNotReadyError,
    IndexSpecMismatchError,
    SourceTableError,
    UpsertFailedError,
    VectorSearchError,
    VectorSearchNotFoundError,
    VectorSearchPermissionError,
)

if TYPE_CHECKING:
    import pandas as pd
    from databricks.sdk import WorkspaceClient

    from ._client import AsyncClipClient, ClipClient

__all__ = [
    "DELETE_MAX_QUERY_BYTES",
    "MAX_RESULTS",
    "PAGE_SIZE",
    "UPSERT_MAX_BYTES",
    "AsyncVectorIndex",
    "IndexDescription",
    "VectorIndex",
    "VectorSearchResult",
    "create_direct_index",
    "create_index",
    "plan_deletes",
    "plan_upserts",
    "wait_online",
]

logger = logging.getLogger(LOGGER_NAME)

MAX_RESULTS = 10_000
"""The most results one query answers (Databricks, "Vector Search limits"); `k` above it is refused."""

PAGE_SIZE = 1_000
"""Results per page of a query's answer; more are fetched with `query-next-page` and its token."""

UPSERT_MAX_BYTES = 10_000_000
"""The most bytes of one `upsert-data` request body that `upsert` sends (10 MB, decimal). Databricks
documents 10 MB for a query's answer ("Vector Search limits"); no figure for an upsert's body was
found in the pages checked for this release, so the same bound is used, below Model Serving's 16 MB.
Pass `max_request_bytes=` to `upsert` to use another."""

DELETE_MAX_QUERY_BYTES = 6_000
"""The most bytes of the query string of one `delete-data` request (`DELETE` carries the keys in the
URL, `?primary_keys=...&primary_keys=...`): well under the 8 KiB request line that common proxies
accept."""

DEFAULT_TIMEOUT = 3600.0
"""Seconds `create_index`/`create_direct_index`/`sync` wait for the index to come online, at most."""

DEFAULT_POLL_INTERVAL = 10.0
"""Seconds between two reads of the index's state while waiting."""

Pipeline = Literal["TRIGGERED", "CONTINUOUS"]
QueryKind = Literal["text", "image", "vector"]

_T = TypeVar("_T")

# The states in which an online index is still applying a sync that was asked for.
_UPDATING = ("ONLINE_TRIGGERED_UPDATE", "ONLINE_UPDATING_PIPELINE_RESOURCES")


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class VectorSearchResult:
    """The `k` best rows of the index for the query, best first: the same layout as
    [`TopK`][clip_client.TopK] (arrays of shape `(1, k)` for the one query), with each row's
    primary key in place of a row number.

    Attributes:
        keys: object array, shape `(1, k)`: each result's primary key, as the service answered it
            (str for a `string` key, int for an integer one). `k` is at most the number of rows that
            match `filters`.
        scores: float32, shape `(1, k)`: the cosine similarity (unitless, in `[-1, 1]`) of the
            query to each row, from the service's `1 / (1 + d^2)` (see the module's docstring).
        columns: each requested column's values, in result order (a list of length `k`).
        primary_key: the name of the index's primary key column.
    """

    keys: NDArray[np.object_]
    scores: NDArray[np.float32]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    primary_key: str = "path"

    @property
    def indices(self) -> NDArray[np.int64]:
        """The keys as int64, shape `(1, k)`, where the primary key is an integer (row numbers
        kept as ids): `TopK.indices`' counterpart. Raises TypeError for other keys (use `keys`)."""
        try:
            return np.asarray(self.keys, dtype=np.int64).reshape(self.keys.shape)
        except (TypeError, ValueError):
            raise TypeError(
                f"the index's primary key {self.primary_key!r} is not an integer: use .keys"
            ) from None

    def __len__(self) -> int:
        return int(self.keys.shape[1])

    def to_pandas(self) -> pd.DataFrame:
        """One row per result, best first: the primary key column, `score`, then each requested
        column."""
        import pandas as pd

        data: dict[str, Any] = {self.primary_key: list(self.keys[0]), "score": self.scores[0]}
        for name, values in self.columns.items():
            if name not in data:
                data[name] = values
        return pd.DataFrame(data)


@dataclass(frozen=True)
class IndexDescription:
    """What `get_index` says of an index, as this module uses it.

    Attributes:
        name: the index's Unity Catalog name.
        endpoint: its Vector Search endpoint.
        index_type: `"DELTA_SYNC"` or `"DIRECT_ACCESS"`.
        primary_key: its primary key column.
        embedding_column: its (self-managed) embedding vector column; None for an index that
            computes its own embeddings from a text column, which this module does not query.
        dim: that column's `embedding_dimension`; None as above.
        ready: whether the index answers queries.
        message: the index's own status message, verbatim.
        indexed_row_count: rows indexed, when the service says.
        source_table: a Delta Sync index's source table; None for Direct Access.
        pipeline_type: a Delta Sync index's `"TRIGGERED"` or `"CONTINUOUS"`; None for Direct Access.
        primary_key_type: a Direct Access index's primary key type from its `schema_json`
            (`"string"`, `"long"`...); None when the service does not say (Delta Sync).
    """

    name: str
    endpoint: str | None
    index_type: str | None
    primary_key: str | None
    embedding_column: str | None
    dim: int | None
    ready: bool
    message: str | None = None
    indexed_row_count: int | None = None
    source_table: str | None = None
    pipeline_type: str | None = None
    primary_key_type: str | None = None


# --------------------------------------------------------------------------------------------------
# Service calls and their refusals


@dataclass(frozen=True)
class _Call:
    """One databricks-sdk call, with what an error about it must say."""

    run: Callable[[], Any]
    action: str
    """What was asked, for messages: "read", "query", "create"..."""
    index: str | None = None
    endpoint: str | None = None
    needs: str = ""
    """The privileges a 403 lacks, as a sentence ending without a full stop."""
    subject: str | None = None
    """What the call reads, when not the index or the endpoint ("source table main.x.y")."""
    missing: str = (
        "Check the name (an index is named catalog.schema.index) and the workspace; list what exists with "
        "`databricks vector-search-indexes list-indexes ENDPOINT`"
    )
    """The advice of a 404."""


def _perform(call: _Call) -> Any:
    """Run `call`, mapping databricks-sdk's failures to this package's errors (outside the handler,
    so that no exception quoting the request is chained; only a refusal that databricks-sdk retried
    until it gave up, a 429 or 503, is chained as the error's `__cause__`: the service's own
    answer)."""
    from databricks.sdk.errors.base import DatabricksError

    cause: BaseException | None = None
    try:
        return call.run()
    except DatabricksError as exc:
        error = _refusal(exc, call)
    except TimeoutError as exc:
        # databricks-sdk retries a 429 or 503 until its `retry_timeout_seconds` (this package's
        # `sdk_config` bounds it), then raises TimeoutError from the last refusal: that refusal is
        # the cause to report, with the status and the service's own message.
        last = exc.__cause__
        if not isinstance(last, DatabricksError):
            error = _unreachable(exc, call)
        else:
            error, cause = _refusal(last, call, gave_up=str(exc)), last
    except OSError as exc:  # requests' connection errors are OSErrors
        error = _unreachable(exc, call)
    if cause is not None:
        raise error from cause
    raise error


def _unreachable(exc: OSError, call: _Call) -> VectorSearchError:
    return VectorSearchError(
        f"could not {call.action} {_what(call)}: {type(exc).__name__}: {exc}. Check the workspace "
        "host and the network",
        index=call.index,
        endpoint=call.endpoint,
    )


def _what(call: _Call) -> str:
    if call.subject is not None:
        return call.subject
    if call.index is not None:
        return f"index {call.index!r}"
    if call.endpoint is not None:
        return f"endpoint {call.endpoint!r}"
    return "the workspace"


_BUSY_ADVICE = {
    429: "Vector Search is rate-limiting this workspace's requests: wait a minute and retry, and lower the "
    "request rate (fewer concurrent searches or upserts, larger upsert batches)",
    503: "Vector Search (or the index's endpoint) is temporarily unavailable: retry later; if it lasts, "
    "check the endpoint's state under Compute > Vector Search",
}
"""What to do about a refusal that retrying later can cure."""


def _refusal(exc: Exception, call: _Call, gave_up: str | None = None) -> VectorSearchError:
    from ._remote.sdk_errors import sdk_message, sdk_status

    status = sdk_status(exc)
    code = getattr(exc, "error_code", None)
    said = " ".join(redact(sdk_message(exc)).split()).rstrip(". ")
    head = " ".join(x for x in (f"HTTP {status}" if status else "", code or "") if x) or "an error"
    text = f"could not {call.action} {_what(call)}: {head}: {said}"
    where: dict[str, Any] = {
        "index": call.index,
        "endpoint": call.endpoint,
        "status_code": status,
        "error_code": code,
    }
    if status == 403:
        return VectorSearchPermissionError(f"{text}. The identity needs {call.needs}", **where)
    if status == 404:
        return VectorSearchNotFoundError(f"{text}. {call.missing}", **where)
    if status in _BUSY_ADVICE:
        retried = f" (still refused when databricks-sdk's retries stopped: {gave_up})" if gave_up else ""
        return VectorSearchError(f"{text}{retried}. {_BUSY_ADVICE[status]}", **where)
    if status == 401:
        return VectorSearchError(
            f"{text}. Check DATABRICKS_TOKEN / DATABRICKS_HOST, the ~/.databrickscfg profile, or the OAuth "
            "client credentials",
            **where,
        )
    return VectorSearchError(text, **where)


def _query_needs(index: str) -> str:
    catalog, schema, _ = _parts(index)
    return (
        f"SELECT on the index {index}, USE CATALOG on {catalog} and USE SCHEMA on {catalog}.{schema}, "
        "and CAN USE on its Vector Search endpoint"
    )


def _write_needs(index: str) -> str:
    catalog, schema, _ = _parts(index)
    return (
        f"MODIFY on the index {index}, USE CATALOG on {catalog} and USE SCHEMA on {catalog}.{schema}, "
        "and CAN USE on its Vector Search endpoint"
    )


def _create_needs(index: str, endpoint: str, table: str | None = None) -> str:
    catalog, schema, _ = _parts(index)
    needs = (
        f"CREATE TABLE on the schema {catalog}.{schema} (with USE CATALOG on {catalog} and USE SCHEMA "
        f"on it), CAN MANAGE on the Vector Search endpoint {endpoint!r}"
    )
    return needs + (f", and SELECT on the source table {table}" if table else "")


def _parts(name: str) -> tuple[str, str, str]:
    parts = name.split(".")
    if len(parts) != 3 or not all(parts):
        return ("<catalog>", "<schema>", name)
    return (parts[0], parts[1], parts[2])


NAME_PART_MAX = 255
"""The most characters of one part of a Unity Catalog name (Databricks, "Names")."""

_REFUSED_IN_NAMES = frozenset("./\\?#%") | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}
"""Characters no part of a name may hold: Unity Catalog's (period, forward slash, the ASCII control
characters 00-1F, DELETE; space and all whitespace), and those that would change the URL a name
is put in (`\\`, `?`, `#`, `%`)."""


def name_problem(name: object, kind: str = "index") -> str | None:
    """Why `name` is not a Unity Catalog name of a `kind` (`"index"`, `"table"`), or None when it
    is one.

    The rule, from Databricks' "Names" page (SQL reference, "The following limitations apply for
    all object names in Unity Catalog"): three parts, `catalog.schema.object`, each 1 to 255
    characters, none of them a period, a space, a forward slash, an ASCII control character (00-1F
    hex) or DELETE (7F). Letters (any case; Unity Catalog stores them lowercase), digits,
    underscores and hyphens are the usual; other characters are allowed by Unity Catalog. This
    package also refuses any whitespace and `\\`, `?`, `#`, `%`, which would change the request's
    URL (`/api/2.0/vector-search/indexes/{name}`), so that a name can never reach another index
    or endpoint than the one it names.
    """
    shape = f"catalog.schema.{kind}"
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a str: give {shape}"
    parts = name.split(".")
    if len(parts) != 3 or not all(parts):
        return f"give three non-empty dotted parts, {shape}"
    for part in parts:
        if len(part) > NAME_PART_MAX:
            return f"a part is {len(part):,} characters long, over Unity Catalog's {NAME_PART_MAX}"
        bad = next((c for c in part if c in _REFUSED_IN_NAMES or c.isspace()), None)
        if bad is not None:
            return (
                f"part {part!r} holds {bad!r}: a part of a Unity Catalog name ({shape}) may not hold "
                "whitespace, '/', '\\', '?', '#', '%' or control characters"
            )
    return None


def _check_name(name: object, what: str = "name") -> str:
    problem = name_problem(name, "index" if what == "name" else "table")
    if problem is not None:
        raise ValueError(f"{what}={name!r} is not a Unity Catalog name: {problem}")
    assert isinstance(name, str)
    return name


# --------------------------------------------------------------------------------------------------
# The workspace and the client's width


def _workspace_of(client: ClipClient | AsyncClipClient, workspace: WorkspaceClient | None) -> WorkspaceClient:
    """`workspace`, or the workspace the client resolved (a remote client), or databricks-sdk's
    default chain (a local client). Every credential of it is registered for redaction."""
    from ._backend import InWorkspace
    from ._remote.workspace import resolve_workspace, sdk_config, workspace_client

    if workspace is None:
        backend = client.backend
        if isinstance(backend, InWorkspace):
            workspace = workspace_client(backend.workspace)
        else:  # the local model: the workspace from the environment, resolved as ClipClient() does
            from databricks.sdk import WorkspaceClient

            resolved = resolve_workspace()
            workspace = WorkspaceClient(config=resolved.config or sdk_config(host=resolved.host))
    config = workspace.config
    register(*(getattr(config, attr.name, None) for attr in config.attributes() if attr.sensitive))
    return workspace


def _check_client(client: object, wanted: Literal["sync", "async"], what: str) -> None:
    """Refuse, when it is built, a client of the other kind: an `AsyncClipClient` where a
    `ClipClient` is wanted (its embed calls answer coroutines) and the other way round."""
    from ._client import AsyncClipClient, ClipClient

    if wanted == "sync" and isinstance(client, AsyncClipClient):
        raise TypeError(
            f"{what} takes a ClipClient, not an AsyncClipClient: use AsyncVectorIndex with an AsyncClipClient"
        )
    if wanted == "async" and isinstance(client, ClipClient):
        raise TypeError(
            f"{what} takes an AsyncClipClient, not a ClipClient: use VectorIndex with a ClipClient"
        )


def _client_width(client: ClipClient) -> int:
    """The width of the client's embeddings: its backend's, when known before an answer (the local
    model), else that of one short text's embedding (one request to the text endpoint)."""
    dim = client.backend.dim
    if dim is not None:
        return int(dim)
    return int(np.asarray(client.embed_text("a photo")).shape[-1])


# --------------------------------------------------------------------------------------------------
# Describing an index: one heart for both shells


def _key_type(info: Any) -> str | None:
    """The primary key's type in a Direct Access index's `schema_json`, lowercase; None if absent."""
    raw = getattr(info.direct_access_index_spec, "schema_json", None)
    try:
        schema = json.loads(raw) if raw else None
    except ValueError:
        return None
    kind = schema.get(info.primary_key) if isinstance(schema, dict) else None
    return kind.strip().lower() if isinstance(kind, str) else None


def _described(name: str, info: Any) -> IndexDescription:
    """`get_index`'s answer (databricks-sdk's `VectorIndex`) as an `IndexDescription`."""
    spec = info.delta_sync_index_spec or info.direct_access_index_spec
    vectors = list(getattr(spec, "embedding_vector_columns", None) or [])
    column = vectors[0] if vectors else None
    status = info.status
    return IndexDescription(
        name=info.name or name,
        endpoint=info.endpoint_name,
        index_type=info.index_type.value if info.index_type is not None else None,
        primary_key=info.primary_key,
        embedding_column=column.name if column is not None else None,
        dim=column.embedding_dimension if column is not None else None,
        ready=bool(status.ready) if status is not None else False,
        message=redact(status.message) if status is not None and status.message else None,
        indexed_row_count=status.indexed_row_count if status is not None else None,
        source_table=getattr(info.delta_sync_index_spec, "source_table", None),
        pipeline_type=(
            info.delta_sync_index_spec.pipeline_type.value
            if info.delta_sync_index_spec is not None and info.delta_sync_index_spec.pipeline_type is not None
            else None
        ),
        primary_key_type=_key_type(info),
    )


def _describe_steps(ws: WorkspaceClient, name: str) -> Generator[_Call, Any, IndexDescription]:
    info = yield _Call(
        lambda: ws.vector_search_indexes.get_index(name), "read", index=name, needs=_query_needs(name)
    )
    return _described(name, info)


def _check_queryable(described: IndexDescription, width: int) -> None:
    """Refuse an index this client cannot query: not online, no self-managed vector column, or
    vectors of another width."""
    name = described.name
    if not described.ready:
        raise IndexNotReadyError(
            f"index {name!r} is not online{': ' + described.message if described.message else ''}. Wait for "
            "it (VectorIndex.sync(wait=True), or `clip-client index status`), or read its page in Catalog "
            "Explorer",
            state="NOT_READY",
            status_message=described.message,
            index=name,
            endpoint=described.endpoint,
        )
    if described.dim is None:
        raise VectorSearchError(
            f"index {name!r} has no self-managed embedding vector column (it computes its own embeddings "
            "from a text column): query it with databricks-sdk's query_text, or create a CLIP index with "
            "create_index/create_direct_index",
            index=name,
            endpoint=described.endpoint,
        )
    if described.dim != width:
        raise DimensionMismatchError(
            f"index {name!r} holds {described.dim}-d vectors, but the client embeds {width}-d ones: query "
            "it with the model that computed its embeddings (or re-embed the table and create the index "
            "again)",
            index_dim=described.dim,
            client_dim=width,
            index=name,
            endpoint=described.endpoint,
        )


# --------------------------------------------------------------------------------------------------
# Queries


def _query_input(
    query: object, text: str | None, image: object, vector: ArrayLike | None
) -> tuple[QueryKind, Any]:
    """What to embed (or send as it is): exactly one of `query`, `text=`, `image=`, `vector=`.

    A bare `query` is read by its type: a `str` is a text (a path or a base64 image as a `str`
    must go through `image=`, since a text can look like either); a 1-D numeric array or a list of
    numbers is a vector; anything else (bytes, a `pathlib.Path`, a PIL image, a 2-D or 3-D pixel
    array) is an image, as `embed_image` takes it.
    """
    given = [
        (n, v)
        for n, v in (("query", query), ("text", text), ("image", image), ("vector", vector))
        if v is not None
    ]
    if len(given) != 1:
        names = ", ".join(n for n, _ in given) or "none"
        raise TypeError(f"pass exactly one of query, text=, image=, vector= (got {names})")
    name, value = given[0]
    if name == "text":
        if not isinstance(value, str):
            raise TypeError(f"text= takes a str, got {type(value).__name__}")
        return "text", value
    if name == "image":
        return "image", value
    if name == "vector":
        return "vector", value
    if isinstance(value, str):
        return "text", value
    if isinstance(value, (bytes, bytearray, memoryview, os.PathLike)):
        return "image", value
    if isinstance(value, np.ndarray):
        return ("vector", value) if value.ndim == 1 else ("image", value)
    if isinstance(value, (list, tuple)) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        return "vector", value
    return "image", value


def _unit_vector(value: ArrayLike, what: str = "the query vector") -> NDArray[np.float32]:
    """`value` as a finite, non-zero 1-D float32 vector of unit length."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = (
        arr.astype(np.float32).reshape(-1) if arr.ndim == 2 and arr.shape[0] == 1 else arr.astype(np.float32)
    )
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what} must be 1-D (one vector), got shape {arr.shape}")
    norm = float(np.linalg.norm(arr.astype(np.float64)))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"{what} has a NaN or an infinity, or is all zeros: it has no direction to search")
    unit: NDArray[np.float32] = (arr / np.float32(norm)).astype(np.float32)
    return unit


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > MAX_RESULTS:
        raise ValueError(
            f"k={k:,} is over Vector Search's {MAX_RESULTS:,} results per query (Databricks, 'Vector Search "
            "limits'); narrow the query with filters="
        )
    return k


def _filters_json(filters: Mapping[str, Any] | None) -> str | None:
    """`filters` as the `filters_json` string the service takes: `json.dumps`, never formatted
    into text, so quotes and backslashes in values stay data."""
    if filters is None:
        return None
    if not isinstance(filters, Mapping) or not all(isinstance(key, str) for key in filters):
        raise TypeError(
            'filters must be a dict of column conditions, e.g. {"folder": "maize"} or {"id <": 5}'
        )
    try:
        return json.dumps(dict(filters), allow_nan=False, default=_numpy_json)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"filters must be JSON values (str, number, bool, None, lists of them): {exc}"
        ) from None


def _columns_list(columns: Iterable[str] | None, primary_key: str) -> list[str]:
    if isinstance(columns, str):
        raise TypeError("columns takes a list of column names, not a str")
    extra = list(columns or [])
    if not all(isinstance(c, str) and c for c in extra):
        raise TypeError("columns must be non-empty column names (str)")
    return list(dict.fromkeys([primary_key, *extra]))


def _cosines(scores: NDArray[np.float64]) -> NDArray[np.float32]:
    """The cosines of unit vectors whose Vector Search scores (`1 / (1 + d^2)`) are `scores`,
    clamped to `[-1, 1]` (float rounding); a score that is not positive gives -1."""
    with np.errstate(divide="ignore"):
        cos = 1.0 - (1.0 / scores - 1.0) / 2.0
    cos = np.where(scores > 0, cos, -1.0)
    out: NDArray[np.float32] = np.clip(cos, -1.0, 1.0).astype(np.float32)
    return out


def _search_steps(
    ws: WorkspaceClient,
    described: IndexDescription,
    vector: NDArray[np.float32],
    k: int,
    columns: list[str],
    filters_json: str | None,
) -> Generator[_Call, Any, VectorSearchResult]:
    """Query, then follow `next_page_token` until `k` rows or the last page."""
    name = described.name
    needs = _query_needs(name)
    query = vector.tolist()
    page = yield _Call(
        lambda: ws.vector_search_indexes.query_index(
            name, columns, query_vector=query, num_results=k, filters_json=filters_json
        ),
        "query",
        index=name,
        endpoint=described.endpoint,
        needs=needs,
    )
    rows: list[list[Any]] = []
    names: list[str] | None = None
    while True:
        manifest = page.manifest
        if names is None and manifest is not None and manifest.columns:
            names = [c.name for c in manifest.columns]
        data = page.result.data_array if page.result is not None else None
        rows.extend(data or [])
        token = page.next_page_token
        if len(rows) >= k or not token or not data:
            break
        page = yield _Call(
            functools.partial(
                ws.vector_search_indexes.query_next_page,
                name,
                endpoint_name=described.endpoint,
                page_token=token,
            ),
            "query",
            index=name,
            endpoint=described.endpoint,
            needs=needs,
        )
    return _result(rows[:k], names or [*columns, "score"], columns, described.primary_key or columns[0], name)


def _result(
    rows: list[list[Any]], names: list[str], columns: list[str], primary_key: str, index: str
) -> VectorSearchResult:
    """The answer's rows (the requested columns, then the score) as a `VectorSearchResult`."""
    try:
        key_at = names.index(primary_key)
        score_at = names.index("score") if "score" in names else len(names) - 1
        keys = np.empty((1, len(rows)), dtype=object)
        keys[0, :] = [row[key_at] for row in rows]
        scores = _cosines(np.array([row[score_at] for row in rows], dtype=np.float64)).reshape(1, len(rows))
        values = {
            c: [row[names.index(c)] for row in rows] for c in columns if c != primary_key and c in names
        }
    except (ValueError, IndexError, TypeError) as exc:
        raise VectorSearchError(
            f"index {index!r} answered a query in an unexpected shape ({type(exc).__name__}: {exc}); columns "
            f"{names}",
            index=index,
        ) from None
    return VectorSearchResult(keys=keys, scores=scores, columns=values, primary_key=primary_key)


# --------------------------------------------------------------------------------------------------
# Writes (Direct Access indexes): byte-bounded requests, partial failures named


def _numpy_json(value: Any) -> Any:
    """`json.dumps`' `default`: a numpy scalar or array as plain JSON data; anything else refused."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _json_value(value: Any) -> Any:
    """A numpy scalar or array as plain JSON data."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return value


_INTEGER_KEY_TYPES = frozenset({"long", "int", "integer", "bigint", "short", "smallint", "tinyint", "byte"})
"""Schema types of an integer primary key (Databricks' schema types and their Spark aliases)."""


def _short(value: object, most: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def _check_keys(keys: object, key_type: str | None, verb: str) -> list[str | int]:
    """`keys` as a list of plain primary keys (numpy scalars converted), each checked against the
    index's primary key type: `"string"` takes str, an integer type (`"long"`...) int (not bool);
    an unknown type takes str or int, all of one type. Refused before anything is sent.

    Raises:
        TypeError: `keys` is one str (or bytes) instead of a list, or a key of the wrong type (the
            message names its position and value).
        ValueError: an empty string key.
    """
    if isinstance(keys, str | bytes | bytearray | memoryview):
        raise TypeError(f"{verb}() takes a list of keys, not a {type(keys).__name__}")
    if isinstance(keys, Mapping) or not isinstance(keys, Iterable):
        raise TypeError(f"{verb}() takes a list of keys, got a {type(keys).__name__}")
    kind = (key_type or "").lower()
    wanted: type | None = str if kind == "string" else int if kind in _INTEGER_KEY_TYPES else None
    said = (
        f"the index's primary key is of type {kind!r}: give {'str' if wanted is str else 'int'} keys"
        if wanted is not None
        else "give str or int keys"
    )
    out: list[str | int] = []
    for i, given in enumerate(keys):
        # np.int64 -> int, np.str_ -> str; np.float64, np.bool_ are refused below
        key = given.item() if isinstance(given, np.generic) else given
        if (
            isinstance(key, bool)
            or not isinstance(key, str | int)
            or (wanted and not isinstance(key, wanted))
        ):
            raise TypeError(f"key {i} is {_short(key)} (a {type(key).__name__}): {said}")
        if isinstance(key, str) and not key:
            raise ValueError(f"key {i} is an empty string: a primary key must not be empty")
        out.append(str(key) if isinstance(key, str) else int(key))
        if wanted is None and type(out[-1]) is not type(out[0]):
            raise TypeError(
                f"key {i} is {_short(key)} (a {type(key).__name__}) but key 0 is {_short(out[0])} (a "
                f"{type(out[0]).__name__}): the keys of one index are all of one type"
            )
    return out


def _upsert_rows(
    keys: Sequence[Any],
    embeddings: ArrayLike,
    columns: Mapping[str, Sequence[Any]] | None,
    primary_key: str,
    embedding_column: str,
    dim: int,
    key_type: str | None = None,
) -> list[dict[str, Any]]:
    """One JSON-able row per key: the key, the unit-length embedding, the extra columns."""
    keys = _check_keys(keys, key_type, "upsert")
    matrix = np.asarray(embeddings)
    if matrix.dtype.kind not in "fiu" or matrix.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D float array (n, {dim}), got shape {matrix.shape}")
    if matrix.shape[0] != len(keys):
        raise ValueError(f"{len(keys)} keys but {matrix.shape[0]} embeddings: give one row per key")
    if matrix.shape[1] != dim:
        raise DimensionMismatchError(
            f"the embeddings are {matrix.shape[1]}-d, but the index holds {dim}-d vectors: embed them "
            "with the model the index was created for",
            index_dim=dim,
            client_dim=int(matrix.shape[1]),
        )
    if len(set(map(repr, keys))) != len(keys):
        raise ValueError("keys repeat: each row's primary key must be unique within one upsert")
    matrix = matrix.astype(np.float32)
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise ValueError(
            f"embedding {int(bad[0])} (key {keys[int(bad[0])]!r}) has a NaN or an infinity, or is all zeros: "
            "it has no direction to index"
        )
    unit = (matrix / norms[:, None].astype(np.float32)).astype(np.float32)
    extra = dict(columns or {})
    for name, values in extra.items():
        if name in (primary_key, embedding_column):
            raise ValueError(f"columns names {name!r}, which is the key or embedding column")
        if len(values) != len(keys):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(keys)} keys")
    rows = []
    for i, key in enumerate(keys):
        row: dict[str, Any] = {primary_key: key, embedding_column: unit[i].tolist()}
        for name, values in extra.items():
            row[name] = _json_value(values[i])
        rows.append(row)
    return rows


_ROW_SEPARATOR = len(", ")
"""Bytes between two rows of `inputs_json` (`json.dumps`' default item separator)."""

_UPSERT_BODY_OVERHEAD = len(json.dumps({"inputs_json": "[]"}))
"""Bytes of the request body around its rows: `{"inputs_json": "[` and `]"}`."""


def plan_upserts(rows: Sequence[Mapping[str, Any]], max_request_bytes: int) -> list[list[int]]:
    """Split `rows` into runs whose `upsert-data` body, `{"inputs_json": json.dumps(run)}` as
    databricks-sdk sends it, is at most `max_request_bytes` bytes: greedily, in order, each run as
    long as the bound allows. Returns the row numbers of each run.

    A row's cost is exact: its JSON, escaped again as part of the `inputs_json` string (every `"`
    becomes `\\"`), plus the `", "` that joins it to the one before.

    Raises:
        ValueError: one row alone is over the bound (the message names its number and size).
    """
    runs: list[list[int]] = []
    run: list[int] = []
    size = _UPSERT_BODY_OVERHEAD
    for i, row in enumerate(rows):
        cost = len(json.dumps(json.dumps(row)).encode()) - 2  # the row inside the outer JSON string
        alone = _UPSERT_BODY_OVERHEAD + cost
        if alone > max_request_bytes:
            raise ValueError(
                f"row {i} alone makes a {alone:,}-byte upsert request, over max_request_bytes="
                f"{max_request_bytes:,}: send fewer or shorter columns with it"
            )
        extra = cost + (_ROW_SEPARATOR if run else 0)
        if run and size + extra > max_request_bytes:
            runs.append(run)
            run, size, extra = [], _UPSERT_BODY_OVERHEAD, cost
        run.append(i)
        size += extra
    if run:
        runs.append(run)
    return runs


def plan_deletes(keys: Sequence[str], max_query_bytes: int = DELETE_MAX_QUERY_BYTES) -> list[list[str]]:
    """Split `keys` into runs whose `delete-data` query string (`primary_keys=a&primary_keys=b`)
    is at most `max_query_bytes` bytes."""
    runs: list[list[str]] = []
    run: list[str] = []
    size = 0
    for key in keys:
        cost = len(urlencode({"primary_keys": key})) + (1 if run else 0)
        if cost > max_query_bytes:
            raise ValueError(f"key {key[:60]!r}... is too long to delete in one request ({cost:,} bytes)")
        if run and size + cost > max_query_bytes:
            runs.append(run)
            run, size, cost = [], 0, cost - 1
        run.append(key)
        size += cost
    if run:
        runs.append(run)
    return runs


def _write_steps(
    ws: WorkspaceClient, name: str, requests: list[tuple[str, list[Any], Callable[[], Any]]]
) -> Generator[_Call, Any, int]:
    """Send each request in order; stop at the first that fails (a refusal, or an answer naming
    failed keys). Returns the rows written. The error lists every key not written: the failed ones,
    then those of the requests never sent."""
    written = 0
    for at, (verb, keys, run) in enumerate(requests):
        unsent = [str(k) for _, later, _ in requests[at + 1 :] for k in later]
        after = f"; the {len(unsent):,} keys after them were not sent" if unsent else ""
        into, done_, rows = ("from", "deleted", "keys") if verb == "delete" else ("into", "written", "rows")
        try:
            answer = yield _Call(run, f"{verb} rows of", index=name, needs=_write_needs(name))
        except VectorSearchError as exc:
            raise UpsertFailedError(
                f"{verb} of {len(keys):,} keys {into} index {name!r} was refused after {written:,} {rows} "
                f"were {done_} (keys not {done_}: {_first(keys)}){after}: {exc}",
                failed_keys=[str(k) for k in keys] + unsent,
                written=written,
                index=name,
                status_code=exc.status_code,
                error_code=exc.error_code,
            ) from exc.__cause__
        result = getattr(answer, "result", None)
        failed = [str(k) for k in getattr(result, "failed_primary_keys", None) or []]
        done = getattr(result, "success_row_count", None)
        written += int(done) if done is not None else len(keys) - len(failed)
        if failed:
            again = (
                "delete the keys not deleted again (deleting a deleted key again does no harm)"
                if verb == "delete"
                else "send the keys not written again (writing a written key again does no harm)"
            )
            raise UpsertFailedError(
                f"{verb}: index {name!r} did not {verb if verb == 'delete' else 'write'} {len(failed):,} of "
                f"{len(keys):,} keys: {_first(failed)}{after}. {written:,} {rows} were {done_}; {again}",
                failed_keys=failed + unsent,
                written=written,
                index=name,
            )
    return written


def _first(keys: Sequence[Any], most: int = 10) -> str:
    shown = ", ".join(repr(k) for k in keys[:most])
    return shown + (f" and {len(keys) - most:,} more" if len(keys) > most else "")


# --------------------------------------------------------------------------------------------------
# The shells


def _run(steps: Generator[_Call, Any, _T]) -> _T:
    """Drive a plan: each call is performed here, its answer (or error) sent back."""
    try:
        call = next(steps)
        while True:
            try:
                answer = _perform(call)
            except VectorSearchError as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(answer)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _arun(steps: Generator[_Call, Any, _T]) -> _T:
    """`_run` from an event loop: each (blocking) databricks-sdk call in a worker thread."""
    try:
        call = next(steps)
        while True:
            try:
                answer = await asyncio.to_thread(_perform, call)
            except VectorSearchError as exc:
                call = steps.throw(exc)
            else:
                call = steps.send(answer)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class _IndexBase:
    """What both shells share: the name, the workspace, the description read once."""

    def __init__(
        self,
        name: str,
        client: ClipClient | AsyncClipClient,
        workspace: WorkspaceClient | None,
        *,
        resolve: bool,
    ) -> None:
        self.name = _check_name(name)
        self._client = client
        self._workspace = None if workspace is None else _workspace_of(client, workspace)
        if resolve:
            self._workspace = self.workspace
        self._described: IndexDescription | None = None

    @property
    def workspace(self) -> WorkspaceClient:
        """The databricks-sdk `WorkspaceClient` the service is called with: `workspace=`, or the
        one of the client's workspace, built on first use (building it may read the workspace's
        host metadata over the network)."""
        if self._workspace is None:
            self._workspace = _workspace_of(self._client, None)
        return self._workspace

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def _search_plan(
        self,
        described: IndexDescription,
        vector: ArrayLike,
        k: int,
        columns: Iterable[str] | None,
        filters: Mapping[str, Any] | None,
    ) -> Generator[_Call, Any, VectorSearchResult]:
        unit = _unit_vector(vector)
        _check_queryable(described, int(unit.shape[0]))
        cols = _columns_list(columns, described.primary_key or "id")
        return _search_steps(self.workspace, described, unit, k, cols, _filters_json(filters))

    def _upsert_plan(
        self,
        described: IndexDescription,
        keys: Sequence[Any],
        embeddings: ArrayLike,
        columns: Mapping[str, Sequence[Any]] | None,
        max_request_bytes: int,
    ) -> Generator[_Call, Any, int]:
        if described.dim is None or described.embedding_column is None or described.primary_key is None:
            raise VectorSearchError(
                f"index {self.name!r} has no self-managed embedding vector column", index=self.name
            )
        if described.index_type != "DIRECT_ACCESS":
            raise VectorSearchError(
                f"index {self.name!r} is a {described.index_type} index: only a Direct Access index takes "
                "upserts (a Delta Sync index follows its table: write the table, then sync)",
                index=self.name,
            )
        rows = _upsert_rows(
            keys,
            embeddings,
            columns,
            described.primary_key,
            described.embedding_column,
            described.dim,
            described.primary_key_type,
        )
        indexes = self.workspace.vector_search_indexes
        requests: list[tuple[str, list[Any], Callable[[], Any]]] = []
        for run in plan_upserts(rows, max_request_bytes):
            body = json.dumps([rows[i] for i in run])
            keys_sent = [rows[i][described.primary_key] for i in run]
            requests.append(
                ("upsert", keys_sent, functools.partial(indexes.upsert_data_vector_index, self.name, body))
            )
        return _write_steps(self.workspace, self.name, requests)

    def _delete_plan(self, keys: Sequence[Any]) -> Generator[_Call, Any, int]:
        texts = [str(k) for k in _check_keys(keys, None, "delete")]
        indexes = self.workspace.vector_search_indexes
        requests: list[tuple[str, list[Any], Callable[[], Any]]] = [
            ("delete", list(run), functools.partial(indexes.delete_data_vector_index, self.name, run))
            for run in plan_deletes(texts)
        ]
        return _write_steps(self.workspace, self.name, requests)


class VectorIndex(_IndexBase):
    """A Databricks Vector Search index with self-managed CLIP embeddings, searched with a
    [`ClipClient`][clip_client.ClipClient]'s own model.

    Args:
        name: the index's Unity Catalog name, `catalog.schema.index`.
        client: embeds queries (texts, images); its workspace and credentials are used for the
            service unless `workspace` is given.
        workspace: a `databricks.sdk.WorkspaceClient` to call the service with instead.

    The index's description (`get_index`: its width, primary key, endpoint, whether it is online)
    is read on the first call that needs it and kept; `describe(refresh=True)` reads it again.

    Raises:
        ValueError: `name` is not a Unity Catalog name `catalog.schema.index` (see `name_problem`
            for the rule).
        TypeError: `client` is an `AsyncClipClient` (use `AsyncVectorIndex`).
        ConfigurationError: no workspace can be resolved (a local client outside Databricks, without
            `workspace=` or DATABRICKS_HOST).
    """

    def __init__(self, name: str, *, client: ClipClient, workspace: WorkspaceClient | None = None) -> None:
        _check_client(client, "sync", "VectorIndex")
        super().__init__(name, client, workspace, resolve=True)
        self.client = client

    def describe(self, *, refresh: bool = False) -> IndexDescription:
        """The index's description (one `get_index` the first time, or with `refresh`).

        Raises:
            VectorSearchNotFoundError: no such index (404).
            VectorSearchPermissionError: 403; the message lists the privileges needed.
        """
        if self._described is None or refresh:
            self._described = _run(_describe_steps(self.workspace, self.name))
        return self._described

    def search(
        self,
        query: object = None,
        k: int = 10,
        *,
        text: str | None = None,
        image: object = None,
        vector: ArrayLike | None = None,
        columns: Iterable[str] | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> VectorSearchResult:
        """The `k` rows of the index nearest to the query by cosine similarity, best first.

        Args:
            query: a text (`str`), an image (anything `embed_image` takes but a `str`: bytes, a
                `pathlib.Path`, a PIL image, a pixel array) or a vector (a 1-D float array or a list
                of floats, the width of the index). A `str` is always a text: pass a path or base64
                image in a `str` as `image=`.
            k: results wanted, 1 to `MAX_RESULTS` (10,000); more than `PAGE_SIZE` (1,000) are
                fetched page by page. Default 10.
            text, image, vector: the query, said explicitly (exactly one of `query` and these).
            columns: more columns of the index to return, e.g. `["caption"]` (the primary key
                always comes back).
            filters: column conditions, sent as `filters_json` (serialised with `json.dumps`), e.g.
                `{"folder": "maize"}`, `{"id <": 5}`, `{"folder": ["a", "b"]}`.

        Returns:
            `VectorSearchResult`: `keys` (object) and `scores` (float32 cosine) of shape `(1, n)`,
            `n = min(k, rows that match)`, and the requested `columns`.

        Raises:
            TypeError: no query or more than one, or an argument of the wrong type.
            ValueError: `k` out of range (over 10,000 included), or a vector with no direction.
            InvalidInputError: the query cannot be embedded (as `embed_text`/`embed_image` raise it).
            DimensionMismatchError: the index's vectors are not the client's width (before any query).
            IndexNotReadyError: the index is not online.
            VectorSearchNotFoundError, VectorSearchPermissionError, VectorSearchError: the service
                refused (404, 403 with the privileges needed, other statuses).
        """
        k = _check_k(k)
        kind, value = _query_input(query, text, image, vector)
        if kind == "text":
            value = self.client.embed_text(value)
        elif kind == "image":
            value = self.client.embed_image(value)
        described = self.describe()
        return _run(self._search_plan(described, value, k, columns, filters))

    def upsert(
        self,
        keys: Sequence[Any],
        embeddings: ArrayLike,
        columns: Mapping[str, Sequence[Any]] | None = None,
        *,
        max_request_bytes: int = UPSERT_MAX_BYTES,
    ) -> int:
        """Write rows into a Direct Access index (insert, or replace a row of the same key).

        Args:
            keys: one primary key per row (str or int, as the index's schema says).
            embeddings: float array `(n, d)`, `d` the index's width; each row is L2-normalised
                before it is sent (see the module's docstring on scores).
            columns: more columns of the index's schema, `{name: n values}`.
            max_request_bytes: the most bytes of one request's body (default `UPSERT_MAX_BYTES`);
                the rows are split in order, by their JSON size, into as few requests as fit.

        Returns:
            The rows written.

        Raises:
            TypeError: `keys` is one str (not a list), or a key is not of the index's primary key
                type (`"string"`: str; `"long"` and other integer types: int, numpy integers
                converted, bool refused; None, floats, bytes and mixed types always refused). The
                message names the key's position and value. Nothing is sent.
            ValueError: mismatched lengths, repeated keys, an empty key, a row with no direction,
                or one row alone over `max_request_bytes`.
            DimensionMismatchError: the embeddings are not the index's width.
            UpsertFailedError: the service named failed keys, or refused a request; `failed_keys`
                lists every key not written and `written` counts those that were. Requests are
                sent in order and the first failure stops the rest, whose keys are listed too.
        """
        return _run(self._upsert_plan(self.describe(), keys, embeddings, columns, max_request_bytes))

    def delete(self, keys: Sequence[Any]) -> int:
        """Remove rows from a Direct Access index by primary key (keys sent as strings, in requests
        whose query string stays under `DELETE_MAX_QUERY_BYTES`).

        Returns:
            The rows the service says it deleted (keys that were not there count as done).

        Raises:
            TypeError: `keys` is one str (not a list), or a key that is not a str or an int (or
                keys of both types).
            UpsertFailedError: keys the service did not delete (`failed_keys`).
        """
        return _run(self._delete_plan(keys))

    def sync(
        self,
        *,
        wait: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        progress: Callable[[str], None] | None = None,
    ) -> IndexDescription:
        """Ask a TRIGGERED Delta Sync index to read its table's changes, and with `wait` poll until
        it is online again (progress lines to `progress`, default logged at INFO on `clip_client`).

        Raises:
            VectorSearchError: the index is a Direct Access index (no sync: write it with `upsert`).
            IndexNotReadyError: the sync failed (the index's own message, and what to do), or the
                index was not online within `timeout` seconds.
        """
        name = self.name
        described = self.describe(refresh=True)
        if described.index_type == "DIRECT_ACCESS":
            raise VectorSearchError(
                f"index {name!r} is a Direct Access index, which has no sync: its rows are what upsert "
                "writes (VectorIndex.upsert, VectorIndex.delete). Only a Delta Sync index syncs from its "
                "table",
                index=name,
                endpoint=described.endpoint,
            )
        _perform(
            _Call(
                lambda: self.workspace.vector_search_indexes.sync_index(name),
                "sync",
                index=name,
                needs=_sync_needs(name),
            )
        )
        if wait:
            wait_online(self.workspace, name, timeout=timeout, poll_interval=poll_interval, progress=progress)
        return self.describe(refresh=True)


def _sync_needs(name: str) -> str:
    catalog, schema, _ = _parts(name)
    return (
        f"to own the index {name} or hold MODIFY on it, USE CATALOG on {catalog} and USE SCHEMA on "
        f"{catalog}.{schema}, and CAN USE on its Vector Search endpoint"
    )


class AsyncVectorIndex(_IndexBase):
    """[`VectorIndex`][clip_client.vector_search.VectorIndex] for an
    [`AsyncClipClient`][clip_client.AsyncClipClient]: the same plans and errors; queries are
    embedded with `await client.embed_text/embed_image`, and each databricks-sdk call runs in a
    worker thread, off the event loop."""

    def __init__(
        self, name: str, *, client: AsyncClipClient, workspace: WorkspaceClient | None = None
    ) -> None:
        # The client's workspace is resolved on the first call, in a worker thread: building a
        # WorkspaceClient may read the workspace's host metadata, which must not block the loop.
        _check_client(client, "async", "AsyncVectorIndex")
        super().__init__(name, client, workspace, resolve=False)
        self.client = client

    async def _ready(self) -> WorkspaceClient:
        if self._workspace is None:
            await asyncio.to_thread(lambda: self.workspace)
        return self.workspace

    async def describe(self, *, refresh: bool = False) -> IndexDescription:
        """`VectorIndex.describe`, awaited."""
        if self._described is None or refresh:
            self._described = await _arun(_describe_steps(await self._ready(), self.name))
        return self._described

    async def search(
        self,
        query: object = None,
        k: int = 10,
        *,
        text: str | None = None,
        image: object = None,
        vector: ArrayLike | None = None,
        columns: Iterable[str] | None = None,
        filters: Mapping[str, Any] | None = None,
    ) -> VectorSearchResult:
        """`VectorIndex.search`, awaited."""
        k = _check_k(k)
        kind, value = _query_input(query, text, image, vector)
        if kind == "text":
            value = await self.client.embed_text(value)
        elif kind == "image":
            value = await self.client.embed_image(value)
        described = await self.describe()
        return await _arun(self._search_plan(described, value, k, columns, filters))

    async def upsert(
        self,
        keys: Sequence[Any],
        embeddings: ArrayLike,
        columns: Mapping[str, Sequence[Any]] | None = None,
        *,
        max_request_bytes: int = UPSERT_MAX_BYTES,
    ) -> int:
        """`VectorIndex.upsert`, awaited."""
        described = await self.describe()
        return await _arun(self._upsert_plan(described, keys, embeddings, columns, max_request_bytes))

    async def delete(self, keys: Sequence[Any]) -> int:
        """`VectorIndex.delete`, awaited."""
        await self._ready()
        return await _arun(self._delete_plan(keys))


# --------------------------------------------------------------------------------------------------
# Creating indexes


def _say(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    return progress or (lambda line: logger.info("%s", line))


def _index_state(ws: WorkspaceClient, name: str) -> tuple[bool, str, str | None, int | None]:
    """(ready, detailed_state, message, indexed rows) of the index. Read with the SDK's
    `api_client` from the same `GET /api/2.0/vector-search/indexes/{name}` as `get_index`: the
    SDK's `VectorIndexStatus` drops the `detailed_state` that tells a failed sync from a slow one."""
    body = _perform(
        _Call(
            lambda: ws.api_client.do("GET", f"/api/2.0/vector-search/indexes/{quote(name, safe='')}"),
            "read",
            index=name,
            needs=_query_needs(name),
        )
    )
    status = body.get("status") or {} if isinstance(body, dict) else {}
    ready = bool(status.get("ready"))
    state = str(status.get("detailed_state") or ("ONLINE" if ready else "NOT_READY"))
    message = status.get("message")
    rows = status.get("indexed_row_count")
    return ready, state, None if message is None else redact(str(message)), rows


def wait_online(
    ws: WorkspaceClient,
    name: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Poll the index until it is online with no update under way; one progress line per change.

    Raises:
        IndexNotReadyError: a `*FAILED*` state (with the index's own message and what to do), or
            not online within `timeout` seconds.
    """
    say = _say(progress)
    started = time.monotonic()
    last = None
    while True:
        ready, state, message, rows = _index_state(ws, name)
        line = (
            f"index {name}: {state}"
            + (f", {rows:,} rows" if rows is not None else "")
            + (f": {message}" if message else "")
        )
        if line != last:
            say(line)
            last = line
        if "FAILED" in state:
            raise IndexNotReadyError(
                f"index {name!r} failed ({state}): {message or 'no message'}. What to do: read the sync "
                "pipeline's event log (the index's page in Catalog Explorer links it), fix its cause (often "
                "the source table: a schema change, a dropped column, Change Data Feed turned off), then "
                f"sync again (`clip-client index sync {name}`)",
                state=state,
                status_message=message,
                index=name,
            )
        if ready and state not in _UPDATING:
            say(f"index {name}: online after {time.monotonic() - started:.0f}s")
            return
        elapsed = time.monotonic() - started
        if elapsed >= timeout:
            raise IndexNotReadyError(
                f"index {name!r} is not online after {elapsed:.0f}s (timeout={timeout:g}): {state}"
                f"{': ' + message if message else ''}. It goes on in the workspace: check it later with "
                f"`clip-client index status {name}`",
                state=state,
                status_message=message,
                index=name,
            )
        time.sleep(min(poll_interval, max(0.0, timeout - elapsed)))


def _check_source_table(ws: WorkspaceClient, table: str, needed: Sequence[str], index: str) -> None:
    """The source table exists, has the `needed` columns and Change Data Feed on."""
    catalog, schema, _ = _parts(table)
    info = _perform(
        _Call(
            lambda: ws.tables.get(table),
            "read",
            index=index,
            subject=f"source table {table}",
            missing="Check the table's name (catalog.schema.table) and that embed_table's output was saved "
            "there (`df.write.saveAsTable(...)`)",
            needs=f"SELECT on the source table {table}, USE CATALOG on {catalog} and USE SCHEMA on "
            f"{catalog}.{schema}",
        )
    )
    have = {(c.name or "").lower(): c.name for c in (info.columns or [])}
    missing = [c for c in needed if c.lower() not in have]
    if missing:
        raise SourceTableError(
            f"source table {table} has no column {', '.join(repr(c) for c in missing)} (its columns: "
            f"{', '.join(str(c) for c in have.values())}).",
            table=table,
            index=index,
            advice="Pass {primary_key=}/{embedding_column=} naming its columns (embed_table writes the "
            "embedding to `embedding` by default)",
        )
    properties = {k.lower(): v for k, v in (info.properties or {}).items()}
    if str(properties.get("delta.enablechangedatafeed", "")).lower() != "true":
        statement = f"ALTER TABLE {table} SET TBLPROPERTIES (delta.enableChangeDataFeed = true)"
        raise SourceTableError(
            f"source table {table} does not have Change Data Feed on, which a Delta Sync index reads. Run: "
            f"{statement}",
            table=table,
            statement=statement,
            index=index,
        )


def _ensure_endpoint(
    ws: WorkspaceClient,
    endpoint: str,
    create: bool,
    index: str,
    say: Callable[[str], None],
    timeout: float,
    poll: float,
) -> None:
    """The endpoint exists (created when `create`), and is online."""
    from databricks.sdk.service.vectorsearch import EndpointType

    needs = f"CAN USE (or CAN MANAGE) on the Vector Search endpoint {endpoint!r}"
    try:
        _perform(
            _Call(
                lambda: ws.vector_search_endpoints.get_endpoint(endpoint),
                "read",
                endpoint=endpoint,
                needs=needs,
            )
        )
    except VectorSearchNotFoundError:
        if not create:
            raise VectorSearchNotFoundError(
                f"no Vector Search endpoint {endpoint!r} in this workspace.",
                advice="Pass {create_endpoint=True} to create it, or create it yourself (Compute > Vector "
                f"Search, or `databricks vector-search-endpoints create-endpoint {_literal(endpoint)} "
                "STANDARD`)",
                endpoint=endpoint,
                index=index,
                status_code=404,
                error_code="RESOURCE_DOES_NOT_EXIST",
            ) from None
        say(f"endpoint {endpoint}: creating (STANDARD)")
        _perform(
            _Call(
                lambda: ws.vector_search_endpoints.create_endpoint(
                    name=endpoint, endpoint_type=EndpointType.STANDARD
                ),
                "create",
                endpoint=endpoint,
                needs="permission to create Vector Search endpoints in the workspace",
            )
        )
    started = time.monotonic()
    last = None
    while True:
        info = _perform(
            _Call(
                lambda: ws.vector_search_endpoints.get_endpoint(endpoint),
                "read",
                endpoint=endpoint,
                needs=needs,
            )
        )
        status = info.endpoint_status
        state = status.state.value if status is not None and status.state is not None else "UNKNOWN"
        if state != last:
            say(f"endpoint {endpoint}: {state}")
            last = state
        if state == "ONLINE":
            return
        if state in ("OFFLINE", "RED_STATE", "DELETED"):
            message = status.message if status is not None else None
            raise VectorSearchError(
                f"Vector Search endpoint {endpoint!r} is {state}: {message or 'no message'}. Check it under "
                "Compute > Vector Search",
                endpoint=endpoint,
                index=index,
            )
        if time.monotonic() - started >= timeout:
            raise VectorSearchError(
                f"endpoint {endpoint!r} is not online after {timeout:g}s ({state})", endpoint=endpoint
            )
        time.sleep(poll)


def _literal(text: str) -> str:
    """`text` for an advice template, which reads `{...}` as a setting: a name with a brace is
    shown as a placeholder word instead."""
    return "ENDPOINT" if "{" in text or "}" in text else text


def _existing(ws: WorkspaceClient, name: str) -> IndexDescription | None:
    try:
        return _run(_describe_steps(ws, name))
    except VectorSearchNotFoundError:
        return None


def _differences(existing: IndexDescription, wanted: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The fields of `wanted` that `existing` does not have; Unity Catalog names (the source table)
    compared as Unity Catalog compares them, case-insensitively."""

    def same(key: str, have: Any, want: Any) -> bool:
        if key == "source_table" and isinstance(have, str) and isinstance(want, str):
            return have.lower() == want.lower()
        return bool(have == want)

    return {
        key: (getattr(existing, key), value)
        for key, value in wanted.items()
        if not same(key, getattr(existing, key), value)
    }


def _exists_as(ws: WorkspaceClient, name: str, wanted: Mapping[str, Any]) -> bool:
    """Whether index `name` exists with the specification `wanted` (False: there is none).

    Raises:
        IndexSpecMismatchError: it exists with another specification (each field that differs).
    """
    existing = _existing(ws, name)
    if existing is None:
        return False
    diffs = _differences(existing, wanted)
    if diffs:
        raise _spec_error(name, diffs)
    return True


def _create(
    ws: WorkspaceClient,
    name: str,
    endpoint: str,
    primary_key: str,
    source_table: str | None,
    **spec: Any,
) -> None:
    """`create_index` of a Delta Sync index (`delta_sync_index_spec=`, over `source_table`) or a
    Direct Access one (`direct_access_index_spec=`), its refusals named with the privileges needed."""
    from databricks.sdk.service.vectorsearch import VectorIndexType

    kind = VectorIndexType.DELTA_SYNC if "delta_sync_index_spec" in spec else VectorIndexType.DIRECT_ACCESS
    _perform(
        _Call(
            lambda: ws.vector_search_indexes.create_index(name, endpoint, primary_key, kind, **spec),
            "create",
            index=name,
            endpoint=endpoint,
            needs=_create_needs(name, endpoint, source_table),
        )
    )


def _spec_error(name: str, diffs: dict[str, tuple[Any, Any]]) -> IndexSpecMismatchError:
    listed = "; ".join(f"{key}: the index has {old!r}, asked {new!r}" for key, (old, new) in diffs.items())
    return IndexSpecMismatchError(
        f"index {name!r} exists with another specification ({listed}). Nothing was changed. Pass the "
        "index's own values, choose another index name, or delete it first (`databricks "
        f"vector-search-indexes delete-index {name}`) to create it anew",
        differences=diffs,
        index=name,
    )


def create_index(
    name: str,
    *,
    source_table: str,
    endpoint: str,
    client: ClipClient,
    primary_key: str = "path",
    embedding_column: str = "embedding",
    pipeline: Pipeline = "TRIGGERED",
    create_endpoint: bool = False,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    progress: Callable[[str], None] | None = None,
    workspace: WorkspaceClient | None = None,
) -> VectorIndex:
    """A Delta Sync Vector Search index over the embeddings of a Delta table (self-managed vectors:
    the table's `embedding_column`, as [`embed_table`][clip_client.spark.embed_table] writes it),
    created, or synced if it already exists with this specification.

    Before anything is created: the source table is read (`tables.get`): it must have
    `primary_key` and `embedding_column`, and Change Data Feed on; the endpoint must exist unless
    `create_endpoint`. The embedding dimension is the client's width (its model's, or measured on
    one text embedding for a remote client). The table's embeddings must be L2-normalised for the
    scores to be cosines (`embed_table(..., normalize=True)`).

    Args:
        name: the index's Unity Catalog name, `catalog.schema.index`.
        source_table: the Delta table, `catalog.schema.table`.
        endpoint: the Vector Search endpoint that serves the index.
        client: the client whose model embedded the table (and will embed queries).
        primary_key: the table's unique key column (default `"path"`, as `images` writes it).
        embedding_column: the table's `array<float>` column of embeddings (default `"embedding"`).
        pipeline: `"TRIGGERED"` (sync when asked: `sync`, `clip-client index sync`) or
            `"CONTINUOUS"` (follows the table; costs a running pipeline).
        create_endpoint: create the endpoint (STANDARD) when it does not exist.
        wait: poll until the index is online (default), with progress lines.
        timeout: seconds to wait, at most (default 3600).
        poll_interval: seconds between reads of its state (default 10).
        progress: called with each progress line; default: logged at INFO on `clip_client`.
        workspace: a `databricks.sdk.WorkspaceClient` to use instead of the client's workspace.

    Returns:
        a [`VectorIndex`][clip_client.vector_search.VectorIndex] of it, for `client`.

    Raises:
        ValueError: a name that is not three dotted parts, or an unknown `pipeline`.
        SourceTableError: a column missing, or Change Data Feed off (the message and `statement`
            give the `ALTER TABLE` that turns it on).
        VectorSearchNotFoundError: no such source table, or no endpoint without `create_endpoint`.
        IndexSpecMismatchError: the index exists with another specification (`differences`).
        IndexNotReadyError: the sync failed (the index's message), or not online within `timeout`.
        VectorSearchPermissionError: 403, with the privileges needed.
    """
    from databricks.sdk.service.vectorsearch import (
        DeltaSyncVectorIndexSpecRequest,
        EmbeddingVectorColumn,
        PipelineType,
    )

    _check_name(name)
    _check_name(source_table, "source_table")
    _check_client(client, "sync", "create_index")
    if pipeline not in ("TRIGGERED", "CONTINUOUS"):
        raise ValueError(f"pipeline={pipeline!r}: use 'TRIGGERED' or 'CONTINUOUS'")
    say = _say(progress)
    ws = _workspace_of(client, workspace)
    dim = _client_width(client)
    _check_source_table(ws, source_table, [primary_key, embedding_column], name)
    _ensure_endpoint(ws, endpoint, create_endpoint, name, say, timeout, poll_interval)
    wanted = {
        "index_type": "DELTA_SYNC",
        "endpoint": endpoint,
        "primary_key": primary_key,
        "source_table": source_table,
        "embedding_column": embedding_column,
        "dim": dim,
        "pipeline_type": pipeline,
    }
    if _exists_as(ws, name, wanted):
        if pipeline == "TRIGGERED":
            say(f"index {name}: exists with this specification; syncing")
            _perform(
                _Call(
                    lambda: ws.vector_search_indexes.sync_index(name),
                    "sync",
                    index=name,
                    needs=_sync_needs(name),
                )
            )
    else:
        say(
            f"index {name}: creating (Delta Sync of {source_table}, {dim}-d {embedding_column!r}, {pipeline})"
        )
        spec = DeltaSyncVectorIndexSpecRequest(
            source_table=source_table,
            pipeline_type=PipelineType(pipeline),
            embedding_vector_columns=[EmbeddingVectorColumn(name=embedding_column, embedding_dimension=dim)],
        )
        _create(ws, name, endpoint, primary_key, source_table, delta_sync_index_spec=spec)
    if wait:
        wait_online(ws, name, timeout=timeout, poll_interval=poll_interval, progress=say)
    return VectorIndex(name, client=client, workspace=ws)


_SCHEMA_TYPES = (
    "string",
    "long",
    "int",
    "integer",
    "float",
    "double",
    "boolean",
    "date",
    "timestamp",
    "array<float>",
    "array<double>",
    "array<string>",
)


def create_direct_index(
    name: str,
    *,
    endpoint: str,
    client: ClipClient,
    primary_key: str = "id",
    primary_key_type: str = "string",
    embedding_column: str = "embedding",
    columns: Mapping[str, str] | None = None,
    create_endpoint: bool = False,
    wait: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    progress: Callable[[str], None] | None = None,
    workspace: WorkspaceClient | None = None,
) -> VectorIndex:
    """A Direct Access Vector Search index for CLIP embeddings written with
    [`VectorIndex.upsert`][clip_client.vector_search.VectorIndex.upsert]; returned as it is when it
    already exists with this specification.

    Args:
        name: `catalog.schema.index`.
        endpoint: the Vector Search endpoint.
        client: the client whose model embeds rows and queries (its width is the index's).
        primary_key: the key column (default `"id"`), of `primary_key_type` (`"string"` or `"long"`...).
        embedding_column: the vector column (`array<float>`, the client's width).
        columns: more columns, `{name: type}` with Databricks' schema types (`"string"`, `"long"`,
            `"float"`, `"double"`, `"boolean"`, `"date"`, `"timestamp"`, `"array<string>"`...),
            sent in the index's `schema_json`.
        create_endpoint, wait, timeout, poll_interval, progress, workspace: as in `create_index`.

    Raises:
        ValueError: a bad name or column type, or `columns` naming the primary key or the embedding
            column.
        TypeError: `client` is an `AsyncClipClient`.
        VectorSearchNotFoundError: no endpoint, without `create_endpoint`.
        IndexSpecMismatchError: the index exists with another specification.
        IndexNotReadyError, VectorSearchPermissionError: as in `create_index`.
    """
    import json as _json

    from databricks.sdk.service.vectorsearch import (
        DirectAccessVectorIndexSpec,
        EmbeddingVectorColumn,
    )

    _check_name(name)
    _check_client(client, "sync", "create_direct_index")
    if not isinstance(primary_key, str) or not primary_key or not isinstance(embedding_column, str):
        raise ValueError("primary_key and embedding_column must be non-empty column names (str)")
    if not embedding_column or embedding_column == primary_key:
        raise ValueError(
            f"embedding_column={embedding_column!r} must be another column than primary_key={primary_key!r}"
        )
    if isinstance(columns, str) or (columns is not None and not isinstance(columns, Mapping)):
        raise TypeError('columns takes a dict {name: type}, e.g. {"caption": "string"}')
    clash = [c for c in (columns or {}) if c in (primary_key, embedding_column)]
    if clash:
        raise ValueError(
            f"columns names {clash[0]!r}, which is the index's "
            f"{'primary key' if clash[0] == primary_key else 'embedding column'}: columns= lists the other "
            "columns only (set the key's type with primary_key_type=)"
        )
    schema = {primary_key: primary_key_type, embedding_column: "array<float>", **dict(columns or {})}
    for column, kind in schema.items():
        if not isinstance(column, str) or not column or kind not in _SCHEMA_TYPES:
            raise ValueError(f"column {column!r}: type {kind!r} is not one of {', '.join(_SCHEMA_TYPES)}")
    say = _say(progress)
    ws = _workspace_of(client, workspace)
    dim = _client_width(client)
    _ensure_endpoint(ws, endpoint, create_endpoint, name, say, timeout, poll_interval)
    wanted = {
        "index_type": "DIRECT_ACCESS",
        "endpoint": endpoint,
        "primary_key": primary_key,
        "embedding_column": embedding_column,
        "dim": dim,
    }
    if _exists_as(ws, name, wanted):
        say(f"index {name}: exists with this specification")
    else:
        say(f"index {name}: creating (Direct Access, {dim}-d {embedding_column!r})")
        spec = DirectAccessVectorIndexSpec(
            schema_json=_json.dumps(schema),
            embedding_vector_columns=[EmbeddingVectorColumn(name=embedding_column, embedding_dimension=dim)],
        )
        _create(ws, name, endpoint, primary_key, None, direct_access_index_spec=spec)
    if wait:
        wait_online(ws, name, timeout=timeout, poll_interval=poll_interval, progress=say)
    return VectorIndex(name, client=client, workspace=ws)
