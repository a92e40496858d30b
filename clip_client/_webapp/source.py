"""Where the app's rows come from: the `Source` protocol and its embeddings-file implementation.

A source answers three things: the nearest rows to a query vector, a row's own vector ("more like
this"), and a row's image bytes (thumbnails). `FileSource` holds an output of `clip-client images`
in memory and answers by exact `cosine_topk`, or by an `ApproximateIndex` built in the background
for a large file (exact search answers until it is ready). A Unity Catalog Vector Search index is
another `Source` (`VectorSearchSource`, a thin adapter over `clip_client.vector_search`).

A row is named by its row number (`id`) only: no path ever comes from a request.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import APIError, InvalidInputError
from ..search import EXACT_DUPLICATE_MAX_ROWS

if TYPE_CHECKING:
    from .._cli.outputs import OutputMeta, Rows
    from ..index import ApproximateIndex
    from ..types import EmbeddingArray

APPROXIMATE_MIN_ROWS = EXACT_DUPLICATE_MAX_ROWS
"""Above this many rows (50,000, where `find_duplicates` also turns approximate) a `FileSource`
builds an `ApproximateIndex` (IVF) in the background when the `index` extra is installed, and
searches it once built; below it, or until then, exact `cosine_topk` answers."""

MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""A listed image larger than this is not read for a thumbnail (shown as unavailable)."""


PATHS_REMEMBERED = 100_000
"""`VectorSearchSource`: the paths of the rows last returned, kept for their thumbnails."""


