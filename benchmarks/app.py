"""`clip-client app`: time from a query to its JSON results, and to every thumbnail of the first page
in a real browser, at 100,000 and 1,000,000 rows.

    python benchmarks/app.py               # 100,000 and 1,000,000 x 768 (about 3 GB at 1,000,000)
    python benchmarks/app.py --n 200000    # one size
    python benchmarks/app.py --smoke       # 5,000 x 768, a few queries, seconds, no verdict (CI)

The rows are synthetic, CLIP-like vectors (`benchmarks/search.py`'s `clustered_matrix`); their
paths cycle through 48 real 640x480 JPEGs (`_serve.write_photos`), so the thumbnails are made by
Pillow from real files. The queries are embedded by a real `ClipClient` over HTTP against the fast
fake endpoint of `_serve.py` (no latency: what is timed is the app). The app is the real one
(`create_app` over a `FileSource`) on uvicorn on 127.0.0.1, in this process; each search is timed as
`GET /api/search?q=...&k=24` with httpx, every query a new text (no cache).

Both search methods are timed at each size: exact `cosine_topk`, and the `ApproximateIndex` (IVF,
its defaults) the app builds above 50,000 rows (its build time is shown). The browser column is the
time from pressing Enter in the page's search box to the moment all 24 thumbnails of the first page
have loaded (headless Chromium through Playwright; skipped without chromium or playwright): the
first query with an empty thumbnail cache, then the median of the others. Goal: first results
within 300 ms at 1,000,000 rows with the approximate index on 2 cores.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import TOKEN, machine, serve, write_photos
from search import clustered_matrix

from clip_client import ClipClient
from clip_client._cli.outputs import Rows
from clip_client._webapp.queries import ClientQueries
from clip_client._webapp.server import create_app
from clip_client._webapp.source import FileSource
from clip_client._webapp.thumbnails import ThumbnailCache

DIM = 768
GOAL_MS = 300.0
WORDS = ["harbour", "field", "red car", "market", "forest", "street", "bicycle", "dog", "snow", "river"]


def start(app: Any) -> tuple[str, Any, threading.Thread]:
    import uvicorn

    sock = socket.socket()
    # Accepted sockets inherit TCP_NODELAY: without it, a keep-alive answer written in two parts
    # (head, body) waits 40 ms for the client's delayed ACK (uvicorn.run(host=, port=) sets it itself).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        thread.join(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def time_json(url: str, queries: list[str]) -> list[float]:
    out = []
    with httpx.Client(timeout=120) as http:
        http.get(f"{url}/api/info")
        for q in queries:
            t = time.perf_counter()
            r = http.get(f"{url}/api/search", params={"q": q, "k": 24})
            out.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
            assert len(r.json()["results"]) == 24
    return out


def time_browser(url: str, queries: list[str]) -> list[float] | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_app_browser import CHROMIUM_FLAGS, chromium_path

    executable = chromium_path()
    if executable is None:
        return None
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        page.goto(url + "/")
        page.wait_for_function("document.body.dataset.loading === 'no'")
        for q in queries:
            page.fill("#query", q)
            t = time.perf_counter()
            page.press("#query", "Enter")
            page.wait_for_function(
                "q => document.getElementById('mode').textContent.includes(q) && "
                "document.body.dataset.loading === 'no' && "
                "document.querySelectorAll('#results .card').length === 24 && "
                "[...document.querySelectorAll('#results .card')].every(c => c.dataset.state === 'loaded')",
                arg=q,
                polling="raf",
            )
            out.append((time.perf_counter() - t) * 1000)
        browser.close()
    return out


def bench(
    n: int, photos: list[Path], endpoint: Any, tmp: Path, n_queries: int, n_browser: int
) -> dict[str, Any]:
    t = time.perf_counter()
    matrix = clustered_matrix(n, DIM, seed=1)
    made = time.perf_counter() - t
    keys = [str(photos[i % len(photos)]) for i in range(n)]
    t = time.perf_counter()
    source = FileSource(Rows(keys, matrix), name=f"synthetic-{n}", approximate=n > 50_000)
    approximate = source.wait_for_index()
    built = time.perf_counter() - t
    result: dict[str, Any] = {"n": n, "generate_s": made, "build_s": built if approximate else None}
    thumbs = tmp / f"thumbs-{n}"
    with ClipClient(host=endpoint.url, token=TOKEN) as client:
        app = create_app(source, ClientQueries(client), thumbnails=ThumbnailCache(thumbs))
        url, server, thread = start(app)
        try:
            queries = [f"{WORDS[i % len(WORDS)]} {i}" for i in range(n_queries)]
            index = source._index
            if index is not None:
                result["approximate_ms"] = time_json(url, queries)
            source._index = None  # the same app, exact cosine_topk
            result["exact_ms"] = time_json(url, [q + " exact" for q in queries])
            source._index = index
            # The JSON queries fetched no thumbnail: the first browser query finds the cache empty.
            result["browser_ms"] = time_browser(
                url, [f"{WORDS[i % len(WORDS)]} page {i}" for i in range(n_browser)]
            )
        finally:
            server.should_exit = True
            thread.join(10)
    return result


def ms(values: list[float] | None) -> str:
    return "-" if not values else f"{statistics.median(values):,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--n", type=int, action="append", help="rows (repeatable; default 100,000 and 1,000,000)"
    )
    parser.add_argument("--queries", type=int, default=20, help="JSON queries per method")
    parser.add_argument("--browser-queries", type=int, default=6, help="queries typed in the browser")
    parser.add_argument("--smoke", action="store_true", help="5,000 rows, a few queries, seconds; no verdict")
    args = parser.parse_args()
    sizes = [5_000] if args.smoke else (args.n or [100_000, 1_000_000])
    n_queries, n_browser = (3, 2) if args.smoke else (args.queries, args.browser_queries)
    print(f"machine: {machine()}")
    results = []
    with tempfile.TemporaryDirectory() as scratch, serve(slots=4, request_ms=0, item_ms=0) as endpoint:
        tmp = Path(scratch)
        photos = write_photos(tmp / "photos", 48, (640, 480))
        for n in sizes:
            results.append(bench(n, photos, endpoint, tmp, n_queries, n_browser))
    print(f"\n{n_queries} JSON queries per method (`GET /api/search?k=24`, median and worst ms); browser:")
    print(
        "Enter to all 24 thumbnails loaded, the first query (empty thumbnail cache), then the median (ms)\n"
    )
    print(
        "| rows | index build s | approximate JSON ms (median / max) | exact JSON ms (median / max) "
        "| browser first | browser then |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        approx, exact, browser = r.get("approximate_ms"), r["exact_ms"], r.get("browser_ms")
        build = "-" if r["build_s"] is None else f"{r['build_s']:.0f}"
        approx_cell = "-" if not approx else f"{ms(approx)} / {max(approx):,.0f}"
        first = "-" if not browser else f"{browser[0]:,.0f}"
        then = ms(browser[1:]) if browser else "-"
        print(
            f"| {r['n']:,} | {build} | {approx_cell} | {ms(exact)} / {max(exact):,.0f} | {first} | {then} |"
        )
    if args.smoke:
        print("\nsmoke run: no verdict")
        return
    big = [r for r in results if r["n"] >= 1_000_000 and r.get("approximate_ms")]
    for r in big:
        median = statistics.median(r["approximate_ms"])
        verdict = "met" if median <= GOAL_MS else "NOT met"
        goal = f"first results within {GOAL_MS:.0f} ms at {r['n']:,} rows, approximate"
        print(f"\ngoal ({goal}): {verdict} ({median:.0f} ms)")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
