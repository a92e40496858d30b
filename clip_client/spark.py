"""Spark pandas UDFs: a column of texts or images in, a column of 768-d embeddings out.

```python
from clip_client.spark import embed_table, image_embedding_udf
embed = image_embedding_udf()
df = spark.read.format("binaryFile").load("/Volumes/main/default/photos")
df.withColumn("embedding", embed("content"))
```

Each UDF is a pandas UDF of the iterator form (`Iterator[pd.Series] -> Iterator[pd.Series]`; a
struct column arrives as a `pandas.DataFrame` per batch, and the image UDF reads the struct of
Spark's `image` source), marked non-deterministic so that Catalyst runs it once per row. One
Python worker process builds one [`ClipClient`][clip_client.ClipClient] the first time it needs it
(cached in the process, keyed by the UDF's client options) and sends every Arrow batch of every task
it runs through that client's batching, concurrency and retries. Under local mode the model is
loaded once per worker process (once per GPU, on a GPU cluster). Nothing here uses a
`SparkContext`, a broadcast or an RDD, so the UDFs run under Spark Connect (Databricks serverless
and shared clusters, Databricks Connect) as under classic Spark. The recipe, the sizing arithmetic
and the credential patterns are in docs/spark.md.

Needs the `spark` extra: `pip install "clip-serving-client[spark]"` (pyspark, pandas, pyarrow),
imported only when a UDF is built or run.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import _constants as C
from ._client import ClipClient
from ._core.images import InvalidBase64, from_plain_base64
from ._core.secrets import MASK, RedactingFilter, redact, register
from .errors import (
    APIError,
    BadRequestError,
    ConfigurationError,
    ImageDecodeError,
    InvalidInputError,
    PayloadTooLargeError,
)
from .types import InputKind, Settings

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.resource import ResourceInformation
    from pyspark.sql import DataFrame
    from pyspark.sql._typing import UserDefinedFunctionLike

__all__ = [
    "LOG_FILE_ENV",
    "ImageColumn",
    "SparkOnError",
    "embed_table",
    "image_embedding_udf",
    "text_embedding_udf",
]

ImageColumn = Literal["auto", "binary", "base64", "path"]
"""What an image column holds: `"binary"` (file bytes, as `spark.read.format("binaryFile")`
gives them in `content`), `"base64"` (a string: the base64 of the file, or a
`data:image/...;base64,` URI), `"path"` (a string: `/Volumes/...`, `/dbfs/...`, a local
path, or a `dbfs:/` or `file:` URI as binaryFile's `path` column gives them), or `"auto"`:
bytes are file bytes; a string is base64 when it starts like the base64 of an image file (JPEG,
PNG, GIF, WebP, TIFF, BMP, AVIF, JPEG 2000), else a path; and the struct of Spark's image source
(`spark.read.format("image")`'s `image` column: `origin`, `height`, `width`, `nChannels`,
`mode`, `data`) is the pixels it describes, its BGR(A) bytes reordered to RGB(A).
"""

SparkOnError = Literal["raise", "null"]
"""What a UDF does with a bad input: `"raise"` fails the task with an error naming the row;
`"null"` gives a null embedding and the reason (in the `error` field, or the worker's log).
"""

LOG_FILE_ENV = "CLIP_CLIENT_SPARK_LOG"
"""An environment variable: when set on the executors (`spark.executorEnv.CLIP_CLIENT_SPARK_LOG`),
each Python worker appends this module's log records (one INFO line per client it builds, one
WARNING per row nulled in tolerant mode) to the file it names, credentials redacted.
"""

logger = logging.getLogger(f"{C.LOGGER_NAME}.spark")
logger.addFilter(RedactingFilter())  # a parent logger's filter does not see records logged here

# Options a UDF cannot carry to the executors: live objects of the driver process.
_NOT_SHIPPABLE = {
    "config": "a databricks-sdk Config is resolved on each executor instead: pass host/token or "
    "profile, or nothing (each executor's own databricks-sdk chain)",
    "http_client": "an httpx.Client cannot travel to the executors; each worker builds its own pool",
    "backend": "a backend object cannot travel to the executors; use local=True, model=... for "
    "the in-process model",
}
_WORKSPACE_OPTIONS = ("host", "token", "profile")
_REMOTE_OPTIONS = frozenset(Settings.model_fields) | {"cache", *_WORKSPACE_OPTIONS}
_LOCAL_OPTIONS = frozenset(Settings.model_fields) | {"cache", "dtype", "compile"}
_IMAGE_COLUMNS: tuple[ImageColumn, ...] = ("auto", "binary", "base64", "path")
_ON_ERRORS: tuple[SparkOnError, ...] = ("raise", "null")
_ERROR_FIELD = "error"
_EMBEDDING_FIELD = "embedding"
_DEVICE = re.compile(
    r"(cpu|cuda|mps|xpu|xla|meta|hpu|mtia|npu|ipu|hip|ve|fpga|maia|vulkan|lazy|privateuseone)(:\d+)?"
)
"""torch's device types (`torch.device` accepts `type` or `type:index`), checked on the driver
without importing torch there; the worker resolves the device itself (`ClipClient.local`).
"""
# `scheme://...`: a URL (`https://`, `s3://`, `abfss://`, `gs://`...), never a local file.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_HINT = (
    "URLs are not fetched; download the file first, or pass a local, /dbfs/... or /Volumes/... "
    "path, or the bytes"
)


def _require_spark() -> None:
    try:
        import pandas  # noqa: F401
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"clip_client.spark needs pyspark and pandas ({exc.name} is missing): "
            'pip install "clip-serving-client[spark]"'
        ) from exc


# --------------------------------------------------------------------------------------------------
# What a UDF carries to the executors


@dataclass(frozen=True)
class _Spec:
    """Everything a UDF's workers need, pickled with it. Its repr masks the token."""

    kind: InputKind
    image_column: ImageColumn
    on_error: SparkOnError
    error_field: bool
    local: bool
    model: str | None
    device: str | None
    options: tuple[tuple[str, Any], ...]
    """The client options, sorted by name (hashable: the worker's cache key)."""

    def __repr__(self) -> str:
        shown = {k: (MASK if k == "token" and v else v) for k, v in self.options}
        return (
            f"_Spec(kind={self.kind!r}, image_column={self.image_column!r}, on_error={self.on_error!r}, "
            f"local={self.local!r}, model={self.model!r}, device={self.device!r}, options={shown!r})"
        )

    def fingerprint(self, device: str | None) -> str:
        """A short, credential-free name for the client these options build (for the log)."""
        public = [(k, v) for k, v in self.options if k != "token"]
        text = repr((self.local, self.model, device, public, any(k == "token" for k, _ in self.options)))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _spec(
    kind: InputKind,
    *,
    image_column: str,
    on_error: str,
    error_column: bool,
    local: bool,
    model: str | os.PathLike[str] | None,
    device: str | None,
    options: dict[str, Any],
) -> _Spec:
    """Check a UDF's arguments on the driver, before any job runs, and pack them."""
    mode = _on_error_mode(on_error)
    column_mode = _image_column_mode(image_column)
    if not isinstance(error_column, bool):
        raise TypeError(f"error_column must be True or False, got {error_column!r}")
    if error_column and on_error == "raise":
        raise ValueError(
            'an error column holds the reasons of rows nulled with on_error="null"; with '
            'on_error="raise" a bad row fails the task, so the column would stay empty: pass '
            'on_error="null" (or leave on_error unset with embed_table), or drop the error column'
        )
    if not isinstance(local, bool):
        raise TypeError(f"local must be True or False, got {local!r}")
    device = _check_device(device)
    for name, why in _NOT_SHIPPABLE.items():
        if name in options:
            raise TypeError(f"{name}= cannot be used with Spark UDFs: {why}")
    allowed = _LOCAL_OPTIONS if local else _REMOTE_OPTIONS
    unknown = sorted(set(options) - allowed)
    if unknown:
        hint = ""
        if local and set(unknown) & set(_WORKSPACE_OPTIONS):
            hint = " (local=True runs the model on the executors and takes no workspace options)"
        raise TypeError(f"unexpected client option(s) {', '.join(map(repr, unknown))}{hint}")
    if not local and (model is not None or device is not None):
        raise TypeError("model= and device= are for local=True (the in-process model)")
    # The values, with the clients' own validation (pydantic.ValidationError, a ValueError naming the
    # field): a typo fails here, not in every task of the job.
    Settings().merged(**{k: v for k, v in options.items() if k in Settings.model_fields})
    cache = options.get("cache")
    if isinstance(cache, os.PathLike):
        options = {**options, "cache": os.fspath(cache)}
    register(options.get("token"))  # scrubbed from anything this process says from now on
    model_name = None if model is None else os.fspath(model)
    return _Spec(
        kind=kind,
        image_column=column_mode,
        on_error=mode,
        error_field=error_column,
        local=local,
        model=model_name,
        device=device,
        options=tuple(sorted(options.items())),
    )


def _on_error_mode(on_error: object) -> SparkOnError:
    """`on_error` as one of [`SparkOnError`][clip_client.spark.SparkOnError], or a ValueError."""
    for mode in _ON_ERRORS:
        if on_error == mode:
            return mode
    raise ValueError(f"on_error must be 'raise' or 'null', got {on_error!r}")


def _image_column_mode(image_column: object) -> ImageColumn:
    """`image_column` as one of [`ImageColumn`][clip_client.spark.ImageColumn], or a ValueError."""
    for mode in _IMAGE_COLUMNS:
        if image_column == mode:
            return mode
    raise ValueError(
        f"image_column must be one of {', '.join(map(repr, _IMAGE_COLUMNS))}, got {image_column!r}"
    )


def _check_device(device: object) -> str | None:
    """`device` as the string the workers pass to `torch.device` (a `torch.device` object is
    taken as its string), or a TypeError/ValueError naming it."""
    if device is None:
        return None
    if type(device).__module__ == "torch" and type(device).__name__ == "device":
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cuda', 'cuda:1' or 'cpu', got {device!r}")
    if _DEVICE.fullmatch(device) is None:
        raise ConfigurationError(
            f"device={device!r} is not a torch device ('cuda', 'cuda:1', 'cpu', 'mps'...)",
            setting="device",
            reason=f"{device!r} is not a torch device ('cuda', 'cuda:1', 'cpu', 'mps'...)",
        )
    return device


# --------------------------------------------------------------------------------------------------
# The public UDFs


def text_embedding_udf(
    *,
    on_error: SparkOnError = "raise",
    error_column: bool = False,
    local: bool = False,
    model: str | os.PathLike[str] | None = None,
    device: str | None = None,
    **client_options: Any,
) -> UserDefinedFunctionLike:
    """A Spark pandas UDF that embeds a string column: `df.withColumn("embedding", udf("caption"))`.

    Each Python worker builds one [`ClipClient`][clip_client.ClipClient] from these options the first
    time it runs the UDF and keeps it for every later task (the cache is keyed by the options, so
    two UDFs with the same options share one client, connection pool and, in local mode, model).
    Each Arrow batch (`spark.sql.execution.arrow.maxRecordsPerBatch` rows, default 10,000) is one
    `embed_texts` call: `batch_size` records per request, `max_concurrency` requests in flight
    per worker, retries and the adaptive limit as the client does them (docs/spark.md gives the
    sizing arithmetic).

    The UDF is non-deterministic (`asNondeterministic()`): Catalyst computes it once per row where
    the plan computes the column, never again for a filter or a join on its output; a re-run task
    calls the endpoint again, so cache the result if you reuse it (docs/spark.md).

    Args:
        on_error: `"raise"` (default): a row that cannot be embedded fails the task with its error,
            naming its Spark partition and its row within it (counted from 0, nulls included) on
            the message's first line, with the reason (a value that is not a string, a struct
            column's value, an input the endpoint refuses).
            `"null"`: the row's embedding is null and the reason goes to the `error` field
            (`error_column=True`) or, as a WARNING of the `clip_client.spark` logger, to the
            worker's log. Only the row's own failures are tolerated (an input the endpoint refuses
            with 400, an item too large for one request); an outage (401/403/404, 5xx or 429 after
            retries, a dead connection) still fails the task, which Spark then retries.
        error_column: return `struct<embedding: array<float>, error: string>` instead of the bare
            array: `error` is null for a good row, else the reason (`"ImageDecodeError: ..."`).
            Needs `on_error="null"` (a ValueError otherwise: with `"raise"` it would stay empty).
        local: run the model in each worker process ([`ClipClient.local`][clip_client.ClipClient.local])
            instead of the endpoints; no workspace is needed.
        model: with `local=True`: a Hugging Face hub id or a folder readable on every executor
            (`/Volumes/...`, `/dbfs/...`); default `openai/clip-vit-large-patch14`.
        device: with `local=True`: `"cuda"`, `"cuda:1"`, `"cpu"`. Default: the GPU Spark
            assigned to the task (`TaskContext.resources()["gpu"]`, so one model runs per GPU),
            else CUDA when available, else CPU.
        **client_options: the client's keywords: `host`, `token`, `profile`, every setting
            (`batch_size`, `max_concurrency`, `text_endpoint`, `normalize`, `timeout`...)
            and `cache` (a path every executor can reach); in local mode also `dtype` and
            `compile`. They travel with the UDF as given: an explicit `token` is pickled into
            the job (never shown in a plan, a repr, an error or a log line; see docs/spark.md for
            the secret-scope pattern). Without `host`/`token`/`profile`, each executor
            resolves its workspace through databricks-sdk's own chain.

    Returns:
        a pandas UDF taking one string column, returning `array<float>` (768 float32 values for
        ViT-L/14; null for a null text), or the struct above with `error_column=True`.

    Raises:
        TypeError: an unknown option, `config`/`http_client`/`backend` (live objects that cannot
            travel to executors), workspace options with `local=True`, or `model`/`device`
            without it; `local` not a bool, `device` not a string.
        ValueError: a bad `on_error` or setting value (`pydantic.ValidationError` names the field),
            or a `device` that is no torch device type (`"cuda"`, `"cuda:1"`, `"cpu"`,
            `"mps"`...; checked on the driver without importing torch); `error_column` with
            `on_error="raise"`.
        ImportError: pyspark or pandas is missing (`pip install "clip-serving-client[spark]"`).

    In the job (raised in the task, shown by Spark as a `PythonException`): `InvalidInputError`
    for a value that is not a string (`"raise"` mode), `APIError` and its subclasses once
    retries are spent, `CredentialsError` when an executor cannot resolve the workspace.

    ```python
    embed = text_embedding_udf(batch_size=64, max_concurrency=4)
    df.withColumn("embedding", embed("caption")).write.saveAsTable("t")
    ```
    """
    spec = _spec(
        "text",
        image_column="auto",
        on_error=on_error,
        error_column=error_column,
        local=local,
        model=model,
        device=device,
        options=client_options,
    )
    return _make_udf(spec)


def image_embedding_udf(
    *,
    image_column: ImageColumn = "auto",
    on_error: SparkOnError = "raise",
    error_column: bool = False,
    local: bool = False,
    model: str | os.PathLike[str] | None = None,
    device: str | None = None,
    **client_options: Any,
) -> UserDefinedFunctionLike:
    """A Spark pandas UDF that embeds an image column: `df.withColumn("embedding", udf("content"))`.

    The same worker-side client, batching and concurrency as
    [`text_embedding_udf`][clip_client.spark.text_embedding_udf]; images are decoded, resized and cropped by
    the client exactly as the served `CLIPImageProcessor` does (docs/images.md), in the worker's threads.

    Args:
        image_column: what the column holds ([`ImageColumn`][clip_client.spark.ImageColumn]): `"binary"` (file
            bytes, the `content` of `spark.read.format("binaryFile")`), `"base64"` (a string, the base64
            of the file or a `data:` URI), `"path"` (a string naming a file every executor can
            read: `/Volumes/...`, `/dbfs/...`, a local path; `dbfs:/Volumes/x` is read as
            `/Volumes/x`, `dbfs:/x` as `/dbfs/x` and `file:/x` as `/x`, percent-decoded;
            a URL such as `s3://...` or `https://...` is a bad row, never fetched). Default
            `"auto"`: bytes as files; a string as base64 when it starts like the base64 of an
            image file, else as a path; the `image` struct of `spark.read.format("image")` as the
            pixels it describes (BGR(A) reordered to RGB(A); a null struct, a data length other
            than height x width x nChannels, or a mode other than 0, 16 or 24 is a bad row, named
            by its `origin`). Name the mode for a string column whose files could be
            named like base64 (`/9j/...` starts every JPEG's base64): the mode then decides. Any
            other struct column is a bad row on every row.
        on_error, error_column, local, model, device, **client_options: as
            [`text_embedding_udf`][clip_client.spark.text_embedding_udf]. Tolerated as bad rows: a missing or
            unreadable file, bytes that are not an image, invalid base64, an image over `max_image_pixels`, a
            value of the wrong kind for the mode.

    Returns:
        a pandas UDF taking one binary, string or image-struct column, returning `array<float>` (null for a
        null value), or `struct<embedding: array<float>, error: string>` with `error_column`.

    Raises:
        TypeError: as [`text_embedding_udf`][clip_client.spark.text_embedding_udf].
        ValueError: as [`text_embedding_udf`][clip_client.spark.text_embedding_udf], and for an `image_column`
            not in [`ImageColumn`][clip_client.spark.ImageColumn].
        ImportError: pyspark or pandas is missing (`pip install "clip-serving-client[spark]"`).

    In the job: `InvalidInputError` / `ImageDecodeError` naming the partition, the row and the
    path (`"raise"` mode), `APIError` once retries are spent, `CredentialsError`.

    ```python
    files = spark.read.format("binaryFile").load("/Volumes/main/default/photos")
    files.select("path", image_embedding_udf()("content").alias("embedding"))
    images = spark.read.format("image").load("/Volumes/main/default/photos")
    images.select("image.origin", image_embedding_udf()("image").alias("embedding"))
    ```
    """
    spec = _spec(
        "image",
        image_column=image_column,
        on_error=on_error,
        error_column=error_column,
        local=local,
        model=model,
        device=device,
        options=client_options,
    )
    return _make_udf(spec)


def embed_table(
    df: DataFrame,
    column: str,
    kind: InputKind,
    output_column: str = "embedding",
    *,
    error_column: str | None = None,
    image_column: ImageColumn | None = None,
    on_error: SparkOnError | None = None,
    **options: Any,
) -> DataFrame:
    """`df` with one more column: the embedding of `column` (lazy, like any transformation).

    Args:
        df: a DataFrame (classic or Spark Connect).
        column: the input column's name (a `str`; dots and backticks are part of the name, not a
            path), resolved as Spark resolves names (case-insensitively unless
            `spark.sql.caseSensitive`): a string column for `kind="text"`; a binary or string column,
            or the `image` struct of `spark.read.format("image")`, for `"image"`. Any other
            struct is refused here, before a job.
        kind: `"text"` or `"image"`.
        output_column: the new column's name, `array<float>` (null for a null input or a nulled row).
        error_column: the name of a second new column (string) holding each nulled row's reason (a
            name or None: `True`/`False` are the UDFs' `error_column`, not this one's); implies
            `on_error="null"` unless that is given.
        image_column: what an image column holds ([`ImageColumn`][clip_client.spark.ImageColumn]); default
            from the column's type: `"binary"` for a binary column, `"auto"` for a string column
            or the image struct.
        on_error: as [`text_embedding_udf`][clip_client.spark.text_embedding_udf]; default `"null"` with
            `error_column`, else `"raise"`.
        **options: the UDF's options (`local`, `model`, `device`) and the client's
            (`host`, `token`, `batch_size`, `max_concurrency`...).

    Returns:
        a DataFrame with every column of `df` and the new one(s), rows untouched and in order.

    Raises:
        ValueError: `column` is not in `df` (or matches two columns case-insensitively),
            `kind` is not `"text"`/`"image"`, `image_column` is not an
            [`ImageColumn`][clip_client.spark.ImageColumn], an output name is empty, or an output column
            already exists or equals the other one, as Spark compares names (it would be overwritten
            silently).
        TypeError: `column`/`output_column`/`error_column` is not a name (a `Column`, None,
            a bool), `column`'s type does not fit `kind` (text: string; image: binary, string or
            the image struct) or `image_column` (`"binary"`: binary; `"base64"`/`"path"`: string;
            the image struct: `"auto"`), or as
            [`text_embedding_udf`][clip_client.spark.text_embedding_udf] for the options.

    ```python
    embed_table(spark.table("main.default.photos"), "image_base64", "image")
    ```
    """
    _require_spark()
    from pyspark.sql.functions import col

    table = _table_columns(df, column, kind, output_column, error_column, image_column)
    mode: SparkOnError = on_error or ("null" if error_column is not None else "raise")
    with_errors = error_column is not None
    if kind == "text":
        udf = text_embedding_udf(on_error=mode, error_column=with_errors, **options)
    else:
        udf = image_embedding_udf(
            image_column=table.image_column or "auto", on_error=mode, error_column=with_errors, **options
        )
    source = col(_quoted(table.source))
    if error_column is None:
        return df.withColumn(output_column, udf(source))
    out = df.withColumn(table.packed, udf(source))
    out = out.withColumn(output_column, col(table.packed).getField(_EMBEDDING_FIELD))
    out = out.withColumn(error_column, col(table.packed).getField(_ERROR_FIELD))
    return out.drop(table.packed)


@dataclass(frozen=True)
class _TableColumns:
    """`embed_table`'s columns, checked against the DataFrame before anything is planned."""

    source: str
    """The input column's name as the DataFrame spells it."""
    image_column: ImageColumn | None
    """What the image column holds (from its type when not given); None for text."""
    packed: str
    """A free name for the struct of embedding and reason, before it is split into two columns."""


def _table_columns(
    df: DataFrame,
    column: object,
    kind: object,
    output_column: object,
    error_column: object,
    image_column: object,
) -> _TableColumns:
    """Check `embed_table`'s column arguments against `df`'s schema, in the order its docstring
    lists the errors, and resolve them as Spark resolves names (case-insensitively unless
    `spark.sql.caseSensitive`). The UDFs' own options are checked by the UDF they build
    (`_spec`), through the same helpers (`_image_column_mode`, `_on_error_mode`)."""
    from pyspark.sql.types import BinaryType, StringType, StructType

    if kind not in ("text", "image"):
        raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
    if not isinstance(column, str):
        raise TypeError(
            f"column must be the input column's name (a str), got {type(column).__name__}: "
            "pass df's column name, e.g. embed_table(df, 'caption', 'text')"
        )
    output_column = _check_name("output_column", output_column)
    if error_column is not None:
        if isinstance(error_column, bool):
            raise TypeError(
                f"error_column of embed_table is the name of the reason column to add, or None; got "
                f"{error_column!r} (True/False are the UDFs' error_column, which embed_table sets "
                "itself when given a name)"
            )
        error_column = _check_name("error_column", error_column)
    mode = None if image_column is None else _image_column_mode(image_column)
    sensitive = str(df.sparkSession.conf.get("spark.sql.caseSensitive", "false")).lower() == "true"

    def key(name: str) -> str:
        return name if sensitive else name.lower()

    fields = [(f.name, f.dataType) for f in df.schema.fields]
    matches = [(name, dtype) for name, dtype in fields if key(name) == key(column)]
    listed = ", ".join(repr(name) for name, _ in fields)
    if not matches:
        raise ValueError(f"column {column!r} is not in the DataFrame (its columns: {listed})")
    if len(matches) > 1:
        raise ValueError(
            f"column {column!r} is ambiguous: the DataFrame has {', '.join(repr(n) for n, _ in matches)} "
            "(spark.sql.caseSensitive is false); rename one first"
        )
    column, dtype = matches[0]
    taken = {key(name): name for name, _ in fields}
    for arg, name in (("output_column", output_column), ("error_column", error_column)):
        if name is not None and key(name) in taken:
            same = (
                ""
                if taken[key(name)] == name
                else f" ({taken[key(name)]!r}: Spark compares names case-insensitively)"
            )
            raise ValueError(
                f"the DataFrame already has a column {name!r}{same}; pick another {arg} or drop it first"
            )
    if error_column is not None and key(error_column) == key(output_column):
        raise ValueError(
            f"error_column and output_column must differ, got {error_column!r} and {output_column!r}"
            + ("" if sensitive else " (Spark compares names case-insensitively)")
        )
    struct_hint = ""
    if isinstance(dtype, StructType):
        struct_hint = (
            f"; to embed one field of the struct, add it as a column first "
            f"(df.withColumn('x', df[{column!r}][{dtype.fieldNames()[0] if dtype.fields else 'field'!r}]))"
        )
    if kind == "text" and not isinstance(dtype, StringType):
        raise TypeError(
            f"column {column!r} is {dtype.simpleString()}; text embeddings need a string column{struct_hint}"
        )
    if kind == "image" and _is_image_struct(dtype):
        if mode not in (None, "auto"):
            raise TypeError(
                f"image_column={mode!r} is for a binary or string column, but {column!r} is Spark's image "
                'struct; use image_column="auto" (or leave it out) for it'
            )
        mode = "auto"
    elif kind == "image":
        if not isinstance(dtype, (BinaryType, StringType)):
            raise TypeError(
                f"column {column!r} is {dtype.simpleString()}; image columns are binary (file bytes), "
                "string (base64 or a path) or the struct of Spark's image source "
                f"(spark.read.format('image'): {', '.join(_IMAGE_FIELDS)}){struct_hint}"
            )
        binary = isinstance(dtype, BinaryType)
        if mode is None:
            mode = "binary" if binary else "auto"
        elif binary and mode in ("base64", "path"):
            raise TypeError(
                f"image_column={mode!r} takes a string column, but {column!r} is binary; "
                'use image_column="binary" (or leave it out) for file bytes'
            )
        elif not binary and mode == "binary":
            raise TypeError(
                f'image_column="binary" takes a binary column, but {column!r} is string; '
                'use "base64", "path" or "auto" (or leave it out)'
            )
    elif mode is not None:
        raise TypeError("image_column= is for kind='image'")
    packed = "__clip_client_embedding"
    while key(packed) in taken or key(packed) in (key(output_column), key(error_column or "")):
        packed = "_" + packed
    return _TableColumns(column, mode, packed)


def _is_image_struct(dtype: Any) -> bool:
    """Whether a column's Spark type is the struct of Spark's image source: its six fields by name,
    with their types (nullability aside, which differs between the source and `ImageSchema`)."""
    from pyspark.sql.types import BinaryType, IntegerType, StringType, StructType

    if not isinstance(dtype, StructType):
        return False
    want = {"origin": StringType, "height": IntegerType, "width": IntegerType, "nChannels": IntegerType}
    want |= {"mode": IntegerType, "data": BinaryType}
    found = {f.name: type(f.dataType) for f in dtype.fields}
    return len(dtype.fields) == len(want) and found == want


def _check_name(arg: str, name: object) -> str:
    """A new column's name: a non-empty string (any characters: it is quoted where Spark parses)."""
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be the new column's name (a non-empty str), got {name!r}")
    if not name.strip():
        raise ValueError(f"{arg} must be a non-empty column name, got {name!r}")
    return name


def _quoted(name: str) -> str:
    """`name` as Spark's parser reads one column of exactly that name: in backticks, backticks
    doubled (so dots and backticks in a name are not taken as a path or a quote)."""
    return "`" + name.replace("`", "``") + "`"


def _make_udf(spec: _Spec) -> UserDefinedFunctionLike:
    _require_spark()
    from collections.abc import Iterator as _Iterator

    import pandas as pd
    from pyspark.sql.pandas.functions import pandas_udf
    from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

    embedding = ArrayType(FloatType())
    returns = (
        StructType([StructField(_EMBEDDING_FIELD, embedding), StructField(_ERROR_FIELD, StringType())])
        if spec.error_field
        else embedding
    )

    def embed(batches: Iterator[pd.Series | pd.DataFrame]) -> Iterator[pd.Series | pd.DataFrame]:
        return _embed_batches(spec, batches)

    # Real objects, not strings: pyspark reads these hints to pick the iterator form of pandas UDF.
    out_type: Any = pd.DataFrame if spec.error_field else pd.Series
    embed.__annotations__ = {"batches": _Iterator[pd.Series], "return": _Iterator[out_type]}
    embed.__name__ = embed.__qualname__ = f"clip_{spec.kind}_embedding"
    udf: UserDefinedFunctionLike = pandas_udf(embed, returnType=returns)  # type: ignore[call-overload]
    # Non-deterministic, so that Catalyst evaluates it exactly once per row where the plan computes
    # it: a deterministic UDF may be copied into a filter pushed below its projection (`where("why IS
    # NULL")` on embed_table's output) and run twice, paying the endpoint twice and, in tolerant
    # mode, letting a row pass the filter on one call and be nulled by the other (docs/spark.md).
    return udf.asNondeterministic()


# --------------------------------------------------------------------------------------------------
# In the worker


_clients: dict[tuple[Any, ...], ClipClient] = {}
_clients_lock = threading.Lock()
_log_file = {"attached": False}


def _attach_log_file() -> None:
    """Once per process: append this module's records to the file
    [`LOG_FILE_ENV`][clip_client.spark.LOG_FILE_ENV] names."""
    if _log_file["attached"]:
        return
    _log_file["attached"] = True
    path = os.environ.get(LOG_FILE_ENV)
    if not path:
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s pid=%(process)d %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _task_device(resources: dict[str, ResourceInformation] | None) -> str | None:
    """The torch device of a task's assigned GPU (`"cuda:<address>"`, the first address), or None
    when Spark assigned it none (`TaskContext.get().resources()`)."""
    gpu = (resources or {}).get("gpu")
    if gpu is None or not gpu.addresses:
        return None
    return f"cuda:{gpu.addresses[0]}"


def _current_task_device() -> str | None:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return _task_device(ctx.resources()) if ctx is not None else None


def _client_for(spec: _Spec) -> ClipClient:
    """This worker process's client for `spec`'s options: built on first use, then reused by every
    batch and task this process runs."""
    device = spec.device
    if spec.local and device is None:
        device = _current_task_device()
    key = (spec.local, spec.model, device, spec.options)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            _attach_log_file()
            options = dict(spec.options)
            if spec.local:
                client = ClipClient.local(spec.model or C.DEFAULT_LOCAL_MODEL, device=device, **options)
            else:
                client = ClipClient(**options)
            _clients[key] = client
            logger.info(
                "built client %s (%s) in worker pid %d, client %d of this process",
                spec.fingerprint(device),
                f"local model on {device or 'the default device'}" if spec.local else "serving endpoints",
                os.getpid(),
                len(_clients),
            )
    return client


@atexit.register
def _close_clients() -> None:
    with _clients_lock:
        for client in _clients.values():
            with contextlib.suppress(Exception):  # best effort at interpreter exit
                client.close()
        _clients.clear()


def _partition() -> int | None:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return ctx.partitionId() if ctx is not None else None


def _embed_batches(
    spec: _Spec, batches: Iterator[pd.Series | pd.DataFrame]
) -> Iterator[pd.Series | pd.DataFrame]:
    """The UDF's body: every Arrow batch of one task, in order, one output batch per input batch.
    A batch is a Series, or a DataFrame (one column per field) when the column is a struct."""
    import pandas as pd

    client: ClipClient | None = None
    partition = _partition()
    offset = 0  # rows of this partition before the current batch
    for batch in batches:
        if client is None:
            client = _client_for(spec)
        rows, matrix, reasons = _embed_series(client, spec, _batch_values(batch), partition, offset)
        offset += len(batch)
        column = _embedding_column(len(batch), rows, matrix, batch.index)
        if spec.error_field:
            errors = pd.Series(reasons, index=batch.index, dtype=object)
            yield pd.DataFrame({_EMBEDDING_FIELD: column, _ERROR_FIELD: errors})
        else:
            yield column


def _embedding_column(n: int, rows: list[int], matrix: Any, index: Any) -> pd.Series:
    """`n` rows for an `array<float>` column: row `rows[j]` is `matrix[j]`, every other row
    None. Rows go as lists of Python floats (exact: float32 -> float -> float32), the form pyspark
    converts fastest; pyspark copies every array value by value whatever it is given (measured for
    3,000 x 768: lists 0.19 s, NumPy rows 0.26 s, an Arrow-backed column 0.46 s)."""
    import pandas as pd

    values: list[Any] = [None] * n
    for i, row in zip(rows, matrix.tolist() if rows else (), strict=True):
        values[i] = row
    return pd.Series(values, index=index, dtype=object)


def _embed_series(
    client: ClipClient, spec: _Spec, values: list[Any], partition: int | None, offset: int
) -> tuple[list[int], Any, list[str | None]]:
    """One Arrow batch's values (`_batch_values`): the batch rows that have an embedding, their
    embeddings (one row each, in that order), and each row's reason for a null (None for a good row
    or a null input).

    A bad row's error in raise mode is raised `from None`: the traceback a Spark worker reports is
    then our error alone (its cause's text is in its message), not the client's internals first, so
    a viewer that cuts the report short (Spark Connect's `str()`) still reaches our line."""
    reasons: list[str | None] = [None] * len(values)
    rows: list[int] = []  # the batch row of each input sent
    inputs: list[Any] = []
    paths: list[str | None] = []  # where each input came from, when the input itself does not say
    for i, value in enumerate(values):
        if _is_null(value):
            continue
        try:
            inputs.append(
                _text_input(value) if spec.kind == "text" else _image_input(value, spec.image_column)
            )
        except InvalidInputError as exc:
            if spec.on_error == "raise":
                raise _at_row(exc, partition, offset + i) from None
            _tolerate(exc, partition, offset + i, reasons, i)
        else:
            rows.append(i)
            paths.append(value.origin if isinstance(value, _StructRow) else None)
    if not inputs:
        return [], None, reasons
    embed = client.embed_texts if spec.kind == "text" else client.embed_images
    if spec.on_error == "raise":
        try:
            return rows, embed(inputs), reasons
        except (InvalidInputError, APIError) as exc:
            if exc.index is not None:
                raise _at_row(exc, partition, offset + rows[exc.index], paths[exc.index]) from None
            if not isinstance(exc, (BadRequestError, PayloadTooLargeError)):
                raise  # an outage: the task fails as it is, and Spark retries it
            # The endpoint refused the batch as a whole: send it again in mark mode, which splits a
            # refused batch down to the input it was about, to name that row.
            result = embed(inputs, on_error="mark")
            for failure in sorted(result.failures, key=lambda f: f.index):
                if not _is_row_failure(failure.error):
                    raise failure.error from exc
                j = failure.index
                raise _at_row(failure.error, partition, offset + rows[j], paths[j]) from None
            return rows, result.embeddings, reasons  # the refusal did not recur
    result = embed(inputs, on_error="mark")
    for failure in result.failures:
        if not _is_row_failure(failure.error):
            raise failure.error
        j = failure.index
        _tolerate(failure.error, partition, offset + rows[j], reasons, rows[j], paths[j])
    keep = result.ok
    return [i for i, ok in zip(rows, keep, strict=True) if ok], result.embeddings[keep], reasons


def _is_null(value: object) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value)) if not isinstance(value, (str, bytes, bytearray)) else False
    except (TypeError, ValueError):  # an array-like value: not a scalar null
        return False


