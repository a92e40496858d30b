"""Vector Search: what ``clip_client.vector_search.VectorIndex.search`` adds to the service's own round
trips, against the loopback fake of Vector Search (``tests/vector_search_server.py``, a real HTTP server
on 127.0.0.1 that databricks-sdk talks to), side by side in one run.

    python benchmarks/vector_search.py           # 20,000 x 768 rows, k = 10, 1,000 and 5,000, 60 rounds
    python benchmarks/vector_search.py --smoke   # 500 x 64 rows, a few rounds, seconds (CI)

One search splits into three parts, each timed on its own:

- **query embedding**: ``client.embed_text(query)`` against the loopback serving endpoint (what any
  way of querying with a text must pay; shown, not part of the overhead).
- **round trips**: the two service calls a search needs, made with databricks-sdk directly and
  nothing else: ``vector_search_indexes.get_index`` then ``query_index`` (with ``query-next-page`` for
  ``k`` over 1,000), given the query vector. This is the baseline.
- **the client**: ``VectorIndex(name, ...).search(vector=v, k=k)`` on a fresh ``VectorIndex`` each
  round, so it makes the same two calls (the description is not cached across rounds), plus what
  it does itself: checks, normalising the query, ``filters_json``, mapping errors, and parsing the
  answer into a ``VectorSearchResult`` (keys, float32 cosine scores). Parsing alone is timed too.

Rounds alternate the baseline and the client, so that drift in the machine's load hits both alike;
the medians are compared. Goal (issue 21): the client adds at most 5% to the two round trips.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from _serve import machine
from vector_search_server import VectorSearchServer  # benchmarks/_serve.py put tests/ on the path

from clip_client import ClipClient
from clip_client.vector_search import VectorIndex, VectorSearchResult, _result, create_direct_index

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient

INDEX = "main.bench.clip_index"
GOAL = 0.05


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _compare(
    k: int, client: ClipClient, ws: WorkspaceClient, vector: np.ndarray, rounds: int
) -> tuple[float, float, float]:
    """Median ms of the bare round trips and of the client's search for `k`, and of parsing."""
    sdk = ws.vector_search_indexes
    unit = (vector / np.linalg.norm(vector)).tolist()

    def raw() -> list[Any]:
        sdk.get_index(INDEX)
        page = sdk.query_index(INDEX, ["id"], query_vector=unit, num_results=k)
        pages = [page]
        while page.next_page_token and sum(len(p.result.data_array or []) for p in pages) < k:
            page = sdk.query_next_page(INDEX, endpoint_name="bench-vs", page_token=page.next_page_token)
            pages.append(page)
        return pages

    def ours() -> VectorSearchResult:
        return VectorIndex(INDEX, client=client, workspace=ws).search(vector=vector, k=k)

    for _ in range(3):  # warm both paths (connections, imports)
        raw()
        ours()
    raw_t, ours_t = [], []
    for _ in range(rounds):
        raw_t.append(_timed(raw))
        ours_t.append(_timed(ours))
    pages = raw()
    rows = [row for p in pages for row in (p.result.data_array or [])][:k]
    names = [c.name for c in pages[0].manifest.columns]
    parse = [_timed(lambda: _result(rows, names, ["id"], "id", INDEX)) for _ in range(rounds)]
    assert len(ours()) == k
    return _median_ms(raw_t), _median_ms(ours_t), _median_ms(parse)


def run(n: int, dim: int, ks: list[int], rounds: int, smoke: bool) -> None:
    logging.getLogger("databricks.sdk").setLevel(logging.ERROR)  # the fake has no host metadata
    print(f"# vector_search{' (smoke)' if smoke else ''}: {machine()}")
    print(
        f"{n:,} rows x {dim}, {rounds} rounds per k, loopback fake of Vector Search (databricks-sdk, HTTP)\n"
    )
    with VectorSearchServer(dim=dim) as server:
        server.add_endpoint("bench-vs")
        with ClipClient(**server.client_kwargs()) as client:
            index = create_direct_index(INDEX, endpoint="bench-vs", client=client, poll_interval=0)
            matrix = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
            if smoke:  # through upsert, as a user fills the index
                index.upsert([f"/Volumes/bench/{i:07d}.jpg" for i in range(n)], matrix)
            else:  # straight into the fake: 20,000 x 768 rows of JSON would only time the upsert
                unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
                server.indexes[INDEX]["rows"] = {
                    f"/Volumes/bench/{i:07d}.jpg": {"id": f"/Volumes/bench/{i:07d}.jpg", "embedding": row}
                    for i, row in enumerate(unit.tolist())
                }
                server.indexes[INDEX]["cache"] = None
            query = "a red tractor in a field"
            embed = [_timed(lambda: client.embed_text(query)) for _ in range(max(5, rounds // 4))]
            vector = client.embed_text(query)
            print(
                "| k | query embedding (ms) | round trips: get_index + query (ms) | client search (ms) "
                "| parsing (ms) | client overhead |"
            )
            print("|---|---|---|---|---|---|")
            verdicts = []
            for k in ks:
                base, mine, parse = _compare(k, client, index.workspace, vector, rounds)
                overhead = (mine - base) / base
                verdicts.append(overhead <= GOAL)
                cells = [f"{k:,}", f"{_median_ms(embed):.2f}", f"{base:.2f}", f"{mine:.2f}", f"{parse:.3f}"]
                print(f"| {' | '.join(cells)} | {overhead:+.1%} |")
    if smoke:
        print("\nsmoke run: goal not evaluated (few rows and rounds: these numbers mean little)")
    else:
        met = "met" if all(verdicts) else "missed"
        print(f"\ngoal: the client adds <= {GOAL:.0%} to the two round trips: {met}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="500 x 64 rows, a few rounds (CI)")
    parser.add_argument("--n", type=int, default=20_000, help="rows in the index")
    parser.add_argument("--dim", type=int, default=768, help="embedding width")
    parser.add_argument("--rounds", type=int, default=60, help="timed rounds per k")
    args = parser.parse_args()
    if args.smoke:
        run(500, 64, [10, 300], 5, smoke=True)
    else:
        run(args.n, args.dim, [10, 1000, 5000], args.rounds, smoke=False)


if __name__ == "__main__":
    main()
