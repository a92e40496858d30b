"""The client's own CPU cost: time.process_time of this process per 1,000 text embeddings against a
zero-latency server in another process, for ClipClient, AsyncClipClient and databricks-sdk's
``serving_endpoints.query`` at the same batch size; then the response parsing alone, by parser.

    python benchmarks/overhead.py            # 4,000 texts x 3 passes per client, 32x768 answers
    python benchmarks/overhead.py --smoke    # a few hundred texts, one pass (CI)

``process_time`` counts every thread of this process (the clients' request threads included) and
nothing of the server's, so it is the work the client itself does: request building, JSON, HTTP,
parsing into numpy, reassembly.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _serve import TEXT_ENDPOINT, TOKEN, Endpoint, expected_vector, machine, serve

from clip_client._core import wire as _wire
from clip_client.errors import ResponseFormatError

BATCH = 32


# -- the clients ---------------------------------------------------------------------------------------


def run_clip(endpoint: Endpoint, texts: Sequence[str], passes: int) -> list[tuple[float, float]]:
    from clip_client import ClipClient

    out = []
    with ClipClient(host=endpoint.url, token=TOKEN, batch_size=BATCH) as client:
        client.embed_texts(texts[:256])  # warm-up: connections, imports, first allocations
        for _ in range(passes):
            cpu, wall = time.process_time(), time.perf_counter()
            result = client.embed_texts(texts)
            out.append((time.process_time() - cpu, time.perf_counter() - wall))
            check("ClipClient", result, texts)
    return out


def run_async(endpoint: Endpoint, texts: Sequence[str], passes: int) -> list[tuple[float, float]]:
    from clip_client import AsyncClipClient

    async def go() -> list[tuple[float, float]]:
        out = []
        async with AsyncClipClient(host=endpoint.url, token=TOKEN, batch_size=BATCH) as client:
            await client.embed_texts(texts[:256])
            for _ in range(passes):
                cpu, wall = time.process_time(), time.perf_counter()
                result = await client.embed_texts(texts)
                out.append((time.process_time() - cpu, time.perf_counter() - wall))
                check("AsyncClipClient", result, texts)
        return out

    return asyncio.run(go())


def run_sdk(endpoint: Endpoint, texts: Sequence[str], passes: int) -> list[tuple[float, float]]:
    from databricks.sdk import WorkspaceClient

    logging.getLogger("databricks.sdk").setLevel(logging.ERROR)  # the 404 on /.well-known/...
    w = WorkspaceClient(host=endpoint.url, token=TOKEN)

    def embed(items: Sequence[str]) -> np.ndarray:
        parts = []
        for i in range(0, len(items), BATCH):
            records = [{"input": t} for t in items[i : i + BATCH]]
            response = w.serving_endpoints.query(name=TEXT_ENDPOINT, dataframe_records=records)
            parts.append(np.asarray(response.predictions, dtype=np.float32))
        return np.concatenate(parts)

    embed(texts[:256])
    out = []
    for _ in range(passes):
        cpu, wall = time.process_time(), time.perf_counter()
        result = embed(texts)
        out.append((time.process_time() - cpu, time.perf_counter() - wall))
        check("databricks-sdk", result, texts)
    return out


_expected: dict[str, np.ndarray] = {}


def check(label: str, got: np.ndarray, texts: Sequence[str]) -> None:
    for i in (0, len(texts) // 2, len(texts) - 1):
        want = _expected.setdefault(texts[i], expected_vector("text", texts[i]))
        if got.shape != (len(texts), 768) or not np.array_equal(got[i], want):
            raise SystemExit(f"{label}: wrong answer for text {i}")


# -- parsers -------------------------------------------------------------------------------------------

_HEAD = re.compile(rb'\A\s*\{\s*"predictions"\s*:\s*\[')
_TAIL = re.compile(rb"\]\s*\}\s*\Z")


def parse_numpy(content: bytes, expected_rows: int) -> np.ndarray:
    """A candidate parser with no Python float per element: the canonical ``{"predictions": [[...]]}``
    answer is turned into one comma-separated run of numbers for ``np.fromstring``. It validates the
    row count, that every row has the same length, that every number was read, and finiteness; any
    other shape goes to the JSON parser."""
    head, tail = _HEAD.match(content), _TAIL.search(content)
    if head is None or tail is None:
        return _wire.parse_predictions(content, expected_rows)
    inner = content[head.end() : tail.start()]
    segments = inner.split(b"]")[:-1]  # one per row: b"[v, v, ...", b", [v, v, ..."
    if len(segments) != expected_rows or inner.count(b"[") != expected_rows:
        raise ResponseFormatError(f"sent {expected_rows} records but got {len(segments)} rows back")
    widths = {seg.count(b",") for seg in segments[1:]}  # rows after the first start with ", ["
    first = segments[0].count(b",") + 1
    if widths and widths != {first}:
        raise ResponseFormatError("rows are not equal-length lists of numbers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "could not be read to its end"
        flat = np.fromstring(inner.translate(None, b"[]"), dtype=np.float32, sep=",")
    if flat.size != expected_rows * first:
        raise ResponseFormatError("the answer holds something other than numbers")
    arr = flat.reshape(expected_rows, first)
    if not np.isfinite(arr).all():
        raise ResponseFormatError("NaN or infinite values")
    return arr


def parse_orjson_fromiter(content: bytes, expected_rows: int) -> np.ndarray:
    """orjson, then one ``np.fromiter`` over the chained rows instead of ``np.asarray`` (shape and
    finiteness checked as parse_predictions does)."""
    rows = _wire._orjson.loads(content)["predictions"]
    if len(rows) != expected_rows:
        raise ResponseFormatError("row count")
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise ResponseFormatError("ragged rows")
    arr = np.fromiter(itertools.chain.from_iterable(rows), np.float32, count=expected_rows * width)
    arr = arr.reshape(expected_rows, width)
    if not np.isfinite(arr).all():
        raise ResponseFormatError("NaN or infinite values")
    return arr


def micro(n_rows: int, dim: int, min_time: float) -> None:
    rng = np.random.default_rng(0)
    want = rng.standard_normal((n_rows, dim)).astype(np.float32)
    # What MLflow's scoring server writes: float32 values as Python floats, json.dumps separators.
    body = json.dumps({"predictions": want.tolist()}).encode()

    def with_stdlib(content: bytes, rows: int) -> np.ndarray:
        saved, _wire._orjson = _wire._orjson, None
        try:
            return _wire.parse_predictions(content, rows)
        finally:
            _wire._orjson = saved

    parsers: list[tuple[str, Callable[[bytes, int], np.ndarray]]] = []
    if _wire._orjson is not None:
        parsers.append(("clip_client parse_predictions, orjson (current)", _wire.parse_predictions))
    parsers.append(("clip_client parse_predictions, stdlib json (no orjson)", with_stdlib))
    parsers.append(("numpy only: np.fromstring over the stripped body, validated", parse_numpy))
    if _wire._orjson is not None:
        parsers.append(("orjson + np.fromiter(chain(rows)), validated", parse_orjson_fromiter))

    # The candidates must be right before they are fast: the same array, and the same refusals.
    compact = json.dumps({"predictions": want.tolist()}, separators=(",", ":")).encode()
    bad = [
        json.dumps({"predictions": want.tolist()[:-1]}).encode(),  # one row short
        json.dumps({"predictions": [*want.tolist()[:-1], [*want[-1].tolist(), 1.0]]}).encode(),  # ragged
        re.sub(rb"\[\[[^,]+,", b'[["n/a",', body, count=1),  # a non-number in place of a number
        json.dumps({"predictions": [[float("nan")] * dim] * n_rows}).encode(),  # NaN
        body[:-1],  # truncated
    ]
    for label, parse in parsers:
        if not (np.array_equal(parse(body, n_rows), want) and np.array_equal(parse(compact, n_rows), want)):
            raise SystemExit(f"{label}: wrong array")
        for b in bad:
            try:
                parse(b, n_rows)
            except (ResponseFormatError, ValueError, TypeError):
                continue
            raise SystemExit(f"{label}: accepted a malformed answer")

    print(f"| parser ({n_rows}x{dim} answer, {len(body):,} bytes) | µs per answer | vs current |")
    print("|---|---:|---:|")
    timings = []
    for label, parse in parsers:
        parse(body, n_rows)
        samples = []
        deadline = time.perf_counter() + min_time
        while time.perf_counter() < deadline or len(samples) < 5:
            start = time.perf_counter()
            parse(body, n_rows)
            samples.append(time.perf_counter() - start)
        timings.append((label, statistics.median(samples) * 1e6))
    current = timings[0][1]
    for label, us in timings:
        print(f"| {label} | {us:,.0f} | {us / current:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few hundred texts, one pass (CI)")
    parser.add_argument("--texts", type=int, default=None, help="texts per pass; default 4000")
    parser.add_argument("--passes", type=int, default=None, help="passes per client (median); default 3")
    args = parser.parse_args()
    smoke = args.smoke
    n = args.texts or (320 if smoke else 4000)
    passes = args.passes or (1 if smoke else 3)
    words = ["a", "photo", "of", "the", "red", "car", "dog", "cat", "on", "in", "snow", "beach"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 8)) + f" #{i}" for i in range(n)]

    import databricks.sdk

    import clip_client

    print(f"# overhead{' (smoke)' if smoke else ''}: {machine()}")
    print(
        f"# clip_client {clip_client.__version__} (orjson: {'yes' if _wire._orjson is not None else 'no'}), "
        f"databricks-sdk {databricks.sdk.version.__version__}; {n:,} texts per pass, batches of {BATCH}, "
        f"median of {passes} pass{'es' if passes > 1 else ''}; server: zero latency, in a separate process"
    )
    print()
    runners: list[tuple[str, Callable[[Endpoint, Sequence[str], int], list[tuple[float, float]]]]] = [
        ("ClipClient (defaults, batch 32)", run_clip),
        ("AsyncClipClient (defaults, batch 32)", run_async),
        (f"databricks-sdk serving_endpoints.query, chunks of {BATCH}, + np.asarray", run_sdk),
    ]
    results = []
    with serve(slots=4, request_ms=0, item_ms=0) as endpoint:
        for label, runner in runners:
            runs = runner(endpoint, texts, passes)
            cpu = statistics.median(c for c, _ in runs)
            wall = statistics.median(w for _, w in runs)
            results.append((label, cpu, wall))
    print("| client | client CPU ms per 1,000 embeddings | wall s per pass | vs ClipClient (CPU) |")
    print("|---|---:|---:|---:|")
    base = results[0][1]
    for label, cpu, wall in results:
        print(f"| {label} | {cpu / n * 1000 * 1000:,.1f} | {wall:.2f} | {cpu / base:.2f}x |")
    sdk, clip = results[2][1], results[0][1]
    print(f"\ndatabricks-sdk spends {sdk / clip:.1f}x the client CPU of ClipClient per embedding.\n")
    micro(BATCH, 768, 0.1 if smoke else 2.0)
    if smoke:
        print("\nsmoke run: targets not evaluated (few texts, one pass: these numbers mean little)")


if __name__ == "__main__":
    main()
