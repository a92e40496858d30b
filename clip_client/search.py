"""Exact nearest-neighbour search and near-duplicate grouping over CLIP embeddings, in numpy alone.

The rule is the one CLIP's paper uses to compare embeddings: cosine similarity, the dot product of
L2-normalised vectors (Radford et al., 2021, "Learning Transferable Visual Models From Natural
Language Supervision", section 2.3). Neither the endpoint nor the local model normalises its output,
so both functions here normalise on the fly, a block of rows at a time, and never copy or score the
whole matrix at once: a 1,000,000 x 768 float32 collection (about 3 GB) is searched with extra
memory of a few blocks, not another 3 GB, and never an `n x q` score matrix.

Scores are computed in float32 (float16 and float64 inputs are converted a block at a time), so two
candidates whose cosines differ by less than float32 rounding (about 1e-7) may rank either way;
exact ties (equal float32 scores) always go to the lower row index.

Rows of the matrix that cannot be normalised (a NaN or an infinity, or all zeros) are not refused:
they score `-inf` against every query, so they rank after every valid row, and they never join a
duplicate group. A query that cannot be normalised is refused with `ValueError`.
"""

from __future__ import annotations

import operator
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["DuplicateGroup", "TopK", "cosine_topk", "find_duplicates"]

DEFAULT_TOPK_CHUNK_ROWS = 8192
DEFAULT_DUPLICATE_CHUNK_ROWS = 2048

DuplicateMethod = Literal["auto", "exact", "approximate"]
"""How `find_duplicates` finds the pairs: `"auto"` (exact up to `EXACT_DUPLICATE_MAX_ROWS` rows,
approximate above), `"exact"` (every pair) or `"approximate"` (k-means cells, needs faiss)."""

EXACT_DUPLICATE_MAX_ROWS = 50_000
"""The most rows for which `find_duplicates(method="auto")` compares every pair (14.5 s at 50,000 x
768 on the 2-core development machine, issue 20); above it, auto takes the approximate method."""

DUPLICATE_ROWS_PER_CELL = 1000
"""Rows per k-means cell in the approximate `find_duplicates` (about `n / 1000` cells)."""

DUPLICATE_PROBES = 4
"""Cells each row is compared with in the approximate `find_duplicates`: its own and the 3 next
nearest."""

_INDEX_INSTALL = 'pip install "clip-serving-client[index]"'


@dataclass(frozen=True)
class TopK:
    """The `k` best rows of the matrix for each query, best first.

    Attributes:
        indices: int64, shape `(q, k)`: row numbers into the matrix. `q` is 1 for a 1-D query;
            `k` is `min(k, n)`. Equal scores are ordered by lower row number.
        scores: float32, shape `(q, k)`: the cosine similarity (unitless, in `[-1, 1]` up to
            float32 rounding) of each query to each returned row; `-inf` for a row that cannot be
            normalised (NaN, infinity or all zeros), which is only returned when fewer than `k`
            rows are valid.
    """

    indices: NDArray[np.int64]
    scores: NDArray[np.float32]


@dataclass(frozen=True)
class DuplicateGroup:
    """One group of near-duplicates: a connected component of the `cosine >= threshold` graph.

    Attributes:
        indices: int64, shape `(m,)`, `m >= 2`, ascending: the member rows. `indices[0]` is
            the group's first (lowest) row.
        similarities: float32, shape `(m,)`: each member's cosine similarity to the first
            member (so `similarities[0]` is the first member with itself, 1.0 up to float32
            rounding). Members joined through a chain (a ~ b ~ c) can be below the threshold here,
            since the threshold holds for the links, not for every pair.
    """

    indices: NDArray[np.int64]
    similarities: NDArray[np.float32]


