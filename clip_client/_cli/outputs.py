"""The files the `clip-client` command writes and reads, the runs that write them, and the model of
a file's rows.

The commands only parse, call and render: `ResumableImageRun` runs an `images` embedding into an
output (resume, stamps, failures; its inputs and done rows in a run-scoped SQLite `Ledger`) and
`stream_images` one to stdout, both returning what failed;
`ResumableTextRun` runs a `texts --from` embedding into an output (resume by id and text). Both
keep finished rows in part files and write the output from them a chunk at a time
(`DEFAULT_CHUNK_ROWS`), and `read_chunks` reads any output a chunk at a time: memory does not grow
with the row count;
`options_for_rows` picks the model a file records for a query (a local checkpoint known by its
content, or the endpoints it names) and `refuse_another_model` refuses a query by another one.

Three formats, chosen by the output's extension (docs/cli.md has the schemas):

- `.parquet`: columns `path` (images) or `id` and `text` (texts), and `embedding`, a
  fixed-size list of float32; the settings in the schema metadata under `clip_client` (JSON).
- `.npy`: the float32 `(n, dim)` matrix; beside it `<name>.meta.json` holds the settings and
  the row -> path (or id and text) mapping.
- `.jsonl`: one object per line, `{"path": ...}` or `{"id": ..., "text": ...}`, plus
  `"embedding"`; beside it `<name>.meta.json` holds the settings.

Image rows also record each file's `size` (bytes) and `mtime_ns` when it was embedded, so a
resumed run re-embeds a file that changed since. Every file is written to a temporary name in the
same folder, given the permissions the umask allows (as `open` would), and renamed into place
(`os.replace`), so a reader never sees half a file. A resumable run keeps its finished rows in
`<output>.parts/`: a folder of part files, each renamed into place whole, with a manifest of the
run's settings; the final file is assembled from them in input order, renamed into place, and the
folder renamed away (one step) before it is deleted, so a kill at any instant leaves either the
whole parts folder or a finished output, and the same command finishes from either.

Any `str` is recorded exactly, a file name that is not UTF-8 included (Python lists its bytes as
lone surrogates, `os.fsdecode`): JSON writes such a character as its `\\udcXX` escape, which
`json.loads` reads back as the same `str`; Parquet's strings must be UTF-8, so a `path` (or
`text`) column holds the name readably (each such byte as U+FFFD) and a `path_bytes` column its
exact bytes (`os.fsencode`).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import errno
import importlib
import itertools
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from .. import _constants as C
from .._version import __version__
from ..errors import ClipClientError, InvalidInputError
from ..types import EmbeddingArray
from ._ledger import Ledger
from .errors import FLAGS, in_cli_words, one_line

if TYPE_CHECKING:
    from .._client import ClipClient
    from ..types import EmbeddingFailure, InputKind
    from .options import Common

__all__ = [
    "FORMATS",
    "ImageRunResult",
    "OutputError",
    "OutputMeta",
    "ResumableImageRun",
    "ResumableOutput",
    "ResumableTextRun",
    "ResumableTexts",
    "Rows",
    "WrittenOutput",
    "check_writable",
    "failure_reason",
    "json_line",
    "jsonl_line",
    "meta_path",
    "options_for_rows",
    "output_format",
    "read_chunks",
    "read_rows",
    "refuse_another_model",
    "shown",
    "stream_images",
    "vanished",
    "write_rows",
]

Format = Literal[".npy", ".parquet", ".jsonl"]
FORMATS: tuple[Format, ...] = (".npy", ".parquet", ".jsonl")
"""The output formats, by extension."""
METADATA_KEY = b"clip_client"
"""The key of the settings in a Parquet file's schema metadata."""
# Rows a resumable run gathers before it writes them as one part file.
DEFAULT_PART_ROWS = 1000
READ_AHEAD = 16
"""Images of a store (objects, volume files off a cluster, shard members) read ahead of the client,
as `iter_images`' default `prefetch`: their latency overlaps the embedding of those before them."""
# Rows read, assembled or written at a time when a file is streamed (about 25 MB of 768-d float32):
# the memory of a finish, a resume or a search, whatever the row count.
DEFAULT_CHUNK_ROWS = 8192
_MANIFEST = "manifest.json"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""A character no UTF-8 file can hold: how Python lists a byte of a file name that is not UTF-8."""
_EXACT_SUFFIX = "_bytes"
"""A Parquet string column's companion that holds the exact bytes of its values that are not UTF-8."""

Stamp = tuple[int, int]
"""An image file's (size in bytes, st_mtime_ns) when it was embedded."""


def _local_model(model: str) -> tuple[str, str] | None:
    """`(model, dtype)` of a local model's identity, `local <model> <dtype>`; None for an endpoint's."""
    if not model.startswith("local "):
        return None
    name, _, dtype = model.removeprefix("local ").rpartition(" ")
    return (name, dtype) if name else None


def _checkpoint_sha256(model: str) -> str | None:
    """The content digest of the checkpoint folder `model` (None for a hub id), each file hashed
    once per size and mtime: the digests are kept in `checkpoints.json` beside the embedding cache."""
    from ..local import checkpoint_sha256
    from .options import default_cache_path

    return checkpoint_sha256(model, memo=default_cache_path().with_name("checkpoints.json"))


