"""clip_client.index.ApproximateIndex (faiss IVF, the default of build, and HNSW) against the exact
clip_client.search.cosine_topk: recall on clustered data, the TopK contract, ids, add(), save/load,
files of earlier versions, and every bad input. The behaviour tests run on both structures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

import clip_client  # noqa: E402
from clip_client.index import (  # noqa: E402
    C_INT_MAX,
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_EF_SEARCH,
    DEFAULT_NPROBE,
    MAX_M,
    ApproximateIndex,
    default_nlist,
)
from clip_client.search import TopK, cosine_topk  # noqa: E402


def clustered(n: int, d: int, *, clusters: int, seed: int, spread: float = 0.7) -> np.ndarray:
    """Rows around a shared mean direction and ``clusters`` centres, at random lengths: the shape of
    CLIP embeddings (a common offset, topics), not uniform noise. Centres depend on ``clusters``
    and ``d`` only, so two calls with other seeds draw more points from the same clusters."""
    centres_rng = np.random.default_rng(1234)
    mean = centres_rng.standard_normal(d)
    centres = mean + centres_rng.standard_normal((clusters, d))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)
    rows = centres[labels] + spread * rng.standard_normal((n, d))
    return (rows * rng.uniform(0.5, 3.0, (n, 1))).astype(np.float32)


def recall(found: TopK, exact: TopK) -> float:
    hits = [len(set(a) & set(b)) for a, b in zip(found.indices.tolist(), exact.indices.tolist(), strict=True)]
    return float(np.sum(hits) / exact.indices.size)


def true_cosines(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    q = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    r = np.asarray(rows, dtype=np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    r /= np.linalg.norm(r, axis=-1, keepdims=True)
    return np.einsum("qd,qkd->qk", q, r)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(6000, 64, clusters=60, seed=1), clustered(100, 64, clusters=60, seed=2)


STRUCTURES = ["ivf", "hnsw"]

#: Per structure, a search knob generous enough to make the search exhaustive on these small sets.
EVERYTHING = {"ivf": {"nprobe": 10_000}, "hnsw": {"ef_search": 2000}}


@pytest.fixture(scope="module", params=STRUCTURES)
def built(request: pytest.FixtureRequest, data: tuple[np.ndarray, np.ndarray]) -> ApproximateIndex:
    return ApproximateIndex.build(data[0], structure=request.param)


def test_recall_at_10_against_exact_search_and_the_topk_contract(
    data: tuple[np.ndarray, np.ndarray], built: ApproximateIndex
) -> None:
    matrix, queries = data
    exact = cosine_topk(queries, matrix, 10)
    found = built.search(queries, 10)
    assert isinstance(found, TopK)
    assert found.indices.dtype == np.int64
    assert found.scores.dtype == np.float32
    assert found.indices.shape == found.scores.shape == exact.indices.shape == (100, 10)
    assert recall(found, exact) >= 0.95
    # The scores are the true cosines of the rows returned, best first, no row twice.
    np.testing.assert_allclose(found.scores, true_cosines(queries, matrix[found.indices]), atol=2e-6)
    assert np.all(np.diff(found.scores, axis=1) <= 0)
    assert all(len(set(r)) == 10 for r in found.indices.tolist())
    # A generous knob finds the exact answer on this small collection.
    assert recall(built.search(queries, 10, **EVERYTHING[built.structure]), exact) == 1.0
    if built.structure == "ivf":  # the per-call knob does not stick
        assert built.nprobe == DEFAULT_NPROBE
        assert built.nlist == default_nlist(6000) == 6000 // 39
    else:
        assert built.ef_search == DEFAULT_EF_SEARCH


def test_a_row_used_as_the_query_finds_itself_first(
    data: tuple[np.ndarray, np.ndarray], built: ApproximateIndex
) -> None:
    matrix, _ = data
    for row in (0, 17, 4321, 5999):
        one = built.search(matrix[row] * 7.0, 3)  # 1-D query, any length
        assert one.indices.shape == (1, 3)
        assert one.indices[0, 0] == row
        assert one.scores[0, 0] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "knob", [{"structure": "hnsw", "ef_search": 1}, {"structure": "ivf", "nlist": 8, "nprobe": 1}]
)
def test_k_beyond_the_collection_returns_every_row_like_cosine_topk(knob: dict[str, Any]) -> None:
    matrix = clustered(40, 16, clusters=4, seed=3)
    queries = clustered(5, 16, clusters=4, seed=4)
    index = ApproximateIndex.build(matrix, **knob)
    for k in (40, 41, 1000):
        found = index.search(queries, k)
        exact = cosine_topk(queries, matrix, k)
        assert found.indices.shape == exact.indices.shape == (5, 40)
        for r in range(5):
            assert sorted(found.indices[r].tolist()) == list(range(40))  # nothing missing
        np.testing.assert_allclose(found.scores, exact.scores, atol=2e-6)


def test_a_graph_search_that_comes_back_short_is_completed_exactly() -> None:
    # 300 rows that are copies of 5 vectors: HNSW's graph falls apart into islands of copies, and
    # faiss returns only a handful of rows (the rest -1) even with ef_search = k = n.
    rng = np.random.default_rng(10)
    matrix = rng.standard_normal((5, 8)).astype(np.float32)[rng.integers(0, 5, 300)]
    queries = rng.standard_normal((20, 8)).astype(np.float32)
    index = ApproximateIndex.build(
        matrix, ids=np.arange(300) + 1000, structure="hnsw", m=2, ef_construction=1
    )
    raw = index._index.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), 250)[1]
    assert (raw == -1).any(axis=1).all(), "faiss found every row: this test no longer tests the fallback"
    for k in (250, 300):
        found = index.search(queries, k)
        exact = cosine_topk(queries, matrix, k)
        assert found.indices.shape == (20, k)
        assert not (found.indices == -1).any()
        np.testing.assert_allclose(found.scores, exact.scores, atol=2e-6)
        for r in range(20):
            assert len(set(found.indices[r].tolist())) == k  # no row twice
            if k == 300:
                assert sorted(found.indices[r].tolist()) == list(range(1000, 1300))
        # Equal scores (copies) come back by lower id.
        ties = found.scores[:, 1:] == found.scores[:, :-1]
        assert np.all(found.indices[:, 1:][ties] > found.indices[:, :-1][ties])


def test_an_ivf_search_whose_cells_hold_too_few_rows_is_completed_exactly() -> None:
    """With 30 cells and nprobe=1, a query reads one cell of about 10 rows: asked for 50, faiss
    gives the rest as -1, and the index answers those queries from every cell instead."""
    matrix = clustered(300, 8, clusters=30, seed=11)
    queries = clustered(20, 8, clusters=30, seed=12)
    index = ApproximateIndex.build(matrix, ids=np.arange(300) + 1000, nlist=30, nprobe=1)
    raw = index._index.search(queries / np.linalg.norm(queries, axis=1, keepdims=True), 50)[1]
    assert (raw == -1).any(axis=1).all(), "one cell held 50 rows: this test no longer tests the fallback"
    found = index.search(queries, 50)
    exact = cosine_topk(queries, matrix, 50)
    np.testing.assert_array_equal(found.indices, exact.indices + 1000)
    np.testing.assert_allclose(found.scores, exact.scores, atol=2e-6)


def test_other_float_dtypes_and_memmaps_are_accepted(tmp_path: Path) -> None:
    matrix = clustered(500, 24, clusters=5, seed=5).astype(np.float64)
    on_disk = np.lib.format.open_memmap(tmp_path / "rows.npy", mode="w+", dtype=np.float16, shape=(500, 24))
    on_disk[:] = matrix
    for source in (matrix, on_disk):
        for structure in STRUCTURES:
            index = ApproximateIndex.build(source, chunk_rows=64, structure=structure)  # type: ignore[arg-type]
            exact = cosine_topk(matrix[:20].astype(np.float32), np.asarray(source, dtype=np.float32), 5)
            found = index.search(matrix[:20].astype(np.float16), 5, **EVERYTHING[structure])
            assert recall(found, exact) == 1.0


@pytest.mark.parametrize("structure", STRUCTURES)
def test_ids_map_rows_to_the_callers_ids(data: tuple[np.ndarray, np.ndarray], structure: Any) -> None:
    matrix, queries = data
    rng = np.random.default_rng(6)
    ids = rng.choice(np.arange(10**12, 10**12 + 10**6), size=len(matrix), replace=False)
    index = ApproximateIndex.build(matrix, ids=ids, structure=structure)
    np.testing.assert_array_equal(index.ids, ids)
    found = index.search(queries, 10)
    row_of = {int(v): i for i, v in enumerate(ids.tolist())}
    rows = np.vectorize(row_of.__getitem__)(found.indices)
    exact = cosine_topk(queries, matrix, 10)
    assert recall(TopK(indices=rows, scores=found.scores), exact) >= 0.95
    np.testing.assert_allclose(found.scores, true_cosines(queries, matrix[rows]), atol=2e-6)
    assert index.search(matrix[123], 1).indices[0, 0] == ids[123]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_add_appends_with_row_numbers_continuing(data: tuple[np.ndarray, np.ndarray], structure: Any) -> None:
    matrix, queries = data
    index = ApproximateIndex.build(matrix[:2500], structure=structure)
    index.add(matrix[2500:4000])
    index.add(matrix[4000:], chunk_rows=333)
    assert len(index) == len(matrix)
    np.testing.assert_array_equal(index.ids, np.arange(len(matrix)))
    assert recall(index.search(queries, 10), cosine_topk(queries, matrix, 10)) >= 0.95
    assert index.search(matrix[5000], 1).indices[0, 0] == 5000
    # Explicit ids after the default ones, then the default cannot continue into them.
    extra = clustered(3, 64, clusters=60, seed=7)
    index.add(extra[:2], ids=[6002, 6003])
    assert index.search(extra[1], 1).indices[0, 0] == 6003
    with pytest.raises(ValueError, match=r"default id 6002 .* pass ids="):
        index.add(extra)
    assert len(index) == 6002


def test_empty_index_then_add(data: tuple[np.ndarray, np.ndarray]) -> None:
    matrix, queries = data
    index = ApproximateIndex(64, m=16, ef_construction=80, ef_search=32)
    assert (len(index), index.dim, index.m, index.structure) == (0, 64, 16, "hnsw")
    assert repr(index) == (
        "ApproximateIndex(structure='hnsw', dim=64, rows=0, m=16, ef_construction=80, ef_search=32)"
    )
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(queries, 10)
    index.add(matrix)
    index.ef_search = 128
    assert index.ef_search == 128
    assert recall(index.search(queries, 10), cosine_topk(queries, matrix, 10)) >= 0.95


def test_an_empty_ivf_index_fits_its_cells_to_its_first_add(data: tuple[np.ndarray, np.ndarray]) -> None:
    matrix, queries = data
    index = ApproximateIndex(64, structure="ivf", nprobe=8)
    assert (len(index), index.structure, index.nlist, index.nprobe) == (0, "ivf", None, 8)
    assert repr(index) == "ApproximateIndex(structure='ivf', dim=64, rows=0, nlist=None, nprobe=8)"
    with pytest.raises(ValueError, match="the index is empty"):
        index.search(queries, 10)
    with pytest.raises(ValueError, match="no rows yet, so no cells to save"):
        index.save("never.faiss")
    index.nprobe = 32
    index.add(matrix[:5000])
    assert (index.nlist, index.nprobe) == (default_nlist(5000), 32)
    index.add(matrix[5000:])  # later rows go to the cells fitted to the first 5,000
    assert recall(index.search(queries, 10), cosine_topk(queries, matrix, 10)) >= 0.95
    # The same rows give the same index (the training sample has a fixed seed).
    again = ApproximateIndex.build(matrix[:5000], nprobe=32)
    again.add(matrix[5000:])
    np.testing.assert_array_equal(again.search(queries, 10).indices, index.search(queries, 10).indices)
    # A first add smaller than the cells asked for is refused before anything is fitted.
    small = ApproximateIndex(64, structure="ivf", nlist=100)
    with pytest.raises(
        ValueError, match=r"nlist=100 IVF cells need at least as many rows .* the first add has 99"
    ):
        small.add(matrix[:99])
    assert len(small) == 0
    assert small.nlist == 100
    small.add(matrix[:100])
    assert small.nlist == 100


def test_settings_of_the_other_structure_are_refused_by_name() -> None:
    with pytest.raises(
        ValueError,
        match=r"ef_search is a setting of HNSW indexes, but this index is IVF .*pass structure='hnsw'",
    ):
        ApproximateIndex.build(GOOD, ef_search=64)
    with pytest.raises(ValueError, match=r"nprobe is a setting of IVF indexes, but this index is HNSW"):
        ApproximateIndex(6, nprobe=4)
    with pytest.raises(ValueError, match=r'structure must be "ivf" or "hnsw"; got \'flat\''):
        ApproximateIndex(6, structure="flat")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="structure must be"):
        ApproximateIndex(6, structure=None)  # type: ignore[arg-type]
    ivf = ApproximateIndex.build(GOOD)
    with pytest.raises(ValueError, match=r"ef_search is a setting of HNSW indexes.*: drop ef_search$"):
        ivf.search(GOOD[0], ef_search=8)
    with pytest.raises(AttributeError, match="ef_search is a setting of HNSW indexes; this one is IVF"):
        _ = ivf.ef_search
    with pytest.raises(AttributeError, match="m is a setting of HNSW"):
        _ = ivf.m
    hnsw = ApproximateIndex.build(GOOD, structure="hnsw")
    with pytest.raises(ValueError, match=r"nprobe is a setting of IVF indexes"):
        hnsw.search(GOOD[0], nprobe=8)
    with pytest.raises(AttributeError, match="nprobe is a setting of IVF indexes; this one is HNSW"):
        hnsw.nprobe = 3
    with pytest.raises(ValueError, match=r"nlist must be >= 1"):
        ApproximateIndex.build(GOOD, nlist=0)
    with pytest.raises(ValueError, match=r"nlist=31 IVF cells need at least as many rows"):
        ApproximateIndex.build(GOOD, nlist=31)


@pytest.mark.parametrize("structure", STRUCTURES)
def test_save_and_load_give_identical_results(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray], structure: str
) -> None:
    matrix, queries = data
    ids = np.arange(len(matrix), dtype=np.int64) * 3 + 5
    knob: dict[str, Any] = {"nprobe": 5} if structure == "ivf" else {"ef_search": 48}
    index = ApproximateIndex.build(matrix, ids=ids, structure=structure, **knob)  # type: ignore[arg-type]
    before = index.search(queries, 10)
    path = tmp_path / "images.faiss"
    path.write_bytes(b"an older file, replaced whole")
    index.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.faiss"]  # no temporary left
    loaded = ApproximateIndex.load(str(path))
    assert (len(loaded), loaded.dim, loaded.structure) == (len(index), 64, structure)
    if structure == "ivf":
        assert (loaded.nlist, loaded.nprobe) == (index.nlist, 5)
    else:
        assert (loaded.m, loaded.ef_search) == (32, 48)
    np.testing.assert_array_equal(loaded.ids, ids)
    after = loaded.search(queries, 10)
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_array_equal(after.scores, before.scores)
    # The loaded index keeps growing with ids of its own.
    loaded.add(matrix[:2] * 2, ids=[1, 2])
    assert loaded.search(matrix[0], 2).indices[0].tolist() in ([1, 5], [5, 1])


def test_save_and_load_errors_name_the_path(tmp_path: Path) -> None:
    index = ApproximateIndex.build(clustered(20, 8, clusters=2, seed=8))
    with pytest.raises(FileNotFoundError, match="missing"):
        index.save(tmp_path / "missing" / "x.faiss")
    with pytest.raises(IsADirectoryError, match="folder"):
        index.save(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.faiss"):
        ApproximateIndex.load(tmp_path / "nope.faiss")
    junk = tmp_path / "junk.faiss"
    junk.write_bytes(b"not an index at all")
    with pytest.raises(ValueError, match=r"junk\.faiss is not a faiss index file"):
        ApproximateIndex.load(junk)
    other = tmp_path / "flat.faiss"
    faiss.write_index(faiss.IndexFlatIP(8), str(other))
    with pytest.raises(ValueError, match=r"IndexFlat.*rebuild it"):
        ApproximateIndex.load(other)
    l2 = faiss.IndexIDMap(faiss.IndexHNSWFlat(8, 16))  # the L2 metric, not cosine
    faiss.write_index(l2, str(other))
    with pytest.raises(
        ValueError, match=r"right structure .* but with the METRIC_L2 metric, not the inner product"
    ):
        ApproximateIndex.load(other)
    l2_ivf = faiss.index_factory(8, "IDMap,IVF2,Flat")  # IVF, L2 metric
    l2_ivf.train(clustered(100, 8, clusters=2, seed=8))
    faiss.write_index(l2_ivf, str(other))
    with pytest.raises(ValueError, match=r"IndexIVFFlat\) but with the METRIC_L2 metric"):
        ApproximateIndex.load(other)


GOOD = clustered(30, 6, clusters=3, seed=9)


def _with(row: int, value: float) -> np.ndarray:
    bad = GOOD.copy()
    bad[row, 2] = value
    return bad


def _zero(row: int) -> np.ndarray:
    bad = GOOD.copy()
    bad[row] = 0.0
    return bad


@pytest.mark.parametrize(
    ("matrix", "kwargs", "error", "words"),
    [
        (GOOD.astype(np.int64), {}, TypeError, "matrix must be a float array"),
        (GOOD[0], {}, ValueError, "matrix must be 2-D"),
        (GOOD[np.newaxis], {}, ValueError, "matrix must be 2-D"),
        (GOOD[:0], {}, ValueError, "matrix is empty"),
        (GOOD[:, :0], {}, ValueError, "matrix is empty"),
        (_with(13, np.nan), {"chunk_rows": 4}, ValueError, "matrix[13] holds a NaN or an infinity"),
        (_with(29, np.inf), {}, ValueError, "matrix[29] holds a NaN or an infinity"),
        (_with(0, -np.inf), {}, ValueError, "matrix[0] holds"),
        (_zero(7), {"chunk_rows": 5}, ValueError, "matrix[7] is all zeros"),
        (GOOD, {"ids": np.arange(29)}, ValueError, "ids must have shape (30,)"),
        (GOOD, {"ids": np.zeros((30, 1), dtype=np.int64)}, ValueError, "ids must have shape"),
        (GOOD, {"ids": np.arange(30.0)}, TypeError, "ids must be an integer array"),
        (GOOD, {"ids": np.ones(30, dtype=bool)}, TypeError, "ids must be an integer array"),
        (GOOD, {"ids": [*range(29), 4]}, ValueError, "ids[29] = 4 repeats ids[4]"),
        (GOOD, {"ids": [*range(10), -1, *range(11, 30)]}, ValueError, "ids[10] is -1"),
        (GOOD, {"ids": np.full(30, 2**63, dtype=np.uint64)}, ValueError, "does not fit in int64"),
        (GOOD, {"chunk_rows": 0}, ValueError, "chunk_rows must be >= 1"),
        (GOOD, {"structure": "hnsw", "ef_search": 0}, ValueError, "ef_search must be >= 1"),
        (GOOD, {"structure": "hnsw", "ef_construction": 1.5}, TypeError, "ef_construction must be an int"),
        (GOOD, {"structure": "hnsw", "m": 1}, ValueError, "m must be >= 2"),
        (GOOD, {"nprobe": 0}, ValueError, "nprobe must be >= 1"),
        (GOOD, {"nlist": 2.0}, TypeError, "nlist must be an int"),
    ],
)
def test_build_errors_name_the_input(
    matrix: np.ndarray, kwargs: dict[str, object], error: type, words: str
) -> None:
    with pytest.raises(error) as info:
        ApproximateIndex.build(matrix, **kwargs)  # type: ignore[arg-type]
    assert words in str(info.value)


def test_a_bad_add_adds_nothing() -> None:
    index = ApproximateIndex.build(GOOD, ids=np.arange(100, 130))
    for matrix, kwargs, words in [
        (_with(25, np.nan)[:, :5], {}, "width 5 but the index holds width 6"),
        (_with(25, np.nan), {"chunk_rows": 8}, "matrix[25] holds a NaN"),
        (GOOD[:3], {"ids": [7, 8, 115]}, "ids[2] = 115 is already in the index"),
        (GOOD[:3], {"ids": [7, 8, 7]}, "ids[2] = 7 repeats ids[0]"),
    ]:
        with pytest.raises(ValueError) as info:
            index.add(matrix, **kwargs)  # type: ignore[arg-type]
        assert words in str(info.value)
        assert len(index) == 30
    np.testing.assert_array_equal(index.ids, np.arange(100, 130))


@pytest.mark.parametrize(
    ("queries", "kwargs", "error", "words"),
    [
        (np.ones(6, dtype=np.int32), {}, TypeError, "queries must be a float array"),
        (np.ones((1, 1, 6)), {}, ValueError, "queries must be 1-D"),
        (np.ones((0, 6)), {}, ValueError, "queries is empty"),
        (np.ones(5), {}, ValueError, "queries has width 5 but the index's rows have width 6"),
        (np.array([[1.0] * 6, [0.0] * 6]), {}, ValueError, "queries[1] is all zeros"),
        (np.array([1.0, np.nan, 0, 0, 0, 0]), {}, ValueError, "queries[0] holds a NaN"),
        (np.ones(6), {"k": 0}, ValueError, "k must be >= 1"),
        (np.ones(6), {"k": True}, TypeError, "k must be an int"),
        (np.ones(6), {"nprobe": 0}, ValueError, "nprobe must be >= 1"),
        (np.ones(6), {"nprobe": "64"}, TypeError, "nprobe must be an int"),
        (np.ones(6), {"nprobe": C_INT_MAX + 1}, ValueError, "nprobe must be between 1 and 2,147,483,647"),
        (np.ones(6), {"structure": "hnsw", "ef_search": 0}, ValueError, "ef_search must be >= 1"),
        (np.ones(6), {"structure": "hnsw", "ef_search": "64"}, TypeError, "ef_search must be an int"),
    ],
)
def test_search_errors_name_the_input(
    queries: np.ndarray, kwargs: dict[str, object], error: type, words: str
) -> None:
    structure = kwargs.pop("structure", "ivf")
    index = ApproximateIndex.build(GOOD, structure=structure)  # type: ignore[arg-type]
    with pytest.raises(error) as info:
        index.search(queries, **kwargs)  # type: ignore[arg-type]
    assert words in str(info.value)


def test_missing_faiss_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # what an absent package looks like to import
    with pytest.raises(ImportError, match=r'pip install "clip-serving-client\[index\]"'):
        ApproximateIndex(8)


def test_faiss_is_imported_lazily_and_the_index_is_not_re_exported() -> None:
    code = (
        "import sys, clip_client, clip_client.index\n"
        "assert 'faiss' not in sys.modules, 'faiss imported eagerly'\n"
        "clip_client.index.ApproximateIndex(4)\n"
        "assert 'faiss' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "ApproximateIndex" not in clip_client.__all__
    assert not hasattr(clip_client, "ApproximateIndex")


def test_build_and_add_show_progress_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    matrix = clustered(300, 16, clusters=6, seed=21)
    index = ApproximateIndex.build(matrix[:200])
    assert capsys.readouterr().err == ""
    index.add(matrix[200:], progress=True, chunk_rows=40)
    err = capsys.readouterr().err
    assert "building the index" in err
    assert "100/100" in err
    again = ApproximateIndex.build(matrix, progress=True)
    assert "300/300" in capsys.readouterr().err
    np.testing.assert_array_equal(again.ids, index.ids)


def test_an_index_saved_with_the_old_defaults_loads_with_its_own_settings(tmp_path: Path) -> None:
    """Files written before the defaults changed (efConstruction 40, ef_search 64, written by faiss
    as an IndexIDMap over an inner-product IndexHNSWFlat) load unchanged: the structure is the same,
    and the settings travel in the file."""
    matrix = clustered(500, 16, clusters=5, seed=22)
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    old = faiss.IndexHNSWFlat(16, 32, faiss.METRIC_INNER_PRODUCT)
    old.hnsw.efConstruction = 40
    old.hnsw.efSearch = 64
    wrapped = faiss.IndexIDMap(old)
    wrapped.add_with_ids(unit, np.arange(500, dtype=np.int64) + 7)
    faiss.write_index(wrapped, str(tmp_path / "old.faiss"))
    loaded = ApproximateIndex.load(tmp_path / "old.faiss")
    assert (loaded.m, loaded.ef_construction, loaded.ef_search) == (32, 40, 64)
    assert loaded.search(matrix[3], 1).indices[0, 0] == 10
    fresh = ApproximateIndex(16)
    assert (fresh.ef_construction, fresh.ef_search) == (DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: ApproximateIndex(8, m=2**40), "m must be <= 10,000"),
        (lambda: ApproximateIndex(8, m=MAX_M + 1), "m must be <= 10,000"),
        (lambda: ApproximateIndex(2**40), "dim must be between 1 and 2,147,483,647"),
        (
            lambda: ApproximateIndex(8, ef_construction=2**40),
            "ef_construction must be between 1 and 2,147,483,647",
        ),
        (
            lambda: ApproximateIndex(8, ef_search=C_INT_MAX + 1),
            "ef_search must be between 1 and 2,147,483,647",
        ),
        (lambda: ApproximateIndex.build(GOOD, structure="hnsw", m=10**6), "m must be <= 10,000"),
        (lambda: ApproximateIndex.build(GOOD, nlist=2**31), "nlist must be between 1 and 2,147,483,647"),
    ],
)
def test_integers_faiss_cannot_take_are_a_value_error_naming_the_argument(make: object, words: str) -> None:
    """faiss takes these as a C int (SWIG's OverflowError/TypeError beyond it); m has a sane cap."""
    with pytest.raises(ValueError) as info:
        make()  # type: ignore[operator]
    assert words in str(info.value)


def test_large_ef_search_on_an_index_is_a_value_error_and_changes_nothing() -> None:
    index = ApproximateIndex.build(GOOD, structure="hnsw", ef_search=64)
    with pytest.raises(ValueError, match=r"ef_search must be between 1 and 2,147,483,647 .*got 2147483648"):
        index.search(GOOD[0], ef_search=2**31)
    with pytest.raises(ValueError, match=r"ef_search must be between 1 and 2,147,483,647"):
        index.ef_search = 2**40
    with pytest.raises(ValueError, match=r"ef_construction must be between 1 and 2,147,483,647"):
        index.ef_construction = 2**31
    assert index.ef_search == 64
    index.ef_search = C_INT_MAX  # the largest faiss takes is accepted
    assert index.ef_search == C_INT_MAX


def test_search_scores_are_clamped_to_minus_one_one() -> None:
    """float32 rounding gives some rows' cosine with themselves as 1.0000001 (row 9 of this draw)."""
    rows = np.random.default_rng(0).standard_normal((200, 768)).astype(np.float32)
    for structure in STRUCTURES:
        found = ApproximateIndex.build(rows, structure=structure).search(rows, 3)  # type: ignore[arg-type]
        assert found.scores.dtype == np.float32
        assert found.scores.max() <= 1.0
        assert found.scores.min() >= -1.0
        assert found.indices[9, 0] == 9
        assert found.scores[9, 0] == 1.0


def test_foreign_files_of_the_right_shape_but_not_written_by_save_are_refused(tmp_path: Path) -> None:
    """An inner-product IVF or HNSW file whose rows are not normalised would give inner products,
    not cosines (every score clamped to 1.0): refused by name, as are subclasses and other inner
    structures (named), a folder and a path of the wrong type."""
    rows = clustered(500, 8, clusters=5, seed=30) * 5
    for spec in ("IDMap,HNSW16", "IDMap,IVF8,Flat"):
        raw = faiss.index_factory(8, spec, faiss.METRIC_INNER_PRODUCT)
        raw.train(rows)
        raw.add_with_ids(rows, np.arange(500))
        faiss.write_index(raw, str(tmp_path / "raw.faiss"))
        with pytest.raises(
            ValueError, match=r"raw\.faiss holds rows that are not L2-normalised .*rebuild it"
        ):
            ApproximateIndex.load(tmp_path / "raw.faiss")
    pq = faiss.index_factory(8, "IDMap,IVF8,PQ4x4", faiss.METRIC_INNER_PRODUCT)
    pq.train(rows)
    faiss.write_index(pq, str(tmp_path / "pq.faiss"))
    with pytest.raises(ValueError, match=r"holds a faiss IndexIDMap over an IndexIVFPQ, not the IndexIDMap"):
        ApproximateIndex.load(tmp_path / "pq.faiss")
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    two = faiss.IndexIDMap2(faiss.IndexHNSWFlat(8, 16, faiss.METRIC_INNER_PRODUCT))
    two.add_with_ids(unit, np.arange(500))
    faiss.write_index(two, str(tmp_path / "two.faiss"))
    with pytest.raises(ValueError, match=r"holds a faiss IndexIDMap2"):
        ApproximateIndex.load(tmp_path / "two.faiss")
    with pytest.raises(IsADirectoryError, match="it is a folder; name the index file"):
        ApproximateIndex.load(tmp_path)
    with pytest.raises(TypeError, match=r"path must be a str or os\.PathLike"):
        ApproximateIndex.load(None)  # type: ignore[arg-type]


def test_rows_out_of_float32_range_are_named_as_such_and_knobs_cannot_be_misspelt() -> None:
    big = GOOD.astype(np.float64)
    big[4, 0] = 1e300
    with pytest.raises(ValueError, match=r"matrix\[4\] overflows float32 .*rescale the row"):
        ApproximateIndex.build(big)
    tiny = GOOD.astype(np.float64)
    tiny[4] *= 1e-300
    with pytest.raises(ValueError, match=r"matrix\[4\] is all zeros in float32 \(its values underflow"):
        ApproximateIndex.build(tiny)
    index = ApproximateIndex.build(GOOD)
    with pytest.raises(AttributeError, match="n_probe"):
        index.n_probe = 64  # type: ignore[attr-defined]
