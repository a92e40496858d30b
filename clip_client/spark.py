"""Spark pandas UDFs: a column of texts or images in, a column of 768-d embeddings out.

>>> from clip_client.spark import embed_table, image_embedding_udf
>>> embed = image_embedding_udf()  # doctest: +SKIP
>>> df = spark.read.format("binaryFile").load("/Volumes/main/default/photos")  # doctest: +SKIP
>>> df.withColumn("embedding", embed("content"))  # doctest: +SKIP

Each UDF is a pandas UDF of the iterator form (``Iterator[pd.Series] -> Iterator[pd.Series]``): one
Python worker process builds one :class:`~clip_client.ClipClient` the first time it needs it
(cached in the process, keyed by the UDF's client options) and sends every Arrow batch of every task
it runs through that client's batching, concurrency and retries. Under local mode the model is
loaded once per worker process (once per GPU, on a GPU cluster). Nothing here uses a
``SparkContext``, a broadcast or an RDD, so the UDFs run under Spark Connect (Databricks serverless
and shared clusters, Databricks Connect) as under classic Spark. The recipe, the sizing arithmetic
and the credential patterns are in docs/spark.md.

Needs the ``spark`` extra: ``pip install "clip-serving-client[spark]"`` (pyspark, pandas, pyarrow),
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
from ._core.images import _from_plain_base64, _InvalidBase64
from ._core.secrets import MASK, RedactingFilter, redact, register
from .errors import APIError, BadRequestError, InvalidInputError, PayloadTooLargeError
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

#: What an image column holds: ``"binary"`` (file bytes, as ``spark.read.format("binaryFile")``
#: gives them in ``content``), ``"base64"`` (a string: the base64 of the file, or a
#: ``data:image/...;base64,`` URI), ``"path"`` (a string: ``/Volumes/...``, ``/dbfs/...``, a local
#: path, or a ``dbfs:/`` or ``file:`` URI as binaryFile's ``path`` column gives them), or ``"auto"``:
#: bytes are file bytes; a string is base64 when it starts like the base64 of an image file (JPEG,
#: PNG, GIF, WebP, TIFF, BMP, AVIF, JPEG 2000), else a path.
ImageColumn = Literal["auto", "binary", "base64", "path"]

#: What a UDF does with a bad input: ``"raise"`` fails the task with an error naming the row;
#: ``"null"`` gives a null embedding and the reason (in the ``error`` field, or the worker's log).
SparkOnError = Literal["raise", "null"]

#: An environment variable: when set on the executors (``spark.executorEnv.CLIP_CLIENT_SPARK_LOG``),
#: each Python worker appends this module's log records (one INFO line per client it builds, one
#: WARNING per row nulled in tolerant mode) to the file it names, credentials redacted.
LOG_FILE_ENV = "CLIP_CLIENT_SPARK_LOG"

logger = logging.getLogger(f"{C.LOGGER_NAME}.spark")
logger.addFilter(RedactingFilter())  # a parent logger's filter does not see records logged here

#: Options a UDF cannot carry to the executors: live objects of the driver process.
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
_IMAGE_COLUMNS = ("auto", "binary", "base64", "path")
_ERROR_FIELD = "error"
_EMBEDDING_FIELD = "embedding"
#: torch's device types (``torch.device`` accepts ``type`` or ``type:index``), checked on the driver
#: without importing torch there; the worker resolves the device itself (``ClipClient.local``).
_DEVICE = re.compile(
    r"(cpu|cuda|mps|xpu|xla|meta|hpu|mtia|npu|ipu|hip|ve|fpga|maia|vulkan|lazy|privateuseone)(:\d+)?"
)
#: ``scheme://...``: a URL (``https://``, ``s3://``, ``abfss://``, ``gs://``...), never a local file.
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
    #: The client options, sorted by name (hashable: the worker's cache key).
    options: tuple[tuple[str, Any], ...]

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
    if on_error not in ("raise", "null"):
        raise ValueError(f"on_error must be 'raise' or 'null', got {on_error!r}")
    if image_column not in _IMAGE_COLUMNS:
        raise ValueError(
            f"image_column must be one of {', '.join(map(repr, _IMAGE_COLUMNS))}, got {image_column!r}"
        )
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
        image_column=image_column,  # type: ignore[arg-type]
        on_error=on_error,  # type: ignore[arg-type]
        error_field=error_column,
        local=local,
        model=model_name,
        device=device,
        options=tuple(sorted(options.items())),
    )


def _check_device(device: object) -> str | None:
    """``device`` as the string the workers pass to ``torch.device`` (a ``torch.device`` object is
    taken as its string), or a TypeError/ValueError naming it."""
    if device is None:
        return None
    if type(device).__module__ == "torch" and type(device).__name__ == "device":
        device = str(device)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cuda', 'cuda:1' or 'cpu', got {device!r}")
    if _DEVICE.fullmatch(device) is None:
        raise ValueError(f"device={device!r} is not a torch device ('cuda', 'cuda:1', 'cpu', 'mps'...)")
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
    """A Spark pandas UDF that embeds a string column: ``df.withColumn("embedding", udf("caption"))``.

    Each Python worker builds one :class:`~clip_client.ClipClient` from these options the first
    time it runs the UDF and keeps it for every later task (the cache is keyed by the options, so
    two UDFs with the same options share one client, connection pool and, in local mode, model).
    Each Arrow batch (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows, default 10,000) is one
    ``embed_texts`` call: ``batch_size`` records per request, ``max_concurrency`` requests in flight
    per worker, retries and the adaptive limit as the client does them (docs/spark.md gives the
    sizing arithmetic).

    Args:
        on_error: ``"raise"`` (default): a row that cannot be embedded fails the task with its error,
            naming its Spark partition and its row within it (counted from 0, nulls included).
            ``"null"``: the row's embedding is null and the reason goes to the ``error`` field
            (``error_column=True``) or, as a WARNING of the ``clip_client.spark`` logger, to the
            worker's log. Only the row's own failures are tolerated (an input the endpoint refuses
            with 400, an item too large for one request); an outage (401/403/404, 5xx or 429 after
            retries, a dead connection) still fails the task, which Spark then retries.
        error_column: return ``struct<embedding: array<float>, error: string>`` instead of the bare
            array: ``error`` is null for a good row, else the reason (``"ImageDecodeError: ..."``).
            Needs ``on_error="null"`` (a ValueError otherwise: with ``"raise"`` it would stay empty).
        local: run the model in each worker process (:meth:`ClipClient.local`) instead of the
            endpoints; no workspace is needed.
        model: with ``local=True``: a Hugging Face hub id or a folder readable on every executor
            (``/Volumes/...``, ``/dbfs/...``); default ``openai/clip-vit-large-patch14``.
        device: with ``local=True``: ``"cuda"``, ``"cuda:1"``, ``"cpu"``. Default: the GPU Spark
            assigned to the task (``TaskContext.resources()["gpu"]``, so one model runs per GPU),
            else CUDA when available, else CPU.
        **client_options: the client's keywords: ``host``, ``token``, ``profile``, every setting
            (``batch_size``, ``max_concurrency``, ``text_endpoint``, ``normalize``, ``timeout``...)
            and ``cache`` (a path every executor can reach); in local mode also ``dtype`` and
            ``compile``. They travel with the UDF as given: an explicit ``token`` is pickled into
            the job (never shown in a plan, a repr, an error or a log line; see docs/spark.md for
            the secret-scope pattern). Without ``host``/``token``/``profile``, each executor
            resolves its workspace through databricks-sdk's own chain.

    Returns:
        a pandas UDF taking one string column, returning ``array<float>`` (768 float32 values for
        ViT-L/14; null for a null text), or the struct above with ``error_column=True``.

    Raises:
        TypeError: an unknown option, ``config``/``http_client``/``backend`` (live objects that cannot
            travel to executors), workspace options with ``local=True``, or ``model``/``device``
            without it; ``local`` not a bool, ``device`` not a string.
        ValueError: a bad ``on_error`` or setting value (``pydantic.ValidationError`` names the field),
            or a ``device`` that is no torch device type (``"cuda"``, ``"cuda:1"``, ``"cpu"``,
            ``"mps"``...; checked on the driver without importing torch); ``error_column`` with
            ``on_error="raise"``.
        ImportError: pyspark or pandas is missing (``pip install "clip-serving-client[spark]"``).

    In the job (raised in the task, shown by Spark as a ``PythonException``): ``InvalidInputError``
    for a value that is not a string (``"raise"`` mode), ``APIError`` and its subclasses once
    retries are spent, ``CredentialsError`` when an executor cannot resolve the workspace.

    >>> embed = text_embedding_udf(batch_size=64, max_concurrency=4)  # doctest: +SKIP
    >>> df.withColumn("embedding", embed("caption")).write.saveAsTable("t")  # doctest: +SKIP
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
    """A Spark pandas UDF that embeds an image column: ``df.withColumn("embedding", udf("content"))``.

    The same worker-side client, batching and concurrency as :func:`text_embedding_udf`; images
    are decoded, resized and cropped by the client exactly as the served ``CLIPImageProcessor``
    does (docs/images.md), in the worker's threads.

    Args:
        image_column: what the column holds (:data:`ImageColumn`): ``"binary"`` (file bytes, the
            ``content`` of ``spark.read.format("binaryFile")``), ``"base64"`` (a string, the base64
            of the file or a ``data:`` URI), ``"path"`` (a string naming a file every executor can
            read: ``/Volumes/...``, ``/dbfs/...``, a local path; ``dbfs:/Volumes/x`` is read as
            ``/Volumes/x``, ``dbfs:/x`` as ``/dbfs/x`` and ``file:/x`` as ``/x``, percent-decoded;
            a URL such as ``s3://...`` or ``https://...`` is a bad row, never fetched). Default
            ``"auto"``: bytes as files; a string as base64 when it starts like the base64 of an
            image file, else as a path. Name the mode for a string column whose files could be
            named like base64 (``/9j/...`` starts every JPEG's base64): the mode then decides.
        on_error, error_column, local, model, device, **client_options: as
            :func:`text_embedding_udf`. Tolerated as bad rows: a missing or unreadable file, bytes
            that are not an image, invalid base64, an image over ``max_image_pixels``, a value of
            the wrong kind for the mode.

    Returns:
        a pandas UDF taking one binary or string column, returning ``array<float>`` (null for a
        null value), or ``struct<embedding: array<float>, error: string>`` with ``error_column``.

    Raises:
        TypeError: as :func:`text_embedding_udf`.
        ValueError: as :func:`text_embedding_udf`, and for an ``image_column`` not in
            :data:`ImageColumn`.
        ImportError: pyspark or pandas is missing (``pip install "clip-serving-client[spark]"``).

    In the job: ``InvalidInputError`` / ``ImageDecodeError`` naming the partition, the row and the
    path (``"raise"`` mode), ``APIError`` once retries are spent, ``CredentialsError``.

    >>> files = spark.read.format("binaryFile").load("/Volumes/main/default/photos")  # doctest: +SKIP
    >>> files.select("path", image_embedding_udf()("content").alias("embedding"))  # doctest: +SKIP
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
    """``df`` with one more column: the embedding of ``column`` (lazy, like any transformation).

    Args:
        df: a DataFrame (classic or Spark Connect).
        column: the input column's name (a ``str``; dots and backticks are part of the name, not a
            path), resolved as Spark resolves names (case-insensitively unless
            ``spark.sql.caseSensitive``): a string column for ``kind="text"``; a binary or string column for
            ``"image"``.
        kind: ``"text"`` or ``"image"``.
        output_column: the new column's name, ``array<float>`` (null for a null input or a nulled row).
        error_column: the name of a second new column (string) holding each nulled row's reason (a
            name or None: ``True``/``False`` are the UDFs' ``error_column``, not this one's); implies
            ``on_error="null"`` unless that is given.
        image_column: what an image column holds (:data:`ImageColumn`); default from the column's
            type: ``"binary"`` for a binary column, ``"auto"`` for a string column.
        on_error: as :func:`text_embedding_udf`; default ``"null"`` with ``error_column``, else
            ``"raise"``.
        **options: the UDF's options (``local``, ``model``, ``device``) and the client's
            (``host``, ``token``, ``batch_size``, ``max_concurrency``...).

    Returns:
        a DataFrame with every column of ``df`` and the new one(s), rows untouched and in order.

    Raises:
        ValueError: ``column`` is not in ``df`` (or matches two columns case-insensitively),
            ``kind`` is not ``"text"``/``"image"``, ``image_column`` is not an :data:`ImageColumn`,
            an output name is empty, or an output column already exists or equals the other one, as
            Spark compares names (it would be overwritten silently).
        TypeError: ``column``/``output_column``/``error_column`` is not a name (a ``Column``, None,
            a bool), ``column``'s type does not fit ``kind`` (text: string; image: binary or string)
            or ``image_column`` (``"binary"``: binary; ``"base64"``/``"path"``: string), or as
            :func:`text_embedding_udf` for the options.

    >>> embed_table(spark.table("main.default.photos"), "image_base64", "image")  # doctest: +SKIP
    """
    _require_spark()
    from pyspark.sql.functions import col
    from pyspark.sql.types import BinaryType, StringType

    if kind not in ("text", "image"):
        raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
    if not isinstance(column, str):
        raise TypeError(
            f"column must be the input column's name (a str), got {type(column).__name__}: "
            "pass df's column name, e.g. embed_table(df, 'caption', 'text')"
        )
    _check_name("output_column", output_column)
    given: object = error_column  # typed str | None, but True/False are what the UDFs take
    if error_column is not None:
        if isinstance(given, bool):
            raise TypeError(
                f"error_column of embed_table is the name of the reason column to add, or None; got "
                f"{error_column!r} (True/False are the UDFs' error_column, which embed_table sets "
                "itself when given a name)"
            )
        _check_name("error_column", error_column)
    if image_column is not None and image_column not in _IMAGE_COLUMNS:
        raise ValueError(
            f"image_column must be one of {', '.join(map(repr, _IMAGE_COLUMNS))}, got {image_column!r}"
        )
    # Names resolve as Spark resolves them: case-insensitively unless spark.sql.caseSensitive.
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
    if kind == "text" and not isinstance(dtype, StringType):
        raise TypeError(f"column {column!r} is {dtype.simpleString()}; text embeddings need a string column")
    if kind == "image":
        if not isinstance(dtype, (BinaryType, StringType)):
            raise TypeError(
                f"column {column!r} is {dtype.simpleString()}; image columns are binary (file bytes) "
                "or string (base64 or a path)"
            )
        binary = isinstance(dtype, BinaryType)
        if image_column is None:
            image_column = "binary" if binary else "auto"
        elif binary and image_column in ("base64", "path"):
            raise TypeError(
                f"image_column={image_column!r} takes a string column, but {column!r} is binary; "
                'use image_column="binary" (or leave it out) for file bytes'
            )
        elif not binary and image_column == "binary":
            raise TypeError(
                f'image_column="binary" takes a binary column, but {column!r} is string; '
                'use "base64", "path" or "auto" (or leave it out)'
            )
    elif image_column is not None:
        raise TypeError("image_column= is for kind='image'")
    mode: SparkOnError = on_error or ("null" if error_column is not None else "raise")
    with_errors = error_column is not None
    if kind == "text":
        udf = text_embedding_udf(on_error=mode, error_column=with_errors, **options)
    else:
        udf = image_embedding_udf(
            image_column=image_column or "auto", on_error=mode, error_column=with_errors, **options
        )
    source = col(_quoted(column))
    if error_column is None:
        return df.withColumn(output_column, udf(source))
    packed = "__clip_client_embedding"
    while key(packed) in taken or key(packed) in (key(output_column), key(error_column)):
        packed = "_" + packed
    out = df.withColumn(packed, udf(source))
    out = out.withColumn(output_column, col(packed).getField(_EMBEDDING_FIELD))
    out = out.withColumn(error_column, col(packed).getField(_ERROR_FIELD))
    return out.drop(packed)


def _check_name(arg: str, name: object) -> None:
    """A new column's name: a non-empty string (any characters: it is quoted where Spark parses)."""
    if not isinstance(name, str):
        raise TypeError(f"{arg} must be the new column's name (a non-empty str), got {name!r}")
    if not name.strip():
        raise ValueError(f"{arg} must be a non-empty column name, got {name!r}")