def file_stamp(path: str) -> Stamp | None:
    """`path`'s (size in bytes, st_mtime_ns), or None when it cannot be stat-ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns)


class OutputError(ClipClientError):
    """An output file cannot be written, read or resumed; the message names the file and what to do.

    A file name in the message that is not UTF-8 is shown with each such byte as `\\xNN`
    (`caf\\xe9.png`), so that the message can be printed anywhere and names the file's bytes.
    """

    def __init__(self, message: str) -> None:
        super().__init__(shown(message))


def shown(text: str) -> str:
    """`text` printable anywhere: each lone surrogate (a byte of a file name that is not UTF-8, as
    `os.fsdecode` lists it) as the byte it stands for, `\\xNN`; any other surrogate as `\\uXXXX`."""

    def one(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"

    return _LONE_SURROGATE.sub(one, text)


@dataclass(frozen=True)
class OutputMeta:
    """What a file's rows were computed with; stored in every output, compared on resume.

    Attributes:
        kind: `"image"` or `"text"`.
        model: who computed the rows: a serving endpoint's URL, or `local <model> <dtype>`.
        normalize: whether the rows are L2-normalised.
        preparation: for images, the settings that change what is sent
            (`clip_client.cache.preparation_settings`); empty for texts.
        dim: the embedding width (None until the first row is known).
        clip_client: the version of clip_client that wrote the file.
        model_sha256: for a local model loaded from a folder, what the folder holds
            ([checkpoint_sha256][clip_client.local.checkpoint_sha256]): the model's identity, whatever
            the folder is called or wherever it moved. None for a hub id, an endpoint, and the files
            of clip_client versions before it was recorded.
        endpoints: for an endpoint's rows, the names of the two serving endpoints (`text`,
            `image`) the run used: what `search` queries when no option names them.
    """

    kind: str
    model: str
    normalize: bool
    preparation: dict[str, Any] = field(default_factory=dict)
    dim: int | None = None
    clip_client: str = __version__
    model_sha256: str | None = None
    endpoints: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, client: ClipClient, kind: InputKind, *, normalize: bool) -> OutputMeta:
        """The settings of `client`'s rows of `kind` (no I/O)."""
        from .._backend import ControlPlane, InProcessModel
        from ..cache import backend_identity, preparation_settings

        backend = client.backend
        if isinstance(backend, ControlPlane):
            # The endpoint's URL alone: the registered model versions are only known after a call.
            model = backend.invocations_url(kind)
        elif isinstance(backend, InProcessModel):
            # Where the checkpoint is (to reload it for a query); its content is `model_sha256`.
            model = backend.location
        else:
            model = backend_identity(backend, kind)[0]
        preparation = preparation_settings(client.settings, kind)
        # The width when the backend knows it before any answer (a local model does; an endpoint
        # only tells with its answers): the shape of an output with no rows.
        dim = backend.dim
        identity: dict[str, Any] = {}
        local = _local_model(model)
        if local is not None:
            identity["model_sha256"] = _checkpoint_sha256(local[0])
        elif not (client.settings.text_url or client.settings.image_url):
            identity["endpoints"] = {
                "text": client.settings.text_endpoint,
                "image": client.settings.image_endpoint,
            }
        return cls(kind=kind, model=model, normalize=normalize, preparation=preparation, dim=dim, **identity)

    def with_dim(self, dim: int) -> OutputMeta:
        return dataclasses.replace(self, preparation=dict(self.preparation), dim=dim)

    @property
    def local_model(self) -> tuple[str, str] | None:
        """`(model, dtype)` when a local model computed the rows (a hub id, or the absolute path of
        the folder it was loaded from), else None."""
        return _local_model(self.model)

    def same_model(self, other: OutputMeta) -> bool:
        """Whether `other`'s rows come from the same model: for two local checkpoints recorded by
        content, the same content and dtype, wherever each folder was; otherwise the same `model`."""
        if self.model_sha256 and other.model_sha256:
            mine, theirs = self.local_model, other.local_model
            return (
                self.model_sha256 == other.model_sha256
                and mine is not None
                and theirs is not None
                and mine[1] == theirs[1]
            )
        return self.model == other.model

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: Path) -> OutputMeta:
        try:
            data = json.loads(text)
            return cls(
                kind=str(data["kind"]),
                model=str(data["model"]),
                normalize=bool(data["normalize"]),
                preparation=dict(data.get("preparation") or {}),
                dim=None if data.get("dim") is None else int(data["dim"]),
                clip_client=str(data.get("clip_client", "")),
                # Absent from files written before they were recorded: those are read all the same.
                model_sha256=None if data.get("model_sha256") is None else str(data["model_sha256"]),
                endpoints={str(k): str(v) for k, v in (data.get("endpoints") or {}).items()},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(f"{where}: its clip_client settings are unreadable ({exc})") from None

    def differences(self, other: OutputMeta) -> list[str]:
        """What differs between the rows of `self` and `other` (the version and width aside), in
        the command's words: rows of another kind are that alone (the rest follows from it); a
        setting an option sets is named by that option."""
        if self.kind != other.kind:
            return [f"the file holds {self.kind} embeddings, this run embeds {other.kind}s"]
        out = []
        if not self.same_model(other):
            if self.model == other.model and self.model_sha256 and other.model_sha256:
                out.append(
                    f"model {self.model!r}, whose folder's content changed since (sha256 then "
                    f"{self.model_sha256[:12]}..., now {other.model_sha256[:12]}...)"
                )
            else:
                out.append(f"model {self.model!r} (this run: {other.model!r})")
        if self.normalize != other.normalize:
            flags = {True: "--normalize", False: "--no-normalize"}
            out.append(
                f"normalize {self.normalize!r} (this run: {other.normalize!r}): the file was written with "
                f"{flags[self.normalize]}, this run has {flags[other.normalize]}"
            )
        for name in sorted(set(self.preparation) | set(other.preparation)):
            mine, theirs = self.preparation.get(name), other.preparation.get(name)
            if mine != theirs:
                flag = FLAGS.get(name)
                out.append(
                    f"{flag} {mine} (this run: {flag} {theirs})"
                    if flag
                    else f"{name} {mine!r} (this run: {theirs!r})"
                )
        return out


@dataclass
class Rows:
    """Rows of one output: keys (image paths, or text ids), texts (for texts), embeddings.

    Attributes:
        keys: the `path` (str) of each image row, or the `id` (int) of each text row.
        embeddings: float32, shape `(len(keys), dim)`.
        texts: the text of each row (texts only), else None.
        meta: the settings the rows were computed with.
        stamps: images only: each file's `(size in bytes, mtime in ns)` when it was embedded (None
            for a row whose file could not be stat-ed), or None when the file records none.
    """

    keys: list[Any]
    embeddings: EmbeddingArray
    texts: list[str] | None = None
    meta: OutputMeta | None = None
    stamps: list[Stamp | None] | None = None

    @property
    def key_name(self) -> str:
        return "path" if self.meta is None or self.meta.kind == "image" else "id"

    def __len__(self) -> int:
        return len(self.keys)


def output_format(path: Path, *, role: str = "--out") -> Format:
    """The format `path`'s extension names.

    Args:
        path: the file.
        role: how the message names the file: the option (`--out`) or argument (`INDEX`).

    Raises:
        OutputError: the extension is not `.npy`, `.parquet` or `.jsonl`.
    """
    suffix = path.suffix.lower()
    for fmt in FORMATS:
        if suffix == fmt:
            return fmt
    what = (
        f"name the file with one of {', '.join(FORMATS)}"
        if role == "--out"
        else f"give an output of `clip-client images` or `texts` ({', '.join(FORMATS)})"
    )
    raise OutputError(f"{role} {path}: unknown output format {path.suffix or '(no extension)'!r}; {what}")


def meta_path(path: Path) -> Path:
    """The sidecar of a `.npy` or `.jsonl` output: `<name>.meta.json` beside it
    (`emb.npy.meta.json`; the whole name, so `emb.npy` and `emb.jsonl` never share one)."""
    return path.with_name(path.name + ".meta.json")


# --------------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`: write it inside the block, and it replaces `path` whole
    (after an fsync) when the block ends without an error; otherwise it is removed."""
    with _atomic_all([path]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def _atomic_all(paths: Sequence[Path]) -> Iterator[tuple[Path, ...]]:
    """A temporary name beside each of `paths` (the files of one output: its data file and its
    sidecar): write them all inside the block; only once the block ends without an error are they
    synced and renamed into place, one after the other, in the order given. Any error (in the
    block, or a sync) removes every temporary and leaves every `path` as it was."""
    tmps: list[str] = []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            tmps.append(tmp)
            # mkstemp makes the file 0600; give it what open() would have: 0666 less the umask.
            os.chmod(tmp, 0o666 & ~_umask())
        yield tuple(Path(t) for t in tmps)
        for tmp in tmps:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        for tmp, path in zip(tmps, paths, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _json(obj: Any) -> str:
    """`obj` as JSON text that a UTF-8 file can hold, any `str` in it recorded exactly: readable
    (not `\\u`-escaped) but for lone surrogates (the bytes of a file name that is not UTF-8, as
    Python lists them), written as their `\\udcXX` escapes, which `json.loads` reads back as the
    same characters. (JSON escapes only quotes, backslashes and control characters, so every
    surrogate in the text is a character of a string, and its escape is read as one.)"""
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(obj, ensure_ascii=False))


def json_line(obj: Any) -> str:
    """`obj` as one line of JSON (no newline) that stays valid UTF-8 whatever file names it holds:
    what every `--json` and stdout row is written with (a name that is not UTF-8 as its `\\udcXX`
    escape)."""
    return _json(obj)


def jsonl_line(
    key_name: str, key: Any, text: str | None, row: EmbeddingArray, stamp: Stamp | None = None
) -> str:
    """One `.jsonl` line (with its newline). Floats are written so that they read back as the
    same float32 values; an image row's `stamp` as `size` and `mtime_ns`."""
    obj: dict[str, Any] = {key_name: key}
    if text is not None:
        obj["text"] = text
    if stamp is not None:
        obj["size"], obj["mtime_ns"] = stamp
    obj["embedding"] = row.tolist()
    return _json(obj) + "\n"


def write_jsonl(stream: IO[str], rows: Rows) -> None:
    """`rows` as JSON Lines on an open text stream."""
    for i, key in enumerate(rows.keys):
        stream.write(
            jsonl_line(
                rows.key_name,
                key,
                None if rows.texts is None else rows.texts[i],
                rows.embeddings[i],
                None if rows.stamps is None else rows.stamps[i],
            )
        )


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, imported on first use (`import clip_client` never loads them;
    pyarrow ships no type information)."""
    return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")


def _arrow_schema(src: _Chunked) -> Any:
    """The Arrow schema of an output: the key column (and its exact bytes where some value needs
    them), `text`, `size` and `mtime_ns` where the rows have them, and `embedding`; the settings in
    its metadata."""
    pa, _ = _pyarrow()
    fields = []
    if src.key_name == "path":
        fields.append(pa.field("path", pa.string()))
        if "path" in src.exact:
            fields.append(pa.field("path" + _EXACT_SUFFIX, pa.binary()))
    else:
        fields.append(pa.field("id", pa.int64()))
    if src.texts:
        fields.append(pa.field("text", pa.string()))
        if "text" in src.exact:
            fields.append(pa.field("text" + _EXACT_SUFFIX, pa.binary()))
    if src.stamps:
        fields += [pa.field("size", pa.int64()), pa.field("mtime_ns", pa.int64())]
    fields.append(pa.field("embedding", pa.list_(pa.float32(), src.dim)))
    metadata = {METADATA_KEY: src.meta.with_dim(src.dim).to_json().encode()} if src.meta is not None else None
    return pa.schema(fields, metadata=metadata)


def _arrow_table(rows: Rows, schema: Any = None) -> Any:
    """`rows` as an Arrow table; with `schema` (an output's, `_arrow_schema`), in exactly that
    schema: a `_bytes` column it has and these rows do not need is all nulls."""
    pa, _ = _pyarrow()

    dim = rows.embeddings.shape[1]
    flat = pa.array(np.ascontiguousarray(rows.embeddings, dtype=np.float32).reshape(-1), type=pa.float32())
    columns: dict[str, Any] = {}
    if rows.key_name == "path":
        _add_strings(columns, "path", [str(k) for k in rows.keys])
    else:
        columns["id"] = pa.array(rows.keys, type=pa.int64())
    if rows.texts is not None:
        _add_strings(columns, "text", rows.texts)
    if rows.stamps is not None:
        columns["size"] = pa.array([s and s[0] for s in rows.stamps], type=pa.int64())
        columns["mtime_ns"] = pa.array([s and s[1] for s in rows.stamps], type=pa.int64())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    if schema is not None:
        extra = set(columns) - set(schema.names)
        if extra:  # a value needs its exact bytes, and the output has no room for them
            raise _UnrecordableError(f"the rows need columns the output lacks: {sorted(extra)}")
        return pa.table(
            [columns[f.name] if f.name in columns else pa.nulls(len(rows), f.type) for f in schema],
            schema=schema,
        )
    table = pa.table(columns)
    if rows.meta is not None:
        table = table.replace_schema_metadata({METADATA_KEY: rows.meta.with_dim(dim).to_json().encode()})
    return table


class _UnrecordableError(ValueError):
    """A value no output can record exactly (its message says which, and why)."""


def _add_strings(columns: dict[str, Any], name: str, values: Sequence[str]) -> None:
    """The string column `name` of `values`, recorded exactly: Parquet's strings are UTF-8, so a
    value with lone surrogates (a file name that is not UTF-8, as Python lists it) is written there
    readably (each such byte as U+FFFD), and its exact bytes (`os.fsencode`, which `os.fsdecode`
    reverses) go in the binary column `<name>_bytes`, null for the other rows; that column is only
    written when some value needs it.

    Raises:
        _UnrecordableError: a value with a surrogate that no file name holds (`os.fsencode`
            refuses it).
    """
    pa, _ = _pyarrow()
    exact: list[bytes | None] = []
    for i, value in enumerate(values):
        if not _LONE_SURROGATE.search(value):
            exact.append(None)
            continue
        try:
            exact.append(os.fsencode(value))
        except UnicodeEncodeError as exc:
            raise _UnrecordableError(
                f"row {i}'s {name} {value!r} cannot be recorded ({exc.reason})"
            ) from None
    if all(b is None for b in exact):
        columns[name] = pa.array(values, type=pa.string())
        return
    readable = [v if b is None else b.decode("utf-8", "replace") for v, b in zip(values, exact, strict=True)]
    columns[name] = pa.array(readable, type=pa.string())
    columns[name + _EXACT_SUFFIX] = pa.array(exact, type=pa.binary())


def _exact_strings(table: Any, name: str) -> list[Any]:
    """The values of the string column `name`, each one `_add_strings` wrote bytes for restored."""
    values: list[Any] = table.column(name).to_pylist()
    if name + _EXACT_SUFFIX in table.column_names:
        for i, raw in enumerate(table.column(name + _EXACT_SUFFIX).to_pylist()):
            if raw is not None:
                values[i] = os.fsdecode(raw)
    return values


def _reason(exc: BaseException) -> str:
    """Why a file could not be written or read, in a few words (an OS error's, without the
    temporary name it was about)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) if isinstance(exc, (OutputError, _UnrecordableError)) else f"{type(exc).__name__}: {exc}"


def check_writable(out: Path) -> None:
    """Refuse an `--out` that cannot be written, before any work: its name must not be empty, nor
    a folder's, and its folder must take a new file (every output is written under a temporary
    name there and renamed into place). Missing folders are created, as `mkdir -p` would; a parent
    that is a file is refused as such.

    Raises:
        OutputError: naming `--out`, what is wrong and what to do.
    """
    if not str(out) or str(out) == ".":
        raise OutputError(f"--out is empty: name a file ({', '.join(FORMATS)}) to write")
    output_format(out)
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder: name a file ({', '.join(FORMATS)}) to write")
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputError(f"--out {out}: {parent} is a file, not a folder; choose another --out")
            break
    why = _cannot_write_in(out.parent, f".{out.name}.")
    if why:
        raise OutputError(
            f"--out {out}: cannot write in {out.parent} ({why}); choose a folder you can write to, "
            "or change its permissions"
        )


def _cannot_write_in(folder: Path, prefix: str) -> str | None:
    """Why a new file cannot be made in `folder` (created when missing), found by making one (named
    as `_atomic`'s temporaries, so that what a kill leaves is swept like them); None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        if exc.errno == errno.ENOENT and folder.is_dir():
            # The folder is there (/proc, /sys...) but takes no new file: ENOENT would say otherwise.
            return "not writable: it takes no new files"
        return _reason(exc)
    return None


@dataclass
class _Chunked:
    """An output's rows as chunks, to be written without holding them all at once.

    Attributes:
        meta: the settings the rows were computed with (recorded with the width `dim`).
        key_name: `"path"` (images) or `"id"` (texts).
        dim: the embedding width.
        count: how many rows the chunks hold, in all (a `.npy` header says it first).
        texts: whether the rows carry texts; stamps: whether they carry image stamps.
        exact: the string columns (`path`, `text`) some value of which needs its exact bytes.
        chunks: `chunks(vectors)` yields the rows in order as `Rows` of a bounded length; it may be
            called again (a `.npy` sidecar takes one pass per list); with `vectors=False` a chunk's
            embeddings may be left empty (only keys, texts and stamps are read).
    """

    meta: OutputMeta | None
    key_name: str
    dim: int
    count: int
    texts: bool
    stamps: bool
    exact: frozenset[str]
    chunks: Callable[[bool], Iterator[Rows]]

    @classmethod
    def of(cls, rows: Rows) -> _Chunked:
        """`rows`, held in memory, as one chunk."""
        exact = {"path"} if rows.key_name == "path" and _needs_bytes(str(k) for k in rows.keys) else set()
        if rows.texts is not None and _needs_bytes(rows.texts):
            exact.add("text")
        return cls(
            rows.meta, rows.key_name, rows.embeddings.shape[1], len(rows), rows.texts is not None,
            rows.stamps is not None, frozenset(exact), lambda vectors: iter([rows]),
        )  # fmt: skip


def _needs_bytes(values: Iterable[str]) -> bool:
    return any(_LONE_SURROGATE.search(v) for v in values)


def write_rows(path: Path, rows: Rows) -> None:
    """Write `rows` to `path` in the format its extension names, atomically (and its
    `.meta.json` sidecar for `.npy` and `.jsonl`).

    Raises:
        OutputError: unknown extension, or the file cannot be written (the reason), naming
            `--out`: whatever goes wrong.
    """
    fmt = output_format(path)
    try:
        _write_rows(path, fmt, rows)
    except OutputError:
        raise
    except Exception as exc:
        raise OutputError(f"--out {path}: cannot write it ({_reason(exc)})") from exc


def _write_rows(path: Path, fmt: Format, rows: Rows) -> None:
    """`write_rows`, its errors untranslated."""
    _write_chunked(path, fmt, _Chunked.of(rows))


def _write_chunked(path: Path, fmt: Format, src: _Chunked) -> None:
    """The output `path` of the rows `src` yields, written chunk by chunk (memory: one chunk), under
    a temporary name renamed into place whole: a Parquet row group per chunk; a `.npy` header, then
    each chunk's rows appended; JSON Lines line by line. One chunk gives the very bytes a whole
    in-memory write gives (`np.save`, `pq.write_table`)."""
    if fmt == ".parquet":
        _write_parquet(path, src)
        return
    # Both files are written under temporary names first, and renamed only once both are whole:
    # a failure (a full disk) leaves the earlier output and its sidecar as they were. The sidecar
    # is renamed first: a reader checks its row count against the data file, so a kill between
    # the two renames is seen as a mismatch, never read as a wrong mapping.
    with _atomic_all([meta_path(path), path]) as (side_tmp, tmp):
        with open(side_tmp, "w", encoding="utf-8") as side:
            _write_sidecar(side, fmt, src)
        if fmt == ".npy":
            with open(tmp, "wb") as data:
                _write_npy_header(data, src.count, src.dim)
                for rows in src.chunks(True):
                    _append_npy(data, rows.embeddings)
        else:
            with open(tmp, "w", encoding="utf-8") as lines:
                for rows in src.chunks(True):
                    write_jsonl(lines, rows)


def _write_parquet(path: Path, src: _Chunked) -> None:
    """A Parquet output: one schema (`_arrow_schema`), row groups of up to `DEFAULT_CHUNK_ROWS`
    rows (small chunks gathered), written through a file object (pyarrow cannot open a name that
    is not UTF-8; `open` takes any)."""
    pa, pq = _pyarrow()
    schema = _arrow_schema(src)
    gathered: list[Any] = []
    with _atomic(path) as tmp, open(tmp, "wb") as f, pq.ParquetWriter(f, schema) as writer:
        for rows in src.chunks(True):
            if len(rows):
                gathered.append(_arrow_table(rows, schema))
            if sum(len(t) for t in gathered) >= DEFAULT_CHUNK_ROWS:
                writer.write_table(pa.concat_tables(gathered))
                gathered = []
        if gathered:
            writer.write_table(pa.concat_tables(gathered))


def _write_sidecar(side: IO[str], fmt: Format, src: _Chunked) -> None:
    """The `.meta.json` of a `.npy` or `.jsonl` output: `{"clip_client": settings, "rows": n}`,
    and for `.npy` the lists of the keys (and texts, stamps), each written as one pass over the
    chunks: the same text `_json` gives the whole object."""
    meta = src.meta.with_dim(src.dim) if src.meta is not None else None
    side.write(f'{{"clip_client": {_json(asdict(meta) if meta else None)}, "rows": {src.count}')
    if fmt == ".npy":
        lists: list[tuple[str, Callable[[Rows], list[Any]]]] = [(src.key_name, lambda r: list(r.keys))]
        if src.texts:
            lists.append(("text", lambda r: list(r.texts or [])))
        if src.stamps:
            lists.append(("size", lambda r: [s and s[0] for s in r.stamps or []]))
            lists.append(("mtime_ns", lambda r: [s and s[1] for s in r.stamps or []]))
        for name, values in lists:
            side.write(f', "{name}": [')
            first = True
            for rows in src.chunks(False):
                chunk = values(rows)
                if chunk:
                    side.write(("" if first else ", ") + _json(chunk)[1:-1])
                    first = False
            side.write("]")
    side.write("}")


def _write_npy_header(f: IO[bytes], count: int, dim: int) -> None:
    """The header `np.save` writes for a C-order float32 `(count, dim)` array (format 1.0)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (count, dim)}  # fmt: skip
    np.lib.format.write_array_header_1_0(f, header)


