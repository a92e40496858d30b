"""Ctrl-C after the output is written, in a real `clip-client` process: the console script keeps the
`finishing` window open until the process is gone (closing the client and Python's shutdown take a
second after the "wrote" line), so the run ends with the status it earned, never 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from clip_client._cli.outputs import read_rows

# The console script, then a pause standing in for a slow shutdown: the Ctrl-C lands in it.
_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from clip_client._cli import main
    try:
        main()
    finally:
        print("exiting", file=sys.stderr, flush=True)
        time.sleep(5)
    """
)


def test_a_ctrl_c_after_the_wrote_line_ends_with_the_runs_status(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    args = ["texts", "a red car", "a dog", "--out", "o.parquet", "--no-cache", "--local", "--model",
            str(tiny_checkpoint), "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, *args],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    said = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            said.append(line)
            if line.startswith("exiting"):
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said.append(rest)
    assert proc.returncode == 0, "".join(said)  # not 130 (or death by SIGINT): the output is whole
    assert any("wrote 2 rows" in line for line in said)
    assert read_rows(tmp_path / "o.parquet").texts == ["a red car", "a dog"]