def _quoted(name: str) -> str:
    """``name`` as Spark's parser reads one column of exactly that name: in backticks, backticks
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

    def embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series | pd.DataFrame]:
        return _embed_batches(spec, batches)

    # Real objects, not strings: pyspark reads these hints to pick the iterator form of pandas UDF.
    out_type: Any = pd.DataFrame if spec.error_field else pd.Series
    embed.__annotations__ = {"batches": _Iterator[pd.Series], "return": _Iterator[out_type]}
    embed.__name__ = embed.__qualname__ = f"clip_{spec.kind}_embedding"
    udf: UserDefinedFunctionLike = pandas_udf(embed, returnType=returns)  # type: ignore[call-overload]
    return udf


# --------------------------------------------------------------------------------------------------
# In the worker


_clients: dict[tuple[Any, ...], ClipClient] = {}
_clients_lock = threading.Lock()
_log_file = {"attached": False}


def _attach_log_file() -> None:
    """Once per process: append this module's records to the file :data:`LOG_FILE_ENV` names."""
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
    """The torch device of a task's assigned GPU (``"cuda:<address>"``, the first address), or None
    when Spark assigned it none (``TaskContext.get().resources()``)."""
    gpu = (resources or {}).get("gpu")
    if gpu is None or not gpu.addresses:
        return None
    return f"cuda:{gpu.addresses[0]}"