def _append_npy(f: IO[bytes], matrix: EmbeddingArray) -> None:
    """`matrix`'s rows appended to a `.npy` data file, as float32 in C order."""
    f.write(np.ascontiguousarray(matrix, dtype=np.float32).tobytes())


# --------------------------------------------------------------------------------------------------
# Reading


def read_rows(path: Path, *, role: str = "--out", foreign: bool = False) -> Rows:
    """Read an output of the `clip-client` command (any of the three formats).

    Args:
        path: the file.
        role: how messages name the file: `--out` (an output to resume or overwrite: their
            advice is `--overwrite`), or `INDEX` (a file read only).
        foreign: also accept a `.npy` or `.jsonl` file of another writer, without the
            `.meta.json` settings file: a `.npy` 2-D float array (cast to float32; the keys are
            the row numbers, from 0), or `.jsonl` objects with an `"embedding"` list and
            optionally `"path"` or `"id"` (else the line's row number) and `"text"`.

    Returns:
        its `Rows`; `meta.model` is `"unknown"` for a file without clip_client settings
        (a Parquet file of another writer with a `path` or `id` column and an `embedding`
        column, or, with `foreign`, a `.npy` or `.jsonl` file without its settings file).

    Raises:
        OutputError: the file is missing, unreadable, or not in the shape this command writes.
    """
    fmt = output_format(path, role=role)
    if not path.is_file():
        raise OutputError(f"{path}: no such file")
    try:
        if fmt == ".parquet":
            return _read_parquet(path)
        if foreign and not meta_path(path).exists():
            return _read_foreign(path, fmt)
        return _read_with_sidecar(path, fmt, role)
    except OutputError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputError(
            f"{path}: not a readable clip-client output ({type(exc).__name__}: {exc})"
        ) from None


def _read_parquet(path: Path) -> Rows:
    _, pq = _pyarrow()
    with open(path, "rb") as f:  # a file object: pyarrow cannot open a name that is not UTF-8
        table = pq.read_table(f)
    return _table_rows(table, path, _parquet_meta(table.schema, path), 0, vectors=True)


def _parquet_meta(schema: Any, path: Path) -> OutputMeta | None:
    """The settings a Parquet output records (None: another writer's file), its columns checked."""
    raw = (schema.metadata or {}).get(METADATA_KEY)
    meta = OutputMeta.from_json(raw, path) if raw is not None else None
    names = schema.names
    if "embedding" not in names or not ({"path", "id"} & set(names)):
        raise OutputError(f"{path}: needs an 'embedding' column and a 'path' or 'id' column; has {names}")
    return meta


def _table_rows(table: Any, path: Path, meta: OutputMeta | None, offset: int, *, vectors: bool) -> Rows:
    """The rows of (a slice of) a Parquet output, its first row being row `offset` of the file;
    without `vectors`, the embeddings are left out (an `(n, 0)` array)."""
    names = table.column_names
    dim = 0
    embeddings: EmbeddingArray = np.zeros((len(table), 0), dtype=np.float32)
    if "embedding" in names:
        embeddings, dim = _embedding_column(table, path, offset)
    elif meta is not None and meta.dim:
        dim = meta.dim
    key = "path" if "path" in names or (meta is not None and meta.kind == "image") else "id"
    keys = _exact_strings(table, key)
    texts = _exact_strings(table, "text") if "text" in names else None
    stamps = (
        _stamps(table.column("size").to_pylist(), table.column("mtime_ns").to_pylist())
        if {"size", "mtime_ns"} <= set(names)
        else None
    )
    if meta is None:
        meta = OutputMeta(
            kind="image" if key == "path" else "text", model="unknown", normalize=False, dim=dim
        )
    return Rows(keys, embeddings, texts, meta, stamps)


def _embedding_column(table: Any, path: Path, offset: int) -> tuple[EmbeddingArray, int]:
    pa, _ = _pyarrow()
    column = table.column("embedding").combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # pyarrow < 15 keeps a one-chunk ChunkedArray
        column = column.chunk(0) if column.num_chunks else pa.array([], column.type)
    if not (
        pa.types.is_fixed_size_list(column.type)
        or pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
    ):
        raise OutputError(f"{path}: its 'embedding' column is {column.type}, not a list of numbers")
    if not (pa.types.is_floating(column.type.value_type) or pa.types.is_integer(column.type.value_type)):
        raise OutputError(f"{path}: its 'embedding' column holds {column.type.value_type}, not numbers")
    if column.null_count:
        row = column.is_null().to_pylist().index(True)
        raise OutputError(f"{path}: row {offset + row} has no embedding (null)")
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
        values = column.flatten().to_numpy(zero_copy_only=False)
    else:  # a variable-size list column from another writer
        lists = column.to_pylist()
        dim = len(lists[0]) if lists else 0
        for row, values_of in enumerate(lists):
            if len(values_of) != dim or any(v is None for v in values_of):
                what = "a null value" if len(values_of) == dim else f"{len(values_of)} values, not {dim}"
                raise OutputError(f"{path}: row {offset + row}'s embedding holds {what}")
        values = np.asarray(lists, dtype=np.float32)
    return np.asarray(values, dtype=np.float32).reshape(len(table), dim), dim


def _stamps(sizes: Sequence[Any], mtimes: Sequence[Any]) -> list[Stamp | None]:
    return [None if s is None or m is None else (int(s), int(m)) for s, m in zip(sizes, mtimes, strict=True)]