def _is_row_failure(error: BaseException) -> bool:
    """A failure of the row itself (tolerated by `on_error="null"`), not of the endpoint."""
    if isinstance(error, InvalidInputError):
        return True
    return isinstance(error, (BadRequestError, PayloadTooLargeError)) and error.index is not None


def _where(partition: int | None, row: int) -> str:
    part = f"Spark partition {partition}, " if partition is not None else ""
    return f"{part}row {row} (counted from 0 within the partition)"


def _without_index(error: BaseException) -> str:
    """The error's text without the client's `input N` (the position among the values sent in one
    call, nulls skipped: not the row's position, which the caller says itself)."""
    if isinstance(error, InvalidInputError):
        return error.reason
    text = str(error)
    index = getattr(error, "index", None)
    prefix = f"input {index}: "
    return text[len(prefix) :] if index is not None and text.startswith(prefix) else text


def _one_line(text: str) -> str:
    """`text` on one line: its lines joined by `" | "`, blank ones dropped, each stripped."""
    lines = [line.strip() for line in text.splitlines()]
    return " | ".join(line for line in lines if line)


def _at_row(
    exc: BaseException, partition: int | None, row: int, path: str | None = None
) -> InvalidInputError:
    """The task's error for a bad row: what went wrong, where, and how to tolerate such rows. Its
    `index` is the row (within the partition); its message names it once, as the partition's.
    `path` is where the row came from when the error does not say (an image struct's `origin`).

    The message is one line, in the order partition, row, path, reason, advice: a viewer that keeps
    only the first line of a worker's error, or cuts it after so many characters (Spark Connect's
    `str()` of a failed job), still shows which row failed and why. The reason's own line breaks (a
    server's multi-line message) become `" | "`."""
    hint = 'on_error="null" embeds the other rows and gives this one a null'
    path = getattr(exc, "path", None) or path
    shown = f", path {InvalidInputError._excerpt(path)}" if path is not None else ""
    if isinstance(exc, InvalidInputError):
        new = type(exc)(f"{_where(partition, row)}{shown}: {_one_line(exc.reason)} ({hint})")
    else:
        refused = f"the endpoint refused it: {type(exc).__name__}: {_without_index(exc)}"
        new = InvalidInputError(f"{_where(partition, row)}{shown}: {_one_line(refused)} ({hint})")
    new.path = path
    new.index = row  # set after the message is made, which already names the row
    return new