def _current_task_device() -> str | None:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return _task_device(ctx.resources()) if ctx is not None else None


def _client_for(spec: _Spec) -> ClipClient:
    """This worker process's client for ``spec``'s options: built on first use, then reused by every
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


def _embed_batches(spec: _Spec, batches: Iterator[pd.Series]) -> Iterator[pd.Series | pd.DataFrame]:
    """The UDF's body: every Arrow batch of one task, in order, one output batch per input batch."""
    import pandas as pd

    client: ClipClient | None = None
    partition = _partition()
    offset = 0  # rows of this partition before the current batch
    for series in batches:
        if client is None:
            client = _client_for(spec)
        rows, matrix, reasons = _embed_series(client, spec, series, partition, offset)
        offset += len(series)
        column = _column(len(series), rows, matrix, series.index)
        if spec.error_field:
            errors = pd.Series(reasons, index=series.index, dtype=object)
            yield pd.DataFrame({_EMBEDDING_FIELD: column, _ERROR_FIELD: errors})
        else:
            yield column


def _column(n: int, rows: list[int], matrix: Any, index: Any) -> pd.Series:
    """``n`` rows for an ``array<float>`` column: row ``rows[j]`` is ``matrix[j]``, every other row
    None. Rows go as lists of Python floats (exact: float32 -> float -> float32), the form pyspark
    converts fastest; pyspark copies every array value by value whatever it is given (measured for
    3,000 x 768: lists 0.19 s, NumPy rows 0.26 s, an Arrow-backed column 0.46 s)."""
    import pandas as pd

    values: list[Any] = [None] * n
    for i, row in zip(rows, matrix.tolist() if rows else (), strict=True):
        values[i] = row
    return pd.Series(values, index=index, dtype=object)


