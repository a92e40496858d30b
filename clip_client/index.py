"""An approximate nearest-neighbour index over CLIP embeddings, for collections too large for exact
search: faiss's HNSW graph with cosine similarity. Needs the `index` extra:

```bash
pip install "clip-serving-client[index]"
```

`ApproximateIndex` is named for what the field calls it, an approximate nearest-neighbour (ANN)
index, and spelled out so that it reads as the counterpart of the exact `cosine_topk`: its
`search` returns the same `TopK` (same shapes, dtypes and score scale), so the two can be swapped.

Cosine similarity is the inner product of L2-normalised vectors (Radford et al., 2021, section 2.3);
the index normalises every row it is given and every query, in float32, so raw embeddings from the
endpoint or the local model go in as they are.

The structure is `faiss.IndexHNSWFlat` (Malkov and Yashunin, 2018, "Efficient and robust
approximate nearest neighbor search using Hierarchical Navigable Small World graphs") with the inner
product metric, under a `faiss.IndexIDMap` for the ids. It was measured against `IndexIVFFlat`
(`benchmarks/search.py --ivf`, docs/benchmarks.md): at 200,000 x 768 clustered CLIP-like rows the
two were level (recall@10 0.965 at 20.5x the exact search's speed for HNSW, `ef_search=32`; 0.957
at 19.7x for IVF with 1,788 lists, `nprobe=4`), and IVF built faster (48 s against 69 s). HNSW was
chosen because its search cost grows with about `log n` where IVF's grows with `sqrt n` (`4
sqrt n` centroids, then `nprobe` lists of about `sqrt n / 4` rows each), because it needs no
training pass, so rows `add`-ed later are found as well as the first ones (IVF keeps the centroids
of the rows it was trained on), and because its one knob, `ef_search`, trades speed for recall
without a rebuild. At 1,000,000 rows it measured recall@10 0.970 at 401x the exact search's speed.

Its build settings were chosen again for issue 20 (`benchmarks/index_compare.py`, docs/search.md).
On 200,000 x 768 clustered CLIP-like rows, 2 shared cores, faiss's default `efConstruction=40`
left recall@10 at 0.973-0.978 whatever `ef_search` (64 to 256): the graph, not the search, was the
limit. `efConstruction=128` built in 82 s instead of 43 s and reached 0.990 at `ef_search=128`
(1,739 queries/s) and 0.997 at 256; at 1,000,000 rows it built in 269 s and reached 0.973 at
`ef_search=128` (3,930 queries/s) and 0.991 at 256 (2,197 queries/s). faiss IVF with flat lists
(1,788 lists) did as well on the 200,000 clustered rows (0.999 at `nprobe=32`, 1,885 queries/s,
60 s to build) but was not taken, for the reasons above (its cells are fitted to the rows it was
trained on, and its cost grows with `sqrt n`). IVF with product quantisation lost too much (recall
0.345; 0.895 with an exact re-rank of 80 candidates), and usearch's HNSW built 3x more slowly for
no better recall. So the structure, and with it the saved file, stays the same: an `IndexIDMap`
over an inner-product `IndexHNSWFlat`; only the defaults changed (`efConstruction` 40 -> 128,
`ef_search` 64 -> 256). Files saved before load unchanged, keeping the settings they were built
with (the file holds them).

Its vectors stay uncompressed (no product quantisation), so its scores are the exact float32
cosines of the rows it returns; what is approximate is which rows it finds.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .search import TopK, _as_float, _normalised_queries, _normalised_rows, _positive_int

__all__ = [
    "C_INT_MAX",
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_EF_SEARCH",
    "DEFAULT_M",
    "MAX_M",
    "ApproximateIndex",
]

DEFAULT_M = 32
"""HNSW links per node (faiss's `M`): 32 is faiss's own default for `IndexHNSWFlat`."""

DEFAULT_EF_CONSTRUCTION = 128
"""Candidates kept while inserting a row. faiss's default, 40, capped recall@10 at about 0.975 on
200,000 x 768 clustered CLIP-like rows whatever `ef_search`; 128 reached 0.990 at `ef_search=128`,
at twice the build time (82 s against 43 s; `benchmarks/index_compare.py`)."""

DEFAULT_EF_SEARCH = 256
"""Candidates kept while searching: the smallest power of two whose recall@10 reached 0.99 on
1,000,000 x 768 clustered CLIP-like rows with `efConstruction=128` (0.991 at 2,197 queries/s on 2
cores, where 128 gave 0.973 at 3,930; `benchmarks/index_compare.py`). On 200,000 rows 128 already
gave 0.990."""

DEFAULT_CHUNK_ROWS = 65_536
_INSTALL = 'pip install "clip-serving-client[index]"'

C_INT_MAX = 2**31 - 1
"""The largest `dim`, `ef_construction` and `ef_search`: faiss takes them as a C `int`
(faiss/impl/HNSW.h: `int efConstruction`, `int efSearch`; faiss/Index.h: `int d`), and a larger
Python int would reach SWIG as an OverflowError or TypeError; a ValueError names it instead."""

MAX_M = 10_000
"""The most HNSW links per node `m` may ask for. faiss checks none: it needs only
`m * (levels + 1)` to fit its `int` neighbour offsets (`HNSW::cum_nneighbor_per_level`), and an
`m` of a million is accepted and then allocates 8 MB of links per row. hnswlib, the HNSW authors'
own library, caps `M` at 10,000 ("M parameter exceeds 10000 which may lead to adverse effects");
so does this class, with a ValueError rather than a silent cap. Useful values are 4-64."""


def _faiss() -> Any:
    """faiss, imported on first use so that `import clip_client.index` works without the extra."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(f"clip_client.index needs faiss, which is not installed: {_INSTALL}") from exc
    return faiss


class ApproximateIndex:
    """Approximate cosine top-`k` over a growing collection of embeddings (faiss HNSW).

    Build one with `ApproximateIndex.build(matrix)` (or an empty one with `ApproximateIndex(d)`
    and `add`), search it with `search`, and keep it with `save`/`load`. Each row has an
    int64 id: its row number in the order added (across `add` calls, as if the matrices were
    stacked) unless you pass `ids`. `search` returns those ids in `TopK.indices`.

    Memory: the index keeps its own float32 copy of every (normalised) row plus its graph, about
    `4 d + 8 m + 16` bytes per row (3.3 GB for 1,000,000 x 768 at `m = 32`; 3,197 MiB measured),
    and building reads the matrix `chunk_rows` rows at a time, so the input is never copied whole.
    Building is the slow part: 818 s for 1,000,000 x 768 on two busy CPU cores at the former
    `ef_construction=40` (docs/benchmarks.md), 269 s at today's 128 on a quieter one; save the
    index and load it, and pass `progress=True` to `build`/`add` for a bar. Where a query may take
    the exact `cosine_topk`'s time (0.02-0.09 s per million rows on two shared cores), that needs
    neither the build nor the second copy (docs/search.md says when to use which).

    Many identical rows weaken the graph, whose links then run mostly between copies (9,000 x 64
    clustered rows of which a third were copies of 20 rows: recall@10 fell from 1.00 to 0.90): run
    `find_duplicates` first and index one row of each group.

    Not safe to `add` from one thread while another searches; concurrent `search` calls are.

    Args:
        dim: width of the embeddings, `>= 1` (768 for CLIP ViT-L/14).
        m: HNSW links per node, `2` to `MAX_M` (10,000). More links: better recall at a given
            `ef_search`, more memory (`8 m` bytes per row) and a slower build. Default 32 (faiss's
            default).
        ef_construction: candidates kept while inserting, `>= 1`; higher builds a better graph,
            more slowly. Default 128 (`DEFAULT_EF_CONSTRUCTION`; faiss's own default is 40).
        ef_search: candidates kept while searching, `>= 1`: the speed/recall knob (higher is
            slower and finds more of the true neighbours). Default 256, which measured recall@10 of
            0.991 at 1,000,000 rows (`DEFAULT_EF_SEARCH`). A search always keeps at least `k`.

    Raises:
        ImportError: faiss is not installed (the message says how to install it).
        TypeError: a parameter is not an int.
        ValueError: `dim`, `ef_construction` or `ef_search` is below 1 or above `C_INT_MAX`
            (2**31 - 1: faiss takes a C `int`), or `m` is below 2 or above `MAX_M`. The message
            names the argument and its range.
    """

    def __init__(
        self,
        dim: int,
        *,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
    ) -> None:
        faiss = _faiss()
        dim = _c_int(dim, "dim")
        m = _positive_int(m, "m")
        if m < 2:
            raise ValueError(f"m must be >= 2 (HNSW links per node); got {m}")
        if m > MAX_M:
            raise ValueError(f"m must be <= {MAX_M:,} (HNSW links per node; useful values are 4-64); got {m}")
        ef_construction = _c_int(ef_construction, "ef_construction")
        ef_search = _c_int(ef_search, "ef_search")
        hnsw = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_construction
        hnsw.hnsw.efSearch = ef_search
        self._init(faiss.IndexIDMap(hnsw))

    def _init(self, index: Any, owner: Any = None) -> None:
        faiss = _faiss()
        # faiss's downcast wrappers do not own the C++ index: keep the object that does alive.
        self._owner = index if owner is None else owner
        self._index = index
        self._hnsw = faiss.downcast_index(index.index)

    @classmethod
    def build(
        cls,
        matrix: ArrayLike,
        ids: ArrayLike | None = None,
        *,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        progress: bool = False,
    ) -> ApproximateIndex:
        """A new index holding every row of `matrix`.

        Args:
            matrix: float array, shape `(n, d)`, any float dtype, rows need not be normalised
                (e.g. CLIP ViT-L/14 embeddings, `d = 768`). Read `chunk_rows` rows at a time, so
                a `np.memmap` works.
            ids: optional integer array, shape `(n,)`: the id `search` returns for each row
                (stored as int64). Default: the row numbers `0 .. n-1`.
            m: HNSW links per node (see the class).
            ef_construction: insertion candidates (see the class).
            ef_search: the default search knob (see the class).
            chunk_rows: rows normalised and inserted per block, `>= 1`; extra memory is one
                `chunk_rows x d` float32 block.
            progress: show a tqdm bar on stderr, rows inserted (default off, as in the clients).

        Returns:
            The index, `len(index) == n`.

        Raises:
            ImportError: faiss is not installed.
            TypeError: `matrix` is not a float array, `ids` not an integer array, or a parameter
                not an int.
            ValueError: `matrix` is not 2-D or is empty; a row holds a NaN or an infinity or is all
                zeros (the message names its index; nothing is added); `ids` has the wrong shape,
                repeats an id or holds -1; a parameter is out of range.
        """
        mat = _as_float(matrix, "matrix")
        if mat.ndim != 2:
            raise ValueError(f"matrix must be 2-D (n, d); got shape {mat.shape}")
        if mat.shape[0] == 0 or mat.shape[1] == 0:
            raise ValueError(f"matrix is empty (shape {mat.shape}): there is nothing to index")
        index = cls(mat.shape[1], m=m, ef_construction=ef_construction, ef_search=ef_search)
        index.add(mat, ids, chunk_rows=chunk_rows, progress=progress)
        return index

    @property
    def dim(self) -> int:
        """Width of the rows and queries (int)."""
        return int(self._index.d)

    @property
    def m(self) -> int:
        """HNSW links per node, fixed when the index was made."""
        return int(self._hnsw.hnsw.nb_neighbors(1))

    @property
    def ef_construction(self) -> int:
        """Candidates kept while inserting rows (int)."""
        return int(self._hnsw.hnsw.efConstruction)

    @ef_construction.setter
    def ef_construction(self, value: int) -> None:
        self._hnsw.hnsw.efConstruction = _c_int(value, "ef_construction")

    @property
    def ef_search(self) -> int:
        """Default candidates kept while searching: the speed/recall knob. Saved with the index."""
        return int(self._hnsw.hnsw.efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._hnsw.hnsw.efSearch = _c_int(value, "ef_search")

    @property
    def ids(self) -> NDArray[np.int64]:
        """int64, shape `(len(self),)`: the id of each row, in the order the rows were added (a
        copy)."""
        return np.array(_faiss().vector_to_array(self._index.id_map), dtype=np.int64)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return (
            f"ApproximateIndex(dim={self.dim}, rows={len(self)}, m={self.m}, "
            f"ef_construction={self.ef_construction}, ef_search={self.ef_search})"
        )

    def add(
        self,
        matrix: ArrayLike,
        ids: ArrayLike | None = None,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        progress: bool = False,
    ) -> None:
        """Append rows. Every row and id is checked before the first is added, so a bad input adds
        nothing.

        Args:
            matrix: float array, shape `(n, d)` with `d == self.dim`; any float dtype, rows need
                not be normalised; read `chunk_rows` rows at a time.
            ids: optional integer array, shape `(n,)`, ids not yet in the index. Default: the next
                row numbers, `len(self) .. len(self) + n - 1`.
            chunk_rows: rows normalised and inserted per block, `>= 1`.
            progress: show a tqdm bar on stderr, rows inserted (default off, as in the clients).

        Raises:
            TypeError: `matrix` is not a float array, `ids` not an integer array, or
                `chunk_rows` not an int.
            ValueError: `matrix` is not 2-D, is empty or has another width; a row holds a NaN or
                an infinity or is all zeros (named by its index in `matrix`); `ids` has the
                wrong shape, holds -1 (faiss's "no result"), repeats an id, or holds an id already
                in the index (named by its position in `ids`); `chunk_rows < 1`.
        """
        mat = _as_float(matrix, "matrix")
        if mat.ndim != 2:
            raise ValueError(f"matrix must be 2-D (n, d); got shape {mat.shape}")
        if mat.shape[0] == 0 or mat.shape[1] == 0:
            raise ValueError(f"matrix is empty (shape {mat.shape}): there is nothing to add")
        n, d = mat.shape
        if d != self.dim:
            raise ValueError(
                f"matrix has width {d} but the index holds width {self.dim}: embed both with the same model"
            )
        chunk_rows = _positive_int(chunk_rows, "chunk_rows")
        new_ids = self._checked_ids(ids, n)
        for start in range(0, n, chunk_rows):  # check every row first: all or nothing
            _normalised_rows(mat[start : start + chunk_rows], "matrix", first=start)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit="row", unit_scale=True, desc="building the index")
        try:
            for start in range(0, n, chunk_rows):
                block = _normalised_rows(mat[start : start + chunk_rows], "matrix", first=start)
                self._index.add_with_ids(block, new_ids[start : start + len(block)])
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()

    def _checked_ids(self, ids: ArrayLike | None, n: int) -> NDArray[np.int64]:
        if ids is None:
            arr = np.arange(len(self), len(self) + n, dtype=np.int64)
            clash = np.isin(arr, self.ids)
            if clash.any():
                raise ValueError(
                    f"the default id {int(arr[clash][0])} (the next row number) is already in the "
                    "index, which holds ids you chose: pass ids= for these rows too"
                )
            return arr
        raw = np.asarray(ids)
        if raw.dtype == np.bool_ or not np.issubdtype(raw.dtype, np.integer):
            raise TypeError(f"ids must be an integer array (stored as int64); got dtype {raw.dtype}")
        if raw.shape != (n,):
            raise ValueError(f"ids must have shape ({n},), one per row of matrix; got {raw.shape}")
        if raw.dtype == np.uint64 and raw.size and int(raw.max()) > np.iinfo(np.int64).max:
            i = int(np.argmax(raw))
            raise ValueError(f"ids[{i}] = {int(raw[i])} does not fit in int64")
        arr = np.ascontiguousarray(raw, dtype=np.int64)
        reserved = np.flatnonzero(arr == -1)
        if reserved.size:
            raise ValueError(
                f"ids[{int(reserved[0])}] is -1, which faiss reserves for 'no result': use another id"
            )
        order = np.argsort(arr, kind="stable")
        repeats = np.flatnonzero(arr[order][1:] == arr[order][:-1])
        if repeats.size:
            first, again = sorted((int(order[repeats[0]]), int(order[repeats[0] + 1])))
            raise ValueError(
                f"ids[{again}] = {int(arr[again])} repeats ids[{first}]: each row needs its own id"
            )
        taken = np.flatnonzero(np.isin(arr, self.ids))
        if taken.size:
            i = int(taken[0])
            raise ValueError(f"ids[{i}] = {int(arr[i])} is already in the index: ids must be new")
        return arr

    def search(self, queries: ArrayLike, k: int = 10, *, ef_search: int | None = None) -> TopK:
        """Approximate cosine top-`k` of each query, in the shape `cosine_topk` returns.

        Args:
            queries: float array, shape `(d,)` (one query) or `(q, d)`; any float dtype,
                normalised (L2) in float32.
            k: rows to return per query, `>= 1`; `k > len(self)` returns `len(self)`.
            ef_search: candidates kept for this call only, `1` to `C_INT_MAX` (default: `self.ef_search`);
                at least `k` are always kept. Raise it for recall, lower it for speed.

        Returns:
            `TopK` with `indices` (int64, the rows' ids) and `scores` (float32, the exact
            cosines of those rows, clamped to `[-1, 1]` as `find_duplicates` does: float32
            rounding can otherwise give a row's own cosine as 1.0000001), both of shape
            `(q, min(k, len(self)))` (`q = 1` for a 1-D query), best first, equal scores by lower
            id. The rows are those the graph search found: usually, not always, the exact top-`k`
            (recall@10 >= 0.95 at the default on the benchmark's data). A query whose search found
            fewer than `min(k, len(self))` rows (possible when `k` is near `len(self)`) is answered
            by exact search instead, so no row of the result is ever missing.

        Raises:
            TypeError: `queries` is not a float array, or `k`/`ef_search` not an int.
            ValueError: the index is empty; `queries` is not 1-D or 2-D, has no rows or another
                width; a query holds a NaN, an infinity or is all zeros (named by its index);
                `k < 1`, or `ef_search` outside `1..C_INT_MAX`.
        """
        faiss = _faiss()
        qn = _normalised_queries(queries, self.dim, "the index's rows")
        k = _positive_int(k, "k")
        ef = self.ef_search if ef_search is None else _c_int(ef_search, "ef_search")
        n = len(self)
        if n == 0:
            raise ValueError("the index is empty: add rows before searching")
        k = min(k, n)
        params = faiss.SearchParametersHNSW(efSearch=max(ef, k))
        scores, indices = self._index.search(qn, k, params=params)
        short = np.flatnonzero((indices == -1).any(axis=1))
        if short.size:
            storage = faiss.downcast_index(self._hnsw.storage)  # flat, exact: rows by position
            exact_scores, positions = storage.search(qn[short], k)
            scores[short] = exact_scores
            indices[short] = self.ids[positions]
        np.clip(scores, -1.0, 1.0, out=scores)  # float32 rounding: a cosine never leaves [-1, 1]
        order = np.lexsort((indices, -scores), axis=-1)
        return TopK(
            indices=np.take_along_axis(indices, order, axis=1).astype(np.int64, copy=False),
            scores=np.take_along_axis(scores, order, axis=1).astype(np.float32, copy=False),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index (rows, graph, ids, `ef_search`) to one file in faiss's own format.

        The file is written beside `path` under a temporary name, flushed to disk, then renamed
        over `path`, so a reader sees either the old file or the whole new one, never a part.
        Its size is about `len(self) x (4 d + 8 m + 16)` bytes.

        Args:
            path: the file to write; its folder must exist. An existing file is replaced.

        Raises:
            FileNotFoundError: the folder of `path` does not exist.
            IsADirectoryError: `path` is a folder.
            OSError: the file cannot be written (permissions, disk full).
        """
        faiss = _faiss()
        target = Path(path)
        if not target.parent.is_dir():
            raise FileNotFoundError(
                f"cannot save the index to {target}: folder {target.parent} does not exist"
            )
        if target.is_dir():
            raise IsADirectoryError(f"cannot save the index to {target}: it is a folder; name a file")
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            try:
                faiss.write_index(self._index, str(tmp))
            except RuntimeError as exc:
                raise OSError(f"could not write the index to {target}: {exc}") from None
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        with contextlib.suppress(OSError):  # persist the rename where the platform allows it
            folder = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ApproximateIndex:
        """Read an index written by `save`. Searches give the same results as before saving.

        Args:
            path: a file written by `ApproximateIndex.save`. It is read into memory whole
                (about the size of the file).

        Returns:
            The index, with its rows, ids and `ef_search`.

        Raises:
            ImportError: faiss is not installed.
            FileNotFoundError: `path` does not exist.
            ValueError: `path` is not a faiss index, or is one that `save` did not write (another
                structure or metric): rebuild it with `ApproximateIndex.build`.
        """
        faiss = _faiss()
        source = Path(path)
        if not source.is_file():
            raise FileNotFoundError(f"no index file at {source}")
        try:
            raw = faiss.read_index(str(source))
        except RuntimeError as exc:
            raise ValueError(
                f"{source} is not a faiss index file ({str(exc).splitlines()[-1][:200]}): "
                "write one with ApproximateIndex.save"
            ) from None
        index = faiss.downcast_index(raw)
        inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else None
        if isinstance(inner, faiss.IndexHNSWFlat) and index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(
                f"{source} holds the right structure (an IndexIDMap over an IndexHNSWFlat) but with "
                f"the {_metric_name(faiss, index.metric_type)} metric, not the inner product "
                "(METRIC_INNER_PRODUCT) that ApproximateIndex searches by cosine with: its scores "
                "would not be cosines; rebuild it with ApproximateIndex.build"
            )
        if not isinstance(inner, faiss.IndexHNSWFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(
                f"{source} holds a faiss {type(index).__name__}, not the IndexIDMap over an "
                "inner-product IndexHNSWFlat that ApproximateIndex.save writes: rebuild it with "
                "ApproximateIndex.build"
            )
        out = cls.__new__(cls)
        out._init(index, owner=raw)
        return out


def _c_int(value: object, name: str) -> int:
    """An int `>= 1` that faiss can take as a C `int` (at most `C_INT_MAX`), or a ValueError
    naming `name` and the range, not SWIG's OverflowError or TypeError."""
    number = _positive_int(value, name)
    if number > C_INT_MAX:
        raise ValueError(
            f"{name} must be between 1 and {C_INT_MAX:,} (2**31 - 1, faiss's C int); got {number}"
        )
    return number


def _metric_name(faiss: Any, metric: int) -> str:
    """faiss's name for a metric type (`METRIC_L2`...), or its number when faiss has none."""
    names = [n for n in dir(faiss) if n.startswith("METRIC_") and getattr(faiss, n) == metric]
    return names[0] if names else f"faiss metric type {metric}"