def cosine_topk(
    queries: ArrayLike,
    matrix: ArrayLike,
    k: int = 10,
    *,
    chunk_rows: int = DEFAULT_TOPK_CHUNK_ROWS,
) -> TopK:
    """Exact cosine top-`k` of each query against every row of `matrix`.

    Args:
        queries: float array, shape `(d,)` (one query) or `(q, d)`. Any float dtype; it is
            normalised (L2) in float32.
        matrix: float array, shape `(n, d)`: the collection, e.g. CLIP ViT-L/14 embeddings
            (`d = 768`). Not copied: it is read `chunk_rows` rows at a time, so a
            `np.memmap` or a slice works. Rows need not be normalised.
        k: how many rows to return per query, `>= 1`; `k > n` returns `n`.
        chunk_rows: rows scored per block. Extra memory is about `q x chunk_rows` float32
            scores, plus `chunk_rows x d` float32 when `matrix` is not float32, plus the
            running `q x 2k` top-k; never `n x q`. For very many queries, pass them in slices.

    Returns:
        `TopK` with `indices` (int64) and `scores` (float32, in `[-1, 1]`: float32 rounding
        is clamped, as in `find_duplicates`; `-inf` for a row with no direction), both of shape
        `(q, min(k, n))` (`q = 1` for a 1-D query), best first, equal scores by lower row number.

    Raises:
        TypeError: `queries` or `matrix` is not a float array (ints, bools, objects), or
            `k`/`chunk_rows` is not an int.
        ValueError: `matrix` is not 2-D or is empty (no rows or no columns); `queries` is
            not 1-D or 2-D, has no rows, or its width differs from the matrix's; a query has a NaN,
            an infinity or is all zeros (the message names its index); `k < 1` or
            `chunk_rows < 1`.
    """
    mat = _as_matrix(matrix)
    n, d = mat.shape
    qn = _normalised_queries(queries, d, "matrix rows")
    k = _positive_int(k, "k")
    chunk_rows = _positive_int(chunk_rows, "chunk_rows")
    q = qn.shape[0]
    k = min(k, n)

    best_scores = np.full((q, 0), -np.inf, dtype=np.float32)
    best_indices = np.zeros((q, 0), dtype=np.int64)
    for start in range(0, n, chunk_rows):
        block = _float32_block(mat, start, start + chunk_rows)
        scores = _block_scores(qn, block)
        # float32 rounding (rows of tiny or huge values most) can put a cosine just outside [-1, 1]:
        # clamped before ranking, so that ties stay by lower row; -inf (no direction) stays last.
        np.minimum(scores, 1.0, out=scores)
        np.putmask(scores, (scores < -1.0) & (scores > -np.inf), -1.0)
        top = _chunk_topk(scores, k)
        cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        cand_indices = np.concatenate([best_indices, top.astype(np.int64) + start], axis=1)
        # Sort by score descending, then by row ascending: exact and deterministic tie-breaking.
        order = np.lexsort((cand_indices, -cand_scores), axis=-1)[:, :k]
        best_scores = np.take_along_axis(cand_scores, order, axis=1)
        best_indices = np.take_along_axis(cand_indices, order, axis=1)
    return TopK(indices=best_indices, scores=best_scores)