def _embed_series(
    client: ClipClient, spec: _Spec, series: pd.Series, partition: int | None, offset: int
) -> tuple[list[int], Any, list[str | None]]:
    """One Arrow batch: the batch rows that have an embedding, their embeddings (one row each, in
    that order), and each row's reason for a null (None for a good row or a null input)."""
    values = series.tolist()
    reasons: list[str | None] = [None] * len(values)
    rows: list[int] = []  # the batch row of each input sent
    inputs: list[Any] = []
    for i, value in enumerate(values):
        if _is_null(value):
            continue
        if spec.kind == "text":
            rows.append(i)
            inputs.append(value)
            continue
        try:
            inputs.append(_image_input(value, spec.image_column))
        except InvalidInputError as exc:
            if spec.on_error == "raise":
                raise _at_row(exc, partition, offset + i) from None
            _tolerate(exc, partition, offset + i, reasons, i)
        else:
            rows.append(i)
    if not inputs:
        return [], None, reasons
    embed = client.embed_texts if spec.kind == "text" else client.embed_images
    if spec.on_error == "raise":
        try:
            return rows, embed(inputs), reasons
        except (InvalidInputError, APIError) as exc:
            if exc.index is not None:
                raise _at_row(exc, partition, offset + rows[exc.index]) from exc
            if not isinstance(exc, (BadRequestError, PayloadTooLargeError)):
                raise  # an outage: the task fails as it is, and Spark retries it
            # The endpoint refused the batch as a whole: send it again in mark mode, which splits a
            # refused batch down to the input it was about, to name that row.
            result = embed(inputs, on_error="mark")
            for failure in sorted(result.failures, key=lambda f: f.index):
                if not _is_row_failure(failure.error):
                    raise failure.error from exc
                raise _at_row(failure.error, partition, offset + rows[failure.index]) from exc
            return rows, result.embeddings, reasons  # the refusal did not recur
    result = embed(inputs, on_error="mark")
    for failure in result.failures:
        if not _is_row_failure(failure.error):
            raise failure.error
        _tolerate(failure.error, partition, offset + rows[failure.index], reasons, rows[failure.index])
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
    """A failure of the row itself (tolerated by ``on_error="null"``), not of the endpoint."""
    if isinstance(error, InvalidInputError):
        return True
    return isinstance(error, (BadRequestError, PayloadTooLargeError)) and error.index is not None