def _tolerate(
    error: BaseException,
    partition: int | None,
    row: int,
    reasons: list[str | None],
    i: int,
    path: str | None = None,
) -> None:
    detail = _without_index(error)
    path = getattr(error, "path", None) or path
    where = f"path {InvalidInputError._excerpt(path)}: " if path is not None else ""
    reason = redact(f"{type(error).__name__}: {where}{detail}")
    reasons[i] = reason
    logger.warning("%s: embedding set to null: %s", _where(partition, row), reason)


@dataclass(frozen=True)
class _StructRow:
    """One row of a struct column: Spark hands an iterator pandas UDF a struct argument as a
    `pandas.DataFrame` (one column per field), not a Series of values."""

    names: tuple[str, ...]
    values: tuple[Any, ...]

    @property
    def is_image(self) -> bool:
        """Whether the struct has the fields of Spark's image source, exactly."""
        return sorted(self.names) == sorted(_IMAGE_FIELDS)

    @property
    def origin(self) -> str | None:
        """The image struct's `origin` (the file it was read from), for error messages."""
        origin = dict(zip(self.names, self.values, strict=True)).get("origin") if self.is_image else None
        return origin if isinstance(origin, str) and origin else None

    def describe(self) -> str:
        return f"struct<{', '.join(self.names)}>"


