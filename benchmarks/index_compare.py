"""Approximate nearest-neighbour structures side by side on the same data: faiss IVF with flat lists
(what `clip_client.index.ApproximateIndex.build` makes by default since issue 20, measured through
it), faiss HNSW (its `structure="hnsw"`, at faiss's and its deeper `efConstruction`), faiss IVF with
product-quantised lists (with and without an exact re-rank) and usearch's HNSW.

For each: build time, resident-memory growth while building (``/proc/self/statm``), queries/s
(1,000 queries in one batch, best of two calls) and recall@10 against the exact
``clip_client.search.cosine_topk`` (``|found & exact| / 10``, averaged over queries), at a few
values of each structure's search knob.

Data: ``benchmarks/search.py``'s clustered CLIP-like collection (a shared mean direction, topics,
clusters of about 100 rows, per-axis variance falling as ``1 / (1 + i)``, random row lengths; the
same generator as the figures in docs/benchmarks.md), 768-d float32. Queries are further points
from the same clusters. Every structure sees the same rows and queries, normalised once.

    python benchmarks/index_compare.py --smoke          # 3,000 x 32: seconds
    python benchmarks/index_compare.py                  # 200,000 x 768
    python benchmarks/index_compare.py --n 1000000      # goal: < 3 min, recall >= 0.99, >= 2,000 q/s

usearch is optional (``pip install usearch``): without it its rows are skipped and said so.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import clustered_matrix, resident_bytes

from clip_client.search import cosine_topk

MB = 1024 * 1024
K = 10

SIZES = {"smoke": (3_000, 32, 100), "default": (200_000, 768, 1000), "full": (1_000_000, 768, 1000)}


def unit(rows: np.ndarray) -> np.ndarray:
    out = np.array(rows, dtype=np.float32, order="C")
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist(), strict=True))
    return hits / exact.size


def timed_build(make: Callable[[], Any]) -> tuple[Any, float, float]:
    gc.collect()
    before = resident_bytes() or 0
    start = time.perf_counter()
    built = make()
    seconds = time.perf_counter() - start
    grown = ((resident_bytes() or 0) - before) / MB
    return built, seconds, grown


def timed_search(search: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    best, found = float("inf"), None
    for _ in range(2):
        start = time.perf_counter()
        found = search()
        best = min(best, time.perf_counter() - start)
    assert found is not None
    return found, best


def structures(
    rows: np.ndarray, n: int, d: int
) -> Iterable[tuple[str, Callable[[], Any], str, list[int], Any]]:
    """(label, build, knob name, knob values, search(built, queries, knob) -> ids)."""
    import faiss

    from clip_client.index import ApproximateIndex, default_nlist

    def hnsw(ef_construction: int) -> Callable[[], Any]:
        return lambda: ApproximateIndex.build(rows, structure="hnsw", ef_construction=ef_construction)

    def hnsw_search(index: Any, q: np.ndarray, ef: int) -> np.ndarray:
        return np.asarray(index.search(q, K, ef_search=ef).indices)

    yield "faiss HNSW32, efConstruction 40 (before)", hnsw(40), "ef_search", [64, 128, 256], hnsw_search
    yield "faiss HNSW32, efConstruction 128", hnsw(128), "ef_search", [64, 128, 256], hnsw_search

    def refined(spec: str, ef_construction: int) -> Callable[[], Any]:
        def build() -> Any:
            index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
            graph_owner = faiss.downcast_index(index.base_index)
            if isinstance(graph_owner, faiss.IndexPreTransform):
                graph_owner = faiss.downcast_index(graph_owner.index)
            graph_owner.hnsw.efConstruction = ef_construction
            if not index.is_trained:
                sample = np.random.default_rng(4).choice(n, size=min(n, 100_000), replace=False)
                index.train(rows[np.sort(sample)])
            for s in range(0, n, 65_536):
                index.add(rows[s : s + 65_536])
            return index

        return build

    def refined_hnsw_search(index: Any, q: np.ndarray, ef: int) -> np.ndarray:
        params = faiss.IndexRefineSearchParameters(
            k_factor=4, base_index_params=faiss.SearchParametersHNSW(efSearch=ef)
        )
        return np.asarray(index.search(q, K, params=params)[1])

    yield (
        "faiss HNSW32 over SQ8, efConstruction 64, + exact re-rank of 40",
        refined("HNSW32,SQ8,RFlat", 64),
        "ef_search",
        [64, 128, 256],
        refined_hnsw_search,
    )
    low = max(8, d // 4)
    yield (
        f"faiss PCA{low} then HNSW32, efConstruction 64, + exact re-rank of 40",
        refined(f"PCA{low},HNSW32,RFlat", 64),
        "ef_search",
        [64, 128, 256],
        refined_hnsw_search,
    )

    nlist = max(1, int(4 * np.sqrt(n)))

    def ivf(spec: str) -> Callable[[], Any]:
        def build() -> Any:
            index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(4).choice(n, size=min(n, 64 * nlist), replace=False)
            index.train(rows[np.sort(sample)])
            for s in range(0, n, 65_536):
                index.add(rows[s : s + 65_536])
            return index

        return build

    def ivf_search(index: Any, q: np.ndarray, nprobe: int) -> np.ndarray:
        faiss.extract_index_ivf(index).nprobe = nprobe
        return np.asarray(index.search(q, K)[1])

    def default_ivf() -> Any:
        return ApproximateIndex.build(rows)  # the default structure: IVF, default_nlist(n) cells

    def default_search(index: Any, q: np.ndarray, nprobe: int) -> np.ndarray:
        return np.asarray(index.search(q, K, nprobe=nprobe).indices)

    lists = default_nlist(n)
    probes = [p for p in (8, 16, 32, 128) if p <= nlist]
    yield (
        f"ApproximateIndex default: faiss IVF{lists},Flat",
        default_ivf,
        "nprobe",
        [p for p in (8, 16, 32, 128) if p <= lists],
        default_search,
    )
    pq, bits = max(1, d // 8), (8 if n >= 100_000 else 4)  # 2^bits centroids need 39 rows each
    yield f"faiss IVF{nlist},PQ{pq}x{bits}", ivf(f"IVF{nlist},PQ{pq}x{bits}"), "nprobe", probes, ivf_search

    def refined_search(index: Any, q: np.ndarray, nprobe: int) -> np.ndarray:
        faiss.extract_index_ivf(index).nprobe = nprobe
        params = faiss.IndexRefineSearchParameters(k_factor=8)
        return np.asarray(index.search(q, K, params=params)[1])

    yield (
        f"faiss IVF{nlist},PQ{pq}x{bits} + exact re-rank of 80",
        ivf(f"IVF{nlist},PQ{pq}x{bits},RFlat"),
        "nprobe",
        probes,
        refined_search,
    )

    try:
        from usearch.index import Index
    except ImportError:
        print("# usearch is not installed (pip install usearch): its rows are skipped")
        return

    def usearch(dtype: str, connectivity: int | None) -> Callable[[], Any]:
        def build() -> Any:
            index = Index(ndim=d, metric="ip", dtype=dtype, connectivity=connectivity)
            index.add(np.arange(n), rows, threads=os.cpu_count() or 1)
            return index

        return build

    def usearch_search(index: Any, q: np.ndarray, ef: int) -> np.ndarray:
        index.expansion_search = ef
        return np.asarray(index.search(q, K, threads=os.cpu_count() or 1).keys)

    yield (
        "usearch HNSW16 f32 (its defaults)",
        usearch("f32", None),
        "expansion_search",
        [64, 128, 256],
        usearch_search,
    )


def scale_rows(mode: str) -> list[str]:
    """The comparison as Markdown table lines, for `mode` in {"smoke", "default", "full"}
    (3,000 x 32; 200,000 x 768; 1,000,000 x 768)."""
    n, d, q = SIZES[mode]
    return compare(n, d, q)


def compare(n: int, d: int, q: int, only: set[str] | None = None) -> list[str]:
    start = time.perf_counter()
    rows = unit(clustered_matrix(n, d, seed=0))
    queries = unit(clustered_matrix(n, d, seed=1, rows=q))
    generated = time.perf_counter() - start
    exact_start = time.perf_counter()
    exact = cosine_topk(queries, rows, K).indices
    exact_seconds = time.perf_counter() - exact_start
    out = [
        (
            f"Index structures on {n:,} x {d} clustered CLIP-like float32 rows ({rows.nbytes / MB:,.0f} MiB, "
            f"generated in {generated:.0f} s), {q:,} queries, k={K}; {platform.machine()}, "
            f"{os.cpu_count()} cores. Exact cosine_topk: {q / exact_seconds:,.1f} queries/s."
        ),
        "",
        "| structure | build s | memory MiB | knob | queries/s | recall@10 |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for line in out:
        print(line, flush=True)
    for label, build, knob, values, search in structures(rows, n, d):
        if only is not None and not any(word in label for word in only):
            continue
        built, seconds, grown = timed_build(build)
        for i, value in enumerate(values):
            found, took = timed_search(lambda b=built, v=value, f=search: f(b, queries, v))
            line = (
                f"| {label} | {seconds:,.1f} | {grown:,.0f} | {knob} {value} | {q / took:,.0f} "
                f"| {recall(found, exact):.3f} |"
                if i == 0
                else f"| | | | {knob} {value} | {q / took:,.0f} | {recall(found, exact):.3f} |"
            )
            print(line, flush=True)
            out.append(line)
        del built
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="3,000 x 32: seconds")
    parser.add_argument("--n", type=int, default=None, help="rows (default 200,000)")
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument(
        "--only", nargs="*", default=None, help="structures whose label holds one of these words"
    )
    args = parser.parse_args()
    if args.smoke:
        n, d, q = SIZES["smoke"]
    else:
        n, d, q = (args.n or SIZES["default"][0]), args.d, args.queries
    compare(n, d, q, set(args.only) if args.only else None)


if __name__ == "__main__":
    main()