def _where(partition: int | None, row: int) -> str:
    part = f"Spark partition {partition}, " if partition is not None else ""
    return f"{part}row {row} (counted from 0 within the partition)"


def _without_index(error: BaseException) -> str:
    """The error's text without the client's ``input N`` (the position among the values sent in one
    call, nulls skipped: not the row's position, which the caller says itself)."""
    if isinstance(error, InvalidInputError):
        return error.reason
    text = str(error)
    index = getattr(error, "index", None)
    prefix = f"input {index}: "
    return text[len(prefix) :] if index is not None and text.startswith(prefix) else text


def _at_row(exc: BaseException, partition: int | None, row: int) -> InvalidInputError:
    """The task's error for a bad row: what went wrong, where, and how to tolerate such rows. Its
    ``index`` is the row (within the partition); its message names it once, as the partition's."""
    hint = 'on_error="null" embeds the other rows and gives this one a null'
    if isinstance(exc, InvalidInputError):
        path = f", path {InvalidInputError._excerpt(exc.path)}" if exc.path is not None else ""
        new = type(exc)(f"{_where(partition, row)}{path}: {exc.reason} ({hint})")
        new.path = exc.path
    else:
        refused = f"the endpoint refused it: {type(exc).__name__}: {_without_index(exc)}"
        new = InvalidInputError(f"{_where(partition, row)}: {refused} ({hint})")
    new.index = row  # set after the message is made, which already names the row
    return new


