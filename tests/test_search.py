"""clip_client.search against brute-force numpy references: exact top-k and near-duplicate groups."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import clip_client
from clip_client.search import DuplicateGroup, TopK, cosine_topk, find_duplicates


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_scores(queries: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The whole (q, n) cosine matrix in float64: what the chunked search must agree with."""
    return np.atleast_2d(_unit(queries)) @ _unit(matrix).T


def assert_topk_matches(result: TopK, queries: np.ndarray, matrix: np.ndarray, k: int) -> None:
    ref = reference_scores(queries, matrix)
    q, n = ref.shape
    kk = min(k, n)
    assert result.indices.dtype == np.int64
    assert result.scores.dtype == np.float32
    assert result.indices.shape == result.scores.shape == (q, kk)
    for r in range(q):
        order = np.lexsort((np.arange(n), -ref[r]))
        want = ref[r, order]
        # The scores are the true cosines of the rows returned, best first ...
        np.testing.assert_allclose(result.scores[r], ref[r, result.indices[r]], atol=2e-6)
        assert np.all(np.diff(result.scores[r]) <= 0)
        # ... and as good as the reference's k best.
        np.testing.assert_allclose(result.scores[r], want[:kk], atol=2e-6)
        assert len(set(result.indices[r].tolist())) == kk
        # Where the k-th and (k+1)-th are clearly apart, the sets are the same rows.
        if kk == n or want[kk - 1] - want[kk] > 1e-5:
            assert set(result.indices[r].tolist()) == set(order[:kk].tolist())


@pytest.mark.parametrize(
    ("n", "d", "q", "k", "chunk_rows"),
    [
        (1, 3, 1, 1, 1),
        (50, 8, 3, 5, 7),
        (1000, 32, 10, 10, 64),
        (1000, 32, 10, 10, 1000),
        (1000, 32, 10, 10, 5000),
        (257, 16, 4, 300, 100),  # k > n: all n, sorted
        (600, 64, 2, 1, 33),
        (333, 768, 5, 20, 128),
    ],
)
def test_topk_matches_brute_force(n: int, d: int, q: int, k: int, chunk_rows: int) -> None:
    rng = np.random.default_rng(n * 1000 + d + chunk_rows)
    matrix = rng.standard_normal((n, d)).astype(np.float32) * rng.uniform(0.1, 10, (n, 1)).astype(np.float32)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    result = cosine_topk(queries, matrix, k, chunk_rows=chunk_rows)
    assert_topk_matches(result, queries, matrix, k)


