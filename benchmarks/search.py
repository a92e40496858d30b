"""Search: ``clip_client.search.cosine_topk`` against the naive full product, the approximate
``clip_client.index.ApproximateIndex`` (faiss IVF by default; HNSW with ``--hnsw``) against
``cosine_topk``, and ``find_duplicates`` against the full similarity matrix, side by side in one run.

    python benchmarks/search.py            # 1,000,000 x 768 float32 (about 3 GB), 1,000 queries
    python benchmarks/search.py --n 200000 # a smaller collection, same layout
    python benchmarks/search.py --smoke    # 20,000 x 64, seconds, no verdicts (CI)

The collection is clustered, CLIP-like, because the data decides how well an approximate index
does: uniform random vectors in 768 dimensions have no neighbours worth the name (every pair is at a
cosine near 0), which is the worst case for any graph or cluster index and not what CLIP gives.
Real CLIP ViT-L/14 embeddings share a common direction (any two images have a positive cosine),
gather into topics and, within a topic, into near-identical subjects, and spread their variance over
a few hundred directions unevenly. The generator copies that shape: a shared mean, ``n / 10,000``
topics, ``n / 100`` cluster centres drawn around the topics, and each row a centre plus noise
scaled per cluster (0.5-1.0), every axis scaled by a power law (``(1 + i) ** -0.5``, so variance
falls off with the axis like an embedding's spectrum), then set to a random length (0.5-2.0; the
search normalises). Random pairs end up at a cosine of about 0.2 and each query's tenth neighbour at
about 0.8. Queries are fresh draws from the same clusters (not rows of the collection), as a text or
an image query near a topic is. Everything is seeded and generated a block at a time; the
collection's own memory is not counted as extra memory.

Exact: ``cosine_topk`` answers every query; its answers are the ground truth. The naive search,
run on the first ``--naive-queries`` queries, is what one writes by hand: normalise the whole matrix
(``matrix / np.linalg.norm(matrix, axis=1, keepdims=True)``), ``scores = normed @ q.T`` (an
``n x q`` array), then ``argpartition`` and a sort of the ``k`` best. Peak extra memory is
tracemalloc's peak during the call (numpy reports its buffers to tracemalloc), beyond what was
allocated before it. Both answers are checked against each other.

Approximate: ``ApproximateIndex.build`` with its defaults (IVF, ``default_nlist(n)`` cells fitted to
64 rows each), timed, with the process's resident memory before and after (faiss allocates outside
tracemalloc's view, so the index's memory is the growth of ``VmRSS``). Then every query at several
``nprobe`` values (best of three calls): throughput, speed-up per query over ``cosine_topk``, and
recall@10, the share of the exact top-``k`` rows the index returns (``|approx & exact| / k``,
averaged over queries).

With ``--hnsw``, the same queries also go to ``ApproximateIndex.build(structure="hnsw")`` at several
``ef_search`` values: the structure that was the default before issue 20.

``find_duplicates`` runs on a smaller set (``--dup-n`` random rows, with planted copies at cosine
0.99) beside the naive ``normed @ normed.T`` and ``np.nonzero`` of its upper triangle, which finds
the pairs but not yet the groups.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from clip_client.index import DEFAULT_EF_SEARCH, DEFAULT_NPROBE, ApproximateIndex
from clip_client.search import TopK, cosine_topk, find_duplicates

MB = 1024 * 1024


@dataclass
class Measured:
    label: str
    seconds: float
    peak_bytes: int
    result: Any


def measure(label: str, call: Callable[[], Any]) -> Measured:
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        start = time.perf_counter()
        result = call()
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return Measured(label, seconds, peak - base, result)


def random_matrix(n: int, d: int, seed: int, block: int = 65_536) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, block):
        e = min(n, s + block)
        out[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
        out[s:e] *= rng.uniform(0.5, 2.0, (e - s, 1)).astype(np.float32)
    return out


def clustered_matrix(
    n: int, d: int, *, seed: int, rows: int | None = None, block: int = 65_536
) -> np.ndarray:
    """``rows`` points (default ``n``) from the clusters of an ``n``-row CLIP-like collection (the
    module's docstring says how and why); the clusters depend on ``n`` and ``d`` only, the points
    on ``seed``."""
    layout = np.random.default_rng(12_345)
    axis_scale = ((1.0 + np.arange(d)) ** -0.5).astype(np.float32)
    axis_scale /= np.linalg.norm(axis_scale)
    mean = 0.8 * layout.standard_normal(d, dtype=np.float32) * axis_scale
    n_clusters = max(1, n // 100)
    n_topics = max(1, n_clusters // 100)
    topics = mean + layout.standard_normal((n_topics, d), dtype=np.float32) * axis_scale
    centres = topics[layout.integers(0, n_topics, n_clusters)]
    centres += 0.7 * layout.standard_normal((n_clusters, d), dtype=np.float32) * axis_scale
    spread = layout.uniform(0.5, 1.0, n_clusters).astype(np.float32)

    rng = np.random.default_rng(seed)
    count = n if rows is None else rows
    out = np.empty((count, d), dtype=np.float32)
    for s in range(0, count, block):
        e = min(count, s + block)
        label = rng.integers(0, n_clusters, e - s)
        out[s:e] = rng.standard_normal((e - s, d), dtype=np.float32)
        out[s:e] *= spread[label, np.newaxis] * axis_scale
        out[s:e] += centres[label]
        out[s:e] *= rng.uniform(0.5, 2.0, (e - s, 1)).astype(np.float32)
    return out


def resident_bytes() -> int | None:
    """The process's resident memory (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def recall_at_k(found: TopK, exact: TopK) -> float:
    hits = sum(
        len(set(a) & set(b)) for a, b in zip(found.indices.tolist(), exact.indices.tolist(), strict=True)
    )
    return hits / exact.indices.size


def naive_topk(queries: np.ndarray, matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    normed = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = normed @ qn.T  # (n, q)
    top = np.argpartition(-scores, k - 1, axis=0)[:k].T  # (q, k)
    top_scores = np.take_along_axis(scores.T, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


def naive_pairs(matrix: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    normed = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    sims = normed @ normed.T
    a, b = np.nonzero(np.triu(sims >= threshold, k=1))
    return a, b


def plant_copies(matrix: np.ndarray, copies: int, cos: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d = matrix.shape
    picks = rng.choice(n, size=2 * copies, replace=False)
    for base, dup in zip(picks[:copies], picks[copies:], strict=True):
        u = matrix[base] / np.linalg.norm(matrix[base])
        w = rng.standard_normal(d).astype(np.float32)
        w -= (w @ u) * u
        w /= np.linalg.norm(w)
        matrix[dup] = cos * u + np.sqrt(1 - cos * cos) * w


def row(m: Measured, items: int, unit: str) -> str:
    return f"| {m.label} | {m.seconds:.2f} | {items / m.seconds:,.1f} {unit} | {m.peak_bytes / MB:,.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; no verdicts")
    parser.add_argument("--n", type=int, default=1_000_000, help="rows in the collection")
    parser.add_argument("--d", type=int, default=768, help="embedding width (ViT-L/14: 768)")
    parser.add_argument("--queries", type=int, default=1000, help="queries for exact and approximate")
    parser.add_argument("--naive-queries", type=int, default=100, help="of those, for the naive search")
    parser.add_argument(
        "--ef-search",
        type=int,
        nargs="+",
        default=sorted({16, 32, DEFAULT_EF_SEARCH, 128, 256}),
        help="with --hnsw: its search knob values to measure",
    )
    parser.add_argument(
        "--nprobe",
        type=int,
        nargs="+",
        default=sorted({4, 8, DEFAULT_NPROBE, 32, 64}),
        help="ApproximateIndex (IVF, the default) search knob values to measure",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument(
        "--hnsw",
        action="store_true",
        help='also measure ApproximateIndex(structure="hnsw"), the default before issue 20',
    )
    parser.add_argument("--dup-n", type=int, default=20_000, help="rows for find_duplicates")
    parser.add_argument("--dup-chunk-rows", type=int, default=2048)
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    if args.smoke:
        args.n, args.d, args.queries, args.dup_n, args.dup_chunk_rows = 20_000, 64, 16, 2_000, 256
        args.naive_queries = 16

    print(
        f"# search on {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"faiss {faiss_version()}; tracemalloc peaks are extra memory beyond the inputs"
    )
    matrix, queries, exact = bench_topk(args)
    bench_approximate(args, matrix, queries, exact, "ivf", "nprobe", args.nprobe, DEFAULT_NPROBE)
    if args.hnsw:
        bench_approximate(
            args, matrix, queries, exact, "hnsw", "ef_search", args.ef_search, DEFAULT_EF_SEARCH
        )
    del matrix
    bench_duplicates(args)


def faiss_version() -> str:
    import faiss  # the index extra

    return str(faiss.__version__)


def bench_topk(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, Measured]:
    start = time.perf_counter()
    matrix = clustered_matrix(args.n, args.d, seed=0)
    queries = clustered_matrix(args.n, args.d, seed=1, rows=args.queries)
    print(
        f"# clustered CLIP-like collection {args.n:,} x {args.d} float32 ({matrix.nbytes / MB:,.0f} MiB, "
        f"generated in {time.perf_counter() - start:.1f} s); {args.queries} queries "
        f"({args.naive_queries} for the naive search), k={args.k}, chunk_rows={args.chunk_rows}\n"
    )

    exact = measure(
        "cosine_topk (chunked)",
        lambda: cosine_topk(queries, matrix, args.k, chunk_rows=args.chunk_rows),
    )
    few = queries[: args.naive_queries]
    naive = measure("naive: normalise all, matrix @ q.T", lambda: naive_topk(few, matrix, args.k))
    naive_idx, naive_scores = naive.result
    naive.result = None  # free its arrays before the index is built
    first = exact.result.scores[: len(few)]
    if not np.allclose(first, naive_scores, atol=1e-5):
        raise SystemExit("cosine_topk and the naive search disagree on the scores")
    same = np.mean(
        [
            set(a) == set(b)
            for a, b in zip(exact.result.indices[: len(few)].tolist(), naive_idx.tolist(), strict=True)
        ]
    )

    print("| top-k method | seconds | throughput | peak extra MiB |")
    print("|---|---:|---:|---:|")
    print(row(exact, args.queries, "queries/s"))
    print(row(naive, len(few), "queries/s"))
    print()
    print("| naive / cosine_topk | ratio |")
    print("|---|---:|")
    per_query_naive = naive.seconds / len(few)
    per_query_exact = exact.seconds / args.queries
    print(f"| time per query | {per_query_naive / per_query_exact:.2f}x |")
    print(f"| peak extra memory | {naive.peak_bytes / max(exact.peak_bytes, 1):.1f}x |")
    print(f"| queries with the same top-{args.k} rows | {same:.0%} |")
    return matrix, queries, exact


def bench_approximate(
    args: argparse.Namespace,
    matrix: np.ndarray,
    queries: np.ndarray,
    exact: Measured,
    structure: Any,
    knob: str,
    values: list[int],
    default: int,
) -> None:
    before = resident_bytes()
    start = time.perf_counter()
    index = ApproximateIndex.build(matrix, structure=structure)
    build_seconds = time.perf_counter() - start
    after = resident_bytes()
    grown = "n/a" if before is None or after is None else f"{(after - before) / MB:,.0f} MiB"
    print(
        f"\n# {index!r}: built in {build_seconds:.1f} s ({args.n / build_seconds:,.0f} rows/s), "
        f"resident memory grew by {grown}; {args.queries} queries, k={args.k}\n"
    )
    exact_per_query = exact.seconds / args.queries
    print(f"| search | {knob} | seconds | throughput | speed-up per query | recall@10 |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| cosine_topk (exact) | - | {exact.seconds:.2f} | {args.queries / exact.seconds:,.1f} queries/s "
        f"| 1.0x | 1.000 |"
    )
    default_recall = None
    for value in values:
        seconds = float("inf")
        for _ in range(3):  # best of three: the first call also warms faiss's thread pool
            start = time.perf_counter()
            found = index.search(queries, args.k, **{knob: value})
            seconds = min(seconds, time.perf_counter() - start)
        got = recall_at_k(found, exact.result)
        if value == default:
            default_recall = got
        label = f"ApproximateIndex {structure.upper()}" + (" (default)" if value == default else "")
        print(
            f"| {label} | {value} | {seconds:.3f} | {args.queries / seconds:,.1f} queries/s "
            f"| {exact_per_query / (seconds / args.queries):,.1f}x | {got:.3f} |"
        )
    if default_recall is not None and not args.smoke:
        verdict = "meets" if default_recall >= 0.99 else "MISSES"
        print(f"\nrecall@{args.k} at the default {knob}={default}: {default_recall:.3f}, {verdict} 0.99")


def bench_duplicates(args: argparse.Namespace) -> None:
    dup = random_matrix(args.dup_n, args.d, seed=2)
    planted = max(1, args.dup_n // 200)
    plant_copies(dup, planted, 0.99, seed=3)
    ours = measure(
        "find_duplicates (blocks, union-find)",
        lambda: find_duplicates(dup, args.threshold, chunk_rows=args.dup_chunk_rows),
    )
    full = measure("naive: normed @ normed.T, pairs only", lambda: naive_pairs(dup, args.threshold))
    grouped = {int(i) for g in ours.result for i in g.indices}
    paired = set(full.result[0].tolist()) | set(full.result[1].tolist())
    if grouped != paired:
        raise SystemExit("find_duplicates and the full similarity matrix disagree on the rows")
    pairs = len(full.result[0])
    print(
        f"\n# find_duplicates on {args.dup_n:,} x {args.d} float32, {planted} planted copies at "
        f"cosine 0.99, threshold {args.threshold}: {len(ours.result)} groups, {pairs} pairs\n"
    )
    print("| duplicates method | seconds | throughput | peak extra MiB |")
    print("|---|---:|---:|---:|")
    for m in (ours, full):
        print(row(m, args.dup_n, "rows/s"))
    print()
    print("| naive / find_duplicates | ratio |")
    print("|---|---:|")
    print(f"| time | {full.seconds / ours.seconds:.2f}x |")
    print(f"| peak extra memory | {full.peak_bytes / max(ours.peak_bytes, 1):.1f}x |")


if __name__ == "__main__":
    main()
