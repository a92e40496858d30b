"""Peak memory of `clip-client texts --from t.txt --out t.parquet` as the row count grows, and of a
resumed run: the command in a subprocess against a loopback endpoint with no latency (in a process
of its own), side by side with the command as it was before issue 20 (commit `BEFORE`), when git can give it.

    python benchmarks/texts_scale.py            # 100,000 and 1,000,000 rows (about 10 minutes)
    python benchmarks/texts_scale.py --full     # and 10,000,000 (hours on 2 cores)
    python benchmarks/texts_scale.py --smoke    # 3,000 rows (CI)

For each N: a fresh run (peak RSS of the child, `os.wait4`'s `ru_maxrss`, and rows/s), then a run
interrupted with SIGINT once about half its rows are in `t.parquet.parts/` (the endpoint holds
every request past that point until the interrupt, so no machine is fast enough to finish first),
then the same command again, which embeds only what is missing (its peak RSS and rows/s over the
rows it embedded). The table gives each peak and its ratio to the smallest N's; the goal (issue 20)
is a ratio <= 1.2.
The embedding cache is off (`--no-cache`): this measures the command's pipeline, not the cache.
The "before" row is the same command run from `git archive BEFORE` (the code before streaming), at the
smallest N only (it holds every row: about 6.6 KB each).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _serve import TOKEN, Endpoint, machine, serve

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"smoke": [3_000], "default": [100_000, 1_000_000], "full": [100_000, 1_000_000, 10_000_000]}


@dataclass
class Run:
    """One child: its exit status, peak RSS (bytes), wall seconds, and the rows it embedded."""

    status: int
    peak: int
    seconds: float
    rows: int

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def write_texts(path: Path, n: int) -> None:
    """`n` distinct captions, one per line, written in blocks."""
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, 100_000):
            f.write(
                "".join(
                    f"a photo of object number {i} on a table\n"
                    for i in range(start, min(n, start + 100_000))
                )
            )


def _env(url: str, pythonpath: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(DATABRICKS_HOST=url, DATABRICKS_TOKEN=TOKEN, DATABRICKS_CONFIG_FILE=os.devnull)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def run_cli(
    args: Sequence[str], env: dict[str, str], cwd: Path, rows: int, interrupt_at: Path | None = None,
    parts_needed: int = 0,
) -> Run:  # fmt: skip
    """`python -m clip_client ARGS` in `cwd`; with `interrupt_at`, SIGINT once that folder holds
    `parts_needed` part files. Peak RSS from the kernel's accounting of the child (`wait4`)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clip_client", *args], cwd=cwd, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    if interrupt_at is not None:
        deadline = time.monotonic() + 1800
        while proc.poll() is None:
            if interrupt_at.is_dir() and len(list(interrupt_at.glob("part-*.parquet"))) >= parts_needed:
                proc.send_signal(signal.SIGINT)
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    f"{parts_needed} part files did not appear in {interrupt_at} in 30 minutes"
                )
            time.sleep(0.2)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 130):
        raise RuntimeError(f"clip-client {' '.join(args)} exited {proc.returncode}: {err.decode()[-2000:]}")
    return Run(proc.returncode, usage.ru_maxrss * 1024, seconds, rows)


BEFORE = "66b7b7b"
"""The last commit before issue 20's streaming outputs: the code that held every row in memory."""


def _head_tree(into: Path) -> Path | None:
    """The package as committed at `BEFORE`, unpacked in `into` (None when git cannot give it)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", BEFORE, "clip_client"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return into


def measure(n: int, folder: Path, endpoint: Endpoint, part_rows: int) -> tuple[Run, Run, Run]:
    """Fresh, interrupted and resumed runs at `n` rows."""
    source = folder / f"t{n}.txt"
    write_texts(source, n)
    env = _env(endpoint.url)
    out = folder / f"t{n}.parquet"
    args = ["texts", "--from", source.name, "--out", out.name, "--no-cache", "--part-rows", str(part_rows)]
    fresh = run_cli(args, env, folder, n)
    out.unlink()
    half = max(1, n // 2 // part_rows)
    if (half + 1) * part_rows >= n:
        raise ValueError(f"{n:,} rows is too few to interrupt at half with {part_rows:,}-row parts")
    # The endpoint answers the first half parts and one more, then keeps every request until the
    # SIGINT has landed: the run cannot finish first, however fast the machine.
    endpoint.hold(after_items=(half + 1) * part_rows)
    try:
        stopped = run_cli(args, env, folder, n, interrupt_at=folder / f"{out.name}.parts", parts_needed=half)
    finally:
        endpoint.release()
    if stopped.status != 130:
        raise RuntimeError(f"the run to interrupt exited {stopped.status}, not 130 (interrupted)")
    kept = sum(1 for _ in (folder / f"{out.name}.parts").glob("part-*.parquet")) * part_rows
    resumed = run_cli(args, env, folder, n - kept)
    for name in (source, out):
        name.unlink()
    return fresh, stopped, resumed


def scale_rows(mode: str) -> list[str]:
    """The Markdown table (its lines) for `mode` in {"smoke", "default", "full"}."""
    sizes = SIZES[mode]
    part_rows = 1000
    lines = [
        (
            f"texts --from FILE --out FILE.parquet, peak RSS by row count; {machine()}; endpoint with no "
            "latency in its own process; --no-cache"
        ),
        "",
        (
            "| code | rows | fresh: peak RSS | fresh: rows/s | resumed after SIGINT at half: peak RSS | "
            "resumed: rows/s | peak / peak at smallest N (fresh, resumed) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    with serve(slots=4, request_ms=0.0, item_ms=0.0) as endpoint, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base: tuple[int, int] | None = None
        for n in sizes:
            fresh, _, resumed = measure(n, folder, endpoint, part_rows)
            base = base or (fresh.peak, resumed.peak)
            lines.append(
                f"| streaming | {n:,} | {fresh.peak / 2**20:,.0f} MiB | {fresh.rate:,.0f} | "
                f"{resumed.peak / 2**20:,.0f} MiB | {resumed.rate:,.0f} | "
                f"{fresh.peak / base[0]:.2f}x, {resumed.peak / base[1]:.2f}x |"
            )
            print(lines[-1], flush=True)
        (folder / "head").mkdir()
        head = _head_tree(folder / "head")
        if head is not None:
            n = sizes[0]
            source = folder / "h.txt"
            write_texts(source, n)
            args = ["texts", "--from", source.name, "--out", "h.parquet", "--no-cache"]
            before = run_cli(args, _env(endpoint.url, head), folder, n)
            assert base is not None
            lines.append(
                f"| before ({BEFORE}: holds every row) | {n:,} | {before.peak / 2**20:,.0f} MiB | "
                f"{before.rate:,.0f} | "
                f"(no resume) | | {before.peak / base[0]:.2f}x the streaming peak |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="3,000 rows (CI)")
    parser.add_argument("--full", action="store_true", help="also 10,000,000 rows")
    args = parser.parse_args()
    mode = "smoke" if args.smoke else "full" if args.full else "default"
    lines = scale_rows(mode)
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