def test_one_dimensional_query_gives_one_row() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((100, 12)).astype(np.float32)
    query = matrix[42] * 3.0
    result = cosine_topk(query, matrix, 3, chunk_rows=16)
    assert result.indices.shape == (1, 3)
    assert result.indices[0, 0] == 42
    assert result.scores[0, 0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes_and_views(dtype: type) -> None:
    rng = np.random.default_rng(2)
    base = rng.standard_normal((400, 40)).astype(dtype)
    matrix = base[::2, 5:37]  # a non-contiguous view: never copied as a whole
    queries = rng.standard_normal((3, 32)).astype(dtype)
    result = cosine_topk(queries, matrix, 7, chunk_rows=50)
    ref_m = matrix.astype(np.float32)
    ref_q = queries.astype(np.float32)
    assert_topk_matches(result, ref_q, ref_m, 7)


def _tie_matrix(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows drawn from a few integer templates, so many rows are identical (exact ties), and queries
    that are basis vectors, so each score is one template's exact cosine."""
    rng = np.random.default_rng(seed)
    templates = np.array(
        [
            [3, 1, 0, 2, 1, 0],
            [1, 4, 1, 0, 2, 2],
            [0, 1, 5, 1, 0, 3],
            [2, 0, 1, 3, 1, 1],
            [1, 2, 2, 1, 4, 0],
            [2, 2, 0, 0, 1, 5],
        ],
        dtype=np.float32,
    )
    which = rng.integers(0, len(templates), n)
    return templates[which], which


def test_exact_ties_go_to_the_lower_index_for_every_chunk_size() -> None:
    matrix, which = _tie_matrix(300, seed=3)
    queries = np.eye(6, dtype=np.float32)
    template_scores = reference_scores(queries, matrix)  # (6, 300) in float64
    results = [cosine_topk(queries, matrix, 40, chunk_rows=c) for c in (1, 7, 64, 299, 300, 1000)]
    for r in range(6):
        # Distinct templates are far apart for every query, so the expected order is unambiguous.
        distinct = np.unique(np.round(template_scores[r], 9))
        assert np.min(np.diff(distinct)) > 1e-4
        want = np.lexsort((np.arange(300), -np.round(template_scores[r], 9)))[:40]
        for result in results:
            np.testing.assert_array_equal(result.indices[r], want)
    for result in results[1:]:
        np.testing.assert_array_equal(result.scores, results[0].scores)
    assert which.size == 300


def test_all_rows_identical_returns_the_first_k() -> None:
    matrix = np.tile(np.array([[0.5, -1.0, 2.0]], dtype=np.float32), (100, 1))
    result = cosine_topk(np.array([1.0, 1.0, 1.0]), matrix, 9, chunk_rows=8)
    np.testing.assert_array_equal(result.indices[0], np.arange(9))
    assert np.all(result.scores == result.scores[0, 0])


def test_rows_that_cannot_be_normalised_rank_last_with_minus_inf() -> None:
    rng = np.random.default_rng(4)
    matrix = rng.standard_normal((20, 5)).astype(np.float32)
    matrix[3, 1] = np.nan
    matrix[7] = 0.0
    matrix[11, 4] = np.inf
    matrix[15, 0] = -np.inf
    queries = rng.standard_normal((2, 5)).astype(np.float32)
    result = cosine_topk(queries, matrix, 20, chunk_rows=6)
    bad = [3, 7, 11, 15]
    good = [i for i in range(20) if i not in bad]
    for r in range(2):
        assert set(result.indices[r, :16].tolist()) == set(good)
        assert np.all(np.isfinite(result.scores[r, :16]))
        assert result.indices[r, 16:].tolist() == bad  # ties at -inf: lower index first
        assert np.all(result.scores[r, 16:] == -np.inf)
    small = cosine_topk(queries, matrix, 16, chunk_rows=6)
    ref = reference_scores(queries, matrix[good])
    np.testing.assert_allclose(small.scores, -np.sort(-ref, axis=1), atol=2e-6)


def test_large_finite_values_do_not_overflow_the_norm() -> None:
    matrix = np.array([[1e30, 1e30], [1e30, -1e30], [-3e30, 0.0]], dtype=np.float32)
    result = cosine_topk(np.array([1.0, 1.0], dtype=np.float32), matrix, 3)
    assert result.indices[0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(result.scores[0], [1.0, 0.0, -np.sqrt(0.5)], atol=1e-6)


GOOD = np.ones((4, 3), dtype=np.float32)


@pytest.mark.parametrize(
    ("queries", "matrix", "kwargs", "error", "words"),
    [
        (np.ones(3), np.ones((4, 3), dtype=np.int64), {}, TypeError, "matrix"),
        (np.ones(3, dtype=np.int32), GOOD, {}, TypeError, "queries"),
        (np.array([True, False, True]), GOOD, {}, TypeError, "queries"),
        (np.array(["a", "b", "c"]), GOOD, {}, TypeError, "queries"),
        (np.ones(3), np.ones(3, dtype=np.float32), {}, ValueError, "matrix must be 2-D"),
        (np.ones(3), np.ones((2, 2, 3), dtype=np.float32), {}, ValueError, "matrix must be 2-D"),
        (np.ones(3), np.ones((0, 3), dtype=np.float32), {}, ValueError, "matrix is empty"),
        (np.ones(0), np.ones((4, 0), dtype=np.float32), {}, ValueError, "matrix is empty"),
        (np.ones((1, 1, 3)), GOOD, {}, ValueError, "queries must be 1-D"),
        (np.ones((0, 3)), GOOD, {}, ValueError, "queries is empty"),
        (np.ones(4), GOOD, {}, ValueError, "width 4"),
        (np.ones((2, 2)), GOOD, {}, ValueError, "width 2"),
        (np.array([[1.0, 0, 0], [0, 0, 0]]), GOOD, {}, ValueError, "queries[1] is all zeros"),
        (np.array([[1.0, np.nan, 0]]), GOOD, {}, ValueError, "queries[0] holds a NaN"),
        (np.array([np.inf, 0, 0]), GOOD, {}, ValueError, "queries[0] holds a NaN or an infinity"),
        (np.ones(3), GOOD, {"k": 0}, ValueError, "k must be >= 1"),
        (np.ones(3), GOOD, {"k": -2}, ValueError, "k must be >= 1"),
        (np.ones(3), GOOD, {"k": 2.0}, TypeError, "k must be an int"),
        (np.ones(3), GOOD, {"k": True}, TypeError, "k must be an int"),
        (np.ones(3), GOOD, {"chunk_rows": 0}, ValueError, "chunk_rows must be >= 1"),
        (np.ones(3), GOOD, {"chunk_rows": "8"}, TypeError, "chunk_rows must be an int"),
    ],
)
def test_topk_errors_name_the_argument(
    queries: np.ndarray, matrix: np.ndarray, kwargs: dict[str, object], error: type, words: str
) -> None:
    with pytest.raises(error) as info:
        cosine_topk(queries, matrix, **kwargs)  # type: ignore[arg-type]
    assert words in str(info.value)


def test_numpy_integer_k_is_accepted() -> None:
    result = cosine_topk(np.ones(3), GOOD, np.int64(2))
    assert result.indices.tolist() == [[0, 1]]


def test_topk_memory_is_bounded_by_the_chunk_not_the_collection() -> None:
    n, d, q, chunk = 200_000, 64, 64, 4096
    rng = np.random.default_rng(5)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    queries = rng.standard_normal((q, d), dtype=np.float32)
    peaks = {}
    for rows in (n // 4, n):
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            result = cosine_topk(queries, matrix[:rows], 10, chunk_rows=chunk)
            _, peaks[rows] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # tracemalloc counts every thread's allocations, so the bounds leave room for a stray thread
    # of an earlier test; what they rule out is memory that grows with the collection.
    full_scores = n * q * 4  # 51 MB: what matrix @ queries.T would allocate
    assert peaks[n] < full_scores / 4, f"peak {peaks[n]:,} bytes"
    assert peaks[n] < 4 * q * chunk * 4 + 2 * chunk * d * 4 + 1_000_000
    # Four times the rows, the same memory (the product would be four times larger).
    assert peaks[n] - peaks[n // 4] < 1_000_000, peaks
    # Spot-check the answer on a few queries against the full product.
    ref = reference_scores(queries[:4], matrix)
    np.testing.assert_allclose(result.scores[:4], -np.sort(-ref, axis=1)[:, :10], atol=2e-6)


# --------------------------------------------------------------------------- find_duplicates


def reference_groups(matrix: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of the cosine >= threshold graph, by breadth-first search on the full
    similarity matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(m, axis=1)
    valid = np.isfinite(norms) & (norms > 0)
    unit = np.zeros_like(m)
    unit[valid] = m[valid] / norms[valid, None]
    sims = unit @ unit.T
    adj = (sims >= threshold) & valid[:, None] & valid[None, :]
    np.fill_diagonal(adj, False)
    seen = np.zeros(len(m), dtype=bool)
    groups = []
    for start in range(len(m)):
        if seen[start] or not adj[start].any():
            continue
        stack, comp = [start], []
        seen[start] = True
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in np.flatnonzero(adj[i] & ~seen):
                seen[j] = True
                stack.append(int(j))
        groups.append(sorted(comp))
    return groups


def _at_cosine(x: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A vector whose cosine with ``x`` is exactly ``cos`` (up to rounding), at a random length."""
    u = _unit(x)
    noise = rng.standard_normal(x.shape)
    noise -= (noise @ u) * u
    noise = _unit(noise)
    return (cos * u + np.sqrt(1 - cos**2) * noise) * rng.uniform(0.5, 3.0)


def _planted(seed: int, n: int = 500, d: int = 64) -> tuple[np.ndarray, dict[int, list[tuple[int, float]]]]:
    """Random rows (pairwise cosines far below 0.9 in 64-d), then planted near-copies at known
    cosines to a base row: above 0.95 (joined), 0.93 (not), and a chain a-b-c whose ends are
    below the threshold but linked through b."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, d))
    planted: dict[int, list[tuple[int, float]]] = {}
    spots = iter(rng.permutation(np.arange(10, n)).tolist())
    for base, cosines in ((0, [0.99, 0.97]), (5, [0.999]), (9, [0.96, 0.93])):
        planted[base] = []
        for c in cosines:
            j = next(spots)
            m[j] = _at_cosine(m[base], c, rng)
            planted[base].append((j, c))
    # Chain: b at 0.97 to a, c at 0.97 to b in the plane of a and b, beyond it: cos(a, c) ~ 0.88.
    a = 3
    b = next(spots)
    c_ = next(spots)
    ua = _unit(m[a])
    w = _unit(_at_cosine(m[a], 0.0, rng))
    theta = np.arccos(0.97)
    m[b] = np.cos(theta) * ua + np.sin(theta) * w
    m[c_] = (np.cos(2 * theta) * ua + np.sin(2 * theta) * w) * 2.0
    planted[a] = [(b, 0.97), (c_, float(np.cos(2 * theta)))]
    return m.astype(np.float32), planted


@pytest.mark.parametrize("chunk_rows", [1, 37, 128, 500, 4096])
def test_find_duplicates_matches_brute_force_and_planted_pairs(chunk_rows: int) -> None:
    matrix, planted = _planted(seed=6)
    groups = find_duplicates(matrix, 0.95, chunk_rows=chunk_rows)
    assert all(isinstance(g, DuplicateGroup) for g in groups)
    assert [g.indices.tolist() for g in groups] == reference_groups(matrix, 0.95)
    by_first = {int(g.indices[0]): g for g in groups}
    # Base 0: both copies; base 5: its copy; base 9: only the 0.96 copy; chain at 3: all three.
    for base, copies in planted.items():
        joined = sorted([base] + [j for j, c in copies if c >= 0.95 or (base == 3)])
        first = min(joined)
        group = by_first[first]
        assert group.indices.tolist() == joined
        assert group.indices.dtype == np.int64
        assert group.similarities.dtype == np.float32
        if first == base:
            assert group.similarities[0] == pytest.approx(1.0, abs=1e-6)
            for j, c in copies:
                if j in joined:
                    pos = joined.index(j)
                    assert group.similarities[pos] == pytest.approx(c, abs=1e-5)
    # The chain's far end is below the threshold to the first member, and still in the group.
    chain = by_first[min([3] + [j for j, _ in planted[3]])]
    assert chain.similarities.min() < 0.95
    assert len(groups) == 4
    assert [int(g.indices[0]) for g in groups] == sorted(int(g.indices[0]) for g in groups)


def test_find_duplicates_on_many_exact_copies_and_bad_rows() -> None:
    matrix, which = _tie_matrix(200, seed=7)
    matrix = matrix.copy()
    matrix[10] = np.nan
    matrix[11] = 0.0
    matrix[12, 2] = np.inf
    groups = find_duplicates(matrix, 0.9999, chunk_rows=16)
    assert [g.indices.tolist() for g in groups] == reference_groups(matrix, 0.9999)
    members = {int(i) for g in groups for i in g.indices}
    assert not members & {10, 11, 12}
    for g in groups:
        assert len(set(which[g.indices].tolist())) == 1
        np.testing.assert_allclose(g.similarities, 1.0, atol=1e-6)


def test_find_duplicates_threshold_extremes_and_singletons() -> None:
    rng = np.random.default_rng(8)
    matrix = rng.standard_normal((60, 16)).astype(np.float32)
    assert find_duplicates(matrix, 1.0) == []
    everything = find_duplicates(matrix, -1.0, chunk_rows=7)
    assert len(everything) == 1
    assert everything[0].indices.tolist() == list(range(60))
    assert find_duplicates(matrix[:1], 0.5) == []
    for t in (0.0, 0.3, 0.5):
        assert [g.indices.tolist() for g in find_duplicates(matrix, t, chunk_rows=13)] == reference_groups(
            matrix, t
        )


@pytest.mark.parametrize(
    ("matrix", "kwargs", "error", "words"),
    [
        (np.ones((3, 2), dtype=np.int32), {}, TypeError, "matrix"),
        (np.ones(3, dtype=np.float32), {}, ValueError, "matrix must be 2-D"),
        (np.ones((0, 4), dtype=np.float32), {}, ValueError, "matrix is empty"),
        (GOOD, {"threshold": 1.5}, ValueError, "threshold"),
        (GOOD, {"threshold": float("nan")}, ValueError, "threshold"),
        (GOOD, {"threshold": "0.9"}, TypeError, "threshold"),
        (GOOD, {"threshold": True}, TypeError, "threshold"),
        (GOOD, {"chunk_rows": 0}, ValueError, "chunk_rows"),
    ],
)
def test_find_duplicates_errors_name_the_argument(
    matrix: np.ndarray, kwargs: dict[str, object], error: type, words: str
) -> None:
    with pytest.raises(error) as info:
        find_duplicates(matrix, **kwargs)  # type: ignore[arg-type]
    assert words in str(info.value)


def test_find_duplicates_memory_is_bounded_by_the_block() -> None:
    n, d, chunk = 20_000, 32, 1024
    rng = np.random.default_rng(9)
    matrix = rng.standard_normal((n, d), dtype=np.float32)
    matrix[n - 1] = matrix[0] * 2  # one pair across the first and last blocks
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        groups = find_duplicates(matrix, 0.95, chunk_rows=chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [g.indices.tolist() for g in groups] == [[0, n - 1]]
    full_similarity = n * n * 4  # 1.6 GB
    assert peak < full_similarity / 100, f"peak {peak:,} bytes"
    assert peak < 4 * chunk * chunk * 4 + 8 * n * 4 + 1_000_000


def test_search_names_are_public() -> None:
    for name in ("cosine_topk", "find_duplicates", "TopK", "DuplicateGroup"):
        assert name in clip_client.__all__
        assert getattr(clip_client, name) is getattr(clip_client.search, name)


@pytest.mark.parametrize("d", [16, 768])
def test_exact_copies_group_at_threshold_one_and_similarities_stay_in_range(d: int) -> None:
    """A copy's float32 cosine can compute as 0.99999994: at ``threshold=1.0`` every exact copy
    still groups with its original, and no reported similarity exceeds 1."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((50, d)).astype(np.float32)
    groups = find_duplicates(np.vstack([base, base]), threshold=1.0)
    assert sorted(g.indices.tolist() for g in groups) == [[i, i + 50] for i in range(50)]
    for group in groups:
        assert np.all(group.similarities <= 1.0)
        assert np.all(group.similarities >= 1.0 - 1e-5)
    # and distinct random rows still never meet a high threshold
    assert find_duplicates(base, threshold=0.99) == []


# --------------------------------------------------------------------------------------------------
# find_duplicates: the approximate method and the choice between methods


def _clustered_with_duplicates(n: int, d: int, seed: int) -> np.ndarray:
    """Clustered rows (CLIP-like: a shared offset, topics), with planted near-copies at cosines in
    [0.95, 1): pairs, a few chains, one group of 80 near-copies of a single row (more members than
    any per-row neighbour count would hold), plus rows that cannot be normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 100, d)) + 2.0 * rng.standard_normal(d)
    m = centres[rng.integers(0, len(centres), n)] + 0.8 * rng.standard_normal((n, d))
    spots = iter(rng.permutation(n).tolist())
    for _ in range(n // 50):  # pairs and small groups
        base = next(spots)
        for _ in range(int(rng.integers(1, 4))):
            m[next(spots)] = _at_cosine(m[base], float(rng.uniform(0.955, 0.999)), rng)
    big = next(spots)
    for _ in range(80):
        m[next(spots)] = _at_cosine(m[big], float(rng.uniform(0.975, 0.999)), rng)
    m = m.astype(np.float32)
    m[next(spots)] = np.nan
    m[next(spots)] = 0.0
    return m


def test_approximate_duplicates_equal_exact_on_20000_planted_rows() -> None:
    pytest.importorskip("faiss")
    matrix = _clustered_with_duplicates(20_000, 96, seed=11)
    exact = find_duplicates(matrix, 0.95, method="exact")
    approximate = find_duplicates(matrix, 0.95, method="approximate", chunk_rows=1500)
    assert len(exact) > 300
    assert max(len(g.indices) for g in exact) >= 81  # the big group, found whole
    assert [g.indices.tolist() for g in approximate] == [g.indices.tolist() for g in exact]
    for a, e in zip(approximate, exact, strict=True):
        np.testing.assert_array_equal(a.similarities, e.similarities)
    # The order of the rows does not matter: a permuted input gives the permuted groups.
    perm = np.random.default_rng(12).permutation(len(matrix))
    shuffled = find_duplicates(matrix[perm], 0.95, method="approximate")
    assert sorted(sorted(perm[g.indices].tolist()) for g in shuffled) == sorted(
        g.indices.tolist() for g in exact
    )


def test_approximate_duplicates_on_tiny_and_exotic_inputs(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    matrix, _ = _planted(seed=6)
    np.save(tmp_path / "m.npy", matrix)
    mapped = np.load(tmp_path / "m.npy", mmap_mode="r")  # read in blocks, never copied whole
    assert [
        g.indices.tolist() for g in find_duplicates(mapped, 0.95, method="approximate")
    ] == reference_groups(matrix, 0.95)
    assert [
        g.indices.tolist() for g in find_duplicates(matrix, 0.95, method="approximate")
    ] == reference_groups(matrix, 0.95)
    copies, _ = _tie_matrix(200, seed=7)
    got = find_duplicates(copies.astype(np.float16), 0.9999, method="approximate", chunk_rows=16)
    assert [g.indices.tolist() for g in got] == reference_groups(copies.astype(np.float16), 0.9999)
    lonely = np.zeros((3, 8), dtype=np.float32)
    lonely[0, 0] = 1.0
    assert find_duplicates(lonely, 0.5, method="approximate") == []  # one valid row: nothing to pair


def test_auto_without_faiss_falls_back_to_exact_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import clip_client.search as search_module

    matrix, _ = _planted(seed=6)
    want = reference_groups(matrix, 0.95)
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # `import faiss` raises ImportError
    monkeypatch.setattr(search_module, "EXACT_DUPLICATE_MAX_ROWS", 100)  # 500 rows: "large"
    with pytest.warns(UserWarning, match=r'pip install "clip-serving-client\[index\]"') as caught:
        groups = find_duplicates(matrix, 0.95)
    assert "exact" in str(caught[0].message)
    assert [g.indices.tolist() for g in groups] == want
    with pytest.raises(ImportError, match=r"clip-serving-client\[index\]"):
        find_duplicates(matrix, 0.95, method="approximate")
    # Small inputs, and an explicit exact, need no faiss and say nothing.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [g.indices.tolist() for g in find_duplicates(matrix[:100], 0.95)] == reference_groups(
            matrix[:100], 0.95
        )
        assert [g.indices.tolist() for g in find_duplicates(matrix, 0.95, method="exact")] == want


def test_auto_takes_the_approximate_method_above_the_size_threshold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("faiss")
    import clip_client.search as search_module

    calls: list[str] = []
    for name in ("_exact_edges", "_approximate_edges"):
        real = getattr(search_module, name)

        def spy(*args: object, _real: object = real, _name: str = name) -> None:
            calls.append(_name)
            _real(*args)  # type: ignore[operator]

        monkeypatch.setattr(search_module, name, spy)
    matrix, _ = _planted(seed=6)
    monkeypatch.setattr(search_module, "EXACT_DUPLICATE_MAX_ROWS", 500)
    find_duplicates(matrix, 0.95)
    monkeypatch.setattr(search_module, "EXACT_DUPLICATE_MAX_ROWS", 499)
    find_duplicates(matrix, 0.95)
    find_duplicates(matrix, 0.95, method="exact")
    assert calls == ["_exact_edges", "_approximate_edges", "_exact_edges"]


@pytest.mark.parametrize(
    ("method", "error"), [("fast", ValueError), ("Exact", ValueError), (None, TypeError), (1, TypeError)]
)
def test_find_duplicates_refuses_an_unknown_method(method: object, error: type) -> None:
    with pytest.raises(error, match="method must be"):
        find_duplicates(GOOD, method=method)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["exact", "approximate"])
def test_find_duplicates_progress_bar_is_opt_in(method: str, capsys: pytest.CaptureFixture[str]) -> None:
    if method == "approximate":
        pytest.importorskip("faiss")
    matrix, _ = _planted(seed=6)
    find_duplicates(matrix, 0.95, method=method)  # type: ignore[arg-type]
    assert capsys.readouterr().err == ""
    find_duplicates(matrix, 0.95, method=method, progress=True)  # type: ignore[arg-type]
    assert f"dedupe ({method})" in capsys.readouterr().err


def test_cosine_topk_scores_stay_within_minus_one_one_and_ties_keep_row_order() -> None:
    """float32 rounding: a row's cosine with itself can come out as 1.0000001 (row 9 of this draw),
    and a row of subnormal values (about 1e-43) as 1.003; both are clamped before ranking, so two
    rows that both score 1 come back by lower row number."""
    rows = np.random.default_rng(0).standard_normal((200, 768)).astype(np.float32)
    found = cosine_topk(rows, rows, 3)
    assert found.scores.max() <= 1.0
    assert found.scores[9, 0] == 1.0
    assert found.indices[9, 0] == 9
    tiny = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=np.float32)
    tiny[1] *= np.float32(1e-43)  # subnormal float32: its norm is computed coarsely
    result = cosine_topk(np.array([1.0, 1.0, 0.0], dtype=np.float32), tiny, 2)
    assert result.scores.max() <= 1.0
    assert result.indices[0].tolist() == [0, 1]  # equal (clamped) scores: lower row first