def find_duplicates(
    matrix: ArrayLike,
    threshold: float = 0.95,
    *,
    method: DuplicateMethod = "auto",
    chunk_rows: int = DEFAULT_DUPLICATE_CHUNK_ROWS,
    progress: bool = False,
) -> list[DuplicateGroup]:
    """Near-duplicate groups: connected components of the graph whose edges join rows with
    cosine similarity `>= threshold`.

    Two ways to find the edges, both followed by the same union-find, so the groups do not depend
    on the order of the rows or on `chunk_rows`:

    - `"exact"`: every pair is compared (`n^2 / 2` dot products, in `chunk_rows x chunk_rows`
      blocks of the upper triangle). Quadratic: 2.6 s at 20,000 x 768 rows, 56 s at 100,000 on the
      2-core development machine (issue 20), about 1.5 hours at 1,000,000.
    - `"approximate"`: a cell-join (an inverted-file range search). The rows are clustered by
      k-means (faiss) into about `n / 1000` cells; each row is then compared exactly, in BLAS
      blocks, with every row of the `DUPLICATE_PROBES` (4) cells nearest to it, and every pair at
      or above the threshold becomes an edge. It is a range search, not a top-`k`: a group of any
      size is found whole, however many members a row has above the threshold. A pair is missed
      only when neither row's 4 nearest cells hold the other, which for near-duplicates (cosine
      `>= 0.95`) is rare: `benchmarks/dedupe_scale.py` measured a pair recall of 1.000 against
      exact on planted near-duplicates (docs/search.md has the figures), and every planted pair at
      thresholds 0.9, 0.85 and 0.8 too on 60,000 x 768 rows. The looser the threshold, the farther
      apart two matching rows may be, and the likelier they sit in cells that are not compared:
      well below 0.8, check against `"exact"` on a sample, or use it. Needs
      faiss (the `index` extra). Memory beyond the input: about 100 bytes per row (norms, cell
      assignments and their orderings, union-find parents), the k-means sample (64 rows per cell,
      so 6.4% of the rows as float32), and a few `chunk_rows x d` blocks; never a whole copy.
    - `"auto"` (default): exact up to `EXACT_DUPLICATE_MAX_ROWS` rows (50,000), approximate above.
      Without faiss, auto falls back to exact and warns (`UserWarning`) with the install command.

    Args:
        matrix: float array, shape `(n, d)`; any float dtype, read a block at a time, not copied
            (a `np.memmap` works).
        threshold: cosine similarity (unitless), finite, in `[-1, 1]`. 0.95 suits CLIP ViT-L/14
            image embeddings of re-encoded or resized copies; lower it for looser matches.
        method: `"auto"`, `"exact"` or `"approximate"` (above).
        chunk_rows: rows per block. Extra memory is about two `chunk_rows x d` float32 blocks,
            one `chunk_rows x chunk_rows` float32 score block, the matching pairs of one block
            (at most `16 x chunk_rows^2` bytes when everything matches), and `8 n` bytes of
            union-find parents.
        progress: show a tqdm bar on stderr (rows compared; default off, as in the clients).

    Returns:
        The groups with at least two members, ordered by their first (lowest) row; rows that match
        nothing are left out. Rows with a NaN, an infinity or all zeros never match. Cosines are
        computed in float32, so a pair within float32 rounding of `threshold` (`4 eps sqrt(d)`,
        about 1.3e-5 at `d = 768`) counts as meeting it: identical rows always group, even at
        `threshold=1.0`. The similarities reported are clamped to `[-1, 1]`.

    Raises:
        TypeError: `matrix` is not a float array, or `threshold`/`chunk_rows`/`method` has the
            wrong type.
        ValueError: `matrix` is not 2-D or is empty; `threshold` is not finite or outside
            `[-1, 1]`; `chunk_rows < 1`; `method` is not one of the three.
        ImportError: `method="approximate"` without faiss installed (the message says how to
            install it).
    """
    mat = _as_matrix(matrix)
    n = mat.shape[0]
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating, np.integer)):
        raise TypeError(f"threshold must be a float in [-1, 1]; got {type(threshold).__name__}")
    threshold = float(threshold)
    if not np.isfinite(threshold) or not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1]; got {threshold}")
    chunk_rows = _positive_int(chunk_rows, "chunk_rows")
    approximate = _use_approximate(method, n)
    t32 = np.float32(threshold) - _rounding_slack(mat.shape[1])

    parent = np.arange(n, dtype=np.int64)
    if approximate:
        _approximate_edges(mat, t32, parent, chunk_rows, progress)
    else:
        _exact_edges(mat, t32, parent, chunk_rows, progress)
    roots = _roots(parent, np.arange(n, dtype=np.int64))

    # Stable sort by root: each component's members are contiguous and ascending, and components
    # come in order of their root, which is their lowest member.
    order = np.argsort(roots, kind="stable")
    sorted_roots = roots[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_roots[1:] != sorted_roots[:-1]]))
    sizes = np.diff(np.concatenate([starts, [n]]))
    groups: list[DuplicateGroup] = []
    for start, size in zip(starts[sizes >= 2].tolist(), sizes[sizes >= 2].tolist(), strict=True):
        members = order[start : start + size].astype(np.int64)
        groups.append(DuplicateGroup(indices=members, similarities=_similarity_to_first(mat, members)))
    return groups


def _use_approximate(method: object, n: int) -> bool:
    """Whether `find_duplicates` takes the approximate path: `method` checked, and `"auto"`
    resolved by size and by whether faiss imports (a warning with the install hint where not)."""
    if not isinstance(method, str):
        raise TypeError(f'method must be "auto", "exact" or "approximate"; got {type(method).__name__}')
    if method not in ("auto", "exact", "approximate"):
        raise ValueError(f'method must be "auto", "exact" or "approximate"; got {method!r}')
    if method == "exact" or (method == "auto" and n <= EXACT_DUPLICATE_MAX_ROWS):
        return False
    try:
        import faiss  # noqa: F401  (the index extra)
    except ImportError:
        if method == "approximate":
            raise ImportError(
                f'find_duplicates(method="approximate") needs faiss, which is not installed: {_INDEX_INSTALL}'
            ) from None
        warnings.warn(
            f"find_duplicates: {n:,} rows, but faiss is not installed, so the exact method runs, "
            f"whose time grows with n^2 (about 1.5 hours at 1,000,000 x 768 on 2 cores). "
            f'For the approximate method: {_INDEX_INSTALL}; to silence this, pass method="exact"',
            UserWarning,
            stacklevel=3,
        )
        return False
    return True


