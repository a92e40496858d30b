"""An approximate nearest-neighbour index over CLIP embeddings, for collections too large for exact
search: faiss's IVF (inverted file over k-means cells) or HNSW graph, with cosine similarity. Needs
the `index` extra:

```bash
pip install "clip-serving-client[index]"
```

`ApproximateIndex` is named for what the field calls it, an approximate nearest-neighbour (ANN)
index, and spelled out so that it reads as the counterpart of the exact `cosine_topk`: its
`search` returns the same `TopK` (same shapes, dtypes and score scale), so the two can be swapped.

Cosine similarity is the inner product of L2-normalised vectors (Radford et al., 2021, section 2.3);
the index normalises every row it is given and every query, in float32, so raw embeddings from the
endpoint or the local model go in as they are.

Two structures, both with the inner-product metric under a `faiss.IndexIDMap` for the ids:

- `"ivf"` (the default of `build`): `faiss.IndexIVFFlat` (Jegou et al., 2011, "Product quantization
  for nearest neighbor search", section 3: an inverted file over k-means cells; here with flat,
  uncompressed lists). `build` fits `nlist` cells (about `4 sqrt n`) to a sample of the rows and
  files every row under its nearest cell; a query reads the `nprobe` cells nearest to it.
- `"hnsw"` (the default of an empty `ApproximateIndex(d)` grown by `add`): `faiss.IndexHNSWFlat`
  (Malkov and Yashunin, 2018, "Efficient and robust approximate nearest neighbor search using
  Hierarchical Navigable Small World graphs"), which needs no training pass, so it suits a collection
  that arrives in pieces.

Why IVF is the default since issue 20 (`benchmarks/index_compare.py`, docs/search.md): on 1,000,000 x
768 clustered CLIP-like rows on 2 cores, IVF with 4,000 lists built in 97 s and reached recall@10
0.996 at `nprobe=16` and 2,729 queries/s, meeting every goal of the issue (under 3 minutes, >= 0.99 at
>= 2,000 queries/s). HNSW at `efConstruction=128` reached 0.991 at 2,197 queries/s but built in 269 s;
at faiss's `efConstruction=40` it built faster and never passed 0.978 on 200,000 rows, whatever
`ef_search`. IVF with product quantisation lost the answer (recall 0.345; 0.895 with an exact
re-rank of 80), and usearch's HNSW built 3x more slowly than faiss's for no better recall. What IVF
costs: its cells are fitted to the rows `build` sees (rows `add`-ed later go to the nearest of those
cells, which serves them well while they look like the first ones, as more embeddings of the same
kind of collection do), and its search cost grows with `sqrt n` where the graph's grows with about
`log n`. For a collection built up from empty by many small `add` calls, take the graph.

Files saved by earlier versions (an HNSW index) load unchanged, with the settings they were built
with: `load` reads either structure.

Its vectors stay uncompressed (no product quantisation), so its scores are the exact float32
cosines of the rows it returns; what is approximate is which rows it finds.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .search import TopK, _as_float, _normalised_queries, _normalised_rows, _positive_int

__all__ = [
    "C_INT_MAX",
    "DEFAULT_EF_CONSTRUCTION",
    "DEFAULT_EF_SEARCH",
    "DEFAULT_M",
    "DEFAULT_NPROBE",
    "MAX_M",
    "ApproximateIndex",
    "Structure",
    "default_nlist",
]

Structure = Literal["ivf", "hnsw"]
"""The index's structure: `"ivf"` (inverted file over k-means cells, flat lists) or `"hnsw"` (graph)."""

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

DEFAULT_NPROBE = 16
"""IVF cells a query reads: the smallest power of two whose recall@10 reached 0.99 on 1,000,000 x 768
clustered CLIP-like rows with 4,000 cells (0.996 at 2,729 queries/s on 2 cores, where 8 gave 0.976 at
4,412; `benchmarks/index_compare.py`)."""

