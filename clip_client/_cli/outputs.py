"""The files the ``clip-client`` command writes and reads, and how an ``images`` run resumes.

Three formats, chosen by the output's extension (docs/cli.md has the schemas):

- ``.parquet``: columns ``path`` (images) or ``id`` and ``text`` (texts), and ``embedding``, a
  fixed-size list of float32; the settings in the schema metadata under ``clip_client`` (JSON).
- ``.npy``: the float32 ``(n, dim)`` matrix; beside it ``<name>.meta.json`` holds the settings and
  the row -> path (or id and text) mapping.
- ``.jsonl``: one object per line, ``{"path": ...}`` or ``{"id": ..., "text": ...}``, plus
  ``"embedding"``; beside it ``<name>.meta.json`` holds the settings.

Image rows also record each file's ``size`` (bytes) and ``mtime_ns`` when it was embedded, so a
resumed run re-embeds a file that changed since. Every file is written to a temporary name in the
same folder, given the permissions the umask allows (as ``open`` would), and renamed into place
(``os.replace``), so a reader never sees half a file. A resumable run keeps its finished rows in
``<output>.parts/``: a folder of part files, each renamed into place whole, with a manifest of the
run's settings; the final file is assembled from them in input order, renamed into place, and the
folder removed.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

from .. import _constants as C
from .._version import __version__
from ..errors import ClipClientError
from ..types import EmbeddingArray

if TYPE_CHECKING:
    from .._client import ClipClient
    from ..types import InputKind

__all__ = [
    "FORMATS",
    "OutputError",
    "OutputMeta",
    "ResumableOutput",
    "Rows",
    "jsonl_line",
    "meta_path",
    "output_format",
    "read_rows",
    "write_rows",
]

Format = Literal[".npy", ".parquet", ".jsonl"]
#: The output formats, by extension.
FORMATS: tuple[Format, ...] = (".npy", ".parquet", ".jsonl")
#: The key of the settings in a Parquet file's schema metadata.
METADATA_KEY = b"clip_client"
#: Rows a resumable run gathers before it writes them as one part file.
DEFAULT_PART_ROWS = 1000
_MANIFEST = "manifest.json"

#: An image file's (size in bytes, st_mtime_ns) when it was embedded.
Stamp = tuple[int, int]


def file_stamp(path: str) -> Stamp | None:
    """``path``'s (size in bytes, st_mtime_ns), or None when it cannot be stat-ed."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_size, st.st_mtime_ns)


class OutputError(ClipClientError):
    """An output file cannot be written, read or resumed; the message names the file and what to do."""


@dataclass(frozen=True)
class OutputMeta:
    """What a file's rows were computed with; stored in every output, compared on resume.

    Attributes:
        kind: ``"image"`` or ``"text"``.
        model: who computed the rows: a serving endpoint's URL, or ``local <model> <dtype>``.
        normalize: whether the rows are L2-normalised.
        preparation: for images, the settings that change what is sent
            (:func:`clip_client.cache.preparation_settings`); empty for texts.
        dim: the embedding width (None until the first row is known).
        clip_client: the version of clip_client that wrote the file.
    """

    kind: str
    model: str
    normalize: bool
    preparation: dict[str, Any] = field(default_factory=dict)
    dim: int | None = None
    clip_client: str = __version__

    @classmethod
    def of(cls, client: ClipClient, kind: InputKind, *, normalize: bool) -> OutputMeta:
        """The settings of ``client``'s rows of ``kind`` (no I/O)."""
        from .._remote.backend import RemoteBackend
        from ..cache import backend_identity, preparation_settings

        backend = client.backend
        if isinstance(backend, RemoteBackend):
            # The endpoint's URL alone: the registered model versions are only known after a call.
            model = backend.invocations_url(kind)
        else:
            model = backend_identity(backend, kind)
        preparation = preparation_settings(client.settings, kind)
        # The width when the backend knows it before any answer (a local model does; an endpoint
        # only tells with its answers): the shape of an output with no rows.
        dim = backend.dim
        return cls(kind=kind, model=model, normalize=normalize, preparation=preparation, dim=dim)

    def with_dim(self, dim: int) -> OutputMeta:
        return OutputMeta(self.kind, self.model, self.normalize, dict(self.preparation), dim)

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
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise OutputError(f"{where}: its clip_client settings are unreadable ({exc})") from None

    def differences(self, other: OutputMeta) -> list[str]:
        """What differs between the rows of ``self`` and ``other`` (the version and width aside)."""
        out = []
        for name in ("kind", "model", "normalize"):
            if getattr(self, name) != getattr(other, name):
                out.append(f"{name} {getattr(self, name)!r} (this run: {getattr(other, name)!r})")
        for name in sorted(set(self.preparation) | set(other.preparation)):
            mine, theirs = self.preparation.get(name), other.preparation.get(name)
            if mine != theirs:
                out.append(f"{name} {mine!r} (this run: {theirs!r})")
        return out


