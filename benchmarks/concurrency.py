"""``max_concurrency="auto"`` against a Medium-like endpoint: the default of 5 in flight, and what the
endpoint's state says it serves, side by side in one run, on a loopback server in another process.

    python benchmarks/concurrency.py            # 12,000 texts per method (about 2 minutes)
    python benchmarks/concurrency.py --smoke    # a few hundred texts, no verdicts (CI)

The server (``benchmarks/_serve.py``) serves at most 16 requests at once (more queue) and holds each
for ``--request-ms`` + ``--item-ms`` per record; its control-plane ``GET
/api/2.0/serving-endpoints/{name}`` says the endpoint is a ready ``Medium`` one (8-16 provisioned
concurrency: 16). Its ceiling is ``16 x 32 / (request time at 32 records)`` items per second. Each
method is ``ClipClient`` or ``AsyncClipClient`` with default settings but ``max_concurrency``: the
default (5), or ``"auto"`` (which reads the state on the client's first call and sets the ceiling to
16 + 1). Every client is warmed up by one small call first (so ``"auto"`` has read the state), then
embeds the texts once, timed; every row is checked against what the server must have computed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _serve import TOKEN, Endpoint, expected_vector, machine, serve

SLOTS = 16
WORKLOAD_SIZE = "Medium"
BATCH = 32


@dataclass
class Run:
    label: str
    ceiling: int  # client.stats.max_concurrency after the run
    items: int
    seconds: float
    requests: int
    busy: float  # server slot-seconds
    max_at_server: int

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def timed(
    endpoint: Endpoint, label: str, n: int, call: Callable[[], Any]
) -> tuple[Any, float, dict[str, Any]]:
    before = endpoint.stats()
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    after = endpoint.stats()
    delta = {k: after[k] - before[k] for k in ("requests", "busy_slot_seconds")}
    delta["max_at_server"] = after["max_at_server"]
    return out, seconds, delta


def check(label: str, out: np.ndarray, texts: list[str]) -> None:
    want = np.stack([expected_vector("text", t) for t in texts]).astype(np.float32)
    if out.shape != want.shape or not np.array_equal(out, want):
        raise SystemExit(f"{label}: the rows are not the ones the server computed")


def run_sync(endpoint: Endpoint, label: str, texts: list[str], **options: Any) -> Run:
    from clip_client import ClipClient

    with ClipClient(host=endpoint.url, token=TOKEN, **options) as client:
        client.embed_texts([f"warm-up {i}" for i in range(64)])
        out, seconds, delta = timed(endpoint, label, len(texts), lambda: client.embed_texts(texts))
        return finished(label, client.stats.max_concurrency, texts, out, seconds, delta)


def run_async(endpoint: Endpoint, label: str, texts: list[str], **options: Any) -> Run:
    """The async client on one event loop of its own, timed by the same :func:`timed`."""
    from clip_client import AsyncClipClient

    loop = asyncio.new_event_loop()
    try:
        client = AsyncClipClient(host=endpoint.url, token=TOKEN, **options)
        loop.run_until_complete(client.embed_texts([f"warm-up {i}" for i in range(64)]))
        out, seconds, delta = timed(
            endpoint, label, len(texts), lambda: loop.run_until_complete(client.embed_texts(texts))
        )
        ceiling = client.stats.max_concurrency
        loop.run_until_complete(client.close())
    finally:
        loop.close()
    return finished(label, ceiling, texts, out, seconds, delta)


def finished(
    label: str, ceiling: int, texts: list[str], out: np.ndarray, seconds: float, delta: dict[str, Any]
) -> Run:
    """A run's record, once its rows are checked against what the server computed."""
    check(label, out, texts)
    return Run(
        label,
        ceiling,
        len(texts),
        seconds,
        delta["requests"],
        delta["busy_slot_seconds"],
        delta["max_at_server"],
    )


def report(endpoint: Endpoint, runs: dict[str, Run], smoke: bool) -> bool:
    top = endpoint.ceiling("text", BATCH)
    print(f"\nServer: {endpoint.describe()}; control plane: a ready {WORKLOAD_SIZE} endpoint.")
    print(f"Server ceiling at {BATCH} records per request: {top:,.1f} items/s. Client: {machine()}.\n")
    print(
        "| method | max_concurrency (resolved) | texts | requests | seconds | items/s | of server ceiling "
        "| server slots busy | most requests at the server |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in runs.values():
        busy = run.busy / (SLOTS * run.seconds)
        print(
            f"| {run.label} | {run.ceiling} | {run.items:,} | {run.requests:,} | {run.seconds:.2f} | "
            f"{run.rate:,.1f} | {run.rate / top:.1%} | {busy:.0%} | {run.max_at_server} |"
        )
    print()
    print("| client | auto / default |")
    print("|---|---:|")
    for client in ("ClipClient", "AsyncClipClient"):
        ratio = runs[f"{client}, auto"].rate / runs[f"{client}, default"].rate
        print(f"| {client} | {ratio:.2f}x |")
    if smoke:
        return True
    print()
    print("| target (issue 11) | measured | verdict |")
    print("|---|---:|---|")
    ok = True
    for client in ("ClipClient", "AsyncClipClient"):
        auto = runs[f"{client}, auto"].rate / top
        default = runs[f"{client}, default"].rate / top
        for what, value, passed in (
            (f'{client}, "auto" >= 90% of the server ceiling', auto, auto >= 0.90),
            (f"{client}, default (5) about a third (25-40%) of it", default, 0.25 <= default <= 0.40),
        ):
            ok &= passed
            print(f"| {what} | {value:.1%} | {'PASS' if passed else 'FAIL'} |")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few hundred texts; no verdicts")
    parser.add_argument("--texts", type=int, default=12_000, help="texts per method")
    parser.add_argument("--request-ms", type=float, default=200.0)
    parser.add_argument("--item-ms", type=float, default=2.0)
    args = parser.parse_args()
    n = 640 if args.smoke else args.texts

    runs: dict[str, Run] = {}
    with serve(SLOTS, args.request_ms, args.item_ms, workload_size=WORKLOAD_SIZE) as endpoint:
        for client, run in (("ClipClient", run_sync), ("AsyncClipClient", run_async)):
            for name, value in (("default", None), ("auto", "auto")):
                label = f"{client}, {name}"
                texts = [f"{label} text {i}" for i in range(n)]
                runs[label] = run(endpoint, label, texts, max_concurrency=value)
                print(f"{label}: {runs[label].rate:,.1f} items/s", file=sys.stderr, flush=True)
        ok = report(endpoint, runs, args.smoke)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