def _read_foreign(path: Path, fmt: Format) -> Rows:
    """A `.npy` or `.jsonl` file of another writer (no settings file): see `read_rows`."""
    texts: list[str] | None = None
    kind = "text"
    if fmt == ".npy":
        matrix = _load_npy(path)
        if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
            raise OutputError(
                f"{path}: expected a 2-D float array (rows, dim), found {matrix.dtype} {matrix.shape}"
            )
        embeddings = matrix.astype(np.float32, copy=False)
        keys: list[Any] = list(range(len(embeddings)))
    else:
        keys, vectors, text_list = [], [], []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                if not isinstance(obj, dict) or "embedding" not in obj:
                    raise OutputError(f'{path}: line {number} is not an object with an "embedding" list')
                if "path" in obj:
                    kind = "image"
                keys.append(obj.get("path", obj.get("id", len(keys))))
                vectors.append(_numbers(obj["embedding"], path, number))
                text_list.append(obj.get("text"))
        if any(t is not None for t in text_list):
            texts = ["" if t is None else str(t) for t in text_list]
        if not vectors:
            raise OutputError(f'{path}: no rows (not one line with an "embedding")')
        try:
            embeddings = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        except ValueError:
            raise OutputError(f"{path}: its embeddings are not all of one width") from None
    meta = OutputMeta(kind=kind, model="unknown", normalize=False, dim=embeddings.shape[1])
    return Rows(keys, embeddings, texts, meta)


def _load_npy(path: Path, *, mmap: bool = False) -> Any:
    """The array of a `.npy` file, never unpickled; with `mmap`, mapped rather than read (a view
    of the file: read a slice at a time).

    Raises:
        OutputError: the file is not a `.npy` array of numbers (an object array, or not `.npy` at all).
    """
    try:
        if mmap:
            matrix = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
            if matrix.dtype.hasobject:  # (np.load maps no object array; said as for a read)
                raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
            return matrix
        with open(path, "rb") as f:
            return np.load(f, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        why = "it holds Python objects" if "pickle" in str(exc) else str(exc).split(";")[0]
        raise OutputError(f"{path}: not a float .npy array of shape (n, dim) ({why})") from None


def _numbers(value: Any, path: Path, line: int) -> list[float]:
    """A `.jsonl` line's `"embedding"`: a list of JSON numbers, else an `OutputError` naming the line."""
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise OutputError(f'{path}: line {line}\'s "embedding" is not a list of numbers')
    return value


def _redo(role: str) -> str:
    """What to do about a damaged output named by `role` (`--out`, or an input such as INDEX)."""
    if role == "--out":
        return "start again with --overwrite"
    return "write it again with `clip-client images` or `clip-client texts`"


def _sidecar(path: Path, role: str) -> tuple[Path, dict[str, Any], OutputMeta, str]:
    """The settings file beside a `.npy`/`.jsonl` output: its path, its JSON, the run's settings and
    the name of the key column (`path` for images, `id` for texts)."""
    side = meta_path(path)
    again = _redo(role)
    if not side.is_file():
        raise OutputError(
            f"{path}: its settings file {side.name} is missing (it is written beside every .npy and "
            f".jsonl output); restore it, or {again}"
        )
    sidecar = json.loads(side.read_text(encoding="utf-8"))
    meta = OutputMeta.from_json(json.dumps(sidecar["clip_client"]), side)
    return side, sidecar, meta, "path" if meta.kind == "image" else "id"


def _read_with_sidecar(path: Path, fmt: Format, role: str = "--out") -> Rows:
    side, sidecar, meta, key_name = _sidecar(path, role)
    again = _redo(role)
    texts: list[str] | None = None
    stamps: list[Stamp | None] | None = None
    if fmt == ".npy":
        embeddings = _load_npy(path)
        keys = list(sidecar[key_name])
        if meta.kind == "text":
            texts = list(sidecar["text"])
        if "size" in sidecar and "mtime_ns" in sidecar:
            stamps = _stamps(sidecar["size"], sidecar["mtime_ns"])
    else:
        keys, text_list, sizes, mtimes = [], [], [], []
        rows: list[list[float]] = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                keys.append(obj[key_name])
                rows.append(_numbers(obj["embedding"], path, number))
                text_list.append(obj.get("text"))
                sizes.append(obj.get("size"))
                mtimes.append(obj.get("mtime_ns"))
        if meta.kind == "image" and any(s is not None for s in sizes):
            stamps = _stamps(sizes, mtimes)
        embeddings = (
            np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
            if rows
            else np.zeros((0, meta.dim or 0), dtype=np.float32)
        )
        texts = text_list if meta.kind == "text" else None
    if embeddings.dtype != np.float32 or embeddings.ndim != 2:
        raise OutputError(
            f"{path}: expected a float32 (n, dim) array, found {embeddings.dtype} {embeddings.shape}"
        )
    listed = int(sidecar["rows"])
    if len(keys) != len(embeddings) or listed != len(embeddings):
        raise OutputError(
            f"{path}: {len(embeddings)} rows, but {side.name} lists "
            f"{listed if listed != len(embeddings) else len(keys)}: "
            f"the two files do not belong together; {again}"
        )
    return Rows(keys, embeddings, texts, meta, stamps)


def read_chunks(
    path: Path,
    *,
    role: str = "--out",
    foreign: bool = False,
    chunk_rows: int | None = None,
    vectors: bool = True,
) -> Iterator[Rows]:
    """An output of the `clip-client` command (or, with `foreign`, another writer's file, as
    [read_rows][clip_client._cli.outputs.read_rows] takes it), read `chunk_rows` rows at a time: memory
    does not grow with the file (but for a `.npy` file's sidecar, whose lists are read whole).

    Args, Raises: as `read_rows`; `vectors=False` leaves the embeddings out (each chunk's is an
    `(n, 0)` array) and reads only the other columns; `chunk_rows` defaults to `DEFAULT_CHUNK_ROWS`
    (8,192). A missing or unknown file is refused at once;
    a fault further in when the iterator reaches it.

    Returns:
        an iterator of `Rows`, in file order, each with the file's settings; at least one (an
        empty `Rows` for a file without rows).
    """
    fmt = output_format(path, role=role)
    if not path.is_file():
        raise OutputError(f"{path}: no such file")
    chunk_rows = chunk_rows or DEFAULT_CHUNK_ROWS
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if fmt == ".parquet":
        chunks = _parquet_chunks(path, chunk_rows, vectors)
    elif foreign and not meta_path(path).exists():
        chunks = _foreign_chunks(path, fmt, chunk_rows)
    else:
        chunks = _sidecar_chunks(path, fmt, role, chunk_rows)
    return _unreadable_as_output_error(path, chunks)


def _unreadable_as_output_error(path: Path, chunks: Iterator[Rows]) -> Iterator[Rows]:
    try:
        yield from chunks
    except OutputError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputError(
            f"{path}: not a readable clip-client output ({type(exc).__name__}: {exc})"
        ) from None


def _parquet_chunks(path: Path, chunk_rows: int, vectors: bool) -> Iterator[Rows]:
    pa, pq = _pyarrow()
    with open(path, "rb") as f:  # a file object: pyarrow cannot open a name that is not UTF-8
        source = pq.ParquetFile(f)
        schema = source.schema_arrow
        meta = _parquet_meta(schema, path)
        columns = None if vectors else [n for n in schema.names if n != "embedding"]
        offset = 0
        for batch in source.iter_batches(batch_size=chunk_rows, columns=columns):
            yield _table_rows(pa.Table.from_batches([batch]), path, meta, offset, vectors=vectors)
            offset += batch.num_rows
        if offset == 0:
            yield _table_rows(schema.empty_table(), path, meta, 0, vectors=vectors)


def _sliced(
    meta: OutputMeta,
    keys: Sequence[Any],
    matrix: Any,
    texts: Sequence[str] | None,
    stamps: Sequence[Stamp | None] | None,
    chunk_rows: int,
) -> Iterator[Rows]:
    """Rows `chunk_rows` at a time of a matrix (a memory map: each chunk is copied out of it)."""
    for start in range(0, max(len(keys), 1), chunk_rows):
        end = start + chunk_rows
        yield Rows(
            list(keys[start:end]),
            np.array(matrix[start:end], dtype=np.float32),
            None if texts is None else list(texts[start:end]),
            meta,
            None if stamps is None else list(stamps[start:end]),
        )


def _sidecar_chunks(path: Path, fmt: Format, role: str, chunk_rows: int) -> Iterator[Rows]:
    side, sidecar, meta, key_name = _sidecar(path, role)
    again = _redo(role)
    listed = int(sidecar["rows"])

    def mismatch(found: int, other: int) -> OutputError:
        return OutputError(
            f"{path}: {found} rows, but {side.name} lists {other}: the two files do not belong together; "
            f"{again}"
        )

    if fmt == ".npy":
        matrix = _load_npy(path, mmap=True)
        if matrix.dtype != np.float32 or matrix.ndim != 2:
            raise OutputError(
                f"{path}: expected a float32 (n, dim) array, found {matrix.dtype} {matrix.shape}"
            )
        keys = sidecar[key_name]
        texts = sidecar["text"] if meta.kind == "text" else None
        stamps = (
            _stamps(sidecar["size"], sidecar["mtime_ns"])
            if "size" in sidecar and "mtime_ns" in sidecar
            else None
        )
        if len(keys) != len(matrix) or listed != len(matrix):
            raise mismatch(len(matrix), listed if listed != len(matrix) else len(keys))
        yield from _sliced(meta, keys, matrix, texts, stamps, chunk_rows)
        return
    count = 0
    dim: int | None = None
    with open(path, encoding="utf-8") as f:
        for number, objs in _jsonl_batches(f, chunk_rows):
            rows = [_numbers(obj["embedding"], path, n) for n, obj in zip(number, objs, strict=True)]
            matrix = np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)
            if dim is not None and matrix.shape[1] != dim:
                raise OutputError(f"{path}: its embeddings are not all of one width")
            dim = matrix.shape[1]
            sizes = [obj.get("size") for obj in objs]
            stamps = (
                _stamps(sizes, [obj.get("mtime_ns") for obj in objs])
                if meta.kind == "image" and any(s is not None for s in sizes)
                else None
            )
            texts = [obj.get("text") for obj in objs] if meta.kind == "text" else None
            count += len(objs)
            yield Rows([obj[key_name] for obj in objs], matrix, texts, meta, stamps)
    if count == 0:
        yield Rows(
            [], np.zeros((0, meta.dim or 0), dtype=np.float32), [] if meta.kind == "text" else None, meta
        )
    if listed != count:
        raise mismatch(count, listed)


def _jsonl_batches(f: IO[str], chunk_rows: int) -> Iterator[tuple[list[int], list[Any]]]:
    """The objects of a JSON Lines file `chunk_rows` at a time, with their line numbers (from 1);
    blank lines skipped."""
    numbers: list[int] = []
    objs: list[Any] = []
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        numbers.append(number)
        objs.append(json.loads(line))
        if len(objs) >= chunk_rows:
            yield numbers, objs
            numbers, objs = [], []
    if objs:
        yield numbers, objs


