"""`find_duplicates` at scale: the approximate method (k-means cells, a range search within each
row's 4 nearest cells) against the exact one (every pair), on planted near-duplicates.

Data: ``benchmarks/search.py``'s clustered CLIP-like collection (768-d float32), into which
near-duplicates are planted: ``n / 100`` base rows each get 1 to 3 copies at cosines drawn uniformly
from [0.955, 0.999] to the base, at random lengths, and 5 base rows get 60 copies each (groups far
larger than any per-row neighbour count). Threshold 0.95.

Measured, for each size:

- **time** of each method on the same rows (exact only where it takes minutes, not hours);
- **planted-pair recall**: the share of the planted (base, copy) pairs that end in one group;
- **sampled-pair recall**: 2,000 random rows plus 2,000 planted copies are compared exactly with
  every row of the collection (a block range search); each pair found at cosine >= 0.95 is a true
  duplicate pair, and the recall is the share of them that the approximate groups join. This is
  the exact method on a subsample, which stays affordable at 1,000,000 rows.
- where both methods ran on the whole input, whether the groups are identical.

    python benchmarks/dedupe_scale.py --smoke      # 5,000 x 64, seconds
    python benchmarks/dedupe_scale.py              # 50,000 both methods, 200,000 approximate
    python benchmarks/dedupe_scale.py --full       # ... and 1,000,000 approximate (about 3 GB)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import clustered_matrix, resident_bytes

from clip_client.search import DuplicateGroup, find_duplicates

MB = 1024 * 1024
THRESHOLD = 0.95

PLANS = {
    "smoke": {"d": 64, "both": 5_000, "approximate": []},
    "default": {"d": 768, "both": 50_000, "approximate": [200_000]},
    "full": {"d": 768, "both": 50_000, "approximate": [200_000, 1_000_000]},
}


def planted(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The collection with near-duplicates planted (module docstring), and the planted pairs
    (int64, shape (p, 2): base, copy)."""
    m = clustered_matrix(n, d, seed=seed)
    rng = np.random.default_rng(seed + 100)
    counts = rng.integers(1, 4, n // 100)
    big = 60 if n >= 5_000 else 5
    spots = rng.permutation(n)
    pairs = []
    at = 0
    for copies in [*counts.tolist(), *[big] * 5]:
        base = int(spots[at])
        at += 1
        u = m[base] / np.linalg.norm(m[base])
        for _ in range(copies):
            j = int(spots[at])
            at += 1
            w = rng.standard_normal(d).astype(np.float32)
            w -= (w @ u) * u
            w /= np.linalg.norm(w)
            c = rng.uniform(0.955, 0.999)
            m[j] = (c * u + np.sqrt(1 - c * c) * w) * rng.uniform(0.5, 2.0)
            pairs.append((base, j))
    return m, np.array(pairs, dtype=np.int64)


def labels_of(groups: list[DuplicateGroup], n: int) -> np.ndarray:
    """Each row's group number, or -1 for rows in no group."""
    out = np.full(n, -1, dtype=np.int64)
    for g, group in enumerate(groups):
        out[group.indices] = g
    return out


def joined(labels: np.ndarray, pairs: np.ndarray) -> float:
    a, b = labels[pairs[:, 0]], labels[pairs[:, 1]]
    return float(np.mean((a == b) & (a >= 0))) if len(pairs) else 1.0


def sampled_true_pairs(m: np.ndarray, planted_pairs: np.ndarray, seed: int = 7) -> np.ndarray:
    """Every pair at cosine >= THRESHOLD involving a sampled row (exact, block range search)."""
    n = len(m)
    rng = np.random.default_rng(seed)
    copies = planted_pairs[:, 1]
    sample = np.unique(
        np.concatenate(
            [
                rng.choice(n, min(n, 2000), replace=False),
                rng.choice(copies, min(len(copies), 2000), replace=False),
            ]
        )
    )
    q = m[sample] / np.linalg.norm(m[sample], axis=1, keepdims=True)
    found = []
    for s in range(0, n, 65_536):
        block = m[s : s + 65_536]
        block = block / np.linalg.norm(block, axis=1, keepdims=True)
        a, b = np.nonzero(q @ block.T >= THRESHOLD)
        b = b + s
        keep = sample[a] != b
        found.append(np.stack([sample[a][keep], b[keep]], axis=1))
    return np.concatenate(found)


def timed(call: object) -> tuple[list[DuplicateGroup], float, float]:
    gc.collect()
    before = resident_bytes() or 0
    start = time.perf_counter()
    groups = call()  # type: ignore[operator]
    return groups, time.perf_counter() - start, ((resident_bytes() or 0) - before) / MB


def scale_rows(mode: str) -> list[str]:
    """The measurements as Markdown table lines, for `mode` in {"smoke", "default", "full"}."""
    plan = PLANS[mode]
    d = int(plan["d"])  # type: ignore[call-overload]
    out = [
        (
            f"find_duplicates at threshold {THRESHOLD} on clustered CLIP-like {d}-d float32 rows with "
            f"planted near-duplicates; {platform.machine()}, {os.cpu_count()} cores."
        ),
        "",
        (
            "| rows | method | seconds | RSS after - before MiB | groups | planted-pair recall "
            "| sampled-pair recall | same groups as exact |"
        ),
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for line in out:
        print(line, flush=True)

    def emit(line: str) -> None:
        print(line, flush=True)
        out.append(line)

    n = int(plan["both"])  # type: ignore[call-overload]
    m, pairs = planted(n, d)
    truth = sampled_true_pairs(m, pairs)
    exact, te, me = timed(lambda m=m: find_duplicates(m, THRESHOLD, method="exact"))
    approx, ta, ma = timed(lambda m=m: find_duplicates(m, THRESHOLD, method="approximate"))
    same = [g.indices.tolist() for g in exact] == [g.indices.tolist() for g in approx]
    for label, groups, t, mem in (("exact", exact, te, me), ("approximate", approx, ta, ma)):
        lab = labels_of(groups, n)
        emit(
            f"| {n:,} | {label} | {t:,.1f} | {mem:,.0f} | {len(groups):,} | {joined(lab, pairs):.4f} "
            f"| {joined(lab, truth):.4f} ({len(truth):,} pairs) | {'yes' if same else 'NO'} |"
        )
    emit(f"| {n:,} | exact / approximate time | {te / ta:.1f}x | | | | | |")
    del m, exact, approx
    for n in plan["approximate"]:  # type: ignore[attr-defined]
        m, pairs = planted(n, d)
        truth = sampled_true_pairs(m, pairs)
        approx, ta, ma = timed(lambda m=m: find_duplicates(m, THRESHOLD, method="approximate"))
        lab = labels_of(approx, n)
        emit(
            f"| {n:,} | approximate | {ta:,.1f} | {ma:,.0f} | {len(approx):,} | {joined(lab, pairs):.4f} "
            f"| {joined(lab, truth):.4f} ({len(truth):,} pairs) | (exact not run) |"
        )
        del m, approx
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="5,000 x 64, seconds")
    group.add_argument("--full", action="store_true", help="also 1,000,000 x 768 (about 3 GB)")
    args = parser.parse_args()
    scale_rows("smoke" if args.smoke else "full" if args.full else "default")


if __name__ == "__main__":
    main()