@dataclass
class Rows:
    """Rows of one output: keys (image paths, or text ids), texts (for texts), embeddings.

    Attributes:
        keys: the ``path`` (str) of each image row, or the ``id`` (int) of each text row.
        embeddings: float32, shape ``(len(keys), dim)``.
        texts: the text of each row (texts only), else None.
        meta: the settings the rows were computed with.
        stamps: images only: each file's ``(size in bytes, mtime in ns)`` when it was embedded (None
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
    """The format ``path``'s extension names.

    Args:
        path: the file.
        role: how the message names the file: the option (``--out``) or argument (``INDEX``).

    Raises:
        OutputError: the extension is not ``.npy``, ``.parquet`` or ``.jsonl``.
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
    """The sidecar of a ``.npy`` or ``.jsonl`` output: ``<name>.meta.json`` beside it
    (``emb.npy.meta.json``; the whole name, so ``emb.npy`` and ``emb.jsonl`` never share one)."""
    return path.with_name(path.name + ".meta.json")


# --------------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path``: write it inside the block, and it replaces ``path`` whole
    (after an fsync) when the block ends without an error; otherwise it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # mkstemp makes the file 0600; give it what open() would have: 0666 less the umask.
        os.chmod(tmp, 0o666 & ~_umask())
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def jsonl_line(
    key_name: str, key: Any, text: str | None, row: EmbeddingArray, stamp: Stamp | None = None
) -> str:
    """One ``.jsonl`` line (with its newline). Floats are written so that they read back as the
    same float32 values; an image row's ``stamp`` as ``size`` and ``mtime_ns``."""
    obj: dict[str, Any] = {key_name: key}
    if text is not None:
        obj["text"] = text
    if stamp is not None:
        obj["size"], obj["mtime_ns"] = stamp
    obj["embedding"] = row.tolist()
    return json.dumps(obj, ensure_ascii=False) + "\n"


def write_jsonl(stream: IO[str], rows: Rows) -> None:
    """``rows`` as JSON Lines on an open text stream."""
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
    """pyarrow and pyarrow.parquet, imported on first use (``import clip_client`` never loads them;
    pyarrow ships no type information)."""
    return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")


def _arrow_table(rows: Rows) -> Any:
    pa, _ = _pyarrow()

    dim = rows.embeddings.shape[1]
    flat = pa.array(np.ascontiguousarray(rows.embeddings, dtype=np.float32).reshape(-1), type=pa.float32())
    columns: dict[str, Any] = {}
    if rows.key_name == "path":
        columns["path"] = pa.array(rows.keys, type=pa.string())
    else:
        columns["id"] = pa.array(rows.keys, type=pa.int64())
    if rows.texts is not None:
        columns["text"] = pa.array(rows.texts, type=pa.string())
    if rows.stamps is not None:
        columns["size"] = pa.array([s and s[0] for s in rows.stamps], type=pa.int64())
        columns["mtime_ns"] = pa.array([s and s[1] for s in rows.stamps], type=pa.int64())
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table(columns)
    if rows.meta is not None:
        table = table.replace_schema_metadata({METADATA_KEY: rows.meta.with_dim(dim).to_json().encode()})
    return table