def _foreign_chunks(path: Path, fmt: Format, chunk_rows: int) -> Iterator[Rows]:
    """A `.npy` or `.jsonl` file of another writer (no settings file), as `_read_foreign` reads it."""
    if fmt == ".npy":
        matrix = _load_npy(path, mmap=True)
        if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
            raise OutputError(
                f"{path}: expected a 2-D float array (rows, dim), found {matrix.dtype} {matrix.shape}"
            )
        meta = OutputMeta(kind="text", model="unknown", normalize=False, dim=matrix.shape[1])
        yield from _sliced(meta, range(len(matrix)), matrix, None, None, chunk_rows)
        return
    count = 0
    dim: int | None = None
    with open(path, encoding="utf-8") as f:
        for numbers, objs in _jsonl_batches(f, chunk_rows):
            keys: list[Any] = []
            vectors: list[list[float]] = []
            texts: list[Any] = []
            for number, obj in zip(numbers, objs, strict=True):
                if not isinstance(obj, dict) or "embedding" not in obj:
                    raise OutputError(f'{path}: line {number} is not an object with an "embedding" list')
                keys.append(obj.get("path", obj.get("id", count + len(keys))))
                vectors.append(_numbers(obj["embedding"], path, number))
                texts.append(obj.get("text"))
            try:
                matrix = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
            except ValueError:
                raise OutputError(f"{path}: its embeddings are not all of one width") from None
            if dim is not None and matrix.shape[1] != dim:
                raise OutputError(f"{path}: its embeddings are not all of one width")
            dim = matrix.shape[1]
            kind = "image" if any("path" in obj for obj in objs) else "text"
            meta = OutputMeta(kind=kind, model="unknown", normalize=False, dim=dim)
            count += len(objs)
            yield Rows(
                keys,
                matrix,
                ["" if t is None else str(t) for t in texts] if any(t is not None for t in texts) else None,
                meta,
            )
    if count == 0:
        raise OutputError(f'{path}: no rows (not one line with an "embedding")')


# --------------------------------------------------------------------------------------------------
# Resumable runs: the parts folder


class WrittenOutput:
    """What a resumable run wrote: the output's path, row count and width, and (read from the file
    when first asked for, so that a finish never holds them) its rows.

    Attributes:
        path: the output file.
        count: how many rows it holds.
        dim: the embedding width.
    """

    def __init__(self, path: Path, count: int, dim: int) -> None:
        self.path = path
        self.count = count
        self.dim = dim
        self._rows: Rows | None = None

    def __len__(self) -> int:
        return self.count

    def rows(self) -> Rows:
        """The whole output, read back (memory: the whole file)."""
        if self._rows is None:
            self._rows = read_rows(self.path)
        return self._rows

    @property
    def keys(self) -> list[Any]:
        return self.rows().keys

    @property
    def embeddings(self) -> EmbeddingArray:
        return self.rows().embeddings

    @property
    def texts(self) -> list[str] | None:
        return self.rows().texts


