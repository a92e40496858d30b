"""Issue 20, `clip-client images --out`: memory does not grow with the number of images. The keys
live in the run's SQLite ledger, not in lists and dicts, so the peak RSS of a run over many images
is that of a run over few. Also the ledger itself: de-duplication, planning, order, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from serving_server import TOKEN, ServingServer

from clip_client._cli._ledger import KeyClash, Ledger

# A run of `clip-client ARGS` in this interpreter's child that writes its peak RSS (KiB) to the file
# named by PEAK_RSS_FILE, whatever the exit status. VmHWM, not ru_maxrss: the latter keeps, across
# exec, the RSS of the process that forked the child (this test's, which serves the images).
_MEASURED = """
import os, runpy, sys
sys.argv = ["clip-client", *sys.argv[1:]]
try:
    runpy.run_module("clip_client", run_name="__main__")
finally:
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["PEAK_RSS_FILE"], "w") as f:
        f.write(peak)
"""

# A long folder name: each key costs what a real dataset's path costs (and a leak shows sooner).
_FOLDER = "a-rather-long-folder-name-as-datasets-have-them/" * 3


def _images(root: Path, n: int) -> Path:
    """`n` hard links to one tiny PNG (cheap to make, each read and embedded as its own image), 500
    to a subfolder (a folder is listed sorted, so its listing is held while it is walked)."""
    folder = root / _FOLDER
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 4), (200, 30, 60)).save(folder / "one.png")
    for i in range(1, n):
        sub = folder / f"shard_{i // 500:05d}"
        sub.mkdir(exist_ok=True)
        os.link(folder / "one.png", sub / f"image_{i:09d}_with_a_longish_name.png")
    return folder


def _peak_rss_kib(server: ServingServer, root: Path, n: int, *, out: bool) -> int:
    """The peak RSS of `clip-client images` over `n` images, into `o.parquet` (`out`) or to stdout."""
    _images(root, n)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "XDG_CACHE_HOME"))},
        "DATABRICKS_HOST": server.url,
        "DATABRICKS_TOKEN": TOKEN,
        "DATABRICKS_CONFIG_FILE": str(root / "no-databrickscfg"),
        "XDG_CACHE_HOME": str(root / "xdg-cache"),
        "PEAK_RSS_FILE": str(root / "peak"),
        # The allocators' own retention is noise here (pyarrow's pool keeps freed chunks, each thread's
        # glibc arena its own): what is measured is what the run holds.
        "ARROW_DEFAULT_MEMORY_POOL": "system",
        "MALLOC_ARENA_MAX": "2",
    }
    # Few requests in flight, of few images: the client's window of prepared images is small and the
    # same whatever the load of the machine (on a busy one, a slow server fills a larger window).
    args = ["images", _FOLDER, "--recursive", "--no-cache", "--max-concurrency", "2", "--batch-size", "32"]
    args += ["--out", "o.parquet", "--part-rows", "5000"] if out else []
    with open(root / "stdout", "wb") as stdout:
        proc = subprocess.run(
            [sys.executable, "-c", _MEASURED, *args],
            check=False,
            cwd=root,
            env=env,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=900,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if out:
        assert f"wrote {n} rows to o.parquet" in proc.stderr, proc.stderr[-3000:]
    else:
        with open(root / "stdout", "rb") as lines:
            assert sum(1 for _ in lines) == n
    server.reset()  # what it recorded is not this test's concern
    return int((root / "peak").read_text())


@pytest.mark.server(dim=8)
@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/status, hard links: Linux")
@pytest.mark.parametrize("out", [True, False], ids=["out", "stdout"])
def test_the_peak_memory_of_an_images_run_does_not_grow_with_the_image_count(
    server: ServingServer, tmp_path: Path, out: bool
) -> None:
    # Both sizes above every bounded buffer of a run (a part's rows, a ledger batch, an output chunk
    # of 8192 rows), so that what differs is what grows with the count.
    small, large = 16_000, 48_000
    few = _peak_rss_kib(server, tmp_path / "few", small, out=out)
    many = _peak_rss_kib(server, tmp_path / "many", large, out=out)
    # Measured on Linux (16,000 vs 48,000 images): before the ledger, lists and dicts of the keys
    # cost 713 bytes a key more with --out and 402 to stdout; with it, 35 and 45 (noise).
    per_key = (many - few) * 1024 / (large - small)
    print(f"peak RSS: {few} KiB ({small} images), {many} KiB ({large}): {per_key:.0f} bytes a key")
    assert per_key < 200, f"peak RSS {few} KiB for {small} images, {many} KiB for {large}"


def _row(key: str, identity: str | None = None) -> tuple[str, str, str, None]:
    absolute = os.path.abspath(key)
    return key, absolute, identity or absolute, None


def test_the_ledger_keeps_each_input_once_and_says_a_key_naming_two_images() -> None:
    with Ledger() as ledger:
        folder = Path(ledger.folder)
        assert ledger.add_inputs([_row("a.jpg"), _row("./a.jpg"), _row("b.jpg"), _row("a.jpg")]) == 2
        assert list(ledger.inputs()) == ["a.jpg", "b.jpg"]
        with pytest.raises(KeyClash) as caught:
            ledger.add_inputs([_row("k", "k in one.tar"), _row("c.jpg"), _row("k", "k in two.tar")])
        assert (caught.value.key, caught.value.first, caught.value.other) == (
            "k",
            "k in one.tar",
            "k in two.tar",
        )
        assert list(ledger.inputs()) == ["a.jpg", "b.jpg", "k", "c.jpg"]  # the rest is still taken
        name = "caf\udce9.jpg"  # a file name that is not UTF-8
        ledger.add_inputs([_row(name)])
        assert list(ledger.inputs())[-1] == name
    assert not folder.exists()


def test_the_ledger_plans_by_absolute_path_and_stamp_and_reads_back_in_input_order() -> None:
    with Ledger() as ledger:
        ledger.add_inputs(
            [
                ("x/a.jpg", os.path.abspath("x/a.jpg"), os.path.abspath("x/a.jpg"), (1, 1)),
                ("b.jpg", os.path.abspath("b.jpg"), os.path.abspath("b.jpg"), (2, 2)),
                ("c.jpg", os.path.abspath("c.jpg"), os.path.abspath("c.jpg"), (3, 3)),
                ("d.jpg", os.path.abspath("d.jpg"), os.path.abspath("d.jpg"), None),
            ]
        )
        # Done: a.jpg spelled otherwise, b.jpg changed since, d.jpg (no stamp now), and an old row.
        ledger.add_done([("./x/a.jpg", 0, 0, (1, 1)), ("b.jpg", 0, 1, (2, 9)), ("d.jpg", 0, 2, (4, 4))])
        ledger.add_done([("gone.jpg", 1, 0, None)])
        assert ledger.plan() == (3, 2)  # c.jpg (no row), b.jpg (changed), d.jpg (no stamp now)
        assert [item for item, _ in ledger.pending(["c.jpg", "x/a.jpg", "b.jpg", "b.jpg", "d.jpg"])] == [
            "c.jpg",
            "b.jpg",
            "d.jpg",
        ]
        assert ledger.left_out() == 1
        ledger.add_done([("c.jpg", 1, 1, (3, 3))])
        ledger.forget(["d.jpg"])
        assert list(ledger.rows_in_order()) == [
            ("x/a.jpg", 0, 0, (1, 1)),
            ("b.jpg", 0, 1, (2, 9)),
            ("c.jpg", 1, 1, (3, 3)),
        ]
        assert ledger.count_in_order() == 3