TRAINING_ROWS_PER_LIST = 64
"""Rows sampled per IVF cell to fit the cells (k-means): 256,000 for 4,000 cells, which gave the
figures of `DEFAULT_NPROBE`. faiss asks for 39 to 256 per cell (`ClusteringParameters`)."""

MIN_ROWS_PER_LIST = 39
"""faiss's own floor of training rows per k-means cell (below it, faiss warns that the cells are
poorly fitted); `default_nlist` never asks for more cells than the rows fill at this many."""

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


def default_nlist(n: int) -> int:
    """IVF cells for `n` rows: `4 sqrt n` (faiss's guideline for up to about a million rows, "Guidelines
    to choose an index" in the faiss wiki), at most `n // 39` so that every cell has faiss's minimum of
    39 training rows, and at least 1. 4,000 for 1,000,000 rows; 1 (an exact search) below 78 rows."""
    return max(1, min(int(4 * np.sqrt(n)), n // MIN_ROWS_PER_LIST))


def _faiss() -> Any:
    """faiss, imported on first use so that `import clip_client.index` works without the extra."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError(f"clip_client.index needs faiss, which is not installed: {_INSTALL}") from exc
    return faiss


class ApproximateIndex:
    """Approximate cosine top-`k` over a large collection of embeddings (faiss IVF or HNSW).

    Build one with `ApproximateIndex.build(matrix)` (IVF, cells fitted to `matrix`), or start an
    empty one with `ApproximateIndex(d)` (HNSW) and `add` to it; search it with `search`, and keep
    it with `save`/`load`. Each row has an int64 id: its row number in the order added (across
    `add` calls, as if the matrices were stacked) unless you pass `ids`. `search` returns those ids
    in `TopK.indices`.

    Memory: the index keeps its own float32 copy of every (normalised) row, plus 16 bytes of ids per
    row for IVF (3.1 GB for 1,000,000 x 768; 3,831 MiB measured while building, the training sample
    included) or `8 m + 16` bytes of graph and ids for HNSW (3,197 MiB measured at `m = 32`).
    Building reads the matrix `chunk_rows` rows at a time, so the input is never copied whole; IVF's
    training reads a sample of `64 nlist` rows (0.79 GB at 1,000,000 x 768). Building is the slow
    part: 97 s for 1,000,000 x 768 with IVF on 2 cores, 269 s with HNSW (docs/benchmarks.md); save
    the index and load it, and pass `progress=True` to `build`/`add` for a bar. Where a query may
    take the exact `cosine_topk`'s time (0.01-0.09 s per million rows on two cores), that needs
    neither the build nor the second copy (docs/search.md says when to use which).

    Many identical rows weaken an HNSW graph, whose links then run mostly between copies (9,000 x 64
    clustered rows of which a third were copies of 20 rows: recall@10 fell from 1.00 to 0.90): run
    `find_duplicates` first and index one row of each group.

    Not safe to `add` from one thread while another searches; concurrent `search` calls are.
    Its attributes are fixed (`__slots__`): a misspelt knob (`index.n_probe = 64`) is an
    AttributeError, not a setting that does nothing.

    Args:
        dim: width of the embeddings, `>= 1` (768 for CLIP ViT-L/14).
        structure: `"hnsw"` (default here: an empty index grows by `add` with no training) or
            `"ivf"`, whose cells are fitted to the rows of its first `add` (so give that call the
            bulk of the collection, or use `build`).
        nlist: IVF only: the number of cells, `>= 1`; default `default_nlist(n)` for the `n` rows of
            the first `add` (4,000 for 1,000,000). The first `add` needs at least `nlist` rows.
        nprobe: IVF only: cells a query reads, `>= 1`: the speed/recall knob (higher is slower and
            finds more of the true neighbours; `nprobe >= nlist` reads every cell, an exact search).
            Default 16 (`DEFAULT_NPROBE`), recall@10 0.996 at 1,000,000 rows.
        m: HNSW only: links per node, `2` to `MAX_M` (10,000). More links: better recall at a given
            `ef_search`, more memory (`8 m` bytes per row) and a slower build. Default 32 (faiss's
            default).
        ef_construction: HNSW only: candidates kept while inserting, `>= 1`; higher builds a better
            graph, more slowly. Default 128 (`DEFAULT_EF_CONSTRUCTION`; faiss's own default is 40).
        ef_search: HNSW only: candidates kept while searching, `>= 1`: the speed/recall knob.
            Default 256, which measured recall@10 of 0.991 at 1,000,000 rows (`DEFAULT_EF_SEARCH`).
            A search always keeps at least `k`.

    Raises:
        ImportError: faiss is not installed (the message says how to install it).
        TypeError: a parameter is not an int, or `structure` not a string.
        ValueError: `structure` is neither `"ivf"` nor `"hnsw"`; a parameter of the other structure
            is given (`nprobe` to an HNSW index, `ef_search` to an IVF one...); `dim`, `nlist`,
            `nprobe`, `ef_construction` or `ef_search` is below 1 or above `C_INT_MAX` (2**31 - 1:
            faiss takes a C `int`), or `m` is below 2 or above `MAX_M`. The message names the
            argument and its range.
    """

    __slots__ = ("_index", "_inner", "_owner", "_pending")

    def __init__(
        self,
        dim: int,
        *,
        structure: Structure = "hnsw",
        nlist: int | None = None,
        nprobe: int | None = None,
        m: int | None = None,
        ef_construction: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        faiss = _faiss()
        structure = _structure(structure)
        dim = _c_int(dim, "dim")
        _only_for(
            structure, nlist=nlist, nprobe=nprobe, m=m, ef_construction=ef_construction, ef_search=ef_search
        )
        self._pending: tuple[int, int | None, int] | None = None  # IVF not yet trained: (dim, nlist, nprobe)
        if structure == "ivf":
            nprobe = DEFAULT_NPROBE if nprobe is None else _c_int(nprobe, "nprobe")
            lists = None if nlist is None else _c_int(nlist, "nlist")
            self._pending = (dim, lists, nprobe)
            # Until its first `add` fits the cells: an empty flat index of the right width.
            self._init(faiss.IndexIDMap(faiss.IndexFlatIP(dim)))
            return
        m = DEFAULT_M if m is None else _positive_int(m, "m")
        if m < 2:
            raise ValueError(f"m must be >= 2 (HNSW links per node); got {m}")
        if m > MAX_M:
            raise ValueError(f"m must be <= {MAX_M:,} (HNSW links per node; useful values are 4-64); got {m}")
        ef_c = (
            DEFAULT_EF_CONSTRUCTION if ef_construction is None else _c_int(ef_construction, "ef_construction")
        )
        ef_s = DEFAULT_EF_SEARCH if ef_search is None else _c_int(ef_search, "ef_search")
        hnsw = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_c
        hnsw.hnsw.efSearch = ef_s
        self._init(faiss.IndexIDMap(hnsw))

    def _init(self, index: Any, owner: Any = None) -> None:
        faiss = _faiss()
        # faiss's downcast wrappers do not own the C++ index: keep the object that does alive.
        self._owner = index if owner is None else owner
        self._index = index
        self._inner = faiss.downcast_index(index.index)

    @classmethod
    def build(
        cls,
        matrix: ArrayLike,
        ids: ArrayLike | None = None,
        *,
        structure: Structure = "ivf",
        nlist: int | None = None,
        nprobe: int | None = None,
        m: int | None = None,
        ef_construction: int | None = None,
        ef_search: int | None = None,
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
            structure: `"ivf"` (default: cells fitted to `matrix`) or `"hnsw"` (see the class).
            nlist: IVF cells, `1..n` (default `default_nlist(n)`, 4,000 for 1,000,000 rows).
            nprobe: IVF cells read per query (see the class; default 16).
            m: HNSW links per node (see the class).
            ef_construction: HNSW insertion candidates (see the class).
            ef_search: HNSW search candidates (see the class).
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
                repeats an id or holds -1; `nlist` is above `n`; a parameter is out of range or
                belongs to the other structure.
        """
        mat = _as_float(matrix, "matrix")
        if mat.ndim != 2:
            raise ValueError(f"matrix must be 2-D (n, d); got shape {mat.shape}")
        if mat.shape[0] == 0 or mat.shape[1] == 0:
            raise ValueError(f"matrix is empty (shape {mat.shape}): there is nothing to index")
        index = cls(
            mat.shape[1], structure=structure, nlist=nlist, nprobe=nprobe, m=m,
            ef_construction=ef_construction, ef_search=ef_search,
        )  # fmt: skip
        index.add(mat, ids, chunk_rows=chunk_rows, progress=progress)
        return index

    @property
    def structure(self) -> Structure:
        """`"ivf"` or `"hnsw"`, fixed when the index was made."""
        return "ivf" if self._pending is not None or self._ivf() is not None else "hnsw"

    def _ivf(self) -> Any:
        faiss = _faiss()
        return self._inner if isinstance(self._inner, faiss.IndexIVFFlat) else None

    def _hnsw(self, name: str) -> Any:
        if self.structure != "hnsw":
            raise AttributeError(
                f"{name} is a setting of HNSW indexes; this one is IVF (structure='ivf'), whose "
                "settings are nlist and nprobe"
            )
        return self._inner.hnsw

    def _ivf_setting(self, name: str) -> Any:
        if self.structure != "ivf":
            raise AttributeError(
                f"{name} is a setting of IVF indexes; this one is HNSW (structure='hnsw'), whose "
                "settings are m, ef_construction and ef_search"
            )
        return self._ivf()

    @property
    def dim(self) -> int:
        """Width of the rows and queries (int)."""
        return int(self._index.d)

    @property
    def nlist(self) -> int | None:
        """IVF cells (int), or None before the first `add` fits them. AttributeError on HNSW."""
        ivf = self._ivf_setting("nlist")
        if ivf is None:
            assert self._pending is not None
            return self._pending[1]
        return int(ivf.nlist)

    @property
    def nprobe(self) -> int:
        """IVF cells a query reads by default: the speed/recall knob. Saved with the index.
        AttributeError on an HNSW index."""
        ivf = self._ivf_setting("nprobe")
        if ivf is None:
            assert self._pending is not None
            return self._pending[2]
        return int(ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = self._ivf_setting("nprobe")
        value = _c_int(value, "nprobe")
        if ivf is None:
            assert self._pending is not None
            self._pending = (self._pending[0], self._pending[1], value)
        else:
            ivf.nprobe = value

    @property
    def m(self) -> int:
        """HNSW links per node, fixed when the index was made. AttributeError on an IVF index."""
        return int(self._hnsw("m").nb_neighbors(1))

    @property
    def ef_construction(self) -> int:
        """HNSW candidates kept while inserting rows (int). AttributeError on an IVF index."""
        return int(self._hnsw("ef_construction").efConstruction)

    @ef_construction.setter
    def ef_construction(self, value: int) -> None:
        self._hnsw("ef_construction").efConstruction = _c_int(value, "ef_construction")

    @property
    def ef_search(self) -> int:
        """HNSW candidates kept while searching by default: the speed/recall knob. Saved with the
        index. AttributeError on an IVF index."""
        return int(self._hnsw("ef_search").efSearch)

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        self._hnsw("ef_search").efSearch = _c_int(value, "ef_search")

    @property
    def ids(self) -> NDArray[np.int64]:
        """int64, shape `(len(self),)`: the id of each row, in the order the rows were added (a
        copy)."""
        return np.array(_faiss().vector_to_array(self._index.id_map), dtype=np.int64)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        if self.structure == "ivf":
            knobs = f"nlist={self.nlist}, nprobe={self.nprobe}"
        else:
            knobs = f"m={self.m}, ef_construction={self.ef_construction}, ef_search={self.ef_search}"
        return f"ApproximateIndex(structure={self.structure!r}, dim={self.dim}, rows={len(self)}, {knobs})"

    def add(
        self,
        matrix: ArrayLike,
        ids: ArrayLike | None = None,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        progress: bool = False,
    ) -> None:
        """Append rows. Every row and id is checked before the first is added, so a bad input adds
        nothing. The first `add` to an empty IVF index first fits its cells (k-means) to a sample of
        `min(n, 64 nlist)` of these rows (fixed seed: the same rows give the same index); later
        rows go to the nearest of those cells.

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
                in the index (named by its position in `ids`); `chunk_rows < 1`; the first `add`
                to an IVF index has fewer rows than the `nlist` it was given.
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
        if self._pending is not None and self._pending[1] is not None and self._pending[1] > n:
            raise ValueError(
                f"nlist={self._pending[1]:,} IVF cells need at least as many rows to fit them, but "
                f"the first add has {n:,}: add more rows at once, or ask for fewer cells"
            )
        new_ids = self._checked_ids(ids, n)
        for start in range(0, n, chunk_rows):  # check every row first: all or nothing
            _normalised_rows(mat[start : start + chunk_rows], "matrix", first=start)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, unit="row", unit_scale=True, desc="building the index")
        try:
            if self._pending is not None:
                if bar is not None:
                    bar.set_description("fitting the IVF cells (k-means)")
                self._train(mat)
                if bar is not None:
                    bar.set_description("building the index")
            for start in range(0, n, chunk_rows):
                block = _normalised_rows(mat[start : start + chunk_rows], "matrix", first=start)
                self._index.add_with_ids(block, new_ids[start : start + len(block)])
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()

    def _train(self, mat: NDArray[np.floating[Any]]) -> None:
        """Fit the IVF cells of an empty IVF index to a sample of `mat` (rows already checked)."""
        faiss = _faiss()
        assert self._pending is not None
        dim, lists, nprobe = self._pending
        n = mat.shape[0]
        nlist = default_nlist(n) if lists is None else lists
        size = min(n, TRAINING_ROWS_PER_LIST * nlist)
        picked = np.sort(np.random.default_rng(0).choice(n, size=size, replace=False))
        sample = np.empty((size, dim), dtype=np.float32)  # one copy, normalised block by block
        for start in range(0, size, DEFAULT_CHUNK_ROWS):
            block = picked[start : start + DEFAULT_CHUNK_ROWS]
            sample[start : start + len(block)] = _normalised_rows(mat[block], "matrix")
        index = faiss.index_factory(dim, f"IDMap,IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = nprobe
        ivf.cp.min_points_per_centroid = 1  # the sample is sized to the cells: no warning on small n
        index.train(sample)
        self._init(index)
        self._pending = None

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

    def search(
        self, queries: ArrayLike, k: int = 10, *, nprobe: int | None = None, ef_search: int | None = None
    ) -> TopK:
        """Approximate cosine top-`k` of each query, in the shape `cosine_topk` returns.

        Args:
            queries: float array, shape `(d,)` (one query) or `(q, d)`; any float dtype,
                normalised (L2) in float32.
            k: rows to return per query, `>= 1`; `k > len(self)` returns `len(self)`.
            nprobe: IVF only: cells read for this call only, `1` to `C_INT_MAX` (default:
                `self.nprobe`; values above `nlist` read every cell). Raise it for recall.
            ef_search: HNSW only: candidates kept for this call only, `1` to `C_INT_MAX` (default:
                `self.ef_search`); at least `k` are always kept. Raise it for recall.

        Returns:
            `TopK` with `indices` (int64, the rows' ids) and `scores` (float32, the exact
            cosines of those rows, clamped to `[-1, 1]` as `find_duplicates` does: float32
            rounding can otherwise give a row's own cosine as 1.0000001), both of shape
            `(q, min(k, len(self)))` (`q = 1` for a 1-D query), best first, equal scores by lower
            id among the rows found (with many exact copies, the copies found need not be those of
            the lowest ids, as `cosine_topk`'s would). The rows are those the search found:
            usually, not always, the exact top-`k` (recall@10 >= 0.99 at the defaults on the
            benchmark's data; it depends on the data: raise `nprobe` or `ef_search`). A query
            whose search found fewer than `min(k, len(self))` rows (the cells it read, or the
            graph walk, held fewer) is answered by exact search instead, so no row of the result is
            ever missing.

        Raises:
            TypeError: `queries` is not a float array, or `k`/`nprobe`/`ef_search` not an int.
            ValueError: the index is empty; `queries` is not 1-D or 2-D, has no rows or another
                width; a query holds a NaN, an infinity or is all zeros (named by its index);
                `k < 1`; `nprobe`/`ef_search` outside `1..C_INT_MAX`, or the knob of the other
                structure (`ef_search` to an IVF index, `nprobe` to an HNSW one).
        """
        faiss = _faiss()
        structure = self.structure
        _only_for(structure, making=False, nprobe=nprobe, ef_search=ef_search)
        qn = _normalised_queries(queries, self.dim, "the index's rows")
        k = _positive_int(k, "k")
        n = len(self)
        if n == 0:
            raise ValueError("the index is empty: add rows before searching")
        k = min(k, n)
        if structure == "ivf":
            ivf = self._ivf()
            probes = min(self.nprobe if nprobe is None else _c_int(nprobe, "nprobe"), int(ivf.nlist))
            params: Any = faiss.SearchParametersIVF(nprobe=probes)
        else:
            ef = self.ef_search if ef_search is None else _c_int(ef_search, "ef_search")
            params = faiss.SearchParametersHNSW(efSearch=max(ef, k))
        scores, indices = self._index.search(qn, k, params=params)
        short = np.flatnonzero((indices == -1).any(axis=1))
        if short.size:  # exact for these: every IVF cell, or HNSW's flat storage (rows by position)
            if structure == "ivf":
                every = faiss.SearchParametersIVF(nprobe=int(self._ivf().nlist))
                scores[short], indices[short] = self._index.search(qn[short], k, params=every)
            else:
                storage = faiss.downcast_index(self._inner.storage)
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
        """Write the index (rows, cells or graph, ids, `nprobe` or `ef_search`) to one file in faiss's
        own format. An IVF index with no rows yet has nothing to save (ValueError).

        The file is written beside `path` under a temporary name, flushed to disk, then renamed
        over `path`, so a reader sees either the old file or the whole new one, never a part.
        Its size is about `len(self) x (4 d + 16)` bytes for IVF (plus `nlist x 4 d` for the cells),
        `len(self) x (4 d + 8 m + 16)` for HNSW.

        Args:
            path: the file to write; its folder must exist. An existing file is replaced.

        Raises:
            FileNotFoundError: the folder of `path` does not exist.
            IsADirectoryError: `path` is a folder.
            OSError: the file cannot be written (permissions, disk full).
            ValueError: an IVF index whose cells are not fitted yet (no rows added).
        """
        faiss = _faiss()
        if self._pending is not None:
            raise ValueError("this IVF index has no rows yet, so no cells to save: add rows first")
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
            The index, with its structure, rows, ids and `nprobe` or `ef_search`; files saved by
            earlier versions (HNSW) load with the settings they were built with.

        Raises:
            ImportError: faiss is not installed.
            FileNotFoundError: `path` does not exist.
            ValueError: `path` is not a faiss index, or is one that `save` did not write (another
                structure or metric): rebuild it with `ApproximateIndex.build`.
        """
        faiss = _faiss()
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike (the index file); got {type(path).__name__}")
        source = Path(path)
        if source.is_dir():
            raise IsADirectoryError(
                f"cannot load an index from {source}: it is a folder; name the index file"
            )
        if not source.is_file():
            raise FileNotFoundError(f"no index file at {source}")
        try:
            raw = faiss.read_index(str(source))
        except RuntimeError as exc:
            said = str(exc).splitlines()[-1]
            said = said if len(said) <= 200 else said[:200].rsplit(" ", 1)[0] + " ..."
            raise ValueError(
                f"{source} is not a faiss index file ({said}): write one with ApproximateIndex.save"
            ) from None
        index = faiss.downcast_index(raw)
        # Exact types: subclasses (IndexIDMap2, IndexIVFFlatDedup) are files `save` never writes.
        inner = faiss.downcast_index(index.index) if type(index) is faiss.IndexIDMap else None
        ours = type(inner) in (faiss.IndexHNSWFlat, faiss.IndexIVFFlat)
        if ours and index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(
                f"{source} holds the right structure (an IndexIDMap over an {type(inner).__name__}) but "
                f"with the {_metric_name(faiss, index.metric_type)} metric, not the inner product "
                "(METRIC_INNER_PRODUCT) that ApproximateIndex searches by cosine with: its scores "
                "would not be cosines; rebuild it with ApproximateIndex.build"
            )
        if not ours:
            held = type(index).__name__ + ("" if inner is None else f" over an {type(inner).__name__}")
            raise ValueError(
                f"{source} holds a faiss {held}, not the IndexIDMap over an inner-product "
                "IndexIVFFlat or IndexHNSWFlat that ApproximateIndex.save writes: rebuild it with "
                "ApproximateIndex.build"
            )
        norms = np.linalg.norm(_some_rows(faiss, inner), axis=1)
        if norms.size and not np.allclose(norms, 1.0, atol=1e-3):
            raise ValueError(
                f"{source} holds rows that are not L2-normalised (norms {norms.min():.3g} to "
                f"{norms.max():.3g}), so its inner products are not cosines: it was not written by "
                "ApproximateIndex.save; rebuild it with ApproximateIndex.build"
            )
        out = cls.__new__(cls)
        out._pending = None
        out._init(index, owner=raw)
        return out


def _some_rows(faiss: Any, inner: Any, most: int = 64) -> NDArray[np.float32]:
    """Up to `most` of the stored (float32) rows of an `IndexHNSWFlat` or `IndexIVFFlat`, read
    without changing the index: the first of HNSW's flat storage, or of the first non-empty IVF
    cells' lists."""
    d = int(inner.d)
    if isinstance(inner, faiss.IndexHNSWFlat):
        storage = faiss.downcast_index(inner.storage)
        return np.asarray(storage.reconstruct_n(0, min(most, int(storage.ntotal))), dtype=np.float32)
    lists = inner.invlists
    found: list[NDArray[np.float32]] = []
    have = 0
    for cell in range(int(inner.nlist)):
        size = min(int(lists.list_size(cell)), most - have)
        if size > 0:
            codes = faiss.rev_swig_ptr(lists.get_codes(cell), size * int(inner.code_size))
            found.append(np.frombuffer(codes, dtype=np.float32).reshape(size, d).copy())
            have += size
        if have >= most:
            break
    return np.concatenate(found) if found else np.empty((0, d), dtype=np.float32)


def _structure(value: object) -> Structure:
    """`structure` checked: "ivf" or "hnsw"."""
    if not isinstance(value, str):
        raise TypeError(f'structure must be "ivf" or "hnsw"; got {type(value).__name__}')
    if value not in ("ivf", "hnsw"):
        raise ValueError(f'structure must be "ivf" or "hnsw"; got {value!r}')
    return "ivf" if value == "ivf" else "hnsw"


_SETTINGS = {"nlist": "ivf", "nprobe": "ivf", "m": "hnsw", "ef_construction": "hnsw", "ef_search": "hnsw"}


def _only_for(structure: Structure, *, making: bool = True, **given: object) -> None:
    """A ValueError when a setting of the other structure is given (not None); `making`: while
    the index is being made (the advice may then be to make the other structure)."""
    for name, value in given.items():
        if value is not None and _SETTINGS[name] != structure:
            own = ", ".join(k for k, v in _SETTINGS.items() if v == structure)
            other = f", or pass structure={_SETTINGS[name]!r}" if making else ""
            raise ValueError(
                f"{name} is a setting of {_SETTINGS[name].upper()} indexes, but this index is "
                f"{structure.upper()} (structure={structure!r}), whose settings are {own}: "
                f"drop {name}{other}"
            )


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