class _PartsFolder:
    """The finished rows of a run towards `out`, kept in `<out>.parts/` (a manifest of the run's
    settings, and part files, each renamed into place whole) until the run completes; what both
    kinds of run share: opening (the settings checked), sweeping what a kill left, writing parts,
    and removing the folder in one step.

    A kill at any instant leaves a state the same run finishes from, re-embedding nothing that is
    done: part files, and the parts folder with its manifest and first part, appear by a rename,
    whole; `out` is written whole before the parts folder goes, and it goes by a rename (to a
    hidden name, deleted after, and by the next run if a kill came first). Every error is an
    `OutputError` naming `--out`.
    """

    def __init__(self, out: Path, meta: OutputMeta, *, part_rows: int = DEFAULT_PART_ROWS) -> None:
        output_format(out)
        if part_rows < 1:
            raise OutputError(f"--part-rows must be at least 1, got {part_rows}")
        self.out = out
        self.meta = meta
        self.part_rows = part_rows
        self.parts = out.with_name(out.name + ".parts")
        self._next_part = 0

    def _prepare(self, overwrite: bool) -> None:
        """Check `--out` and the parts folder can be written, sweep what a kill left, and with
        `overwrite` remove the parts of an earlier run."""
        check_writable(self.out)
        # The parts folder of an earlier run takes this run's part files (unless it is discarded).
        why = None if overwrite or not self.parts.is_dir() else _cannot_write_in(self.parts, ".part-")
        if why:
            raise OutputError(
                f"--out {self.out}: cannot write in its parts folder {self.parts} ({why}); change its "
                "permissions, or pass --overwrite to start again"
            )
        with self._writing("clear what an interrupted run left"):
            self._sweep()
        if overwrite:
            with self._writing("remove the parts of an earlier run"):
                self._discard()

    def _check(self, found: OutputMeta | None, where: Path) -> None:
        if found is None or found.model == "unknown":
            raise OutputError(
                f"{where} was not written by clip-client (no settings in it), so it cannot be resumed; "
                "pass --overwrite to replace it, or choose another --out"
            )
        diff = found.differences(self.meta)
        if diff:
            raise OutputError(
                f"{where} holds rows computed with other settings: {'; '.join(diff)}. Rerun with the "
                "same options to resume, or pass --overwrite to start again"
            )

    def _check_manifest(self) -> None:
        manifest = self.parts / _MANIFEST
        if not manifest.is_file():
            raise OutputError(
                f"{self.parts} has no {_MANIFEST} (the settings its rows were computed with), so its "
                "rows cannot be checked against this run: restore the file, or delete the folder "
                "(everything is embedded again) or pass --overwrite to start again"
            )
        try:
            found = OutputMeta.from_json(manifest.read_text(encoding="utf-8"), manifest)
        except (OutputError, OSError, UnicodeDecodeError) as exc:
            raise self._unreadable(exc, self.parts) from None
        self._check(found, self.parts)

    def _part_files(self) -> list[tuple[int, Path]]:
        """The part files, by number (the order they were written in)."""
        found = []
        for part in self.parts.glob("part-*.parquet"):
            try:
                found.append((int(part.stem.split("-")[1]), part))
            except ValueError as exc:
                raise self._unreadable(OutputError(f"{part}: not a part file's name ({exc})"), part) from None
        return sorted(found)

    def _part(self, number: int, folder: Path | None = None) -> Path:
        return (folder or self.parts) / f"part-{number:06d}.parquet"

    def _write_part(self, src: _Chunked, folder: Path | None = None) -> int:
        """`src` as the next part file of the parts folder (or of `folder`, the one being made);
        returns its number."""
        number = self._next_part
        path = self._part(number, folder)
        with self._writing(f"write the finished rows to {self._part(number)}"):
            _write_chunked(path, ".parquet", src)
        self._next_part += 1
        return number

    def _start_parts(self, first: _Chunked) -> int:
        """Create the parts folder with its manifest and its first part, atomically (a whole folder
        renamed into place): a parts folder is never seen without its rows, so that one made from
        an earlier output's rows can always stand in for that output. Returns the part's number."""
        with self._writing(f"create {self.parts}"):
            self.parts.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=self._hidden(), dir=self.parts.parent))
            (staging / _MANIFEST).write_text(self.meta.to_json(), encoding="utf-8")
            number = self._write_part(first, staging)
            os.replace(staging, self.parts)
        return number

    def _add_part(self, src: _Chunked) -> int:
        return self._write_part(src) if self.parts.is_dir() else self._start_parts(src)

    def _write_out(self, src: _Chunked) -> WrittenOutput:
        """Write `out` from `src`, then remove the parts (a failure to delete them is no failure of
        the run: the next run deletes what is left)."""
        with self._writing("write it"):
            _write_chunked(self.out, output_format(self.out), src)
        with contextlib.suppress(OSError):
            self._discard()
        return WrittenOutput(self.out, src.count, src.dim)

    def _width(self, found: int | None) -> int:
        """The width of the output: the settings', the rows', else CLIP ViT-L/14's 768 (what the
        client's own empty results have), so that a file without rows still reads as (0, dim)."""
        return self.meta.dim or found or C.DEFAULT_EMBEDDING_DIM

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Any error inside as an `OutputError` that names `--out`, what could not be done, and why."""
        try:
            yield
        except OutputError:
            raise
        except Exception as exc:
            kept = f" (the finished rows in {self.parts} are kept)" if self.parts.is_dir() else ""
            raise OutputError(
                f"--out {self.out}: cannot {what} ({_reason(exc)}); check that {self.out.parent} is "
                f"writable and has space, then rerun{kept}"
            ) from exc

    def _hidden(self) -> str:
        """The prefix of the hidden folders beside `out` that only a run in progress needs: the
        parts folder being created, or being deleted."""
        return f".{self.parts.name}."

    def _discard(self) -> None:
        """Remove the parts folder, in one step whatever instant a kill comes at: it is renamed to a
        hidden name (atomic), then deleted; what a kill leaves of it, `_sweep` deletes."""
        if not self.parts.is_dir():
            return
        gone = self.parts.with_name(f"{self._hidden()}{uuid.uuid4().hex}.deleted")
        os.rename(self.parts, gone)
        shutil.rmtree(gone, ignore_errors=True)

    def _sweep(self) -> None:
        """Delete what an interrupted run left beside `out`: a parts folder being created or
        deleted, and temporary files of `out` and its sidecar (runs into one `--out` one at a time)."""
        folder = self.out.parent
        if not folder.is_dir():
            return
        # Exactly the names mkstemp/mkdtemp (8 characters) and `_discard` give, so that the files of
        # another output in the same folder are never taken for these.
        hidden = re.compile(rf"{re.escape(self._hidden())}(?:[a-z0-9_]{{8}}|[0-9a-f]{{32}}\.deleted)")
        names = "|".join(re.escape(n) for n in (self.out.name, meta_path(self.out).name))
        temporary = re.compile(rf"\.(?:{names})\.[a-z0-9_]{{8}}\.tmp")
        for entry in os.scandir(folder):
            if hidden.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif temporary.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def _unreadable(self, exc: Exception, what: Path) -> OutputError:
        if what == self.parts:  # the manifest: the folder as a whole
            return OutputError(
                f"{exc}; {what} is damaged: delete that folder (everything is embedded again) and "
                "rerun, or pass --overwrite to start again"
            )
        return OutputError(
            f"{exc}; {what} is damaged: delete it (or the whole {self.parts} folder, to embed "
            "everything again) and rerun, or pass --overwrite to start again"
        )

    def _read_existing_out(self, vectors: bool = False) -> Iterator[Rows]:
        """The rows of an earlier, finished `out`, in chunks, its settings checked first."""
        try:
            chunks = read_chunks(self.out, vectors=vectors)
            first = next(chunks)
        except OutputError as exc:
            if "--overwrite" in str(exc):  # it says what to do already
                raise
            raise OutputError(
                f"{exc}; cannot resume from it: delete it, pass --overwrite, or choose another --out"
            ) from None
        self._check(first.meta, self.out)
        return itertools.chain([first], chunks)


# --------------------------------------------------------------------------------------------------
# Resumable image runs


Location = tuple[int, int]
"""Where a finished row is: (part number, row in that part)."""


class ResumableOutput(_PartsFolder):
    """The finished rows of an `images` run towards `out`, kept in `<out>.parts/` until the run
    completes, and indexed in the run's `Ledger` (a temporary SQLite file, not memory).

    `open` indexes the rows already done (from the parts of an interrupted run, or from a
    finished `out` of an earlier run, whose rows become the first part), after checking they were
    computed with the same settings: each key's part and row, and its stamp, never its vector;
    `plan` matches them to this run's inputs, which the ledger holds (by absolute path, so
    `photos`, `photos/` and `/home/me/photos` agree), and marks which inputs are still to embed,
    those whose file changed since (size or mtime) included; `add` buffers new rows and writes a
    part file every `part_rows`; `finish` writes `out` in input order, a chunk at a time, and
    removes the parts.

    While the parts folder is there it holds every done row (the rows of an earlier `out` become
    its first part), so it wins over `out`; once it is gone, `out` is complete. Memory: `part_rows`
    buffered rows and a few row groups of the parts while `out` is assembled, whatever the row count.

    Args:
        out: the output file (.parquet, .npy or .jsonl).
        meta: the run's settings.
        part_rows: rows a part file holds (default 1000).
        ledger: the run's ledger (its inputs listed already); default: one of its own, deleted
            once this is garbage-collected.
    """

    _CACHED_PARTS = 8

    def __init__(
        self,
        out: Path,
        meta: OutputMeta,
        *,
        part_rows: int = DEFAULT_PART_ROWS,
        ledger: Ledger | None = None,
    ) -> None:
        super().__init__(out, meta, part_rows=part_rows)
        self.ledger = ledger if ledger is not None else Ledger()
        self.resumed = 0
        self._buffer: list[tuple[str, EmbeddingArray, Stamp | None]] = []
        self._dim: int | None = None

    def open(self, *, overwrite: bool = False) -> int:
        """Index the rows already done in the ledger (where each is, by path, as the run that
        embedded them spelled it).

        Returns:
            how many rows are done already.

        Raises:
            OutputError: `--out` cannot be written (before any work is done); the parts or the
                existing output were computed with other settings (the message lists them: rerun
                with the same options, or pass `--overwrite`), or the existing output, a part file
                or the manifest is unreadable (the message names the file to delete, or
                `--overwrite`).
        """
        self._prepare(overwrite)
        if overwrite:
            return 0
        if self.parts.is_dir() and ((self.parts / _MANIFEST).is_file() or not self.out.exists()):
            self._check_manifest()
            for number, part in self._part_files():
                try:
                    self._index(number)
                except OutputError as exc:
                    raise self._unreadable(exc, part) from None
                self._next_part = number + 1
        elif self.out.exists():
            chunks = self._read_existing_out()
            # A parts folder without its manifest beside a finished output: what a kill left while
            # an older clip-client deleted the parts file by file. The finished output wins.
            with self._writing("remove the parts an earlier run left"):
                self._discard()
            count = sum(len(rows) for rows in chunks)
            if count:  # they become part 0, so that the output may be rewritten safely
                self._index(self._start_parts(self._copy_of_out(count)))
        self.resumed = self.ledger.done_count()
        return self.resumed

    def done_keys(self) -> Iterator[str]:
        """The keys of the done rows, in no set order."""
        return self.ledger.done_keys()

    def _copy_of_out(self, count: int) -> _Chunked:
        """The rows of the finished `out`, to be copied chunk by chunk into the first part."""
        first = next(read_chunks(self.out, chunk_rows=1))
        exact: set[str] = set()
        for rows in read_chunks(self.out, vectors=False):
            if _needs_bytes(str(k) for k in rows.keys):
                exact.add("path")
        dim = first.embeddings.shape[1] or self._width(None)
        return _Chunked(
            self.meta, "path", dim, count, False, True, frozenset(exact),
            lambda vectors: (_with_stamps(r) for r in read_chunks(self.out, vectors=vectors)),
        )  # fmt: skip

    def _index(self, number: int) -> None:
        """Where each row of part `number` is. Later rows win: a part written after another holds
        re-embedded (changed) files."""

        def rows() -> Iterator[tuple[str, int, int, Stamp | None]]:
            row = 0
            for chunk in read_chunks(self._part(number), vectors=False):
                stamps = chunk.stamps or [None] * len(chunk)
                for key, stamp in zip(chunk.keys, stamps, strict=True):
                    yield str(key), number, row, stamp
                    row += 1

        self.ledger.add_done(rows())

    def plan(self) -> tuple[int, int]:
        """Match the done rows to the ledger's inputs (`Ledger.plan`): a done row whose path names
        the same file as an input (same absolute path) is re-keyed to the input's spelling.

        Returns:
            how many inputs are still to embed, and how many of them have a row that is stale:
            their file's size or mtime differs from when it was embedded.
        """
        return self.ledger.plan()

    def add(self, path: str, row: EmbeddingArray, stamp: Stamp | None = None) -> None:
        """One finished row (and its file's stamp); a part file is written once `part_rows` are
        buffered. A row for a path already done replaces it."""
        self._buffer.append((str(path), row, stamp))
        if len(self._buffer) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one part file (nothing when there are none)."""
        if not self._buffer:
            return
        keys = [k for k, _, _ in self._buffer]
        matrix = np.stack([r for _, r, _ in self._buffer]).astype(np.float32, copy=False)
        number = self._add_part(
            _Chunked.of(Rows(keys, matrix, None, self.meta, [s for _, _, s in self._buffer]))
        )
        self.ledger.add_done((path, number, row, stamp) for row, (path, _, stamp) in enumerate(self._buffer))
        self._dim = matrix.shape[1]
        self._buffer = []

    def finish(self, order: Iterable[str] | None = None) -> WrittenOutput:
        """Write `out`: the done rows of the ledger's inputs, in input order (inputs without a row,
        the failed ones, are left out), a chunk at a time, then remove the parts.

        Args:
            order: the inputs, where the ledger was not given them (they are added first).

        Returns:
            what was written (its rows are read back from `out` only if asked for).
        """
        self.flush()  # first: a kill while `out` is written keeps every row
        if order is not None:
            self.ledger.add_inputs((p, os.path.abspath(p), os.path.abspath(p), None) for p in order)
        count = self.ledger.count_in_order()
        dim = self._width(self._dim or self._part_width())
        groups = _RowGroups(self._part)
        exact = frozenset({"path"} if _needs_bytes(k for k, _, _, _ in self.ledger.rows_in_order()) else ())

        def chunks(vectors: bool) -> Iterator[Rows]:
            rows = self.ledger.rows_in_order()
            first = True
            while (chunk := list(itertools.islice(rows, DEFAULT_CHUNK_ROWS))) or first:
                first = False
                matrix = np.empty((len(chunk), dim if vectors else 0), dtype=np.float32)
                if vectors:
                    for i, (_, part, row, _) in enumerate(chunk):
                        matrix[i] = groups.row(part, row)
                yield Rows([k for k, _, _, _ in chunk], matrix, None, self.meta, [s for _, _, _, s in chunk])

        src = _Chunked(self.meta, "path", dim, count, False, True, exact, chunks)
        return self._write_out(src)

    def _part_width(self) -> int | None:
        """The width of the rows in the parts (None when there are none)."""
        for _, part in self._part_files() if self.parts.is_dir() else []:
            width = next(read_chunks(part, chunk_rows=1)).embeddings.shape[1]
            if width:
                return int(width)
        return None


class _RowGroups:
    """Rows of part files by (part, row), read a Parquet row group at a time, the last few kept:
    rows asked for in the order they were written cost one read of each group."""

    _KEPT = 4

    def __init__(self, part: Callable[[int], Path]) -> None:
        self._part = part
        self._starts: dict[int, list[int]] = {}
        self._kept: dict[tuple[int, int], EmbeddingArray] = {}

    def row(self, number: int, row: int) -> EmbeddingArray:
        _, pq = _pyarrow()
        if number not in self._starts:
            with open(self._part(number), "rb") as f:
                meta = pq.ParquetFile(f).metadata
                sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
            self._starts[number] = list(itertools.accumulate(sizes, initial=0))
        starts = self._starts[number]
        group = bisect.bisect_right(starts, row) - 1
        if (number, group) not in self._kept:
            if len(self._kept) >= self._KEPT:
                del self._kept[next(iter(self._kept))]
            with open(self._part(number), "rb") as f:
                table = pq.ParquetFile(f).read_row_group(group, columns=["embedding"])
            self._kept[(number, group)] = _embedding_column(table, self._part(number), starts[group])[0]
        vector: EmbeddingArray = self._kept[(number, group)][row - starts[group]]
        return vector


def _with_stamps(rows: Rows) -> Rows:
    """Image rows with a stamp column (None for each row, where the file recorded none)."""
    if rows.stamps is None:
        rows.stamps = [None] * len(rows)
    return rows


# --------------------------------------------------------------------------------------------------
# Resumable text runs


class ResumableTexts(_PartsFolder):
    """The finished rows of a `texts --from` run towards `out`, kept in `<out>.parts/` until the
    run completes; memory does not grow with the input (a part's worth of rows at most).

    A text's row is known by its id (its line or row number) and its text: the rows come in input
    order, so the done rows are the first rows of the input. `open` checks the settings of the
    parts (or of a finished `out`); `resume` reads the input alongside the done rows and keeps the
    longest run of whole parts whose ids and texts equal the input's (from a finished `out`, the
    equal rows are copied into the first part); a part that differs, and every later one, is
    removed (the last first, so that a kill leaves a run of parts from the first) and embedded
    again. `add` buffers rows and writes a part file every `part_rows`; `finish` writes `out` from
    the parts, a chunk at a time, and removes them.
    """

    def __init__(self, out: Path, meta: OutputMeta, *, part_rows: int = DEFAULT_PART_ROWS) -> None:
        super().__init__(out, meta, part_rows=part_rows)
        self.kept = 0
        """Rows of an earlier run kept (after `resume`)."""
        self.differs_at: int | None = None
        """The id of the first input that differs from the earlier run's row there (after `resume`),
        or None: from there on everything is embedded again."""
        self._from_out = False
        self._buffer: list[tuple[int, str, EmbeddingArray]] = []
        self._dim: int | None = None

    def open(self, *, overwrite: bool = False) -> None:
        """Check `--out`, and the settings of what an earlier run left.

        Raises:
            OutputError: as [ResumableOutput.open][clip_client._cli.outputs.ResumableOutput.open].
        """
        self._prepare(overwrite)
        if overwrite:
            return
        if self.parts.is_dir():
            self._check_manifest()
            self._next_part = max((n for n, _ in self._part_files()), default=-1) + 1
        elif self.out.exists():
            next(self._read_existing_out())
            self._from_out = True

    def resume(self, inputs: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
        """The inputs still to embed: `inputs` (`(id, text)`, in order) after the rows kept.

        Raises:
            OutputError: a part file (or the finished output) is unreadable: it is named, with
                what to do.
        """
        source = iter(inputs)
        if self._from_out:
            return self._resume_from_out(source)
        if not self.parts.is_dir():
            return source
        parts = self._part_files()
        for at, (number, part) in enumerate(parts):
            taken: list[tuple[int, str]] = []
            # The input's own faults (a line that is not UTF-8...) are said as they are: only the
            # part's make it damaged.
            same = self._equal_rows(self._rows_of_part(part), source, taken)
            if same is None:
                self.kept += len(taken)
                self._next_part = number + 1
                continue
            self.differs_at = same
            with self._writing("remove the parts of the input that changed"):
                for _, stale in reversed(parts[at:]):
                    os.unlink(stale)
            self._next_part = number
            return itertools.chain(taken, source)
        return source

    def _rows_of_part(self, part: Path) -> Iterator[Rows]:
        """The rows of a part file, in chunks; unreadable, it is named as damaged."""
        try:
            yield from read_chunks(part, vectors=False)
        except OutputError as exc:
            raise self._unreadable(exc, part) from None

    def _equal_rows(
        self, chunks: Iterator[Rows], source: Iterator[tuple[int, str]], taken: list[tuple[int, str]]
    ) -> int | None:
        """Read `source` alongside the rows of `chunks` (each input read is appended to `taken`):
        None when every row equals its input (id and text), else the id where they first differ
        (`_first_difference`; or, when the input ended first, -1)."""
        for rows in chunks:
            self._dim = self._dim or (rows.meta.dim if rows.meta else None)
            for key, text in zip(rows.keys, rows.texts or [""] * len(rows), strict=True):
                given = next(source, None)
                if given is None:
                    return -1
                taken.append(given)
                if given != (key, text):
                    return _first_difference(key, given[0])
        return None

    def _resume_from_out(self, source: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
        """Keep the first rows of the finished `out` that equal the input's: copied into the first
        part (unless they are all of it and the input has nothing more: then `out` stays as it is)."""
        equal = 0
        pending: list[tuple[int, str]] = []
        for rows in self._read_existing_out():
            for key, text in zip(rows.keys, rows.texts or [""] * len(rows), strict=True):
                given = next(source, None)
                if given is None:
                    self.differs_at = -1
                    break
                if given != (key, text):
                    self.differs_at = _first_difference(key, given[0])
                    pending = [given]
                    break
                equal += 1
            if self.differs_at is not None:
                break
        if self.differs_at is None:
            given = next(source, None)
            if given is None:  # every input has its row in `out` already
                self.kept = equal
                return iter(())
            pending = [given]
        if equal:
            self.kept = equal
            self._start_parts(self._prefix_of_out(equal))
        return itertools.chain(pending, source)

    def _prefix_of_out(self, count: int) -> _Chunked:
        """The first `count` rows of the finished `out`, to be copied chunk by chunk."""

        def chunks(vectors: bool) -> Iterator[Rows]:
            left = count
            for rows in read_chunks(self.out, vectors=vectors):
                if left <= 0:
                    return
                yield rows if len(rows) <= left else _head(rows, left)
                left -= len(rows)

        exact = frozenset({"text"} if any(_needs_bytes(r.texts or []) for r in chunks(False)) else ())
        dim = next(read_chunks(self.out, chunk_rows=1)).embeddings.shape[1] or self._width(None)
        return _Chunked(self.meta, "id", dim, count, True, False, exact, chunks)

    def add(self, key: int, text: str, row: EmbeddingArray) -> None:
        """One finished row; a part file is written once `part_rows` are buffered."""
        self._buffer.append((key, text, row))
        if len(self._buffer) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one part file (nothing when there are none)."""
        if not self._buffer:
            return
        matrix = np.stack([r for _, _, r in self._buffer]).astype(np.float32, copy=False)
        rows = Rows([k for k, _, _ in self._buffer], matrix, [t for _, t, _ in self._buffer], self.meta)
        self._add_part(_Chunked.of(rows))
        self._dim = matrix.shape[1]
        self._buffer = []

    def finish(self) -> WrittenOutput:
        """Write `out` from the parts, in order, a chunk at a time, then remove them; with nothing
        new (an earlier `out` that holds every input), `out` is left as it is.

        Returns:
            what was written (its rows are read back from `out` only if asked for).
        """
        self.flush()  # first: a kill while `out` is written keeps every row
        if self._from_out and self.differs_at is None and not self.parts.is_dir():
            first = next(read_chunks(self.out, chunk_rows=1))
            return WrittenOutput(self.out, self.kept, first.embeddings.shape[1] or self._width(None))
        parts = [p for _, p in self._part_files()] if self.parts.is_dir() else []
        _, pq = _pyarrow()
        count, exact, dim = 0, set(), self._dim
        for part in parts:
            with open(part, "rb") as f:
                schema = pq.read_schema(f)
                f.seek(0)
                count += pq.ParquetFile(f).metadata.num_rows
            if "text" + _EXACT_SUFFIX in schema.names:
                exact.add("text")
            dim = dim or schema.field("embedding").type.list_size

        def chunks(vectors: bool) -> Iterator[Rows]:
            empty = True
            for part in parts:
                for rows in read_chunks(part, vectors=vectors):
                    if len(rows):
                        empty = False
                        yield rows
            if empty:
                yield Rows([], np.zeros((0, self._width(dim)), dtype=np.float32), [], self.meta)

        src = _Chunked(self.meta, "id", self._width(dim), count, True, False, frozenset(exact), chunks)
        return self._write_out(src)


def _first_difference(done: object, given: int) -> int:
    """The first id where an input differs from an earlier run's rows, the row `done` (its id)
    and the input `given` (its id) being the first pair that are not equal: the smaller id. Ids
    are line numbers with blank lines skipped, so a line made blank (or filled in) shows as ids
    out of step: the earlier run's id 2 against the input's id 3 differs at 2, not 3."""
    return min(int(done), given) if isinstance(done, (int, np.integer)) else given


def _head(rows: Rows, n: int) -> Rows:
    """The first `n` of `rows`."""
    return Rows(
        rows.keys[:n], rows.embeddings[:n], None if rows.texts is None else rows.texts[:n], rows.meta,
        None if rows.stamps is None else rows.stamps[:n],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Runs: embed images into an output, and what failed


def failure_reason(failure: EmbeddingFailure) -> str:
    """Why an input could not be embedded, in one line (an input's own reason without its index)."""
    exc = failure.error
    if isinstance(exc, InvalidInputError):
        return " ".join(in_cli_words(exc, exc.reason).split())
    return one_line(exc)


class _Counted(Iterable[str]):
    """Images of a known count, read as they are embedded (so that a progress bar knows its total)."""

    def __init__(self, items: Iterable[str], count: int) -> None:
        self._items = items
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def _embedded(
    client: ClipClient,
    todo: Iterable[tuple[str, Stamp | None]],
    count: int,
    failed: list[tuple[str, str]],
    *,
    strict: bool,
    progress: bool | None,
) -> Iterator[tuple[str, Stamp | None, EmbeddingArray]]:
    """`(path, stamp, row)` of each of the `count` images of `todo` (`(image, stamp)` pairs, read as
    they are embedded) that embeds, in input order; each one that does not is appended to `failed`
    as `(path, reason)`, or, with `strict`, stops the run. Memory: the images the client has taken
    and not yet answered (a bounded window), whatever `count` is.

    Raises:
        InvalidInputError: with `strict`, the first image that cannot be embedded (its path and reason).
    """
    from ..sources import read_ahead_by

    sent: collections.deque[tuple[str, Stamp | None]] = collections.deque()
    # Objects and volume files read ahead of the client (local files are read in its own pool).
    ahead = read_ahead_by(todo, READ_AHEAD, lambda pair: pair[0])

    def images() -> Iterator[str]:
        try:
            for item, stamp in ahead:
                sent.append((item, stamp))
                yield item
        finally:
            ahead.close()

    with client.iter_embed_images(_Counted(images(), count), on_error="mark", progress=progress) as stream:
        for _, vector in stream:  # every index comes, in input order (a failure as a NaN row)
            item, stamp = sent.popleft()
            if len(stream.failures) > len(failed):
                failed.append((str(item), failure_reason(stream.failures[-1])))
                if strict:  # named by its path (a listed item's key), never by the item's repr
                    raise InvalidInputError(failed[-1][1], path=failed[-1][0])
                continue
            yield item, stamp, vector


def vanished(ledger: Any, failed: list[tuple[str, str]], *, strict: bool) -> None:
    """Once a listing was read to its end: each input it no longer held (removed or renamed since
    the run listed it) is a failed input, never a silent gap; with `strict`, the first stops the run.

    Raises:
        InvalidInputError: with `strict`, for the first such input.
    """
    from ._ledger import VANISHED

    for key in ledger.unsent():
        if strict:
            raise InvalidInputError(VANISHED, path=key)
        failed.append((key, VANISHED))


def stream_images(
    client: ClipClient,
    paths: Iterable[str],
    out: IO[str],
    *,
    count: int,
    strict: bool = False,
    progress: bool | None = None,
) -> list[tuple[str, str]]:
    """Embed the `count` images of `paths` (read as they are embedded: a listing, never held
    whole) and write each row to `out` as a JSON Lines `{"path", "size", "mtime_ns", "embedding"}`
    line as soon as it is done (in input order); a local file's size and mtime are taken before
    it is read (a shard member's or object's as its listing gave them), as an output's rows
    record them.

    Returns:
        the images that could not be embedded, as `(path, reason)`, in input order.
    """
    from ..sources import SourceItem

    failed: list[tuple[str, str]] = []
    todo = ((p, p.stamp if isinstance(p, SourceItem) else file_stamp(p)) for p in paths)
    for path, stamp, vector in _embedded(client, todo, count, failed, strict=strict, progress=progress):
        out.write(jsonl_line("path", path, None, vector, stamp))
    out.flush()
    return failed


@dataclass
class ImageRunResult:
    """What a finished [ResumableImageRun][clip_client._cli.outputs.ResumableImageRun] wrote.

    Attributes:
        rows: the output written, in input order (the failed images left out): its `len`, and its
            rows read back from the file when asked for.
        embedded: images embedded by this run (the cache's answers included).
        from_cache: how many of them the embedding cache answered.
        failed: the images that could not be embedded, `(path, reason)`, in the order met.
        left_out: rows of an earlier output whose image is not among this run's inputs.
    """

    rows: WrittenOutput
    embedded: int
    from_cache: int
    failed: list[tuple[str, str]]
    left_out: int


class ResumableImageRun:
    """An `images` run into an output file that no interruption wastes: what an earlier run into
    the same file finished (with the same model and settings, else an error) is kept, files changed
    since are embedded again, and finished rows reach `<out>.parts/` as the run goes.

    ```python
    with Ledger() as ledger:
        ledger.add_inputs(...)  # (key, absolute key, identity, stamp) of each input, in order
        run = ResumableImageRun(client, Path("photos.parquet"), ledger, relist, normalize=False)
        run.already_done, run.changed  # what an earlier run left, and how much of it is stale
        run.embed(strict=False)  # an error or Ctrl-C keeps the finished rows for a rerun (run.kept)
        result = run.finish()  # the output, whole, in input order; result.failed lists the rest
    ```

    The inputs' keys and stamps are in `ledger` (a temporary SQLite file), never in memory;
    `relist()` lists the same inputs again, the same items (a shard's members are read through
    theirs) in the same order, and the ones still to embed are taken from it as they are embedded.
    The vectors live in the part files, and `finish` writes the output a chunk at a time. Memory
    does not grow with the input count (only with the failures, which are listed at the end).

    Raises (when built):
        OutputError: `--out` cannot be written (said before any image is embedded); the output or
            its parts hold rows computed with other settings (the message lists them), or are
            unreadable (the message names the file and what to do).
    """

    def __init__(
        self,
        client: ClipClient,
        out: Path,
        ledger: Ledger,
        relist: Callable[[], Iterable[str]],
        *,
        normalize: bool,
        part_rows: int = DEFAULT_PART_ROWS,
        overwrite: bool = False,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self._relist = relist
        self.store = ResumableOutput(
            out, OutputMeta.of(client, "image", normalize=normalize), part_rows=part_rows, ledger=ledger
        )
        self.store.open(overwrite=overwrite)
        self.todo, changed = self.store.plan()
        """How many inputs this run embeds: those without a row, and those whose file changed since."""
        # Whether an earlier run had left rows; how many inputs are done; how many of them changed.
        self.resumed = bool(self.store.resumed)
        self.already_done = ledger.count - self.todo
        self.changed = changed
        self.failed: list[tuple[str, str]] = []
        self._from_cache = 0
        self._embedded = 0

    @property
    def kept(self) -> int:
        """Finished rows kept in the parts folder (after an interruption: what a rerun starts from)."""
        return self.ledger.done_count() if self.store.parts.is_dir() else 0

    def embed(self, *, strict: bool = False, progress: bool | None = None) -> None:
        """Embed the inputs still to embed, each row kept as it comes; failures gather in `failed`.

        Raises:
            InvalidInputError: with `strict`, the first image that cannot be embedded.
            BaseException: whatever stops the run (an error, Ctrl-C); the finished rows are written
                to the parts folder first.
        """
        hits = self.client.stats.cache_hits
        try:
            if self.todo:
                pending = self.ledger.pending(self._relist())
                for path, stamp, vector in _embedded(
                    self.client, pending, self.todo, self.failed, strict=strict, progress=progress
                ):
                    self.store.add(path, vector, stamp)
                    self._embedded += 1
                vanished(self.ledger, self.failed, strict=strict)
        except BaseException:
            self.store.flush()  # what is finished is kept, whatever stopped the run
            raise
        self._from_cache = self.client.stats.cache_hits - hits

    def finish(self) -> ImageRunResult:
        """Write the output whole, in input order, and remove the parts.

        Raises:
            OutputError: the output cannot be written (the parts are kept for a rerun).
        """
        self.store.flush()
        self.ledger.forget(p for p, _ in self.failed)  # a changed file that now fails keeps no stale row
        left = self.ledger.left_out()
        rows = self.store.finish()
        return ImageRunResult(
            rows=rows,
            embedded=self._embedded,
            from_cache=self._from_cache,
            failed=list(self.failed),
            left_out=left,
        )


class ResumableTextRun:
    """A `texts --from` run into an output file that no interruption wastes, with memory that does
    not grow with the input: the texts are read as they are embedded (`ClipClient.iter_embed_texts`),
    finished rows reach `<out>.parts/` every `part_rows`, and the output is assembled from the parts
    a chunk at a time.

    ```python
    run = ResumableTextRun(client, Path("captions.parquet"), normalize=False)
    todo = run.resume(read_texts(...))  # run.kept rows of an earlier run kept; run.differs_at
    run.embed(todo)  # an error or Ctrl-C keeps the finished rows for a rerun
    written = run.finish()
    ```

    Raises (when built):
        OutputError: `--out` cannot be written; the output or its parts hold rows computed with
            other settings (the message lists them), or are unreadable.
    """

    def __init__(
        self,
        client: ClipClient,
        out: Path,
        *,
        normalize: bool,
        part_rows: int = DEFAULT_PART_ROWS,
        overwrite: bool = False,
    ) -> None:
        self.client = client
        self.store = ResumableTexts(
            out, OutputMeta.of(client, "text", normalize=normalize), part_rows=part_rows
        )
        self.store.open(overwrite=overwrite)
        self.embedded = 0

    def resume(self, inputs: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
        """`inputs` (`(id, text)`, in order) less the rows an earlier run finished: see
        [ResumableTexts.resume][clip_client._cli.outputs.ResumableTexts.resume]."""
        return self.store.resume(inputs)

    @property
    def kept(self) -> int:
        return self.store.kept

    @property
    def differs_at(self) -> int | None:
        return self.store.differs_at

    def embed(self, todo: Iterable[tuple[int, str]], *, progress: bool | None = None) -> None:
        """Embed `todo`, each row kept as it comes.

        Raises:
            BaseException: whatever stops the run (an error, Ctrl-C); the finished rows are written
                to the parts folder first. An `OutputError` of `todo` (a line that is not UTF-8...)
                is raised once the rows read before it are finished and kept.
        """
        sent: collections.deque[tuple[int, str]] = collections.deque()
        fault: list[OutputError] = []

        def texts() -> Iterator[str]:
            try:
                for key, text in todo:
                    sent.append((key, text))  # the stream answers in input order, a bounded number behind
                    yield text
            except OutputError as exc:  # the input ends there: the rows before it are finished first
                fault.append(exc)

        try:
            with self.client.iter_embed_texts(texts(), progress=progress) as stream:
                for _, vector in stream:
                    key, text = sent.popleft()
                    self.store.add(key, text, vector)
                    self.embedded += 1
            if fault:
                raise fault[0]
        except BaseException:
            self.store.flush()  # what is finished is kept, whatever stopped the run
            raise

    def finish(self) -> WrittenOutput:
        """Write the output from the parts, and remove them.

        Raises:
            OutputError: the output cannot be written (the parts are kept for a rerun).
        """
        return self.store.finish()


# --------------------------------------------------------------------------------------------------
# The model of a file's rows: the one to query it with


_MODEL_CHOOSERS = frozenset({"local", "model", "profile", "host", "text_endpoint", "image_endpoint"})
"""The options that choose who embeds (the model, or the workspace's endpoints); --device does not."""


def _endpoint_of(url: str) -> str | None:
    """The endpoint name of a serving endpoint's invocations URL
    (`.../serving-endpoints/NAME/invocations`)."""
    head, sep, tail = url.rstrip("/").rpartition("/serving-endpoints/")
    name = tail.removesuffix("/invocations")
    return name if sep and head and name and "/" not in name else None


def options_for_rows(common: Common, meta: OutputMeta | None, where: Path) -> Common:
    """The options to embed a query for `where`'s rows with: those given, and for every choice no
    option made, the model the file records (its `model` settings).

    - Rows of a local model: `--local --model` that model (a hub id, or the folder it was loaded
      from) in the dtype it ran in, unless `--model` names one; `--device` still applies.
    - Rows of serving endpoints: the endpoints the file names, unless `--text-endpoint` or
      `--image-endpoint` does; the workspace is the one the options and environment choose
      (credentials never follow a file).
    - A file without clip-client settings: the options as given.

    Raises:
        OutputError: the options ask for another kind of model than the rows' (`--local` for an
            endpoint's rows, a workspace option for a local model's), or another checkpoint (by
            content) than the one recorded, or the recorded checkpoint folder is gone and no
            `--model` names where it is now. Said before any model is loaded or request sent.
    """
    if meta is None or meta.model == "unknown":
        return common
    given = common.given & _MODEL_CHOOSERS
    local = meta.local_model
    if local is None:
        if common.local:
            raise OutputError(
                f"{where} was computed by the serving endpoint {meta.model!r}, but --local would embed "
                "the query with a model in this process: scores across two models mean nothing; drop "
                "--local (and --model, --device)"
            )
        names = dict(meta.endpoints)
        own = _endpoint_of(meta.model)
        if own is not None and meta.kind in ("text", "image"):
            names.setdefault(meta.kind, own)
        text = common.text_endpoint if "text_endpoint" in given else names.get("text", common.text_endpoint)
        image = (
            common.image_endpoint if "image_endpoint" in given else names.get("image", common.image_endpoint)
        )
        return dataclasses.replace(common, text_endpoint=text, image_endpoint=image)
    name, dtype = local
    if given - {"local", "model"}:
        raise OutputError(
            f"{where} was computed by the local model {name!r}, but --profile/--host/--text-endpoint/"
            "--image-endpoint would embed the query with serving endpoints: scores across two models "
            f"mean nothing; query with --local (the model is taken from {where.name}), or --local "
            "--model FOLDER for a copy of that checkpoint"
        )
    if "model" in given and common.model is not None:
        recorded = meta.model_sha256
        if recorded is not None and Path(common.model).expanduser().is_dir():
            found = _checkpoint_sha256(common.model)
            if found != recorded:
                raise OutputError(
                    f"{where} was computed by the checkpoint {name!r} (sha256 {recorded[:12]}...), but "
                    f"--model {common.model} holds other files (sha256 {(found or 'none')[:12]}...): "
                    "scores across two models mean nothing; pass --model a copy of that checkpoint, or "
                    "leave --model out to use the one the file names"
                )
        return dataclasses.replace(common, local=True, dtype=dtype)
    if os.path.isabs(name) and not Path(name).is_dir():
        held = f" (sha256 {meta.model_sha256[:12]}...)" if meta.model_sha256 else ""
        by_content = (
            "it is recognised by its content, wherever it is now"
            if meta.model_sha256
            else f"{where.name} predates content identity, so the folder must hold the very same files"
        )
        raise OutputError(
            f"{where} was computed by the local model in {name}{held}, and that folder is no longer "
            f"there: pass --local --model FOLDER with that checkpoint's folder ({by_content})"
        )
    return dataclasses.replace(common, local=True, model=name, dtype=dtype)


def refuse_another_model(where: Path, found: OutputMeta | None, client: ClipClient) -> None:
    """Refuse a query the file's model did not compute: scores across two models mean nothing.

    Raises:
        OutputError: `found` (the file's settings) names another model (or endpoint) than
            `client` would use for rows of the file's kind. A file without clip-client settings is
            not checked.
    """
    if found is None or found.model == "unknown":
        return
    mine = OutputMeta.of(client, "image" if found.kind == "image" else "text", normalize=False)
    if found.same_model(mine):
        return
    how = (
        "--local (the model the file names), or --local --model FOLDER for a copy of that checkpoint"
        if found.local_model is not None
        else "the --host/--profile and --text-endpoint/--image-endpoint it was written with"
    )
    if found.model == mine.model and found.model_sha256 and mine.model_sha256 and found.local_model:
        # The same folder, other files: the checkpoint changed under the file.
        raise OutputError(
            f"{where} was computed by the checkpoint in {found.local_model[0]}, whose content changed since "
            f"(sha256 then {found.model_sha256[:12]}..., now {mine.model_sha256[:12]}...): scores across "
            "two models mean nothing; put the original files back (or pass --local --model FOLDER with a "
            f"copy of them), or embed {where.name}'s inputs again with the folder as it is now (--overwrite)"
        )
    raise OutputError(
        f"{where} was computed by {found.model!r}, but this query would be embedded by {mine.model!r}: "
        f"scores across two models mean nothing; query with {how}"
    )
