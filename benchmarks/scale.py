"""Scale to millions of images (issue 20): every measurement of the scale work in one run, one table.

    python benchmarks/scale.py            # 100,000 and 1,000,000 rows; about half an hour on 2 cores
    python benchmarks/scale.py --full     # adds the 10,000,000-row texts run (and 1M index/dedupe runs)
    python benchmarks/scale.py --smoke    # seconds: every part at toy sizes, no verdicts (CI)
    python benchmarks/scale.py --only texts,cache

Each part is its own script, runnable alone, that compares the alternatives side by side and
prints ratios; this one imports their `scale_rows(mode)` and prints the tables one after another:

| part | script | what it compares |
|---|---|---|
| texts | `texts_scale.py` | peak RSS and rows/s of `clip-client texts` at growing row counts, and a resume |
| cache | `cache_overhead.py` | throughput with and without the cache (no latency); disk per row |
| dedupe | `dedupe_scale.py` | approximate against exact `find_duplicates`: time and recall of planted pairs |
| index | `index_compare.py` | faiss HNSW, IVF (flat, PQ), usearch: build, memory, queries/s, recall@10 |
| pipeline | `pipeline_peer.py` | `images --local` against the peer: images/s, RSS, agreement |

A part that cannot run (a missing optional dependency, say) prints why and the others go on; the
exit status is non-zero if any part failed.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
import traceback
from pathlib import Path

PARTS = {
    "texts": "texts_scale",
    "cache": "cache_overhead",
    "dedupe": "dedupe_scale",
    "index": "index_compare",
    "pipeline": "pipeline_peer",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="toy sizes, seconds, no verdicts (CI)")
    size.add_argument("--full", action="store_true", help="add the largest sizes (10,000,000 texts)")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "full" if args.full else "default"
    wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(f"# benchmarks/scale.py --{mode}: {platform.machine()}, {platform.python_version()}")
    failed: list[str] = []
    for part in wanted:
        print(f"\n## {part} ({PARTS[part]}.py)\n", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(PARTS[part])
            lines = module.scale_rows(mode)
        except Exception:
            traceback.print_exc()
            failed.append(part)
            continue
        print("\n".join(lines))
        print(f"\n({part}: {time.perf_counter() - started:.0f} s)", flush=True)
    if failed:
        print(f"\nparts that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