def write_rows(path: Path, rows: Rows) -> None:
    """Write ``rows`` to ``path`` in the format its extension names, atomically (and its
    ``.meta.json`` sidecar for ``.npy`` and ``.jsonl``).

    Raises:
        OutputError: unknown extension, or the file cannot be written (the OS error's reason).
    """
    fmt = output_format(path)
    dim = rows.embeddings.shape[1]
    meta = rows.meta.with_dim(dim) if rows.meta is not None else None
    try:
        if fmt == ".parquet":
            _, pq = _pyarrow()
            with _atomic(path) as tmp:
                pq.write_table(_arrow_table(rows), tmp)
            return
        sidecar: dict[str, Any] = {"clip_client": asdict(meta) if meta else None, "rows": len(rows)}
        if fmt == ".npy":
            sidecar[rows.key_name] = list(rows.keys)
            if rows.texts is not None:
                sidecar["text"] = list(rows.texts)
            if rows.stamps is not None:
                sidecar["size"] = [s and s[0] for s in rows.stamps]
                sidecar["mtime_ns"] = [s and s[1] for s in rows.stamps]
        # The sidecar first: a reader checks its row count against the data file, so a crash between
        # the two renames is seen as a mismatch, never read as a wrong mapping.
        with _atomic(meta_path(path)) as tmp:
            tmp.write_text(json.dumps(sidecar, ensure_ascii=False), encoding="utf-8")
        with _atomic(path) as tmp:
            if fmt == ".npy":
                # A file object: given a name, np.save would append ".npy" to the temporary's.
                with open(tmp, "wb") as f:
                    np.save(f, np.ascontiguousarray(rows.embeddings, dtype=np.float32), allow_pickle=False)
            else:
                with open(tmp, "w", encoding="utf-8") as f:
                    write_jsonl(f, rows)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --------------------------------------------------------------------------------------------------
# Reading


