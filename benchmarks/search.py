"""Exact search: ``clip_client.search.cosine_topk`` against the naive full product, and
``find_duplicates`` against the full similarity matrix, side by side in one run.

    python benchmarks/search.py            # 1,000,000 x 768 float32 (about 3 GB), 100 queries
    python benchmarks/search.py --smoke    # 20,000 x 64, seconds, no verdicts (CI)

The collection is random float32 rows at random lengths, generated a block at a time (its 3 GB is
not counted as extra memory). The naive search is what one writes by hand: normalise the whole
matrix (``matrix / np.linalg.norm(matrix, axis=1, keepdims=True)``), ``scores = normed @ q.T``
(an ``n x q`` array), then ``argpartition`` and a sort of the ``k`` best. Peak extra memory is
tracemalloc's peak during the call (numpy reports its buffers to tracemalloc), beyond what was
allocated before it. Both answers are checked against each other.

``find_duplicates`` runs on a smaller set (``--dup-n`` rows, with planted copies at cosine 0.99)
beside the naive ``normed @ normed.T`` and ``np.nonzero`` of its upper triangle, which finds the
pairs but not yet the groups.
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

from clip_client.search import cosine_topk, find_duplicates

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
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--dup-n", type=int, default=20_000, help="rows for find_duplicates")
    parser.add_argument("--dup-chunk-rows", type=int, default=2048)
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    if args.smoke:
        args.n, args.d, args.queries, args.dup_n, args.dup_chunk_rows = 20_000, 64, 16, 2_000, 256

    print(
        f"# exact search on {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}; "
        f"tracemalloc peaks are extra memory beyond the inputs"
    )
    bench_topk(args)
    bench_duplicates(args)


def bench_topk(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    matrix = random_matrix(args.n, args.d, seed=0)
    queries = np.random.default_rng(1).standard_normal((args.queries, args.d), dtype=np.float32)
    print(
        f"# collection {args.n:,} x {args.d} float32 ({matrix.nbytes / MB:,.0f} MiB, generated in "
        f"{time.perf_counter() - start:.1f} s); {args.queries} queries, k={args.k}, "
        f"chunk_rows={args.chunk_rows}\n"
    )

    exact = measure(
        "cosine_topk (chunked)",
        lambda: cosine_topk(queries, matrix, args.k, chunk_rows=args.chunk_rows),
    )
    naive = measure("naive: normalise all, matrix @ q.T", lambda: naive_topk(queries, matrix, args.k))
    naive_idx, naive_scores = naive.result
    if not np.allclose(exact.result.scores, naive_scores, atol=1e-5):
        raise SystemExit("cosine_topk and the naive search disagree on the scores")
    same = np.mean(
        [set(a) == set(b) for a, b in zip(exact.result.indices.tolist(), naive_idx.tolist(), strict=True)]
    )

    print("| top-k method | seconds | throughput | peak extra MiB |")
    print("|---|---:|---:|---:|")
    for m in (exact, naive):
        print(row(m, args.queries, "queries/s"))
    print()
    print("| naive / cosine_topk | ratio |")
    print("|---|---:|")
    print(f"| time | {naive.seconds / exact.seconds:.2f}x |")
    print(f"| peak extra memory | {naive.peak_bytes / max(exact.peak_bytes, 1):.1f}x |")
    print(f"| queries with the same top-{args.k} rows | {same:.0%} |")


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