_IMAGE_FIELDS = ("origin", "height", "width", "nChannels", "mode", "data")
"""The fields of Spark's image source (`spark.read.format("image")`, `pyspark.ml.image.ImageSchema`)."""
_OPENCV_CHANNELS = {0: 1, 16: 3, 24: 4}
"""The OpenCV type codes Spark's image source writes (`ImageSchema.ocvTypes`: CV_8UC1, CV_8UC3,
CV_8UC4), with their channels: 8-bit grey, BGR and BGRA."""
_STRUCT_HINT = (
    "a struct column is read only as Spark's image source (spark.read.format('image'): origin, height, "
    "width, nChannels, mode, data); pass the field that holds the input instead (e.g. col('s.text'))"
)


def _batch_values(batch: pd.Series | pd.DataFrame) -> list[Any]:
    """One Arrow batch as a list of values, one per row: a Series' values, or for a struct column
    (a DataFrame) one `_StructRow` per row. A null struct comes as a row of nulls (pyspark does not
    keep the struct's own null), so it is not told apart from a struct of nulls."""
    import pandas as pd

    if not isinstance(batch, pd.DataFrame):
        values: list[Any] = batch.tolist()
        return values
    names = tuple(str(name) for name in batch.columns)
    columns = [batch.iloc[:, j].tolist() for j in range(len(names))]
    if not columns:
        return [_StructRow((), ())] * len(batch)
    return [_StructRow(names, tuple(row)) for row in zip(*columns, strict=True)]