def shown(path: str) -> str:
    """`path` as text the page can show: the bytes of a file name that is not UTF-8 (lone surrogates,
    `os.fsdecode`) as replacement characters. The row's image is still read by its real bytes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _base_of(file: Path, keys: list[str]) -> Path:
    """The folder relative paths of `file` are read from: `images` records them relative to where
    it ran, which the file does not record; the file's own folder is tried first, then the working
    folder, and the one that holds more of (the first 50 of) them wins (the file's folder on a tie)."""
    folder = file.resolve().parent
    relative = [k for k in keys if k and not os.path.isabs(k)][:50]
    if not relative:
        return folder
    cwd = Path.cwd()

    def found(base: Path) -> int:
        return sum(os.path.exists(os.path.join(base, k)) for k in relative)

    return cwd if found(cwd) > found(folder) else folder


class ImageUnavailable(Exception):
    """A row's image cannot be served: gone, moved, unreadable, or outside the source's folder. The
    message is safe to show (it names the row's own listed path, never a request's)."""


@dataclass(frozen=True)
class Hit:
    """One result row: its id (row number), listed path and cosine similarity to the query."""

    id: int
    path: str
    score: float


@runtime_checkable
class Source(Protocol):
    """What the app reads rows from. Implement these to serve another store (a Vector Search
    index, a table): `embeddings` may return None, which turns off what needs every row at once
    (near-duplicates, the label filter over the whole collection)."""

    @property
    def name(self) -> str:
        """What the page calls the source (a file name, an index name)."""

    @property
    def meta(self) -> OutputMeta | None:
        """The model settings the rows were computed with (None: unknown)."""

    def __len__(self) -> int: ...

    def search(self, vector: EmbeddingArray, k: int) -> list[Hit]:
        """The `k` rows nearest to `vector` by cosine, best first (equal scores by lower id)."""

    def vector(self, row: int) -> EmbeddingArray:
        """Row `row`'s embedding. Raises IndexError for a row that is not there."""

    def path(self, row: int) -> str:
        """Row `row`'s listed path. Raises IndexError for a row that is not there."""

    def image_bytes(self, row: int) -> bytes:
        """Row `row`'s image file. Raises IndexError (no such row) or ImageUnavailable."""

    def embeddings(self) -> EmbeddingArray | None:
        """Every row's embedding, `(len, dim)`, or None when the source cannot give them at once."""


class FileSource:
    """An embeddings file written by `clip-client images` (.parquet, or .npy/.jsonl with its
    `.meta.json`), held in memory.

    Images are read from the paths the file lists (relative ones from `base`: the working folder
    by default; `open` picks the file's own folder, or the working folder where more of them are
    there), and only from inside `root`: by default the deepest folder
    that holds every listed image. A listed path that resolves elsewhere (a symlink out of the
    folder, a `..` in the file) is never read. With `read_image`, images are read by it instead, given
    the listed path (a Unity Catalog Volumes reader, in a Databricks App).
    """

    def __init__(
        self,
        rows: Rows,
        *,
        name: str,
        base: Path | None = None,
        root: Path | None = None,
        approximate: bool | None = None,
        read_image: Callable[[str], bytes] | None = None,
    ) -> None:
        self._rows = rows
        self._read_image = read_image
        self._name = name
        base = Path.cwd() if base is None else base
        self._paths = [str(k) for k in rows.keys]
        self._absolute = [os.path.abspath(os.path.join(base, p)) for p in self._paths]
        if root is None:
            folders = {os.path.dirname(p) for p in self._absolute}
            root = Path(os.path.commonpath(sorted(folders))) if folders else base
        self._root = os.path.realpath(root)
        self._index: ApproximateIndex | None = None
        self._index_error: str | None = None
        self._building: threading.Thread | None = None
        if approximate is None:
            approximate = len(rows) > APPROXIMATE_MIN_ROWS and _has_faiss()
        if approximate and len(rows):
            self._building = threading.Thread(target=self._build, name="clip-app-index", daemon=True)
            self._building.start()

    @classmethod
    def open(cls, path: Path, **options: Any) -> FileSource:
        """Read `path` (`OutputError` where it is missing, not an embeddings file, a .npy/.jsonl
        without its .meta.json, or an output of `texts`)."""
        from .._cli.outputs import OutputError, read_rows

        rows = read_rows(path, role="SOURCE")  # a .npy or .jsonl needs its .meta.json, as for `search`
        if rows.meta is not None and rows.meta.kind == "text":
            raise OutputError(f"{path}: an output of `clip-client images` is needed; this file holds texts")
        if "base" not in options:
            options["base"] = _base_of(path, [str(k) for k in rows.keys])
        return cls(rows, name=path.name, **options)

    # -- Source ------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def meta(self) -> OutputMeta | None:
        return self._rows.meta

    @property
    def root(self) -> str:
        """The folder images are served from (resolved)."""
        return self._root

    @property
    def approximate(self) -> bool:
        """True once searches go to the approximate index."""
        return self._index is not None

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for the background index build (if any); True when searches now use it."""
        if self._building is not None:
            self._building.join(timeout)
        return self._index is not None

    def __len__(self) -> int:
        return len(self._rows)

    def search(self, vector: EmbeddingArray, k: int) -> list[Hit]:
        from ..search import cosine_topk

        k = min(k, len(self))
        if k <= 0:
            return []
        index = self._index
        top = index.search(vector, k) if index is not None else cosine_topk(vector, self._rows.embeddings, k)
        return [
            Hit(i, self._paths[i], float(s))
            for i, s in zip(top.indices[0].tolist(), top.scores[0].tolist(), strict=True)
            if i >= 0
        ]

    def vector(self, row: int) -> EmbeddingArray:
        self._check(row)
        out: EmbeddingArray = self._rows.embeddings[row]
        return out

    def path(self, row: int) -> str:
        self._check(row)
        return self._paths[row]

    def embeddings(self) -> EmbeddingArray:
        return self._rows.embeddings

    def image_bytes(self, row: int) -> bytes:
        self._check(row)
        listed = shown(self._paths[row])
        if self._read_image is not None:
            try:
                return self._read_image(self._paths[row])
            except (OSError, LookupError) as exc:
                raise ImageUnavailable(f"{listed} cannot be read ({type(exc).__name__})") from None
        real = os.path.realpath(self._absolute[row])
        if os.path.commonpath([real, self._root]) != self._root:
            raise ImageUnavailable(f"{listed} is outside the folder the app serves")
        try:
            # O_NOFOLLOW on the resolved path: a symlink swapped in after the check is not followed.
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise ImageUnavailable(
                f"{listed} is not there any more (moved or deleted since it was embedded): "
                f"looked for {shown(self._absolute[row])}"
            ) from None
        except OSError as exc:
            raise ImageUnavailable(
                f"{listed} cannot be read ({exc.strerror or type(exc).__name__})"
            ) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not _is_regular(st.st_mode):
                raise ImageUnavailable(f"{listed} is not a file")
            if st.st_size > MAX_IMAGE_BYTES:
                raise ImageUnavailable(f"{listed} is over {MAX_IMAGE_BYTES // 2**20} MiB")
            return f.read(MAX_IMAGE_BYTES + 1)

    # -- internals ---------------------------------------------------------------------------------

    def _check(self, row: int) -> None:
        if not 0 <= row < len(self._rows):
            raise IndexError(row)

    def _build(self) -> None:
        from ..index import ApproximateIndex

        emb = self._rows.embeddings
        norms = np.linalg.norm(emb, axis=1)
        usable = np.flatnonzero(np.isfinite(norms) & (norms > 0))
        try:
            if len(usable) == len(emb):
                self._index = ApproximateIndex.build(emb)
            elif len(usable):
                self._index = ApproximateIndex.build(emb[usable], ids=usable)
        except (ImportError, ValueError, MemoryError) as exc:  # exact search goes on answering
            self._index_error = f"{type(exc).__name__}: {exc}"


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _has_faiss() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


class VectorSearchSource:
    """A Unity Catalog Vector Search index (`clip_client.vector_search.VectorIndex`) as a `Source`.

    The index's rows are named by their primary key; the page names rows by an integer id, so each
    key gets the next id the first time a search returns it, and the last `PATHS_REMEMBERED` keys
    seen keep theirs (an older id is a 404: search again). A row's path is its `path` column (its
    key, when the key is `path`, as `embed_table` writes it); its image is read by `read_image(path)`
    (the Files API reader of Unity Catalog volumes by default). "More like this" reads the row's
    vector back from the index (a one-row query filtered on its key). Near-duplicates and browsing
    need every row at once and are not offered (`embeddings()` is None).

    Raises (at construction):
        VectorSearchError and its subclasses: the index cannot be read (404, 403), is not online, or
            holds vectors of another width than the client's (`DimensionMismatchError`).
    """

    def __init__(
        self,
        name: str,
        *,
        client: Any,
        read_image: Callable[[str], bytes] | None = None,
        workspace: Any = None,
    ) -> None:
        from ..vector_search import VectorIndex, _check_queryable, _client_width

        self._index = VectorIndex(name, client=client, workspace=workspace)
        described = self._index.describe()
        _check_queryable(described, _client_width(client))  # before serving: online, the client's width
        self._name = name
        self._key = described.primary_key or "path"
        self._vector_column = described.embedding_column
        self._count = described.indexed_row_count or 0
        self._read_image = read_image
        self._ids: dict[Any, int] = {}  # key -> id, for the remembered rows
        self._next = 0
        self._rows: OrderedDict[int, tuple[Any, str]] = OrderedDict()  # id -> (key, path), bounded
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._name

    @property
    def meta(self) -> OutputMeta | None:
        return None

    def __len__(self) -> int:
        with self._lock:
            return max(self._count, self._next)

    def _id_of(self, key: Any, path: str) -> int:
        """The id of `key` (the next unused one the first time, or once forgotten), remembered as
        the most recent (the lock held)."""
        row = self._ids.get(key)
        if row is None:
            row, self._next = self._next, self._next + 1
            self._ids[key] = row
        self._rows[row] = (key, path)
        self._rows.move_to_end(row)
        while len(self._rows) > PATHS_REMEMBERED:
            _, (old_key, _) = self._rows.popitem(last=False)
            del self._ids[old_key]
        return row

    def search(self, vector: EmbeddingArray, k: int) -> list[Hit]:
        from ..vector_search import MAX_RESULTS

        columns = [] if self._key == "path" else ["path"]
        found = self._index.search(vector=vector, k=min(k, MAX_RESULTS), columns=columns)
        keys = found.keys[0].tolist()
        paths = found.columns.get("path", keys)
        with self._lock:
            return [
                Hit(self._id_of(key, str(path)), str(path), float(score))
                for key, path, score in zip(keys, paths, found.scores[0].tolist(), strict=True)
            ]

    def _entry(self, row: int) -> tuple[Any, str]:
        with self._lock:
            entry = self._rows.get(row)
        if entry is None:
            raise ImageUnavailable(f"row {row} is not among the rows this page has been shown: search again")
        return entry

    def vector(self, row: int) -> EmbeddingArray:
        key, path = self._entry(row)
        if self._vector_column is None:
            raise ImageUnavailable(f"{path}: the index has no embedding column to read back")
        probe = np.zeros(self._index.describe().dim or 1, dtype=np.float32)
        probe[0] = 1.0  # any direction: the filter leaves only the row
        found = self._index.search(vector=probe, k=1, columns=[self._vector_column], filters={self._key: key})
        values = found.columns.get(self._vector_column) or []
        if not values:
            raise ImageUnavailable(f"{path} is no longer in the index")
        out: EmbeddingArray = np.asarray(values[0], dtype=np.float32)
        return out

    def path(self, row: int) -> str:
        return self._entry(row)[1]

    def image_bytes(self, row: int) -> bytes:
        path = self.path(row)
        if self._read_image is None:
            raise ImageUnavailable(f"{path}: no reader of Unity Catalog volumes is configured")
        try:
            data: bytes = self._read_image(path)
        except (OSError, LookupError, APIError, InvalidInputError) as exc:
            raise ImageUnavailable(f"{path} cannot be read ({type(exc).__name__})") from None
        return data

    def embeddings(self) -> EmbeddingArray | None:
        return None