def _tolerate(
    error: BaseException, partition: int | None, row: int, reasons: list[str | None], i: int
) -> None:
    detail = _without_index(error)
    path = getattr(error, "path", None)
    where = f"path {InvalidInputError._excerpt(path)}: " if path is not None else ""
    reason = redact(f"{type(error).__name__}: {where}{detail}")
    reasons[i] = reason
    logger.warning("%s: embedding set to null: %s", _where(partition, row), reason)


def _image_input(value: object, mode: ImageColumn) -> Any:
    """A column value as the client input its mode says it is: file bytes, or a ``Path`` (never
    re-read as base64)."""
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
            decoded = _from_plain_base64(value)
        except _InvalidBase64 as exc:
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
    """A path the worker can open: ``dbfs:/Volumes/x`` -> ``/Volumes/x``, ``dbfs:/x`` -> ``/dbfs/x``,
    ``file:/x`` and ``file:///x`` -> ``/x``, each percent-decoded (``file:/a%20b.jpg`` ->
    ``/a b.jpg``, as ``_metadata.file_path`` and ``input_file_name()`` encode them) unless only the
    undecoded path exists (binaryFile's ``path`` column does not encode); anything else as given."""
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
    """``path`` percent-decoded (RFC 3986, UTF-8), or as given when only that one names a file."""
    decoded = urllib.parse.unquote(path)
    if decoded != path and not os.path.exists(decoded) and os.path.exists(path):
        return path
    return decoded