def read_rows(path: Path, *, role: str = "--out", foreign: bool = False) -> Rows:
    """Read an output of the ``clip-client`` command (any of the three formats).

    Args:
        path: the file.
        role: how messages name the file: ``--out`` (an output to resume or overwrite: their
            advice is ``--overwrite``), or ``INDEX`` (a file read only).
        foreign: also accept a ``.npy`` or ``.jsonl`` file of another writer, without the
            ``.meta.json`` settings file: a ``.npy`` 2-D float array (cast to float32; the keys are
            the row numbers, from 0), or ``.jsonl`` objects with an ``"embedding"`` list and
            optionally ``"path"`` or ``"id"`` (else the line's row number) and ``"text"``.

    Returns:
        its :class:`Rows`; ``meta.model`` is ``"unknown"`` for a file without clip_client settings
        (a Parquet file of another writer with a ``path`` or ``id`` column and an ``embedding``
        column, or, with ``foreign``, a ``.npy`` or ``.jsonl`` file without its settings file).

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
    pa, pq = _pyarrow()
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    meta = OutputMeta.from_json(raw, path) if raw is not None else None
    names = table.column_names
    if "embedding" not in names or not ({"path", "id"} & set(names)):
        raise OutputError(f"{path}: needs an 'embedding' column and a 'path' or 'id' column; has {names}")
    column = table.column("embedding").combine_chunks()
    if isinstance(column, pa.ChunkedArray):  # pyarrow < 15 keeps a one-chunk ChunkedArray
        column = column.chunk(0) if column.num_chunks else pa.array([], column.type)
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
        values = column.flatten().to_numpy(zero_copy_only=False)
    else:  # a variable-size list column from another writer
        lists = column.to_pylist()
        dim = len(lists[0]) if lists else 0
        values = np.asarray(lists, dtype=np.float32)
    embeddings = np.asarray(values, dtype=np.float32).reshape(len(table), dim)
    key = "path" if "path" in names else "id"
    keys = table.column(key).to_pylist()
    texts = table.column("text").to_pylist() if "text" in names else None
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


def _stamps(sizes: Sequence[Any], mtimes: Sequence[Any]) -> list[Stamp | None]:
    return [None if s is None or m is None else (int(s), int(m)) for s, m in zip(sizes, mtimes, strict=True)]


def _read_foreign(path: Path, fmt: Format) -> Rows:
    """A ``.npy`` or ``.jsonl`` file of another writer (no settings file): see :func:`read_rows`."""
    texts: list[str] | None = None
    kind = "text"
    if fmt == ".npy":
        matrix = np.load(path, allow_pickle=False)
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
                vectors.append(obj["embedding"])
                text_list.append(obj.get("text"))
        if any(t is not None for t in text_list):
            texts = ["" if t is None else str(t) for t in text_list]
        try:
            embeddings = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        except ValueError:
            raise OutputError(f"{path}: its embeddings are not all of one width") from None
    meta = OutputMeta(kind=kind, model="unknown", normalize=False, dim=embeddings.shape[1])
    return Rows(keys, embeddings, texts, meta)


def _read_with_sidecar(path: Path, fmt: Format, role: str = "--out") -> Rows:
    side = meta_path(path)
    again = (
        "start again with --overwrite"
        if role == "--out"
        else "write it again with `clip-client images` or `clip-client texts`"
    )
    if not side.is_file():
        raise OutputError(
            f"{path}: its settings file {side.name} is missing (it is written beside every .npy and "
            f".jsonl output); restore it, or {again}"
        )
    sidecar = json.loads(side.read_text(encoding="utf-8"))
    meta = OutputMeta.from_json(json.dumps(sidecar["clip_client"]), side)
    key_name = "path" if meta.kind == "image" else "id"
    texts: list[str] | None = None
    stamps: list[Stamp | None] | None = None
    if fmt == ".npy":
        embeddings = np.load(path, allow_pickle=False)
        keys = list(sidecar[key_name])
        if meta.kind == "text":
            texts = list(sidecar["text"])
        if "size" in sidecar and "mtime_ns" in sidecar:
            stamps = _stamps(sidecar["size"], sidecar["mtime_ns"])
    else:
        keys, rows, text_list, sizes, mtimes = [], [], [], [], []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                obj = json.loads(line)
                keys.append(obj[key_name])
                rows.append(obj["embedding"])
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


# --------------------------------------------------------------------------------------------------
# Resumable image runs


class ResumableOutput:
    """The finished rows of an ``images`` run towards ``out``, kept in ``<out>.parts/`` until the run
    completes.

    :meth:`open` gathers the rows already done (from the parts of an interrupted run, or from a
    finished ``out`` of an earlier run, whose rows become the first part), after checking they were
    computed with the same settings; :meth:`plan` matches them to this run's inputs (by absolute
    path, so ``photos``, ``photos/`` and ``/home/me/photos`` agree) and says which inputs are still
    to embed, those whose file changed since (size or mtime) included; :meth:`add` buffers new rows
    and writes a part file every ``part_rows``; :meth:`finish` writes ``out`` in input order and
    removes the parts.
    """

    def __init__(self, out: Path, meta: OutputMeta, *, part_rows: int = DEFAULT_PART_ROWS) -> None:
        output_format(out)
        if part_rows < 1:
            raise OutputError(f"--part-rows must be at least 1, got {part_rows}")
        self.out = out
        self.meta = meta
        self.part_rows = part_rows
        self.parts = out.with_name(out.name + ".parts")
        self.done: dict[str, EmbeddingArray] = {}
        self.stamps: dict[str, Stamp | None] = {}
        self.resumed = 0
        self._buffer: list[tuple[str, EmbeddingArray, Stamp | None]] = []
        self._next_part = 0

    def open(self, *, overwrite: bool = False) -> dict[str, EmbeddingArray]:
        """The rows already done, by path (as the run that embedded them spelled it).

        Raises:
            OutputError: the parts or the existing output were computed with other settings (the
                message lists them: rerun with the same options, or pass ``--overwrite``), or the
                existing output, a part file or the manifest is unreadable (the message names the
                file to delete, or ``--overwrite``).
        """
        if overwrite:
            shutil.rmtree(self.parts, ignore_errors=True)
            return self.done
        if self.parts.is_dir():
            self._load_parts()
        elif self.out.exists():
            try:
                rows = read_rows(self.out)
            except OutputError as exc:
                raise OutputError(
                    f"{exc}; cannot resume from it: delete it, pass --overwrite, or choose another --out"
                ) from None
            self._check(rows.meta, self.out)
            self._keep(rows)
            if self.done:  # they become part 0, so that the output may be rewritten safely
                self._start_parts()
                self._write_part([(k, r, self.stamps.get(k)) for k, r in self.done.items()])
        self.resumed = len(self.done)
        return self.done

    def plan(self, inputs: Sequence[str], stamps: Sequence[Stamp | None]) -> tuple[list[int], int]:
        """Match the done rows to ``inputs`` (their files' current ``stamps``, same order).

        A done row whose path names the same file as an input (same absolute path) is re-keyed to
        the input's spelling. Returns the indices of the inputs still to embed, and how many of
        them have a row that is stale: their file's size or mtime differs from when it was embedded.
        """
        by_abs: dict[str, str] = {}
        for key in self.done:
            by_abs.setdefault(os.path.abspath(key), key)
        todo: list[int] = []
        changed = 0
        for i, path in enumerate(inputs):
            found = path if path in self.done else by_abs.get(os.path.abspath(path))
            if found is None:
                todo.append(i)
                continue
            if found != path:
                self.done[path] = self.done.pop(found)
                self.stamps[path] = self.stamps.pop(found, None)
                by_abs[os.path.abspath(path)] = path
            then = self.stamps.get(path)
            if then is not None and then != stamps[i]:
                todo.append(i)
                changed += 1
        return todo, changed

    def add(self, path: str, row: EmbeddingArray, stamp: Stamp | None = None) -> None:
        """One finished row (and its file's stamp); a part file is written once ``part_rows`` are
        buffered. A row for a path already done replaces it."""
        self._buffer.append((path, row, stamp))
        if len(self._buffer) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one part file (nothing when there are none)."""
        if not self._buffer:
            return
        if not self.parts.is_dir():
            self._start_parts()
        self._write_part(self._buffer)
        for path, row, stamp in self._buffer:
            self.done[path] = row
            self.stamps[path] = stamp
        self._buffer = []

    def finish(self, order: Sequence[str]) -> Rows:
        """Write ``out``: the done rows of the paths in ``order``, in that order (paths without a row,
        the failed ones, are left out), then remove the parts.

        Returns:
            the rows written.
        """
        self.flush()
        keys = [p for p in order if p in self.done]
        # No row at all (every image failed): the width the backend knows, else CLIP ViT-L/14's
        # 768 (what the client's own empty results have), so that the file still reads as (0, dim).
        dim = self.meta.dim or next((r.shape[0] for r in self.done.values()), 0) or C.DEFAULT_EMBEDDING_DIM
        matrix = (
            np.stack([self.done[p] for p in keys]).astype(np.float32, copy=False)
            if keys
            else np.zeros((0, dim), dtype=np.float32)
        )
        rows = Rows(keys, matrix, None, self.meta, [self.stamps.get(p) for p in keys])
        write_rows(self.out, rows)
        shutil.rmtree(self.parts, ignore_errors=True)
        return rows

    # -- parts ------------------------------------------------------------------------------------

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

    def _keep(self, rows: Rows) -> None:
        """Later rows win: a part written after another holds re-embedded (changed) files."""
        stamps = rows.stamps or [None] * len(rows)
        for key, row, stamp in zip(rows.keys, rows.embeddings, stamps, strict=True):
            self.done[str(key)] = row
            self.stamps[str(key)] = stamp

    def _start_parts(self) -> None:
        """Create the parts folder with its manifest, atomically (a whole folder renamed into place)."""
        self.parts.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.parts.name}.", dir=self.parts.parent))
        (staging / _MANIFEST).write_text(self.meta.to_json(), encoding="utf-8")
        os.replace(staging, self.parts)

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

    def _load_parts(self) -> None:
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
        numbers = []
        for part in sorted(self.parts.glob("part-*.parquet")):
            try:
                rows = read_rows(part)
                number = int(part.stem.split("-")[1])
            except (OutputError, ValueError) as exc:
                raise self._unreadable(exc, part) from None
            self._keep(rows)
            numbers.append(number)
        self._next_part = max(numbers, default=-1) + 1

    def _write_part(self, items: Sequence[tuple[str, EmbeddingArray, Stamp | None]]) -> None:
        keys = [k for k, _, _ in items]
        matrix = np.stack([r for _, r, _ in items]).astype(np.float32, copy=False)
        rows = Rows(keys, matrix, None, self.meta, [s for _, _, s in items])
        write_rows(self.parts / f"part-{self._next_part:06d}.parquet", rows)
        self._next_part += 1