def _text_input(value: object) -> Any:
    """A text column value as the client input (the client checks that it is a string), or an
    InvalidInputError for a struct."""
    if isinstance(value, _StructRow):
        raise InvalidInputError(f"a {value.describe()} value is not a text: {_STRUCT_HINT}")
    return value


def _image_from_struct(value: _StructRow) -> Any:
    """The pixels a row of Spark's image source describes: an `HxW` (grey), `HxWx3` (RGB) or
    `HxWx4` (RGBA) uint8 array, the source's BGR(A) bytes in OpenCV order reordered to RGB(A), so
    that the client prepares it as it prepares the file (alpha composited onto white)."""
    import numpy as np

    fields = dict(zip(value.names, value.values, strict=True))
    path = value.origin
    if all(_is_null(v) for v in value.values):
        raise ImageDecodeError("the image struct is null (or all its fields are): no image to embed")
    height, width, channels, mode = (_struct_int(fields[k]) for k in ("height", "width", "nChannels", "mode"))
    data = fields["data"]
    if height is None or width is None or height <= 0 or width <= 0:
        raise ImageDecodeError(
            f"the image struct has no pixels (height {height}, width {width}): Spark's image source "
            "gives -1 for a file it could not decode; read the file with format('binaryFile') to see why",
            path=path,
        )
    if mode not in _OPENCV_CHANNELS or channels != _OPENCV_CHANNELS[mode]:
        raise ImageDecodeError(
            f"the image struct's mode {mode} with nChannels {channels} is not an 8-bit OpenCV type Spark "
            "writes: 0 (CV_8UC1, 1 channel), 16 (CV_8UC3, 3) or 24 (CV_8UC4, 4)",
            path=path,
        )
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"the image struct's data is {type(data).__name__}, not bytes", path=path)
    if len(data) != height * width * channels:
        raise ImageDecodeError(
            f"the image struct's data holds {len(data):,} bytes, but height x width x nChannels = "
            f"{height} x {width} x {channels} = {height * width * channels:,}",
            path=path,
        )
    pixels = np.frombuffer(bytes(data), dtype=np.uint8).reshape(height, width, channels)
    if channels == 1:
        return pixels[:, :, 0]
    return pixels[:, :, [2, 1, 0, 3][:channels]]


