"""What the SQLite embedding cache costs: texts embedded against a zero-latency endpoint (in its own
process) with no cache, with a new cache file (cold: every lookup misses, every row is stored) and
with that file filled (warm: every row is a hit), in rows per second; and the file's bytes per row.

    python benchmarks/cache_overhead.py            # 100,000 texts, each configuration twice
    python benchmarks/cache_overhead.py --full     # 1,000,000 texts, each configuration once
    python benchmarks/cache_overhead.py --smoke    # 10,000 texts, once (CI): the numbers mean little

Goals (issue 20): cold >= 0.85x the throughput with no cache; at most 1.3x the vector's bytes
(768 float32 = 3,072) per row on disk. With no latency the client's CPU is the bottleneck, so
this is the cache's worst case: against a real endpoint the requests dominate.

The rows are read as a stream (`iter_embed_texts`, as the CLI does) and spot-checked against the
server's deterministic vectors; the disk is the file plus its WAL after the client has closed
(SQLite checkpoints on the last close), with no VACUUM.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _serve import TOKEN, Endpoint, expected_vector, machine, serve

VECTOR_BYTES = 768 * 4
GOAL_RATIO = 0.85
GOAL_DISK = 1.3
_MODES = {"smoke": (10_000, 1), "default": (100_000, 2), "full": (1_000_000, 1)}


def texts_for(n: int, tag: str = "") -> list[str]:
    words = ["a", "photo", "of", "the", "red", "car", "dog", "cat", "on", "in", "snow", "beach"]
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, 6)) + f" #{tag}{i}" for i in range(n)]


def run(endpoint: Endpoint, texts: Sequence[str], cache: Path | None) -> tuple[float, float]:
    """Rows per second of one pass (a new client; its connections warmed on other texts first),
    and this process's CPU per row in µs (every thread: the cache's writer too; not the server's).
    On a shared machine the CPU varies less than the wall clock."""
    from clip_client import ClipClient

    checks = {0, len(texts) // 2, len(texts) - 1}
    with ClipClient(host=endpoint.url, token=TOKEN, cache=cache) as client:
        for _ in client.iter_embed_texts(texts_for(256, tag="warm-up ")):
            pass
        start, cpu = time.perf_counter(), time.process_time()
        with client.iter_embed_texts(texts) as stream:
            for i, row in stream:
                if i in checks and not np.array_equal(row, expected_vector("text", texts[i])):
                    raise SystemExit(f"wrong row for text {i}")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(texts) / elapsed, cpu / len(texts) * 1e6


def disk_per_row(path: Path) -> float:
    wal = Path(f"{path}-wal")
    size = path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    with sqlite3.connect(path) as db:
        (rows,) = db.execute("SELECT count(*) FROM embeddings").fetchone()
    return float(size / rows)


def measure(n: int, repeats: int) -> dict[str, list[float]]:
    texts = texts_for(n)
    found: dict[str, list[float]] = {"disk": []}
    folder = Path(tempfile.mkdtemp(prefix="cache_overhead"))
    try:
        with serve(slots=4, request_ms=0, item_ms=0) as endpoint:
            for r in range(repeats):  # interleaved, so that a slower minute of the machine hits all three
                path = folder / f"cache{r}.sqlite"
                for label, cache in (("off", None), ("cold", path), ("warm", path)):
                    rate, cpu = run(endpoint, texts, cache)
                    found.setdefault(label, []).append(rate)
                    found.setdefault(f"{label} cpu", []).append(cpu)
                found["disk"].append(disk_per_row(path))
                path.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return found


def scale_rows(mode: str) -> list[str]:
    """The Markdown table of one run (`mode`: "smoke", "default" or "full"), for `benchmarks/scale.py`."""
    n, repeats = _MODES[mode]
    found = measure(n, repeats)

    def each(values: list[float], fmt: str) -> str:
        return " / ".join(format(v, fmt) for v in values)

    cold = [c / o for c, o in zip(found["cold"], found["off"], strict=True)]
    warm = [w / o for w, o in zip(found["warm"], found["off"], strict=True)]
    disk = [d / VECTOR_BYTES for d in found["disk"]]
    verdict = "" if mode == "smoke" else (" (goal met)" if min(cold) >= GOAL_RATIO else " (goal missed)")
    disk_verdict = "" if mode == "smoke" else (" (goal met)" if max(disk) <= GOAL_DISK else " (goal missed)")
    return [
        f"| cache, {n:,} texts, zero-latency endpoint ({repeats} run{'s' * (repeats > 1)} each) | value |",
        "|---|---:|",
        f"| no cache: rows/s | {each(found['off'], ',.0f')} |",
        f"| cache cold (every row stored): rows/s | {each(found['cold'], ',.0f')} |",
        f"| cache warm (every row a hit): rows/s | {each(found['warm'], ',.0f')} |",
        f"| cold / no cache (goal >= {GOAL_RATIO}) | {each(cold, '.2f')}{verdict} |",
        f"| warm / no cache | {each(warm, '.2f')} |",
        f"| client CPU per row, µs: no cache | {each(found['off cpu'], '.1f')} |",
        f"| client CPU per row, µs: cache cold | {each(found['cold cpu'], '.1f')} |",
        f"| client CPU per row, µs: cache warm | {each(found['warm cpu'], '.1f')} |",
        f"| disk per row, bytes | {each(found['disk'], ',.0f')} |",
        f"| disk per row / vector (goal <= {GOAL_DISK}) | {each(disk, '.3f')}{disk_verdict} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--smoke", action="store_true", help="10,000 texts, once (CI)")
    group.add_argument("--full", action="store_true", help="1,000,000 texts, once")
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "full" if args.full else "default"
    import clip_client

    print(f"# cache_overhead{' (smoke)' if args.smoke else ''}: {machine()}")
    print(
        f"# clip_client {clip_client.__version__}, SQLite {sqlite3.sqlite_version}; "
        "server: zero latency, 4 slots, its own process"
    )
    print()
    for line in scale_rows(mode):
        print(line)
    if args.smoke:
        print("\nsmoke run: targets not evaluated (few texts, one run: these numbers mean little)")


if __name__ == "__main__":
    main()