def _progress_bar(progress: bool, total: int, desc: str) -> Any:
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", unit_scale=True, desc=desc)


def _exact_edges(
    mat: NDArray[Any], t32: np.float32, parent: NDArray[np.int64], chunk_rows: int, progress: bool
) -> None:
    """Union every pair of rows with cosine `>= t32`, comparing all pairs in blocks."""
    n = mat.shape[0]
    blocks = -(-n // chunk_rows)
    bar = _progress_bar(progress, blocks * (blocks + 1) // 2, "dedupe (exact), block pairs")
    try:
        for i0 in range(0, n, chunk_rows):
            left = _normalised_block(mat, i0, i0 + chunk_rows)
            for j0 in range(i0, n, chunk_rows):
                right = left if j0 == i0 else _normalised_block(mat, j0, j0 + chunk_rows)
                sims = left @ right.T
                a, b = np.nonzero(sims >= t32)
                if j0 == i0:  # upper triangle only: each pair once, no row with itself
                    upper = a < b
                    a, b = a[upper], b[upper]
                if a.size:
                    _union(parent, a.astype(np.int64) + i0, b.astype(np.int64) + j0)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _approximate_edges(
    mat: NDArray[Any], t32: np.float32, parent: NDArray[np.int64], chunk_rows: int, progress: bool
) -> None:
    """Union the pairs with cosine `>= t32` that share a cell: k-means cells (faiss), each row
    compared exactly with the rows of its `DUPLICATE_PROBES` nearest cells."""
    import faiss  # the index extra; checked by _use_approximate

    n, d = mat.shape
    norms = np.empty(n, dtype=np.float32)
    for s in range(0, n, chunk_rows):
        norms[s : s + chunk_rows] = _row_norms(_float32_block(mat, s, s + chunk_rows))
    valid = np.flatnonzero(np.isfinite(norms) & (norms > 0))
    if valid.size < 2:
        return
    cells = max(1, min(valid.size // DUPLICATE_ROWS_PER_CELL, 1 << 16))
    probes = min(DUPLICATE_PROBES, cells)
    bar = _progress_bar(progress, valid.size * (1 + probes), "dedupe (approximate), rows")
    try:
        # Cells: spherical k-means on a sample of at most 64 rows per cell.
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(valid, size=min(valid.size, 64 * cells), replace=False))
        train = _gathered(mat, norms, sample)
        kmeans = faiss.Kmeans(
            d, cells, niter=10, seed=1, spherical=True, max_points_per_centroid=64, min_points_per_centroid=1
        )
        kmeans.train(train)
        del train
        centroids = faiss.IndexFlatIP(d)
        centroids.add(np.ascontiguousarray(kmeans.centroids, dtype=np.float32))
        # Each valid row's `probes` nearest cells; the first is the cell that holds it.
        near = np.empty((valid.size, probes), dtype=np.int64)
        for s in range(0, valid.size, chunk_rows):
            _, near[s : s + chunk_rows] = centroids.search(
                _gathered(mat, norms, valid[s : s + chunk_rows]), probes
            )
            if bar is not None:
                bar.update(min(chunk_rows, valid.size - s))
        home_order = np.argsort(near[:, 0], kind="stable")
        home_bounds = np.searchsorted(near[home_order, 0], np.arange(cells + 1))
        probe_order = np.argsort(near.ravel(), kind="stable")
        probe_bounds = np.searchsorted(near.ravel()[probe_order], np.arange(cells + 1))
        del near
        for cell in range(cells):
            held = valid[home_order[home_bounds[cell] : home_bounds[cell + 1]]]
            asking = valid[probe_order[probe_bounds[cell] : probe_bounds[cell + 1]] // probes]
            if held.size == 0 or asking.size == 0:
                continue
            for h0 in range(0, held.size, chunk_rows):
                rows_h = held[h0 : h0 + chunk_rows]
                right = _gathered(mat, norms, rows_h)
                for q0 in range(0, asking.size, chunk_rows):
                    rows_q = asking[q0 : q0 + chunk_rows]
                    a, b = np.nonzero(_gathered(mat, norms, rows_q) @ right.T >= t32)
                    a, b = rows_q[a], rows_h[b]
                    keep = a != b
                    if keep.any():
                        _union(parent, a[keep], b[keep])
            if bar is not None:
                bar.update(asking.size)
    finally:
        if bar is not None:
            bar.close()


def _gathered(mat: NDArray[Any], norms: NDArray[np.float32], rows: NDArray[np.int64]) -> NDArray[np.float32]:
    """Rows `rows` (valid ones) of `mat`, L2-normalised, as a C-contiguous float32 copy."""
    out = np.array(mat[rows], dtype=np.float32, order="C")
    out /= norms[rows, np.newaxis]
    return out


def _as_float(value: ArrayLike, name: str) -> NDArray[Any]:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must be a float array (float16/32/64); got dtype {arr.dtype}")
    return arr


def _as_matrix(matrix: ArrayLike) -> NDArray[Any]:
    mat = _as_float(matrix, "matrix")
    if mat.ndim != 2:
        raise ValueError(f"matrix must be 2-D (n, d); got shape {mat.shape}")
    if mat.shape[0] == 0 or mat.shape[1] == 0:
        raise ValueError(f"matrix is empty (shape {mat.shape}): there is nothing to search")
    return mat


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= 1; got a bool")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int >= 1; got {type(value).__name__}") from None
    if number < 1:
        raise ValueError(f"{name} must be >= 1; got {number}")
    return int(number)


def _row_norms(block: NDArray[np.float32]) -> NDArray[np.float32]:
    """L2 norm of each row, summed in float64 so large float32 values cannot overflow; NaN or inf
    for a row holding either."""
    sq: NDArray[np.float64] = np.einsum("ij,ij->i", block, block, dtype=np.float64)
    return np.sqrt(sq).astype(np.float32)


def _normalised_queries(queries: ArrayLike, d: int, against: str) -> NDArray[np.float32]:
    """Queries as a C-contiguous float32 `(q, d)` copy, each row L2-normalised; `ValueError` for
    a shape that does not fit rows of width `d` (`against` names them) or a row that cannot be
    normalised."""
    q_arr = _as_float(queries, "queries")
    if q_arr.ndim == 1:
        q_arr = q_arr[np.newaxis, :]
    if q_arr.ndim != 2:
        raise ValueError(f"queries must be 1-D (d,) or 2-D (q, d); got shape {q_arr.shape}")
    if q_arr.shape[0] == 0:
        raise ValueError("queries is empty: pass at least one query")
    if q_arr.shape[1] != d:
        raise ValueError(
            f"queries has width {q_arr.shape[1]} but {against} have width {d}: embed both with the same model"
        )
    return _normalised_rows(q_arr, "queries")


def _normalised_rows(rows: NDArray[Any], name: str, first: int = 0) -> NDArray[np.float32]:
    """`rows` as a C-contiguous float32 copy, each row L2-normalised. A row with a NaN, an
    infinity or all zeros has no direction: `ValueError` naming it as `name[first + i]`."""
    with np.errstate(over="ignore", under="ignore"):  # a row out of float32's range is named below
        out = np.array(rows, dtype=np.float32, order="C", copy=True)
    norms = _row_norms(out)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "is all zeros" if norms[i] == 0 else "holds a NaN or an infinity"
        given = np.asarray(rows[i])
        if np.isfinite(given).all() and (given != 0).any():  # fine as given, not as float32
            what = (
                "is all zeros in float32 (its values underflow: below about 1e-38)"
                if norms[i] == 0
                else "overflows float32 (values beyond about 3.4e38, or a norm that is)"
            )
            raise ValueError(
                f"{name}[{first + i}] {what}: the search computes in float32; rescale the row "
                "(a cosine does not depend on its length)"
            )
        raise ValueError(
            f"{name}[{first + i}] {what}: its cosine similarity is undefined "
            f"({int(bad.sum())} such rows in {name}[{first}:{first + len(out)}]); "
            "drop or re-embed it"
        )
    out /= norms[:, np.newaxis]
    return out


def _float32_block(mat: NDArray[Any], start: int, stop: int) -> NDArray[np.float32]:
    """Rows `start:stop` as float32: a view when the matrix already is, a block-sized copy else."""
    return np.asarray(mat[start:stop], dtype=np.float32)


def _block_scores(qn: NDArray[np.float32], block: NDArray[np.float32]) -> NDArray[np.float32]:
    """Cosine of each (normalised) query to each row of `block`, `-inf` for rows that cannot be
    normalised. Dividing the raw dot products by the row norms avoids copying the block."""
    norms = _row_norms(block)
    bad = ~np.isfinite(norms) | (norms == 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        scores: NDArray[np.float32] = qn @ block.T
        scores /= norms
    if bad.any():
        scores[:, bad] = -np.inf
    return scores


def _chunk_topk(scores: NDArray[np.float32], k: int) -> NDArray[np.intp]:
    """Column numbers of the `k` best scores of each row (unordered), ties at the boundary going to
    the lowest column (argpartition alone would pick among them arbitrarily)."""
    c = scores.shape[1]
    if c <= k:
        every: NDArray[np.intp] = np.broadcast_to(np.arange(c), scores.shape).copy()
        return every
    # Partition around the (c - k)-th smallest rather than negating: no copy of the score block.
    part = np.argpartition(scores, c - k, axis=1)[:, c - k :]
    kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
    # Rows where more than k columns reach the k-th score: pick the ties by lowest column.
    ambiguous = np.flatnonzero((scores >= kth).sum(axis=1) > k)
    for r in ambiguous:
        row = scores[r]
        above = np.flatnonzero(row > kth[r, 0])
        ties = np.flatnonzero(row == kth[r, 0])[: k - above.size]
        part[r] = np.concatenate([above, ties])
    return part


def _normalised_block(mat: NDArray[Any], start: int, stop: int) -> NDArray[np.float32]:
    """Rows `start:stop` L2-normalised in a float32 copy; rows that cannot be normalised become
    NaN, so they compare false with every threshold."""
    block = np.array(mat[start:stop], dtype=np.float32)
    norms = _row_norms(block)
    bad = ~np.isfinite(norms) | (norms == 0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        block /= norms[:, np.newaxis]
    block[bad] = np.nan
    return block


def _roots(parent: NDArray[np.int64], nodes: NDArray[np.int64]) -> NDArray[np.int64]:
    """Root of each node, compressing the paths it walks (pointer jumping)."""
    while True:
        up = parent[nodes]
        if np.array_equal(up, nodes):
            return nodes
        parent[nodes] = parent[up]
        nodes = up


def _union(parent: NDArray[np.int64], a: NDArray[np.int64], b: NDArray[np.int64]) -> None:
    """Merge the sets of each pair (a[i], b[i]), vectorised: every root points to a lower root, so
    each set's root is its lowest member and the forest stays acyclic."""
    while a.size:
        ra = _roots(parent, a)
        rb = _roots(parent, b)
        differ = ra != rb
        if not differ.any():
            return
        ra, rb = ra[differ], rb[differ]
        hi = np.maximum(ra, rb)
        lo = np.minimum(ra, rb)
        np.minimum.at(parent, hi, lo)
        a, b = ra, rb


def _rounding_slack(d: int) -> np.float32:
    """How far below its true value a float32 cosine of two `d`-dimensional rows may come out:
    `4 eps sqrt(d)` (the rounding of the normalisation and of the dot product's sum, which grows
    as `sqrt(d)` for values of mixed sign). An exact copy's cosine of 1 computes as 0.99999994."""
    slack: np.float32 = np.float32(4 * float(np.finfo(np.float32).eps) * float(np.sqrt(d)))
    return slack


def _similarity_to_first(mat: NDArray[Any], members: NDArray[np.int64]) -> NDArray[np.float32]:
    first = _normalised_block(mat, int(members[0]), int(members[0]) + 1)[0]
    out = np.empty(members.size, dtype=np.float32)
    step = DEFAULT_DUPLICATE_CHUNK_ROWS
    for s in range(0, members.size, step):
        idx = members[s : s + step]
        rows = np.asarray(mat[idx], dtype=np.float32)
        out[s : s + step] = (rows @ first) / _row_norms(rows)
    np.clip(out, -1.0, 1.0, out=out)
    return out