def _struct_int(value: object) -> int | None:
    """An integer field of the image struct (a float when pandas filled a null with NaN), or None."""
    import numpy as np

    if _is_null(value) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return int(value) if value == int(value) else None


def _image_input(value: object, mode: ImageColumn) -> Any:
    """A column value as the client input its mode says it is: file bytes, a `Path` (never
    re-read as base64), or the pixels of Spark's image struct (`"auto"` mode)."""
    if isinstance(value, _StructRow):
        if not value.is_image:
            raise InvalidInputError(f"a {value.describe()} value is not an image: {_STRUCT_HINT}")
        if mode != "auto":
            raise InvalidInputError(
                f"image_column={mode!r} takes a {'binary' if mode == 'binary' else 'string'} column, but "
                'this value is Spark\'s image struct; use image_column="auto" (the default) for it',
                path=value.origin,
            )
        return _image_from_struct(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        if mode in ("binary", "auto"):
            return bytes(value)
        raise InvalidInputError(
            f"image_column={mode!r} takes a string column, but this value is binary; "
            'use image_column="binary" for file bytes'
        )
    if not isinstance(value, str):
        raise InvalidInputError(
            f"an image column value must be binary or a string, got {type(value).__name__}"
        )
    if mode == "binary":
        raise InvalidInputError(
            'image_column="binary" takes a binary column, but this value is a string; '
            'use image_column="base64" or "path"'
        )
    if mode == "base64":
        return _decode_base64(value)
    if mode == "auto":
        if value.startswith("data:"):
            return _decode_base64(value)
        try:
            decoded = from_plain_base64(value)
        except InvalidBase64 as exc:
            raise InvalidInputError(f"not valid base64: {exc}") from None
        if decoded is not None:
            return decoded
    if not value:
        raise InvalidInputError("an empty path: the value names no file", path=value)
    if _URL.match(value) and not value.lower().startswith(("dbfs:", "file:")):
        raise InvalidInputError(_URL_HINT, path=value)
    return Path(_local_path(value))


def _decode_base64(text: str) -> bytes:
    data = text
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or not head.endswith(";base64"):
            raise InvalidInputError("a data URI must look like 'data:image/png;base64,<data>'")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        shown = InvalidInputError._excerpt(text)
        raise InvalidInputError(f"not valid base64 ({exc}): {shown}") from None


def _local_path(value: str) -> str:
    """A path the worker can open: `dbfs:/Volumes/x` -> `/Volumes/x`, `dbfs:/x` -> `/dbfs/x`,
    `file:/x` and `file:///x` -> `/x`, each percent-decoded (`file:/a%20b.jpg` ->
    `/a b.jpg`, as `_metadata.file_path` and `input_file_name()` encode them) unless only the
    undecoded path exists (binaryFile's `path` column does not encode); anything else as given."""
    lower = value.lower()
    if lower.startswith("dbfs:/"):
        rest = "/" + value[len("dbfs:") :].lstrip("/")
        rest = rest if rest.startswith(("/Volumes/", "/dbfs/")) else "/dbfs" + rest
        return _decoded(rest)
    if lower.startswith("file:"):
        rest = value[len("file:") :]
        if rest.startswith("//"):
            rest = rest[2:]  # file:///x (empty authority) or file://localhost/x
            rest = rest[rest.index("/") :] if "/" in rest else "/"
        return _decoded(rest)
    return value


def _decoded(path: str) -> str:
    """`path` percent-decoded (RFC 3986, UTF-8), or as given when only that one names a file."""
    decoded = urllib.parse.unquote(path)
    if decoded != path and not os.path.exists(decoded) and os.path.exists(path):
        return path
    return decoded
