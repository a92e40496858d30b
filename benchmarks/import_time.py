"""What `import clip_client` costs, side by side with importing its required dependencies alone
(numpy, httpx, pydantic and Pillow's `PIL.Image`), in fresh interpreters; and the start-up of the
`clip-client` command (`--help`) beside a bare interpreter's.

    python benchmarks/import_time.py            # 21 fresh interpreters of each, interleaved
    python benchmarks/import_time.py --smoke    # 3 of each (CI): the numbers mean little

Each is measured two ways: `python -X importtime -c "import ..."`, the sum of the cumulative column
over the top-level imports that the statement made (the interpreter's own start-up imports, those of
`python -c pass`, are left out); and the CPU time (`time.process_time`) of the statement in a fresh
interpreter, which a busy machine disturbs less. The runs of the sides alternate, so a busy machine
slows them alike; the medians and their ratio are printed. The goal of issue 18: at most 1.3x.

`import clip_client` itself loads no module of the package (its names load on first use), so the
sides that matter for a program are the next two: `from clip_client import ClipClient`, and that
plus building a first client (of a host given explicitly, no request sent), which also builds what
loads on first use (the settings' validator).

Also listed: the top-level packages `import clip_client` loads beyond the dependencies', and any of
the heavy optional ones (typer, pyarrow, pandas, torch, transformers, mlflow, pyspark, faiss) it
must never load (`tests/test_import_cost.py` checks that).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPENDENCIES = "import numpy, httpx, pydantic, PIL.Image"
PACKAGE = "import clip_client"
CLIENT = "from clip_client import ClipClient"
FIRST = f"{CLIENT}; ClipClient(host='http://127.0.0.1:9', token='t')"
#: Never loaded by `import clip_client` (issue 18).
HEAVY = ("typer", "pyarrow", "pandas", "torch", "transformers", "mlflow", "pyspark", "faiss")
GOAL = 1.3
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def _importtime(code: str) -> list[tuple[int, int, str]]:
    """(cumulative us, depth, module) of every import ``python -X importtime -c code`` makes."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
        check=True,
    )
    rows = []
    for line in done.stderr.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append((int(m[2]), len(m[3]) // 2, m[4]))
    return rows


def statement_cost(code: str, startup: set[str]) -> float:
    """Seconds: the cumulative times of the top-level imports ``code`` made, start-up ones left out."""
    return sum(cum for cum, depth, name in _importtime(code) if depth == 0 and name not in startup) / 1e6


def cpu_cost(code: str) -> float:
    """Seconds of CPU time that ``code`` takes in a fresh interpreter (steadier than the wall clock
    on a busy machine)."""
    program = f"import time\nstart = time.process_time()\n{code}\nprint(time.process_time() - start)"
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=_env(), cwd=ROOT, check=True
    )
    return float(done.stdout)


def loaded_by(code: str) -> set[str]:
    return {name for _, _, name in _importtime(code)}


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, capture_output=True, env=_env(), cwd=ROOT, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="3 interpreters of each (CI)")
    parser.add_argument("--runs", type=int, help="fresh interpreters of each side (default 21)")
    args = parser.parse_args()
    runs = args.runs or (3 if args.smoke else 21)

    print(
        f"# import_time{' (smoke)' if args.smoke else ''}: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {runs} fresh interpreters of each, interleaved"
    )
    startup = loaded_by("pass")
    for label, measure in (("-X importtime", lambda c: statement_cost(c, startup)), ("CPU time", cpu_cost)):
        deps, package, client, first = [], [], [], []
        for _ in range(runs):
            deps.append(measure(DEPENDENCIES))
            package.append(measure(PACKAGE))
            client.append(measure(CLIENT))
            first.append(measure(FIRST))
        d, p, c = statistics.median(deps), statistics.median(package), statistics.median(client)
        f = statistics.median(first)
        print(f"{label}:")
        for code, times in (
            (DEPENDENCIES, deps),
            (PACKAGE, package),
            (CLIENT, client),
            ("... and build a first ClipClient", first),
        ):
            print(
                f"  {code:<43} median {statistics.median(times) * 1e3:7.1f} ms  (min {min(times) * 1e3:.1f})"
            )
        verdict = "within" if p / d <= GOAL else "over"
        print(f"  ratio clip_client / dependencies: {p / d:.2f}x ({verdict} the goal of {GOAL}x); ", end="")
        print(f"`{CLIENT}`: {c / d:.2f}x; and a first client: {f / d:.2f}x")

    for code in (PACKAGE, CLIENT):
        loaded = loaded_by(code)
        extra = {name.split(".")[0] for name in loaded - loaded_by(DEPENDENCIES)} - {"clip_client"}
        heavy = {name.split(".")[0] for name in loaded} & set(HEAVY)
        print(f"`{code}` loads, beyond the dependencies: {', '.join(sorted(extra)) or 'nothing'}")
        print(f"    heavy optional packages among them: {', '.join(sorted(heavy)) or 'none'}")

    bare = [wall([sys.executable, "-c", "pass"]) for _ in range(max(3, runs // 3))]
    cli = [wall([sys.executable, "-m", "clip_client", "--help"]) for _ in range(max(3, runs // 3))]
    print(
        f"`clip-client --help` start-up: median {statistics.median(cli) * 1e3:.0f} ms of wall time "
        f"(a bare interpreter: {statistics.median(bare) * 1e3:.0f} ms)"
    )
    if args.smoke:
        print("smoke run: few interpreters, the ratio is not evaluated")


if __name__ == "__main__":
    main()
