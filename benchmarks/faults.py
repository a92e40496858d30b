"""Reliability at scale: 20,000 texts through a serving endpoint that fails 30% of requests.

Runs ``ClipClient`` twice against the loopback serving server of the tests
(``tests/serving_server.py``), started in this process:

* fault-free: every request answered after the same latency (5 ms by default);
* faults: the same, but about 30% of requests fail, spread evenly over every kind the server injects
  (429 with and without ``Retry-After``, 503, 500, plain-text 504, dropped connection, a reply slower
  than the client's timeout, a 200 one row short, a 200 of HTML).

The client keeps its defaults except a fast retry backoff and a timeout short enough for the slow
replies to count as timeouts. Every returned row is checked against the vector the server derives
from its input; the script prints rows checked, rows wrong, retries, overloads, splits, the final
concurrency limit and items/s of both runs with their ratio, and exits non-zero if any row is wrong
or missing::

    python benchmarks/faults.py              # 20,000 texts
    python benchmarks/faults.py --smoke      # 500 texts in batches of 8: a CI smoke run, seconds

Client and server share this process (and its GIL), so absolute items/s understate a real client;
the ratio between the two runs is the number to read.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving_server import FAULT_KINDS, Faults, ServingServer, expected_vector

from clip_client import ClipClient


@dataclass
class Run:
    name: str
    checked: int
    wrong: int
    seconds: float
    requests: int
    retries: int
    overloads: int
    splits: int
    limit: str
    posts: int
    injected: int

    @property
    def rate(self) -> float:
        return self.checked / self.seconds if self.seconds else float("nan")


def texts_for(n: int) -> list[str]:
    """Distinct texts of varied length, like captions."""
    words = ["a", "photo", "of", "red", "blue", "cat", "dog", "car", "on", "the", "beach", "at", "night"]
    return [f"{i}: " + " ".join(words[(i * 7 + k) % len(words)] for k in range(3 + i % 12)) for i in range(n)]


def count_wrong(out: np.ndarray, expected: np.ndarray) -> int:
    """Rows that differ from their expected vector, plus rows missing or extra."""
    if out.ndim != 2 or out.shape[1] != expected.shape[1]:
        return len(expected)
    n = min(len(out), len(expected))
    differing = int(np.count_nonzero(np.any(out[:n] != expected[:n], axis=1)))
    return differing + abs(len(out) - len(expected))


def run(
    name: str, texts: list[str], expected: np.ndarray, args: argparse.Namespace, faults: Faults | None
) -> Run:
    with ServingServer(latency=args.latency, faults=faults) as server:
        kwargs = server.client_kwargs(
            retry_backoff=args.backoff, retry_backoff_max=10 * args.backoff, timeout=args.timeout
        )
        if args.batch_size is not None:
            kwargs["batch_size"] = args.batch_size
        with ClipClient(**kwargs) as client:
            start = time.perf_counter()
            try:
                out = client.embed_texts(texts)
            except Exception as exc:  # counted as every row wrong, and shown
                print(f"{name}: the call failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                out = np.empty((0, expected.shape[1]), dtype=np.float32)
            seconds = time.perf_counter() - start
            stats = client.stats
        return Run(
            name=name,
            checked=len(expected),
            wrong=count_wrong(out, expected),
            seconds=seconds,
            requests=stats.requests,
            retries=stats.retries,
            overloads=stats.overloads,
            splits=stats.splits,
            limit=f"{stats.concurrency_limit}/{stats.max_concurrency}",
            posts=server.posts(),
            injected=sum(server.injected.values()),
        )


def table(runs: list[Run]) -> str:
    rows = [
        ("rows checked", lambda r: f"{r.checked:,}"),
        ("rows wrong", lambda r: f"{r.wrong:,}"),
        ("requests (client)", lambda r: f"{r.requests:,}"),
        ("POSTs (server)", lambda r: f"{r.posts:,}"),
        ("faults injected", lambda r: f"{r.injected:,}"),
        ("retries", lambda r: f"{r.retries:,}"),
        ("overloads (429/503)", lambda r: f"{r.overloads:,}"),
        ("splits", lambda r: f"{r.splits:,}"),
        ("final concurrency limit", lambda r: r.limit),
        ("seconds", lambda r: f"{r.seconds:.2f}"),
        ("items/s", lambda r: f"{r.rate:,.0f}"),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':{width}}  " + "  ".join(f"{r.name:>14}" for r in runs)]
    lines += [f"{label:{width}}  " + "  ".join(f"{fmt(r):>14}" for r in runs) for label, fmt in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="500 texts: a quick CI run")
    parser.add_argument(
        "-n", type=int, default=None, help="texts to embed (default 20,000; 500 with --smoke)"
    )
    parser.add_argument("--fault-rate", type=float, default=0.30, help="share of requests that fail")
    parser.add_argument("--latency", type=float, default=0.005, help="server seconds per request")
    parser.add_argument("--timeout", type=float, default=0.5, help="client timeout per attempt (s)")
    parser.add_argument("--slow-delay", type=float, default=0.8, help="a slow reply's delay (s)")
    parser.add_argument("--backoff", type=float, default=0.001, help="first retry wait (s)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the client's (8 with --smoke)")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    n = args.n if args.n is not None else (500 if args.smoke else 20_000)
    if args.smoke and args.batch_size is None:
        args.batch_size = 8  # enough requests for every kind of fault to show up

    texts = texts_for(n)
    expected = np.stack([expected_vector("text", t) for t in texts])
    faults = Faults.spread(args.fault_rate, slow_delay=args.slow_delay, seed=args.seed)

    print(
        f"{n:,} texts, ClipClient defaults but timeout={args.timeout}s, backoff={args.backoff}s"
        + (f", batch_size={args.batch_size}" if args.batch_size else "")
        + "; "
        f"server latency {args.latency * 1000:.0f} ms; python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"faults: {args.fault_rate:.0%} of requests, {args.fault_rate / len(FAULT_KINDS):.1%} each of "
        f"{', '.join(FAULT_KINDS)}; slow replies after {args.slow_delay}s"
    )
    clean = run("fault-free", texts, expected, args, None)
    faulty = run(f"{args.fault_rate:.0%} faults", texts, expected, args, faults)
    print()
    print(table([clean, faulty]))
    print()
    print(f"throughput with faults / fault-free: {faulty.rate / clean.rate:.2f}x")
    wrong = clean.wrong + faulty.wrong
    if wrong:
        print(f"FAIL: {wrong:,} rows wrong or missing", file=sys.stderr)
        return 1
    print("OK: every row right in both runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
