"""Throughput against a 4-slot endpoint: the loops users write today around databricks-sdk, against
ClipClient and AsyncClipClient, side by side in one run, on a loopback server in another process.

    python benchmarks/throughput.py            # 4,000 texts and 500 640x480 JPEGs (about 4 minutes)
    python benchmarks/throughput.py --smoke    # a few dozen items (CI)
    python benchmarks/throughput.py --preparation   # only the image_preparation tables (about 2.5 minutes)

Methods:
  (a) one ``WorkspaceClient.serving_endpoints.query(dataframe_records=[{"input": x}])`` per item
      (one WorkspaceClient, created before timing), images as the base64 of the original file (run on
      a subset: it is the slow baseline);
  (b) the same call with chunks of 32 records, one request after the other;
  (c) ``ClipClient`` with its defaults; (d) ``AsyncClipClient`` with its defaults.
A second image table repeats (b), (c) and (d) against servers that charge more per image
(``--image-sweep``, default 4, 8 and 16 ms; ViT-L/14 on a small GPU is in that range): it shows how
the client fares as the ceiling drops to and below what this machine's cores can prepare. A last
table runs ``ClipClient`` on 64 camera-sized (12 MP) JPEGs against its bare preparation rate on the same
thread pool (``--large-photos``): whether it is bound by decoding or by waiting on requests.
The server's ceiling is ``slots x batch / (request time at that batch)``, at batch 32. The server
refuses any body but ``{"dataframe_records": [{"input": "<str>"}, ...]}``, and every answer timed here
is checked against the rows the server must have computed for those inputs.

``--preparation`` (also part of ``--smoke``, at tiny sizes) compares ``image_preparation="client"``
(the client decodes, resizes and crops, and sends 224x224 PNGs) with ``"server"`` (the original files
are sent, and the server decodes, resizes and crops each one, inside the request's slot, on top of
its per-image model time) on small JPEGs (320x240, 640x480) and camera photos (12 MP JPEGs), at two
per-image model costs (``--preparation-ms``, default 4 and 16), with client and server sharing all of
this machine's cores and with one core each. It reports images/s, bytes sent and CPU per image on each
side, and from those where the crossover lies as a function of the client's cores (a derived table:
this machine cannot lend the server cores of its own beyond one).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _serve import (
    IMAGE_ENDPOINT,
    TEXT_ENDPOINT,
    TOKEN,
    Endpoint,
    b64_file,
    ceiling,
    expected_vector,
    machine,
    serve,
    write_photos,
)

BATCH = 32  # the SDK chunk size, and ClipClient's default batch size (checked below)


@dataclass
class Run:
    label: str
    kind: str
    items: int
    seconds: float
    requests: int
    busy: float  # server slot-seconds
    max_at_server: int

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def timed(endpoint: Endpoint, label: str, kind: str, n: int, fn: Callable[[], Any]) -> tuple[Any, Run]:
    before = endpoint.stats()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    after = endpoint.stats()
    run = Run(
        label,
        kind,
        n,
        seconds,
        after["requests"] - before["requests"],
        after["busy_slot_seconds"] - before["busy_slot_seconds"],
        after["max_at_server"],
    )
    return out, run


# -- the methods ---------------------------------------------------------------------------------------


def sdk_client(url: str) -> Any:
    from databricks.sdk import WorkspaceClient

    # Config() first GETs {host}/.well-known/databricks-config; our server answers 404 and the SDK
    # logs a warning before falling back to the explicit host and token.
    logging.getLogger("databricks.sdk").setLevel(logging.ERROR)
    return WorkspaceClient(host=url, token=TOKEN)


def sdk_loop(w: Any, name: str, items: Sequence[Any], load: Callable[[Any], str], chunk: int) -> np.ndarray:
    """What users write today: ``query`` per chunk of ``chunk`` records, one after the other."""
    rows: list[list[float]] = []
    for i in range(0, len(items), chunk):
        records = [{"input": load(x)} for x in items[i : i + chunk]]
        response = w.serving_endpoints.query(name=name, dataframe_records=records)
        rows.extend(response.predictions)
    return np.asarray(rows, dtype=np.float32)


def sdk_warm(url: str, name: str, first: str) -> Any:
    """A ``WorkspaceClient`` of the server that has sent one request already."""
    w = sdk_client(url)
    w.serving_endpoints.query(name=name, dataframe_records=[{"input": first}])
    return w


def sdk_timed(
    endpoint: Endpoint,
    w: Any,
    label: str,
    kind: str,
    items: Sequence[Any],
    chunk: int,
    want: Callable[[int], np.ndarray],
    sample: Sequence[int],
) -> Run:
    """One timed :func:`sdk_loop` pass, every sampled row checked."""
    name = TEXT_ENDPOINT if kind == "text" else IMAGE_ENDPOINT
    load: Callable[[Any], str] = (lambda x: x) if kind == "text" else b64_file
    out, run = timed(endpoint, label, kind, len(items), lambda: sdk_loop(w, name, items, load, chunk))
    check(label, out, want, len(items), sample)
    return run


def median_run(runs: list[Run]) -> Run:
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def clip_sync(
    endpoint: Endpoint, label: str, kind: str, items: Sequence[Any], repeats: int, **options: Any
) -> tuple[np.ndarray, Run]:
    """``repeats`` timed passes with one ``ClipClient`` (warmed up by one request); the median."""
    from clip_client import ClipClient

    runs = []
    with ClipClient(host=endpoint.url, token=TOKEN, **options) as client:
        if client.settings.batch_size != BATCH:
            raise SystemExit(f"ClipClient's default batch size is {client.settings.batch_size}, not {BATCH}")
        client.embed_text("warm-up")
        embed = client.embed_texts if kind == "text" else client.embed_images
        for _ in range(repeats):
            out, run = timed(endpoint, label, kind, len(items), lambda: embed(items))
            runs.append(run)
    return out, median_run(runs)


def clip_async(
    endpoint: Endpoint, label: str, kind: str, items: Sequence[Any], repeats: int, **options: Any
) -> tuple[np.ndarray, Run]:
    """The same with one ``AsyncClipClient`` on one event loop."""
    from clip_client import AsyncClipClient

    async def passes() -> tuple[np.ndarray, Run]:
        runs = []
        async with AsyncClipClient(host=endpoint.url, token=TOKEN, **options) as client:
            await client.embed_text("warm-up")
            embed = client.embed_texts if kind == "text" else client.embed_images
            for _ in range(repeats):
                before = endpoint.stats()
                start = time.perf_counter()
                out = await embed(items)
                seconds = time.perf_counter() - start
                after = endpoint.stats()
                busy = after["busy_slot_seconds"] - before["busy_slot_seconds"]
                requests = after["requests"] - before["requests"]
                runs.append(Run(label, kind, len(items), seconds, requests, busy, after["max_at_server"]))
        return out, median_run(runs)

    return asyncio.run(passes())


def preparation_alone(paths: Sequence[Path], fast_decode: bool = False) -> float:
    """Images/s of the client's own preparation (decode, exact resize+crop, PNG, base64) on its pool
    of one thread per core, without any request: the most this machine can feed the endpoint."""
    from clip_client._client import _PREP_WORKERS
    from clip_client._core.images import ImageOptions, prepare_image

    opts = ImageOptions(fast_decode=fast_decode)

    def one(item: tuple[int, Path]) -> bytes:
        return prepare_image(item[1], item[0], opts).b64()

    with ThreadPoolExecutor(_PREP_WORKERS) as pool:
        list(pool.map(one, enumerate(paths[:8])))  # warm-up
        start = time.perf_counter()
        list(pool.map(one, enumerate(paths)))
        return len(paths) / (time.perf_counter() - start)


# -- checks --------------------------------------------------------------------------------------------


def check(
    label: str, got: np.ndarray, want: Callable[[int], np.ndarray], n: int, sample: Sequence[int]
) -> None:
    if got.shape != (n, 768):
        raise SystemExit(f"{label}: got an array of shape {got.shape}, expected ({n}, 768)")
    for i in sample:
        if not np.array_equal(got[i], want(i)):
            raise SystemExit(f"{label}: row {i} is not the server's row for input {i}")


def image_rows_original(paths: Sequence[Path]) -> Callable[[int], np.ndarray]:
    return lambda i: expected_vector("image", paths[i].read_bytes())


def image_rows_prepared(paths: Sequence[Path], image_format: str = "png") -> Callable[[int], np.ndarray]:
    from clip_client._core.images import ImageOptions, prepare_image

    opts = ImageOptions(format=image_format)  # type: ignore[arg-type]

    def row(i: int) -> np.ndarray:
        encoded = prepare_image(paths[i], i, opts).encoded
        assert encoded is not None
        return expected_vector("image", encoded)

    return row


# -- the run -------------------------------------------------------------------------------------------


def run_kind(
    endpoint: Endpoint, kind: str, items: Sequence[Any], n_baseline: int, repeats: int
) -> tuple[list[Run], float | None]:
    """(a), (b), (c), (d) on one kind; for images also the client's preparation rate alone, measured
    right before and right after (c) and (d), the better of the two (other load on the machine
    only ever lowers it)."""
    name = TEXT_ENDPOINT if kind == "text" else IMAGE_ENDPOINT
    load: Callable[[Any], str] = (lambda x: x) if kind == "text" else b64_file
    n = len(items)
    if kind == "text":
        table = np.stack([expected_vector("text", t) for t in items])
        original = prepared = lambda i: table[i]
        sample = range(n)
    else:
        original, prepared = image_rows_original(items), image_rows_prepared(items)
        sample = sorted({0, 1, n // 2, n - 1})

    runs = []
    w = sdk_warm(endpoint.url, name, load(items[0]))
    base = items[:n_baseline]
    runs.append(
        sdk_timed(endpoint, w, "(a) SDK query, 1 item per request", kind, base, 1, original, range(len(base)))
    )
    runs.append(
        sdk_timed(
            endpoint, w, f"(b) SDK query, chunks of {BATCH}, sequential", kind, items, BATCH, original, sample
        )
    )

    exact = endpoint.slots
    variants: list[tuple[str, Callable[..., tuple[np.ndarray, Run]], dict[str, Any]]] = [
        ("(c) ClipClient, defaults", clip_sync, {}),
        ("(d) AsyncClipClient, defaults", clip_async, {}),
    ]
    if kind == "text":  # not a method of the issue: why the default is one more than the slots
        variants += [
            (f"(c-) ClipClient, max_concurrency={exact}", clip_sync, {"max_concurrency": exact}),
            (f"(d-) AsyncClipClient, max_concurrency={exact}", clip_async, {"max_concurrency": exact}),
        ]
    if kind == "image":  # not a method of the issue: the lossless format that costs least CPU
        variants += [
            ("(c') ClipClient, image_format='bmp'", clip_sync, {"image_format": "bmp"}),
            ("(d') AsyncClipClient, image_format='bmp'", clip_async, {"image_format": "bmp"}),
        ]
    prep = [preparation_alone(items)] if kind == "image" else []
    for label, method, options in variants:
        out, run = method(endpoint, label, kind, items, repeats, **options)
        fmt = options.get("image_format")
        check(run.label, out, image_rows_prepared(items, fmt) if fmt else prepared, n, sample)
        runs.append(run)
    if prep:
        prep.append(preparation_alone(items))
    return runs, max(prep, default=None)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(endpoint: Endpoint, runs: list[Run], prep_rate: float | None, smoke: bool) -> bool:
    """The measurements, then (except in smoke mode, whose handful of requests can honour none of
    them) the issue's targets with a verdict each; returns whether all were met."""
    print(
        "| method | kind | items | requests | seconds | items/s | of server ceiling | server slots busy "
        "| most requests at the server |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        ceiling = endpoint.ceiling(r.kind, BATCH)
        busy = r.busy / (endpoint.slots * r.seconds)
        print(
            f"| {r.label} | {r.kind}s | {r.items:,} | {r.requests:,} | {r.seconds:.2f} | {r.rate:,.1f} "
            f"| {r.rate / ceiling:.1%} | {busy:.0%} | {r.max_at_server} |"
        )
    if prep_rate is not None:
        ceiling = endpoint.ceiling("image", BATCH)
        print(
            f"| ClipClient image preparation alone, no requests ({_workers()} threads, best of 2) "
            "| images | | | "
            f"| {prep_rate:,.1f} | {prep_rate / ceiling:.1%} | | |"
        )
    print()
    print("| kind | server ceiling (items/s) | (c)/(b) | (d)/(b) | (c)/(a) | (d)/(a) |")
    print("|---|---:|---:|---:|---:|---:|")
    by = {(r.kind, r.label[:3]): r for r in runs}
    kinds = sorted({r.kind for r in runs}, reverse=True)
    for kind in kinds:
        a, b, c, d = (by[(kind, f"({x})")].rate for x in "abcd")
        print(
            f"| {kind}s | {endpoint.ceiling(kind, BATCH):,.1f} | {c / b:.2f}x | {d / b:.2f}x "
            f"| {c / a:.1f}x | {d / a:.1f}x |"
        )
    all_ok = True
    if not smoke:
        all_ok = report_targets(endpoint, by, kinds)
    if prep_rate is not None and "image" in kinds:
        ceiling = endpoint.ceiling("image", BATCH)
        bound = min(ceiling, prep_rate)
        c, d = by[("image", "(c)")].rate, by[("image", "(d)")].rate
        which = "this machine's preparation" if prep_rate < ceiling else "the server"
        print(
            f"\nImages: the effective ceiling is min(server {ceiling:,.1f}/s, client preparation "
            f"{prep_rate:,.1f}/s) = {bound:,.1f}/s, set by {which}; (c) reaches {c / bound:.1%} of it, "
            f"(d) {d / bound:.1%}."
        )
    return all_ok


def report_targets(endpoint: Endpoint, by: dict[tuple[str, str], Run], kinds: list[str]) -> bool:
    print()
    print("| target (issue 5) | kind | measured | verdict |")
    print("|---|---|---:|---|")
    all_ok = True
    for kind in kinds:
        a, b, c, d = (by[(kind, f"({x})")].rate for x in "abcd")
        ceiling = endpoint.ceiling(kind, BATCH)
        rows = [
            ("(c) >= 90% of the server ceiling", c / ceiling, c / ceiling >= 0.9, "{:.1%}"),
            ("(d) >= 90% of the server ceiling", d / ceiling, d / ceiling >= 0.9, "{:.1%}"),
            ("(c) >= 3.5x (b)", c / b, c / b >= 3.5, "{:.2f}x"),
            ("(d) >= 3.5x (b)", d / b, d / b >= 3.5, "{:.2f}x"),
            ("(c) >= 50x (a)", c / a, c / a >= 50, "{:.1f}x"),
            ("(d) >= 50x (a)", d / a, d / a >= 50, "{:.1f}x"),
        ]
        for what, value, ok, fmt in rows:
            all_ok &= ok
            print(f"| {what} | {kind}s | {fmt.format(value)} | {verdict(ok)} |")
    return all_ok


def image_sweep(
    paths: Sequence[Path], points: Sequence[float], slots: int, request_ms: float, repeats: int
) -> list[tuple[float, float, Run, Run, Run]]:
    """(b), (c) and (d) on the images against servers that charge ``ms`` per image, for each point:
    above what this machine's cores can prepare the client's preparation is the limit; below it the
    server is. Not a method of the issue: it shows where that line is."""
    out = []
    n = len(paths)
    sample = sorted({0, 1, n // 2, n - 1})
    original, prepared = image_rows_original(paths), image_rows_prepared(paths)
    for ms in points:
        with serve(slots, request_ms, 1.0, ms) as endpoint:
            w = sdk_warm(endpoint.url, IMAGE_ENDPOINT, b64_file(paths[0]))
            b = sdk_timed(endpoint, w, "(b)", "image", paths, BATCH, original, sample)
            got, c = clip_sync(endpoint, "(c)", "image", paths, repeats)
            check("(c)", got, prepared, n, sample)
            got, d = clip_async(endpoint, "(d)", "image", paths, repeats)
            check("(d)", got, prepared, n, sample)
            out.append((ms, endpoint.ceiling("image", BATCH), b, c, d))
    return out


def write_large_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` distinct camera-sized JPEGs: 8 synthetic photos (slow to make), each saved at several
    qualities (distinct files, distinct rows)."""
    from _serve import photo

    distinct = min(8, count)
    pictures = [photo(*size, seed=100 + i) for i in range(distinct)]
    paths = []
    for i in range(count):
        path = folder / f"large_{i:04d}.jpg"
        pictures[i % distinct].save(path, "JPEG", quality=95 - i // distinct)
        paths.append(path)
    return paths


def large_photo_runs(endpoint: Endpoint, paths: Sequence[Path]) -> list[tuple[str, float, float]]:
    """ClipClient (defaults, and fast_decode) on camera-sized JPEGs against its preparation alone:
    a ratio near 1 means the client is bound by decoding and resizing, not by waiting on requests."""
    out = []
    n = len(paths)
    sample = sorted({0, n // 2, n - 1})
    for label, fast in (("defaults (exact)", False), ("fast_decode=True", True)):
        prep = preparation_alone(paths, fast_decode=fast)
        got, run = clip_sync(endpoint, label, "image", paths, 1, fast_decode=fast)
        if not fast:
            check(label, got, image_rows_prepared(paths), n, sample)
        out.append((label, prep, run.rate))
    return out


def report_large(size: tuple[int, int], count: int, rows: list[tuple[str, float, float]]) -> None:
    print(
        f"\n{count} camera-sized {size[0]}x{size[1]} JPEGs, ClipClient.embed_images against the same "
        "preparation on the same thread pool with no requests at all:\n"
    )
    print(
        "| ClipClient | preparation alone (images/s) | embed_images (images/s) "
        "| embed_images / preparation alone |"
    )
    print("|---|---:|---:|---:|")
    for label, prep, rate in rows:
        print(f"| {label} | {prep:,.1f} | {rate:,.1f} | {rate / prep:.0%} |")


def report_sweep(points: list[tuple[float, float, Run, Run, Run]], prep_rate: float | None) -> None:
    prep = f"{prep_rate:,.1f} images/s" if prep_rate is not None else "not measured"
    print(
        f"\nImages against servers that charge more per image (client preparation alone: {prep}; "
        "the issue's setting is the first table):\n"
    )
    print(
        "| server ms per image | ceiling (images/s) | (b) images/s | (c) images/s | (d) images/s "
        "| (c) of ceiling | (d) of ceiling | (c)/(b) | (d)/(b) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for ms, ceil, b, c, d in points:
        print(
            f"| {ms:g} | {ceil:,.1f} | {b.rate:,.1f} | {c.rate:,.1f} | {d.rate:,.1f} "
            f"| {c.rate / ceil:.1%} | {d.rate / ceil:.1%} | {c.rate / b.rate:.2f}x | {d.rate / b.rate:.2f}x |"
        )


# -- image_preparation: client or server -------------------------------------------------------------


@dataclass
class PrepRun:
    files: str
    model_ms: float
    cores: str  # how this machine's cores were split: "2 shared" or "1 + 1"
    mode: str
    items: int
    seconds: float
    body_bytes: int
    client_cpu: float  # CPU seconds of this process (every thread of the client)
    server_prep_cpu: float  # CPU seconds the server spent decoding, resizing and cropping
    requests: int

    @property
    def rate(self) -> float:
        return self.items / self.seconds

    def ms(self, seconds: float) -> float:
        """Milliseconds per image."""
        return 1000 * seconds / self.items


@contextmanager
def pinned(cores: set[int] | None) -> Iterator[None]:
    """Run this thread (and the threads and processes it starts meanwhile, which inherit it) on
    ``cores``; None leaves it alone."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def server_rows(paths: Sequence[Path], sample: Sequence[int]) -> Callable[[int], np.ndarray]:
    """The rows a ``decode_images`` server answers: from the 224x224 pixels, the client's own crop."""
    from clip_client._core.images import ImageOptions, prepare_image

    opts = ImageOptions(want="pixels")
    table = {}
    for i in sample:
        pixels = prepare_image(paths[i], i, opts).pixels
        assert pixels is not None
        table[i] = expected_vector("image", pixels.tobytes())
    return table.__getitem__


def prep_run(
    endpoint: Endpoint,
    label: tuple[str, str],
    paths: Sequence[Path],
    mode: str,
    cores: set[int] | None,
    repeats: int,
) -> PrepRun:
    """``repeats`` passes of ``ClipClient(image_preparation=mode).embed_images`` on ``cores``, every
    sampled row checked (both modes must give the rows of the exact 224x224 crop); the median."""
    from clip_client import ClipClient

    files, split = label
    n = len(paths)
    sample = sorted({0, n // 2, n - 1})
    want = server_rows(paths, sample)
    runs = []
    with pinned(cores), ClipClient(host=endpoint.url, token=TOKEN, image_preparation=mode) as client:
        client.embed_text("warm-up")
        for _ in range(repeats):
            before = endpoint.stats()
            cpu, start = time.process_time(), time.perf_counter()
            out = client.embed_images(paths)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            after = endpoint.stats()
            check(f"{files}, {mode}", out, want, n, sample)
            runs.append(
                PrepRun(
                    files,
                    endpoint.image_item_ms,
                    split,
                    mode,
                    n,
                    seconds,
                    after["bytes"] - before["bytes"],
                    cpu,
                    after["prep_cpu_seconds"] - before["prep_cpu_seconds"],
                    after["requests"] - before["requests"],
                )
            )
    return sorted(runs, key=lambda r: r.rate)[len(runs) // 2]


def core_splits() -> list[tuple[str, set[int] | None, set[int] | None]]:
    """(name, the server's cores, the client's cores): every core shared by both, as in the other
    tables; and, with two cores or more, one core each, so neither takes the other's CPU."""
    if not hasattr(os, "sched_setaffinity"):  # not Linux: no pinning
        return [(f"{os.cpu_count()} shared", None, None)]
    every = sorted(os.sched_getaffinity(0))
    splits: list[tuple[str, set[int] | None, set[int] | None]] = [(f"{len(every)} shared", None, None)]
    if len(every) > 1:
        splits.append(("1 + 1", {every[1]}, {every[0]}))
    return splits


def preparation_runs(
    sets: dict[str, list[Path]], points: Sequence[float], slots: int, request_ms: float, repeats: int
) -> list[PrepRun]:
    """Each set of files, at each model cost, with each split of the cores, both preparations."""
    runs = []
    for ms in points:
        for split, server_cores, client_cores in core_splits():
            with pinned(server_cores):  # the server process inherits it
                server = serve(slots, request_ms, 1.0, ms, decode_images=True)
                endpoint = server.__enter__()
            try:
                for files, paths in sets.items():
                    for mode in ("client", "server"):
                        runs.append(prep_run(endpoint, (files, split), paths, mode, client_cores, repeats))
            finally:
                server.__exit__(None, None, None)
    return runs


def write_preparation_sets(folder: Path, smoke: bool) -> dict[str, list[Path]]:
    """Small files (two sizes of JPEG) and camera photos; distinct files, so distinct rows."""
    sizes = [((320, 240), 32 if smoke else 320), ((640, 480), 16 if smoke else 192)]
    sets = {}
    for (width, height), count in sizes:
        paths = write_photos(folder / f"{width}x{height}", count, (width, height), seed=1000)
        sets[f"{width}x{height} JPEG"] = paths
    large = (1200, 900) if smoke else (4000, 3000)
    (folder / "large").mkdir()
    paths = write_large_photos(folder / "large", 4 if smoke else 16, large)
    sets[f"{large[0] * large[1] / 1e6:.0f} MP JPEG"] = paths
    return {f"{name} ({_mean_kb(p):,.0f} KB)": p for name, p in sets.items()}


def _mean_kb(paths: Sequence[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / len(paths) / 1000


#: Uplinks for the bandwidth columns of the derived table, bytes per second.
_LINKS = {"100 Mbit/s": 12.5e6, "1 Gbit/s": 125e6}
#: Client cores for the derived table.
_CLIENT_CORES = (1, 2, 4, 8)


@dataclass
class PrepCosts:
    """One set of files at one model cost: what each side spends per image (ms), and what follows."""

    client_ms: float  # client CPU per image, image_preparation="client"
    client_ms_server_mode: float  # client CPU per image, image_preparation="server"
    server_ms: float  # the server's preparation CPU per original image
    server_ms_224: float  # the server's preparation CPU per 224x224 PNG
    record_bytes: float  # request bytes per original image
    batch: int  # originals per request: 32, or fewer under the 15 MB limit
    slots: int
    request_ms: float
    model_ms: float

    @classmethod
    def of(cls, client: PrepRun, server: PrepRun, slots: int, request_ms: float) -> PrepCosts:
        record = server.body_bytes / server.items
        return cls(
            client.ms(client.client_cpu),
            server.ms(server.client_cpu),
            server.ms(server.server_prep_cpu),
            client.ms(client.server_prep_cpu),
            record,
            max(1, min(BATCH, int(15_000_000 // record))),
            slots,
            request_ms,
            client.model_ms,
        )

    def client_ceiling(self) -> float:
        return ceiling(self.slots, BATCH, self.request_ms, self.model_ms + self.server_ms_224)

    def server_ceiling(self) -> float:
        """With a core per slot: every image's preparation adds to its request's time."""
        return ceiling(self.slots, self.batch, self.request_ms, self.model_ms + self.server_ms)

    def client_mode(self, client_cores: float) -> float:
        return min(client_cores * 1000 / self.client_ms, self.client_ceiling())

    def server_mode(self, client_cores: float, server_cores: float | None = None) -> float:
        rate = min(client_cores * 1000 / self.client_ms_server_mode, self.server_ceiling())
        return rate if server_cores is None else min(rate, server_cores * 1000 / self.server_ms)


def report_preparation(runs: list[PrepRun], slots: int, request_ms: float, smoke: bool) -> None:
    by = {(r.files, r.model_ms, r.cores, r.mode): r for r in runs}
    clean = runs[-1].cores  # "1 + 1" where there are two cores: neither side takes the other's CPU
    costs = {
        (r.files, r.model_ms): PrepCosts.of(by[(r.files, r.model_ms, clean, "client")], r, slots, request_ms)
        for r in runs
        if r.cores == clean and r.mode == "server"
    }
    print(
        "\nimage_preparation: 'client' (224x224 PNGs) against 'server' (the original files; the server "
        "decodes, resizes and crops each one inside its request, then spends the model's time). "
        f"{slots} slots, {request_ms:g} ms per request; ClipClient defaults otherwise (batches of 32, at "
        "most 15 MB). Cores: 'shared': client and server on all of this machine's cores; '1 + 1': the "
        "client pinned to one core, the server to the other, and 'model' is what the CPU columns "
        "allow there (the derived table's arithmetic):\n"
    )
    print(
        "| files | model ms per image | cores | image_preparation | images/s | model | server/client "
        "| bytes sent per image | client CPU ms per image | server preparation CPU ms per image |"
    )
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        cost = costs[(r.files, r.model_ms)]
        model = ""
        if r.cores == "1 + 1":
            rate = cost.client_mode(1) if r.mode == "client" else cost.server_mode(1, server_cores=1)
            model = f"{rate:,.1f}"
        other = by[(r.files, r.model_ms, r.cores, "client")]
        ratio = f"{r.rate / other.rate:.2f}x" if r.mode == "server" else ""
        print(
            f"| {r.files} | {r.model_ms:g} | {r.cores} | {r.mode} | {r.rate:,.1f} | {model} "
            f"| {ratio} | {r.body_bytes / r.items:,.0f} | {r.ms(r.client_cpu):.2f} "
            f"| {r.ms(r.server_prep_cpu):.2f} |"
        )
    print(
        "\nDerived, for an endpoint with a core per slot (this machine cannot lend the server cores of "
        "its own), from the '1 + 1' CPU columns: 'client' runs at min(client cores x 1000 / its client "
        "CPU ms per image, the server's ceiling), taking the client's preparation to scale with its cores; "
        "'server' at the server's ceiling with each image's preparation added to its request, whatever "
        "the client's cores. With fewer client cores than the crossover, 'server' is faster (links "
        "apart: next table):\n"
    )
    client_cols = " | ".join(f"'client', {n} core{'s' if n > 1 else ''}" for n in _CLIENT_CORES)
    print(
        f"| files | model ms per image | 'client': client CPU ms per image | 'server': endpoint CPU ms "
        f"per image | {client_cols} | 'server' | crossover (client cores) |"
    )
    print("|---|---:|---:|---:|" + "---:|" * (len(_CLIENT_CORES) + 2))
    for (files, ms), cost in costs.items():
        client_rates = " | ".join(f"{cost.client_mode(n):,.0f}" for n in _CLIENT_CORES)
        server = cost.server_mode(max(_CLIENT_CORES))
        crossover = server * cost.client_ms / 1000
        print(
            f"| {files} | {ms:g} | {cost.client_ms:.2f} | {cost.server_ms:.2f} | {client_rates} "
            f"| {server:,.0f} | {crossover:.1f} |"
        )
    print("\nWhat a link carries, images/s at most (request bytes per image as measured):\n")
    heads = " | ".join(f"'{mode}' over {name}" for name in _LINKS for mode in ("client", "server"))
    print(f"| files | 'client' bytes per image | 'server' bytes per image | {heads} |")
    print("|---|---:|---:|" + "---:|" * (2 * len(_LINKS)))
    seen = set()
    for r in runs:
        if r.files in seen or r.mode != "server":
            continue
        seen.add(r.files)
        client = by[(r.files, r.model_ms, r.cores, "client")].body_bytes / r.items
        server = r.body_bytes / r.items
        caps = " | ".join(f"{rate / size:,.1f}" for rate in _LINKS.values() for size in (client, server))
        print(f"| {r.files} | {client:,.0f} | {server:,.0f} | {caps} |")
    if smoke:
        print("\n(smoke run: tiny sets at one model cost; these numbers mean nothing)")


def _workers() -> int:
    from clip_client._client import _PREP_WORKERS

    return _PREP_WORKERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few dozen items, short latency (CI)")
    parser.add_argument("--texts", type=int, default=None, help="default 4000")
    parser.add_argument("--images", type=int, default=None, help="default 500")
    parser.add_argument("--baseline-texts", type=int, default=None, help="items for (a); default 200")
    parser.add_argument("--baseline-images", type=int, default=None, help="items for (a); default 50")
    parser.add_argument("--image-size", default=None, help="WxH of the generated JPEGs; default 640x480")
    parser.add_argument("--repeats", type=int, default=None, help="passes of (c) and (d), median; default 3")
    parser.add_argument("--slots", type=int, default=4, help="requests the endpoint serves at once")
    parser.add_argument("--request-ms", type=float, default=None, help="latency per request; default 50")
    parser.add_argument("--item-ms", type=float, default=1.0, help="latency per item")
    parser.add_argument("--image-item-ms", type=float, default=None, help="per image item; default item-ms")
    parser.add_argument(
        "--large-photos", type=int, default=None, help="camera-sized JPEGs for the last table; default 64"
    )
    parser.add_argument(
        "--preparation",
        action="store_true",
        help="only the image_preparation='client' vs 'server' tables (--smoke runs them too, tiny)",
    )
    parser.add_argument(
        "--preparation-ms",
        default=None,
        help="comma-separated model ms per image for the preparation tables (default 4,16)",
    )
    parser.add_argument(
        "--image-sweep",
        default=None,
        help="comma-separated ms per image for the extra image table (default 4,8,16; '' to skip)",
    )
    args = parser.parse_args()
    smoke = args.smoke
    repeats = args.repeats or (1 if smoke else 3)
    n_texts = args.texts or (256 if smoke else 4000)
    n_images = args.images or (32 if smoke else 500)
    n_base_texts = min(n_texts, args.baseline_texts or (8 if smoke else 200))
    n_base_images = min(n_images, args.baseline_images or (4 if smoke else 50))
    width, height = (int(x) for x in (args.image_size or ("320x240" if smoke else "640x480")).split("x"))
    request_ms = args.request_ms if args.request_ms is not None else (20.0 if smoke else 50.0)

    import databricks.sdk

    import clip_client

    prep_points = [float(x) for x in (args.preparation_ms or ("4" if smoke else "4,16")).split(",")]
    if args.preparation:
        print(f"# throughput, image_preparation{' (smoke)' if smoke else ''}: {machine()}")
        print(f"# clip_client {clip_client.__version__}; repeats: median of {repeats} passes per row")
        with tempfile.TemporaryDirectory() as tmp:
            sets = write_preparation_sets(Path(tmp), smoke)
            prep_runs = preparation_runs(sets, prep_points, args.slots, request_ms, repeats)
        report_preparation(prep_runs, args.slots, request_ms, smoke)
        return

    words = ["a", "photo", "of", "the", "red", "car", "dog", "cat", "on", "in", "snow", "beach"]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, 8)) + f" #{i}" for i in range(n_texts)]

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_photos(Path(tmp), n_images, (width, height))
        mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        with serve(args.slots, request_ms, args.item_ms, args.image_item_ms) as endpoint:
            print(f"# throughput{' (smoke)' if smoke else ''}: {machine()}")
            print(f"# server: {endpoint.describe()}")
            print(
                f"# clip_client {clip_client.__version__}, "
                f"databricks-sdk {databricks.sdk.version.__version__}; "
                f"{n_texts:,} texts, {n_images:,} {width}x{height} JPEGs ({mean_kb:,.0f} KB on average); "
                f"(a) runs on the first {n_base_texts} texts / {n_base_images} images; (c), (d): "
                f"median of {repeats} passes with one client"
            )
            print()
            runs, _ = run_kind(endpoint, "text", texts, n_base_texts, repeats)
            image_runs, prep_rate = run_kind(endpoint, "image", paths, n_base_images, repeats)
            runs += image_runs
            late = endpoint.stats()["late"]
            large_size = (1200, 900) if smoke else (4000, 3000)
            n_large = args.large_photos if args.large_photos is not None else (4 if smoke else 64)
            large = write_large_photos(Path(tmp), n_large, large_size) if n_large else []
            large_rows = large_photo_runs(endpoint, large) if large else []
        sweep_arg = args.image_sweep if args.image_sweep is not None else ("4" if smoke else "4,8,16")
        points = [float(x) for x in sweep_arg.split(",") if x.strip()]
        swept = image_sweep(paths, points, args.slots, request_ms, repeats)
        if smoke:  # the full run has its own command: --preparation
            sets = write_preparation_sets(Path(tmp), smoke)
            prep_runs = preparation_runs(sets, prep_points, args.slots, request_ms, repeats)
    ok = report(endpoint, runs, prep_rate, smoke)
    if swept:
        report_sweep(swept, prep_rate)
    if large_rows:
        report_large(large_size, n_large, large_rows)
    if smoke:
        report_preparation(prep_runs, args.slots, request_ms, smoke)
    print(
        f"\n(c-)/(d-) are not methods of the issue: with exactly as many requests in flight as the "
        "endpoint has slots, a slot idles while the client parses an answer and sends the next request; "
        "the default max_concurrency (one more than a Small endpoint's slots) keeps one request queued. "
        f"Batches are {BATCH}; the ceiling assumes every round of {endpoint.slots} requests is full."
    )
    if late:
        print(
            f"\nnote: {late} request(s) took longer than their latency budget (the server was short of CPU)"
        )
    if smoke:
        print(
            "\nsmoke run: targets not evaluated (a handful of requests and a short latency: "
            "the scripts run and every row checked is right; these numbers mean nothing)"
        )
    else:
        print(f"\nall targets met: {'yes' if ok else 'NO (see FAIL rows above)'}")


if __name__ == "__main__":
    main()
