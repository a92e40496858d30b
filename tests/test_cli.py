"""The `clip-client` command, end to end, on real image files.

Most commands run in this process, through typer's `CliRunner` (`cli` and `invoke`), against the
loopback serving server (`server`; found through DATABRICKS_HOST and DATABRICKS_TOKEN, as a user's
shell would set them) or in local mode on the tiny checkpoint. A real subprocess runs only where
the process itself is what is tested: the console script, Ctrl-C (SIGINT), a kill and the resumed
run, and a closed stdout (SIGPIPE). What a command wrote is read back and compared, row for row,
with what `ClipClient` returns for the same inputs. Every run's output is checked for the token.
`clip_client._cli.outputs` (the file formats, the resume store, the model of a file) is also tested
directly, below, and so are docs/cli.md's option tables against the commands.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bad_inputs import BAD_IMAGES
from harness import IMAGE, TEXT, close_and_drain_sync, text_rows
from image_factory import picture, write_images
from PIL import Image
from serving_server import TOKEN, Reply, ServingServer
from tiny_clip import write_tiny_clip

import clip_client
from clip_client import ClipClient, cosine_topk, find_duplicates
from clip_client._cli import app
from clip_client._cli.embed import gather_images
from clip_client._cli.errors import flag_spelling, in_cli_words
from clip_client._cli.outputs import (
    OutputError,
    OutputMeta,
    ResumableOutput,
    Rows,
    check_writable,
    meta_path,
    read_rows,
    write_rows,
)
from clip_client.errors import ConfigurationError, EndpointNotFoundError, InvalidInputError

VENV_SCRIPT = Path(sys.executable).with_name("clip-client")


# --------------------------------------------------------------------------------------------------
# Running the command


class Run:
    """A finished ``clip-client`` run: its exit status, stdout and stderr."""

    def __init__(self, rc: int, out: str, err: str) -> None:
        self.rc = rc
        self.out = out
        self.err = err
        # No run, whatever it did, shows the token anywhere.
        assert TOKEN not in self.out + self.err
        assert TOKEN.split("-")[-1] not in self.out + self.err

    def __repr__(self) -> str:
        return f"Run(rc={self.rc}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def env(server: ServingServer, tmp_path: Path) -> dict[str, str]:
    """The environment of a user whose workspace is ``server``: host and token in DATABRICKS_*,
    no config file, and a cache folder of this test's own."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_", "XDG_CACHE_HOME"))
    }
    return {
        **clean,
        "DATABRICKS_HOST": server.url,
        "DATABRICKS_TOKEN": TOKEN,
        "DATABRICKS_CONFIG_FILE": str(tmp_path / "no-databrickscfg"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
    }


@pytest.fixture
def in_workspace(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process as ``env``'s user: in ``tmp_path``, with ``env``'s workspace and cache folder
    (and no other cloud credentials), for commands run in-process. Returns ``env``."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")) or name == "XDG_CACHE_HOME":
            monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("DATABRICKS_") or name == "XDG_CACHE_HOME":
            monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def cli(in_workspace: dict[str, str]):  # type: ignore[no-untyped-def]
    """``cli(*args)``: run ``clip-client args`` in this process (typer's ``CliRunner``), in
    ``tmp_path``, as ``env``'s user: a :class:`Run`."""
    from typer.testing import CliRunner

    def run(*args: object, extra_env: dict[str, str] | None = None) -> Run:
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(extra_env or {})})
        return Run(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def reference(server: ServingServer):  # type: ignore[no-untyped-def]
    """A ``ClipClient`` of ``server`` (no cache): the arrays the command's output must equal."""
    client = ClipClient(**server.client_kwargs())
    yield client
    close_and_drain_sync(client)


def write_pictures(folder: Path, n: int, *, start: int = 0) -> list[Path]:
    """``n`` distinct small pictures, PNG and JPEG alternately, written with Pillow."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n):
        path = folder / f"img_{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(picture(64 + i, 48 + 2 * i, seed=i)).save(path)
        paths.append(path)
    return paths


def rel(paths: list[Path], root: Path) -> list[str]:
    return [os.path.relpath(p, root) for p in paths]


def jsonl(text: str) -> list[dict]:  # type: ignore[type-arg]
    # JSON Lines end at "\n" only: a text may hold U+2028, U+0085... raw (`str.splitlines` splits there).
    return [json.loads(line) for line in text.split("\n") if line.strip()]


# --------------------------------------------------------------------------------------------------
# help


def test_help_names_every_command_and_the_exit_statuses(cli) -> None:  # type: ignore[no-untyped-def]
    run = cli("--help", extra_env={"COLUMNS": "200"})
    assert run.rc == 0, run
    for command in ("texts", "images", "search", "dedupe", "classify", "status"):
        assert command in run.out
    assert "Exit status" in run.out
    assert "3 finished, but some inputs failed" in run.out
    assert "never from a flag" in run.out


@pytest.mark.parametrize("command", ["texts", "images", "search", "dedupe", "classify", "status"])
def test_each_command_has_help_with_an_example(command: str) -> None:
    from typer.testing import CliRunner

    from clip_client._cli import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if command != "status":
        assert "Example: clip-client " + command in result.output
    if command != "dedupe":
        assert "--local" in result.output
        assert "--profile" in result.output
    assert "--token" not in result.output


def test_console_script_is_installed(env: dict[str, str]) -> None:
    assert VENV_SCRIPT.exists(), "pip install -e . installs the clip-client script"
    done = subprocess.run(
        [str(VENV_SCRIPT), "--help"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    assert "images" in done.stdout


# --------------------------------------------------------------------------------------------------
# images: every format, the cache


def test_images_every_format_equals_the_clients_arrays_and_the_cache_spares_every_request(
    cli, server: ServingServer, reference: ClipClient, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    kinds = write_images(
        tmp_path / "photos", ["rgb_jpeg", "rgba_png", "palette_gif", "cmyk_jpeg", "webp", "bmp"]
    )
    write_pictures(tmp_path / "photos" / "sub", 2)
    (tmp_path / "photos" / "notes.txt").write_text("not an image, and not picked up")
    paths = sorted(rel(list(kinds.values()), tmp_path))  # a folder: sorted, top level only

    first = cli("images", "photos", "--out", "out.parquet")
    assert first.rc == 0, first
    assert server.posts(IMAGE) > 0
    assert "it/s" not in first.err
    assert "image/s" not in first.err

    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["path", "size", "mtime_ns", "embedding"]
    stat = (tmp_path / paths[0]).stat()
    assert table.slice(0, 1).drop(["embedding"]).to_pylist() == [
        {"path": paths[0], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    ]
    column_type = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(column_type)
    assert column_type.list_size == 768
    assert column_type.value_type == pa.float32()
    meta = json.loads(table.schema.metadata[b"clip_client"])
    assert meta["kind"] == "image"
    assert meta["dim"] == 768
    assert meta["normalize"] is False
    assert meta["model"] == f"{server.url}/serving-endpoints/{IMAGE}/invocations"
    assert meta["preparation"]["image_size"] == 224
    assert meta["clip_client"]
    assert table.column("path").to_pylist() == paths

    server.reset()
    expected = reference.embed_images([tmp_path / p for p in paths])
    got = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    np.testing.assert_array_equal(got, expected)

    # Every other format, from the on-disk cache: not one request.
    server.reset()
    for name in ("out.npy", "out.jsonl", None):
        run = cli("images", "photos", *(["--out", name] if name else []))
        assert run.rc == 0, run
        if name is None:
            rows = jsonl(run.out)
            assert [r["path"] for r in rows] == paths
            np.testing.assert_array_equal(np.asarray([r["embedding"] for r in rows], np.float32), expected)
        else:
            back = read_rows(tmp_path / name)
            assert back.keys == paths
            assert back.embeddings.dtype == np.float32
            np.testing.assert_array_equal(back.embeddings, expected)
            assert back.meta is not None
            assert back.meta.kind == "image"
    assert server.posts() == 0
    npy_side = json.loads(meta_path(tmp_path / "out.npy").read_text())
    assert npy_side["path"] == paths
    assert npy_side["rows"] == len(paths)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)

    # --recursive, --glob, --no-cache (which sends again) and --normalize.
    run = cli(
        "images", "photos", "-r", "--glob", "*.png", "--no-cache", "--normalize", "--out", "png.parquet"
    )
    assert run.rc == 0, run
    pngs = sorted(p for p in rel(list((tmp_path / "photos").rglob("*.png")), tmp_path))
    back = read_rows(tmp_path / "png.parquet")
    assert sorted(back.keys) == pngs
    assert len(back.keys) == len(pngs)
    assert server.posts(IMAGE) > 0
    server.reset()
    want = reference.embed_images([tmp_path / p for p in back.keys], normalize=True)
    np.testing.assert_array_equal(back.embeddings, want)


def test_given_files_keep_their_order_and_a_path_given_twice_is_embedded_once(
    cli, reference: ClipClient, tmp_path: Path, server: ServingServer
) -> None:  # type: ignore[no-untyped-def]
    b, a, c = write_pictures(tmp_path / "p", 3)
    run = cli("images", c, a, c, b, "--out", "o.jsonl")
    assert run.rc == 0, run
    assert "given more than once" in run.err
    back = read_rows(tmp_path / "o.jsonl")
    assert back.keys == [str(c), str(a), str(b)]
    server.reset()
    np.testing.assert_array_equal(back.embeddings, reference.embed_images([c, a, b]))


# --------------------------------------------------------------------------------------------------
# images: resumption after a real kill


def test_a_killed_run_resumes_with_only_the_missing_images(
    env: dict[str, str], cli, server: ServingServer, reference: ClipClient, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    paths = write_pictures(tmp_path / "photos", 14)
    names = rel(paths, tmp_path)
    out = tmp_path / "emb.parquet"
    parts = tmp_path / "emb.parquet.parts"
    args = ["images", "photos", "--out", out.name, "--batch-size", "2", "--part-rows", "2",
            "--max-concurrency", "1", "--no-cache"]  # fmt: skip

    server.latency = 0.25  # so that parts exist while images are still missing
    proc = subprocess.Popen(
        [sys.executable, "-m", "clip_client", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(list(parts.glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no parts were written"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert TOKEN not in err
    assert not out.exists()  # never half a file

    done_before = [p for part in sorted(parts.glob("part-*.parquet")) for p in read_rows(part).keys]
    assert 4 <= len(done_before) < len(names)
    assert len(set(done_before)) == len(done_before)

    server.reset()  # no latency; requests the killed run still had in flight are not counted
    run = cli(*args)
    assert run.rc == 0, run
    assert f"{len(done_before)} of {len(names)} image(s) already done" in run.err
    sent = server.inputs(IMAGE)
    assert len(sent) == len(names) - len(done_before)

    # The rerun sent exactly the missing images: their payloads, as the client sends them.
    missing = [tmp_path / n for n in names if n not in done_before]
    server.reset()
    reference.embed_images(missing)
    assert sorted(sent) == sorted(server.inputs(IMAGE))

    back = read_rows(out)
    assert back.keys == names  # sorted, each once
    assert not parts.exists()
    server.reset()
    np.testing.assert_array_equal(back.embeddings, reference.embed_images(paths))


def test_a_rerun_with_other_settings_is_refused_until_overwrite(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_pictures(tmp_path / "photos", 3)
    assert cli("images", "photos", "--out", "e.npy").rc == 0
    before = (tmp_path / "e.npy").read_bytes()

    run = cli("images", "photos", "--out", "e.npy", "--normalize")
    assert run.rc == 1, run
    lines = run.err.strip().splitlines()
    assert len(lines) == 1
    assert "normalize False (this run: True)" in lines[0]
    assert "--overwrite" in lines[0]
    assert (tmp_path / "e.npy").read_bytes() == before

    run = cli("images", "photos", "--out", "e.npy", "--normalize", "--overwrite")
    assert run.rc == 0, run
    back = read_rows(tmp_path / "e.npy")
    np.testing.assert_allclose(np.linalg.norm(back.embeddings, axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# images: unreadable images


def test_unreadable_images_are_listed_with_paths_and_exit_3_or_stop_the_run_with_strict(
    cli, server: ServingServer, reference: ClipClient, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    good = write_pictures(tmp_path / "photos", 4)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    bad = {}
    for name in ("empty file", "truncated JPEG", "text file named .png"):
        made = BAD_IMAGES[name].make(scratch)  # (the truncated JPEG's maker writes the whole one too)
        bad[name] = made.rename(tmp_path / "photos" / made.name)
    names = sorted(rel(good + list(bad.values()), tmp_path))

    run = cli("images", "photos", "--out", "o.parquet")
    assert run.rc == 3, run
    assert f"{len(bad)} of {len(names)} image(s) could not be embedded" in run.err
    for name, path in bad.items():
        line = next(x for x in run.err.splitlines() if os.path.relpath(path, tmp_path) in x)
        assert BAD_IMAGES[name].says in line
    back = read_rows(tmp_path / "o.parquet")
    assert back.keys == [n for n in names if tmp_path / n in good]
    server.reset()
    np.testing.assert_array_equal(back.embeddings, reference.embed_images([tmp_path / k for k in back.keys]))

    server.reset()
    run = cli("images", "photos", "--strict", "--out", "s.parquet")
    assert run.rc == 1, run
    first_bad = next(n for n in names if tmp_path / n not in good)
    assert run.err.count("error:") == 1
    assert first_bad in run.err
    assert not (tmp_path / "s.parquet").exists()

    # A rerun of the first command retries the failed ones only (the good ones are in its output).
    server.reset()
    run = cli("images", "photos", "--out", "o.parquet", "--no-cache")
    assert run.rc == 3, run
    assert server.posts(IMAGE) == 0, run


# --------------------------------------------------------------------------------------------------
# texts


def test_texts_from_arguments_txt_and_csv(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = cli("texts", "a red car", "a dog")
    assert run.rc == 0, run
    rows = jsonl(run.out)
    assert [(r["id"], r["text"]) for r in rows] == [(0, "a red car"), (1, "a dog")]
    np.testing.assert_array_equal(
        np.asarray([r["embedding"] for r in rows], np.float32), text_rows(["a red car", "a dog"])
    )

    (tmp_path / "captions.txt").write_text("first\n\nsecond ünïcode\nthird\n", encoding="utf-8")
    run = cli("texts", "--from", "captions.txt", "--out", "t.parquet", "--normalize")
    assert run.rc == 0, run
    assert "1 blank line(s) skipped" in run.err
    back = read_rows(tmp_path / "t.parquet")
    assert back.keys == [0, 2, 3]
    assert back.texts == ["first", "second ünïcode", "third"]
    want = text_rows(back.texts)
    np.testing.assert_allclose(back.embeddings, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=1e-6)
    assert pq.read_table(tmp_path / "t.parquet").column_names == ["id", "text", "embedding"]

    (tmp_path / "c.csv").write_text('id,caption\n7,"a cat, sleeping"\n8,a boat\n', encoding="utf-8")
    run = cli("texts", "--from", "c.csv", "--column", "caption", "--out", "c.npy")
    assert run.rc == 0, run
    back = read_rows(tmp_path / "c.npy")
    assert back.texts == ["a cat, sleeping", "a boat"]
    assert back.keys == [0, 1]
    np.testing.assert_array_equal(back.embeddings, text_rows(back.texts))


# --------------------------------------------------------------------------------------------------
# search, dedupe, classify, status


def test_search_and_dedupe_read_the_index(cli, tmp_path: Path, server: ServingServer) -> None:  # type: ignore[no-untyped-def]
    paths = write_pictures(tmp_path / "photos", 5)
    copy = tmp_path / "photos" / "img_000_copy.jpg"
    copy.write_bytes(paths[0].read_bytes())  # the same file twice: identical embeddings
    assert cli("images", "photos", "--out", "idx.parquet").rc == 0
    index = read_rows(tmp_path / "idx.parquet")

    run = cli("search", "idx.parquet", "a red car", "-k", "3", "--json")
    assert run.rc == 0, run
    hits = jsonl(run.out)
    want = cosine_topk(text_rows(["a red car"])[0], index.embeddings, 3)
    assert [h["path"] for h in hits] == [index.keys[i] for i in want.indices[0]]
    np.testing.assert_allclose([h["score"] for h in hits], want.scores[0], atol=1e-6)

    run = cli("search", "idx.parquet", "--image", paths[3], "-k", "2")
    assert run.rc == 0, run
    lines = run.out.splitlines()
    assert lines[0].split() == ["rank", "score", "path"]
    assert lines[1].split() == ["1", "1.0000", os.path.relpath(paths[3], tmp_path)]

    run = cli("dedupe", "idx.parquet", "--json")
    assert run.rc == 0, run
    groups = jsonl(run.out)
    expected = find_duplicates(index.embeddings, 0.95)
    assert len(groups) == len(expected) == 1
    members = [m["path"] for m in groups[0]["members"]]
    assert sorted(members) == sorted(rel([paths[0], copy], tmp_path))
    assert [m["similarity"] for m in groups[0]["members"]] == pytest.approx([1.0, 1.0], abs=1e-6)

    run = cli("dedupe", "idx.parquet", "--threshold", "0.999")
    assert run.rc == 0, run
    assert "group 1 (2 members)" in run.out, run
    assert "1.0000" in run.out, run


def test_classify_prints_the_clients_probabilities_and_lists_failures(
    cli, server: ServingServer, reference: ClipClient, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    paths = write_pictures(tmp_path / "photos", 3)
    missing = tmp_path / "photos" / "gone.jpg"
    (tmp_path / "labels.txt").write_text("cat\ndog\n\ncar\n")

    run = cli("classify", *paths, missing, "--labels-file", "labels.txt", "--top", "2", "--json")
    assert run.rc == 3, run
    got = jsonl(run.out)
    server.reset()
    result = reference.classify(paths, ["cat", "dog", "car"])
    tops = result.top(2)
    assert [g["path"] for g in got] == [str(p) for p in paths]
    for row, want in zip(got, tops, strict=True):
        assert [x["label"] for x in row["labels"]] == [lab for lab, _ in want]
        assert [x["probability"] for x in row["labels"]] == pytest.approx([p for _, p in want], abs=1e-6)
    assert f"{missing}: " in run.err
    assert "no such file" in run.err

    run = cli("classify", *paths, "--labels", "cat,dog,car")
    assert run.rc == 0, run
    for path, prediction in zip(paths, result.predictions, strict=True):
        assert any(line.split()[:2] == [str(path), prediction] for line in run.out.splitlines())


def test_status_prints_the_check_endpoint_report(cli, server: ServingServer) -> None:  # type: ignore[no-untyped-def]
    run = cli("status")
    assert run.rc == 0, run
    assert f"text endpoint {TEXT}" in run.out
    assert f"image endpoint {IMAGE}" in run.out
    assert "parity" in run.out
    assert "long texts" in run.out


# --------------------------------------------------------------------------------------------------
# errors


def test_a_failure_is_one_line_and_verbose_shows_the_details(
    cli, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    run = cli("texts", "hello", "--text-endpoint", "no-such-endpoint")
    assert run.rc == 1, run
    assert run.err.count("\n") == 1
    assert run.err.startswith("clip-client: error: ")
    assert "no-such-endpoint" in run.err
    assert "--verbose" in run.err
    assert run.out == ""

    # A server that echoes the token back: the message, the traceback and the log never show it.
    body = {"error_code": "UNAUTHENTICATED", "message": f"Invalid token: Bearer {TOKEN}"}
    server.script = [Reply(401, body)]
    run = cli("texts", "hello", "--verbose", "--no-cache")
    assert run.rc == 1, run
    assert "Traceback (most recent call last)" in run.err
    assert "AuthenticationError" in run.err


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["images", "x.jpg", "--out", "x.csv"], 2, "unknown output format '.csv'"),
        (["texts", "a", "--out", "x"], 2, "unknown output format '(no extension)'"),
        (["search", "missing.parquet", "q"], 1, "missing.parquet: no such file"),
        (["search", "missing.parquet"], 2, "give a query text or --image FILE"),
        (["texts", "a", "--model", "m"], 2, "add --local"),
        (["texts", "a", "--cache", "c.sqlite", "--no-cache"], 2, "either --cache or --no-cache"),
        (["texts", "a", "--max-concurrency", "lots"], 2, "neither a number nor"),
        (["texts", "--from", "c.csv"], 2, "name the one to embed with --column"),
        (["texts"], 2, "give texts to embed"),
        (["images"], 2, "Missing argument"),
        (["classify", "x.jpg", "--labels", "cat,cat"], 2, "repeats"),
        (["classify", "x.jpg", "--labels", "cat,,dog"], 2, "label 2 of 3 in 'cat,,dog' is empty"),
        (["classify", "x.jpg", "--labels", "cat,dog,"], 2, "label 3 of 3"),
        (["classify", "x.jpg", "--labels", "cat", "--template", "no brace"], 2, "--template"),
        (["texts", "a", "--max-concurrency", "0"], 2, "Invalid value for --max-concurrency"),
        (["texts", "a", "--max-concurrency", "-5"], 2, "Invalid value for --max-concurrency"),
        (["texts", "a", "--max-concurrency", "100000"], 2, "Invalid value for --max-concurrency"),
        (["images", "x.jpg", "--image-preparation", "bogus"], 2, "Invalid value for --image-preparation"),
        (["images", "x.jpg", "--max-image-pixels", "0"], 2, "Invalid value for --max-image-pixels"),
        (["search", "mk.py", "q"], 1, "INDEX mk.py: unknown output format '.py'"),
        (["images", "x.jpg", "dir.jpg"], 1, "no images found in dir.jpg"),
        (["images", "dir.jpg"], 1, "no images found in dir.jpg"),
        (["classify", "x.jpg"], 2, "--labels-file"),
        (["texts", "a", "--token", "t"], 2, "No such option"),
    ],
)
def test_mistakes_exit_with_a_clear_message_before_any_request(
    args: list[str], status: int, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from clip_client._cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.csv").write_text("a,b\n1,2\n")
    (tmp_path / "mk.py").write_text("print()\n")
    (tmp_path / "dir.jpg").mkdir()  # an empty folder with an image's name
    # A workspace that answers nothing: these must fail before any request is sent.
    monkeypatch.setenv("DATABRICKS_HOST", "http://127.0.0.1:9")
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    loggers = [logging.getLogger(name) for name in ("clip_client", "databricks.sdk")]
    before = [(logger.level, list(logger.handlers)) for logger in loggers]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == status, result.output
    assert says in " ".join(result.output.split())
    assert TOKEN not in result.output
    # run in-process, a command leaves the process's logging as it found it
    assert [(logger.level, list(logger.handlers)) for logger in loggers] == before


# --------------------------------------------------------------------------------------------------
# local mode


def test_local_mode_on_the_tiny_checkpoint(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = write_tiny_clip(tmp_path / "tiny")
    paths = write_pictures(tmp_path / "photos", 3)
    run = cli("images", "photos", "--out", "l.jsonl", "--local", "--model", model, "--device", "cpu")
    assert run.rc == 0, run
    back = read_rows(tmp_path / "l.jsonl")
    assert back.meta is not None
    assert back.meta.model.startswith("local ")
    with ClipClient.local(model, device="cpu") as client:
        want = client.embed_images(paths)
    assert back.keys == rel(paths, tmp_path)
    np.testing.assert_allclose(back.embeddings, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# clip_client._cli.outputs, in-process


def _meta(**changes: object) -> OutputMeta:
    base = {"kind": "image", "model": "http://h/serving-endpoints/e", "normalize": False,
            "preparation": {"image_size": 224}}  # fmt: skip
    return OutputMeta(**{**base, **changes})  # type: ignore[arg-type]


def _rows(keys: list[str], seed: int = 0, meta: OutputMeta | None = None) -> Rows:
    rng = np.random.default_rng(seed)
    return Rows(keys, rng.standard_normal((len(keys), 8)).astype(np.float32), None, meta or _meta())


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".jsonl"])
def test_every_format_round_trips_exactly(tmp_path: Path, suffix: str) -> None:
    rows = _rows(["a.jpg", "dir/b ü.png", "c,d.jpg"])
    write_rows(tmp_path / f"x{suffix}", rows)
    back = read_rows(tmp_path / f"x{suffix}")
    assert back.keys == rows.keys
    np.testing.assert_array_equal(back.embeddings, rows.embeddings)
    assert back.meta == _meta(dim=8)
    texts = Rows([0, 5], rows.embeddings[:2], ["x", "y, z"], _meta(kind="text", preparation={}))
    write_rows(tmp_path / f"t{suffix}", texts)
    back = read_rows(tmp_path / f"t{suffix}")
    assert back.keys == [0, 5]
    assert back.texts == ["x", "y, z"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_a_data_file_and_a_sidecar_that_do_not_match_are_refused(tmp_path: Path) -> None:
    write_rows(tmp_path / "x.npy", _rows(["a", "b"]))
    np.save(tmp_path / "x.npy", np.zeros((3, 8), np.float32))
    with pytest.raises(OutputError, match="do not belong together"):
        read_rows(tmp_path / "x.npy")
    meta_path(tmp_path / "x.npy").unlink()
    with pytest.raises(OutputError, match=r"x\.npy\.meta\.json is missing"):
        read_rows(tmp_path / "x.npy")
    write_rows(tmp_path / "x.jsonl", _rows(["a", "b"]))
    side = json.loads(meta_path(tmp_path / "x.jsonl").read_text())
    meta_path(tmp_path / "x.jsonl").write_text(json.dumps({**side, "rows": 3}))
    with pytest.raises(OutputError, match=r"x\.jsonl: 2 rows, but x\.jsonl\.meta\.json lists 3"):
        read_rows(tmp_path / "x.jsonl")


def test_resumable_output_keeps_parts_checks_settings_and_finishes_in_order(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    store = ResumableOutput(out, _meta(), part_rows=2)
    assert store.open() == 0
    rows = _rows(["c", "a", "b"])
    for key, row in zip(rows.keys, rows.embeddings, strict=True):
        store.add(key, row)
    assert len(list(store.parts.glob("part-*.parquet"))) == 1  # two rows; the third is buffered

    again = ResumableOutput(out, _meta(), part_rows=2)  # as after a kill: the buffered row is lost
    assert again.open() == 2
    assert set(again.done_keys()) == {"c", "a"}
    with pytest.raises(OutputError, match=r"image_size 224 \(this run: 336\)"):
        ResumableOutput(out, _meta(preparation={"image_size": 336})).open()
    again.add("b", rows.embeddings[2])
    written = again.finish(["a", "b", "c", "never-embedded"])
    assert written.keys == ["a", "b", "c"]
    assert not again.parts.exists()
    np.testing.assert_array_equal(read_rows(out).embeddings, rows.embeddings[[1, 2, 0]])

    # A finished output is resumed from too: its rows become the first part.
    third = ResumableOutput(out, _meta())
    assert third.open() == 3
    assert set(third.done_keys()) == {"a", "b", "c"}
    assert third.parts.is_dir()
    assert ResumableOutput(tmp_path / "p.parquet", _meta(normalize=True)).open() == 0
    with pytest.raises(OutputError, match=r"normalize False \(this run: True\)"):
        ResumableOutput(out, _meta(normalize=True)).open()


def test_ctrl_c_keeps_the_finished_rows_and_a_terminal_shows_a_progress_bar(
    env: dict[str, str], cli, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    import fcntl
    import pty
    import select
    import struct
    import termios

    write_pictures(tmp_path / "photos", 12)
    args = ["images", "photos", "--out", "e.npy", "--batch-size", "2", "--part-rows", "100",
            "--max-concurrency", "1", "--no-cache"]  # fmt: skip
    server.latency = 0.25
    controller, terminal = pty.openpty()  # stderr is a terminal: the progress bar is on
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    proc = subprocess.Popen(
        [sys.executable, "-m", "clip_client", *args],
        cwd=tmp_path, env={**env, "COLUMNS": "120"}, stdout=subprocess.PIPE, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while len(server.inputs(IMAGE)) < 6:  # three batches answered, none written yet (100 per part)
            assert proc.poll() is None
            assert time.monotonic() < deadline, seen
            if select.select([controller], [], [], 0.05)[0]:
                seen += os.read(controller, 4096)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        while select.select([controller], [], [], 0.2)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    text = seen.decode("utf-8", "replace")
    assert proc.returncode == 130, text
    assert "image/s" in text  # the bar: items per second, and the ETA after "<"
    assert "interrupted" in text
    assert "rerun to resume" in text
    assert TOKEN not in text
    kept = [k for part in (tmp_path / "e.npy.parts").glob("part-*.parquet") for k in read_rows(part).keys]
    assert len(kept) >= 2  # rows buffered for a part of 100 were written on the way out
    assert not (tmp_path / "e.npy").exists()

    server.reset()
    run = cli(*args)
    assert run.rc == 0, run
    assert len(server.inputs(IMAGE)) == 12 - len(kept)
    assert len(read_rows(tmp_path / "e.npy")) == 12


# --------------------------------------------------------------------------------------------------
# In-process runs (typer's CliRunner) against the loopback server: what a tester found


@pytest.fixture
def invoke(in_workspace: dict[str, str]):  # type: ignore[no-untyped-def]
    """``invoke(*args)``: run the command in this process, in ``tmp_path``, with ``env``'s workspace:
    typer's ``Result`` (``exit_code``, ``stdout``, ``stderr``, ``output``)."""
    from typer.testing import CliRunner

    def run(*args: object):  # type: ignore[no-untyped-def]
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
        assert TOKEN not in result.output
        return result

    return run


def test_search_refuses_an_index_computed_by_another_model(
    invoke, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    paths = write_pictures(tmp_path / "photos", 3)
    assert invoke("images", "photos", "--out", "idx.parquet").exit_code == 0
    server.reset()
    for query in (["a red car"], ["--image", paths[0]]):
        result = invoke("search", "idx.parquet", *query, "--image-endpoint", "another-image-endpoint")
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert f"computed by '{server.url}/serving-endpoints/{IMAGE}/invocations'" in lines[0]
        assert "another-image-endpoint" in lines[0]
        assert "--image-endpoint" in lines[0]
    assert server.posts() == 0  # refused before the query is sent

    # A file of another writer (no settings) of another width: its width and what to do.
    write_rows(tmp_path / "foreign.parquet", _rows(["a", "b"]))
    pq.write_table(
        pq.read_table(tmp_path / "foreign.parquet").replace_schema_metadata({}), tmp_path / "f.parquet"
    )
    result = invoke("search", "f.parquet", "a red car")
    assert result.exit_code == 1, result.output
    assert "f.parquet holds 8-d rows (model: unknown), but the query is 768-d" in result.stderr


def test_resume_embeds_changed_files_again_and_matches_paths_by_absolute_path(
    invoke, server: ServingServer, reference: ClipClient, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    paths = write_pictures(tmp_path / "photos", 3)
    first = invoke("images", "photos", "--out", "o.parquet")
    assert first.exit_code == 0, first.output
    assert "(3 embedded, 0 of them from the cache)" in first.stderr

    # An edited image: same name, other pixels. It is embedded again, the others are not.
    Image.fromarray(picture(90, 70, seed=99)).save(paths[1])
    server.reset()
    run = invoke("images", "photos/", "--out", "o.parquet", "--no-cache")
    assert run.exit_code == 0, run.output
    assert "resuming: 2 of 3 image(s) already done; 1 changed since (size or mtime) and embedded again" in (
        run.stderr
    )
    assert len(server.inputs(IMAGE)) == 1
    back = read_rows(tmp_path / "o.parquet")
    assert back.keys == rel(paths, tmp_path)
    assert back.stamps == [(p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    server.reset()
    np.testing.assert_array_equal(back.embeddings, reference.embed_images(paths))

    # The same folder by its absolute path: nothing to do; the rows take the paths as now given.
    server.reset()
    run = invoke("images", tmp_path / "photos", "--out", "o.parquet")
    assert run.exit_code == 0, run.output
    assert "3 of 3 image(s) already done" in run.stderr
    assert "left out" not in run.stderr
    assert server.posts() == 0
    assert read_rows(tmp_path / "o.parquet").keys == [str(p) for p in paths]

    # The cache's part is said: the edited image was embedded without the cache, the others with it.
    run = invoke("images", "photos", "--out", "o.parquet", "--overwrite")
    assert "(3 embedded, 2 of them from the cache)" in run.stderr, run.output


def test_dedupe_of_no_rows_finds_no_duplicates_and_the_help_reads_as_paragraphs(
    invoke, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    write_rows(tmp_path / "none.npy", Rows([], np.zeros((0, 8), np.float32), None, _meta()))
    result = invoke("dedupe", "none.npy")
    assert result.exit_code == 0, result.output
    assert "no near-duplicates" in result.stdout

    result = invoke("images", "--help")
    assert "rerun the same command after an interruption" in result.stdout  # one paragraph, not cut
    assert "--image-preparation" in result.stdout
    assert "--max-image-pixels" in result.stdout
    rows = [line.strip("│ ") for line in result.stdout.splitlines()]
    flags = [line for line in rows if line.startswith(("--recursive", "--local "))]
    assert len(flags) == 2, flags
    assert not any("<bool>" in line for line in flags)  # a flag takes no value
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"clip-client {clip_client.__version__}"


def test_cli_errors_name_the_cli_options_not_python_keywords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    for name in [k for k in os.environ if k.startswith("DATABRICKS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["texts", "a", "--no-cache"], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    message = result.stderr
    assert "could not resolve a Databricks workspace" in message
    for says in ("DATABRICKS_HOST", "--host", "--profile", "--local"):
        assert says in message
    assert "host=" not in message
    assert "ClipClient.local" not in message
    # What the command read: a typed error naming the setting, not a message to parse.
    from clip_client._remote.workspace import resolve_workspace

    with pytest.raises(ConfigurationError) as info:
        resolve_workspace()
    assert info.value.setting == "host"
    assert isinstance(info.value, ValueError)
    assert "could not resolve a Databricks workspace" in str(info.value)
    assert "host=" in str(info.value)  # Python callers read keyword arguments

    # Advice names settings as fields; the command spells each with its option, from one table.
    advice = "Use {image_preparation='server'} so every image ...; raise {max_image_pixels} if it is genuine"
    error = InvalidInputError("too big", advice=advice)
    assert error.advice() == (
        "Use image_preparation='server' so every image ...; raise max_image_pixels if it is genuine"
    )
    assert error.advice(flag_spelling) == (
        "Use --image-preparation server so every image ...; raise --max-image-pixels if it is genuine"
    )
    from clip_client._cli.search import _labels

    assert _labels("cat", None) == ["cat"]  # what ClipClient.classify accepts


def test_folders_are_normalised_and_dangling_symlinks_are_listed_not_dropped(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (good,) = write_pictures(photos, 1)
    (photos / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    for arg in (photos, Path(f"{photos}/"), Path(f"{photos}/./")):
        assert gather_images([arg], recursive=False, globs=()) == [str(photos / "gone.jpg"), str(good)]
        assert gather_images([arg], recursive=True, globs=()) == [str(photos / "gone.jpg"), str(good)]


def test_a_closed_stdout_ends_the_command_quietly(env: dict[str, str], tmp_path: Path) -> None:
    n = 6000  # many lines: more than a pipe holds, so the writer meets the closed end
    keys = [f"some/rather/long/folder/name/image_{i:06d}.jpg" for i in range(n)]
    write_rows(tmp_path / "same.npy", Rows(keys, np.ones((n, 8), np.float32), None, _meta()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "clip_client", "dedupe", "same.npy"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert proc.stdout.readline().startswith(b"1 group(s)")
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert err == b""


def test_output_files_honour_the_umask(tmp_path: Path) -> None:
    saved = os.umask(0o022)
    try:
        for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
            os.umask(mask)
            for suffix in (".parquet", ".npy", ".jsonl"):
                out = tmp_path / f"{mask:o}{suffix}"
                write_rows(out, _rows(["a"]))
                assert out.stat().st_mode & 0o777 == mode, (out, oct(out.stat().st_mode))
                if suffix != ".parquet":
                    assert meta_path(out).stat().st_mode & 0o777 == mode
    finally:
        os.umask(saved)


def test_a_damaged_part_or_manifest_names_the_file_and_the_way_out(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    store = ResumableOutput(out, _meta(), part_rows=1)
    store.open()
    store.add("a", _rows(["a"]).embeddings[0])
    part = next(store.parts.glob("part-*.parquet"))
    part.write_bytes(b"not parquet")
    with pytest.raises(OutputError) as caught:
        ResumableOutput(out, _meta()).open()
    assert f"{part} is damaged: delete it (or the whole {store.parts} folder" in str(caught.value)
    assert "--overwrite" in str(caught.value)
    (store.parts / "manifest.json").write_text("{not json")
    with pytest.raises(OutputError, match=r"manifest\.json.*is damaged: delete that folder"):
        ResumableOutput(out, _meta()).open()
    assert ResumableOutput(out, _meta()).open(overwrite=True) == 0


# --------------------------------------------------------------------------------------------------
# What a second tester found


def test_a_run_where_no_image_is_readable_writes_an_empty_file_of_the_models_width(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty.jpg").write_bytes(b"")
    for suffix in (".parquet", ".npy", ".jsonl"):
        result = invoke("images", "empty.jpg", "--out", f"e{suffix}")
        assert result.exit_code == 3, result.output
        assert "1 of 1 image(s) could not be embedded" in result.stderr
        assert "empty.jpg: " in result.stderr
        back = read_rows(tmp_path / f"e{suffix}")
        # An endpoint tells its width only with an answer: CLIP ViT-L/14's, as the client's own.
        assert back.embeddings.shape == (0, 768)
        assert back.meta is not None
        assert back.meta.dim == 768
    assert np.load(tmp_path / "e.npy").shape == (0, 768)

    # A local model knows its width before any answer.
    write_tiny_clip(tmp_path / "tiny")
    result = invoke("images", "empty.jpg", "--local", "--model", "tiny", "--device", "cpu", "--out", "l.npy")
    assert result.exit_code == 3, result.output
    width = ClipClient.local(str(tmp_path / "tiny"), device="cpu").backend.dim
    assert width is not None
    assert width != 768
    assert np.load(tmp_path / "l.npy").shape == (0, width)

    # A bad --device is a usage error, in the command's words.
    result = invoke("images", "empty.jpg", "--local", "--model", "tiny", "--device", "gpu7")
    assert result.exit_code == 2, result.output
    assert "--device" in result.output
    assert "device=" not in result.output
    # ... and its advice names the option and the value to give it, from the error's fields.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = invoke("images", "empty.jpg", "--local", "--model", "tiny", "--device", "cuda")
    assert result.exit_code == 2, result.output
    assert "no CUDA GPU" in result.output
    assert "use --device cpu, or install a CUDA build of torch" in result.output
    assert "device=" not in result.output


def test_finish_without_rows_keeps_the_width_of_the_settings(tmp_path: Path) -> None:
    for dim, width in ((24, 24), (None, 768)):
        meta = OutputMeta(kind="image", model="m", normalize=False, dim=dim)
        store = ResumableOutput(tmp_path / f"{dim}.parquet", meta)
        store.open()
        assert store.finish(["gone.jpg"]).embeddings.shape == (0, width)
        assert read_rows(tmp_path / f"{dim}.parquet").embeddings.shape == (0, width)


def test_search_and_dedupe_read_a_plain_npy_or_jsonl_without_settings(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    matrix = np.random.default_rng(0).standard_normal((3, 8))
    matrix[2] = matrix[0]
    np.save(tmp_path / "raw.npy", matrix)  # float64, no sidecar
    result = invoke("dedupe", "raw.npy", "--json")
    assert result.exit_code == 0, result.output
    (group,) = jsonl(result.stdout)
    assert [m["id"] for m in group["members"]] == [0, 2]  # row numbers
    result = invoke("search", "raw.npy", "a red car")
    assert result.exit_code == 1, result.output
    assert "raw.npy holds 8-d rows (model: unknown), but the query is 768-d" in result.stderr
    assert "--overwrite" not in result.output

    lines = [{"path": f"p{i}.jpg", "embedding": row.tolist()} for i, row in enumerate(matrix)]
    (tmp_path / "plain.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = invoke("dedupe", "plain.jsonl", "--json")
    assert result.exit_code == 0, result.output
    (group,) = jsonl(result.stdout)
    assert [m["path"] for m in group["members"]] == ["p0.jpg", "p2.jpg"]
    back = read_rows(tmp_path / "plain.jsonl", role="INDEX", foreign=True)
    np.testing.assert_array_equal(back.embeddings, matrix.astype(np.float32))

    np.save(tmp_path / "raw1d.npy", np.ones(8, np.float32))
    result = invoke("dedupe", "raw1d.npy")
    assert result.exit_code == 1
    assert "expected a 2-D float array" in result.stderr

    # A clip-client file whose two halves do not match: read-only advice, no --overwrite.
    write_rows(tmp_path / "c.npy", _rows(["a", "b"]))
    side = json.loads(meta_path(tmp_path / "c.npy").read_text())
    meta_path(tmp_path / "c.npy").write_text(json.dumps({**side, "rows": 5}))
    result = invoke("dedupe", "c.npy")
    assert result.exit_code == 1
    assert "do not belong together" in result.stderr
    assert "--overwrite" not in result.stderr
    # ... while an output to resume still needs its settings file.
    meta_path(tmp_path / "c.npy").unlink()
    with pytest.raises(OutputError, match=r"is missing.*--overwrite"):
        read_rows(tmp_path / "c.npy")


def test_advice_follows_max_image_pixels_and_pillows_global_is_never_changed(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2000 pixels
    Image.fromarray(picture(64, 48, seed=1)).save(tmp_path / "p.png")  # 3072 pixels
    result = invoke("images", "p.png", "--out", "a.npy", "--max-image-pixels", 2000)
    assert result.exit_code == 3, result.output
    assert "raise --max-image-pixels" in result.stderr
    assert "(e.g. --max-image-pixels 3100)" in result.stderr  # the suggestion, as an option
    assert "max_image_pixels" not in result.stderr
    assert "PIL.Image" not in result.stderr
    # The client's limit alone decides: Pillow's own (a process global) neither refuses the image
    # nor is changed, by any command.
    result = invoke("images", "p.png", "--out", "b.npy", "--max-image-pixels", 100_000)
    assert result.exit_code == 0, result.output
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert invoke("images", "p.png", "--out", "c.npy", "--max-image-pixels", 5000).exit_code == 0
    assert Image.MAX_IMAGE_PIXELS == 1000  # never changed
    assert invoke("images", "p.png", "--out", "d.npy").exit_code == 0  # the default limit too

    hint = EndpointNotFoundError("no such endpoint", endpoint="x")
    assert "(--text-endpoint / --image-endpoint)" in in_cli_words(hint)
    assert "(text_endpoint= / image_endpoint=)" in str(hint)
    no_gpu = ConfigurationError(
        "device='cuda' but no CUDA GPU",
        setting="device",
        suggestion="cpu",
        advice="use {suggestion}, or install a CUDA build of torch",
    )
    assert (
        in_cli_words(no_gpu)
        == "device='cuda' but no CUDA GPU; use --device cpu, or install a CUDA build of torch"
    )
    assert str(no_gpu) == "device='cuda' but no CUDA GPU; use device='cpu', or install a CUDA build of torch"


def test_labels_and_parts_messages_say_what_happened(tmp_path: Path) -> None:
    import typer

    from clip_client._cli.search import _labels

    with pytest.raises(typer.BadParameter) as caught:
        _labels("", None)
    assert "no label given" in str(caught.value)
    assert "comma" not in str(caught.value)
    with pytest.raises(typer.BadParameter, match=r"label 2 of 3 .* remove the extra comma"):
        _labels("a,,b", None)

    out = tmp_path / "o.parquet"
    store = ResumableOutput(out, _meta(), part_rows=1)
    store.open()
    store.add("a", _rows(["a"]).embeddings[0])
    (store.parts / "manifest.json").write_text("{not json")
    with pytest.raises(OutputError) as caught:
        ResumableOutput(out, _meta()).open()
    assert str(caught.value).count(str(store.parts)) == 2  # the manifest's path, then the folder
    assert "whole" not in str(caught.value)
    (store.parts / "manifest.json").unlink()
    with pytest.raises(OutputError) as caught:
        ResumableOutput(out, _meta()).open()
    assert "has no manifest.json" in str(caught.value)
    assert "not left by clip-client" not in str(caught.value)
    assert "--overwrite" in str(caught.value)


# --------------------------------------------------------------------------------------------------
# The model a file records: search takes it; a checkpoint is known by its content


def test_search_takes_the_model_from_the_index_and_knows_a_checkpoint_by_its_content(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from clip_client.local import checkpoint_sha256

    tiny = write_tiny_clip(tmp_path / "tiny")
    paths = write_pictures(tmp_path / "photos", 3)
    result = invoke(
        "images", "photos", "--local", "--model", "tiny", "--device", "cpu", "--out", "idx.parquet"
    )
    assert result.exit_code == 0, result.output
    meta = read_rows(tmp_path / "idx.parquet").meta
    assert meta is not None
    assert meta.model_sha256 == checkpoint_sha256(tiny)
    assert meta.local_model == (str(Path(tiny).resolve()), "torch.float32")

    with ClipClient.local(tiny, device="cpu") as client:
        query = client.embed_text("a red car")
    index = read_rows(tmp_path / "idx.parquet")
    want = cosine_topk(query, index.embeddings, 2)
    expected = [index.keys[i] for i in want.indices[0]]

    # No workspace at all: the file's model answers, with no option, or with --local alone.
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN"):
        monkeypatch.delenv(name)
    for options in ([], ["--local"], ["--device", "cpu"]):
        result = invoke("search", "idx.parquet", "a red car", "-k", 2, "--json", *options)
        assert result.exit_code == 0, (options, result.output)
        assert [h["path"] for h in jsonl(result.stdout)] == expected

    # The folder copied elsewhere and the original gone: said, with the option to pass.
    shutil.copytree(tiny, tmp_path / "copy")
    shutil.rmtree(tiny)
    result = invoke("search", "idx.parquet", "a red car")
    assert result.exit_code == 1, result.output
    assert f"local model in {Path(tiny).resolve()}" in result.stderr
    assert "no longer there: pass --local --model FOLDER" in result.stderr
    # The copy is the same model, by content, wherever it is: search, and resume, accept it.
    result = invoke("search", "idx.parquet", "a red car", "-k", 2, "--json", "--local", "--model", "copy")
    assert result.exit_code == 0, result.output
    assert [h["path"] for h in jsonl(result.stdout)] == expected
    result = invoke(
        "images", "photos", "--local", "--model", "copy", "--device", "cpu", "--out", "idx.parquet"
    )
    assert result.exit_code == 0, result.output
    assert "3 of 3 image(s) already done" in result.stderr
    assert read_rows(tmp_path / "idx.parquet").keys == rel(paths, tmp_path)

    # Another checkpoint, or a workspace, is refused before any model is loaded.
    write_tiny_clip(tmp_path / "other", seed=1)
    loaded: list[object] = []
    real_local = ClipClient.local.__func__  # type: ignore[attr-defined]

    def local(cls: type[ClipClient], *args: object, **kwargs: object) -> ClipClient:
        loaded.append(args)
        return real_local(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(ClipClient, "local", classmethod(local))
    result = invoke("search", "idx.parquet", "a red car", "--local", "--model", "other")
    assert result.exit_code == 1, result.output
    assert "--model other holds other files" in result.stderr
    result = invoke("search", "idx.parquet", "a red car", "--host", "https://example.cloud.databricks.com")
    assert result.exit_code == 1, result.output
    assert "would embed the query with serving endpoints" in result.stderr
    assert "--local" in result.stderr
    assert loaded == []


@pytest.mark.server(image_endpoint="holiday-images")
def test_search_queries_the_endpoints_its_index_names(invoke, server: ServingServer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = write_pictures(tmp_path / "photos", 3)
    result = invoke("images", "photos", "--image-endpoint", "holiday-images", "--out", "idx.parquet")
    assert result.exit_code == 0, result.output
    meta = read_rows(tmp_path / "idx.parquet").meta
    assert meta is not None
    assert meta.endpoints == {"text": TEXT, "image": "holiday-images"}

    server.reset()
    result = invoke(
        "search", "idx.parquet", "--image", paths[1], "-k", 1, "--json", "--no-cache"
    )  # no endpoint option
    assert result.exit_code == 0, result.output
    assert jsonl(result.stdout)[0]["path"] == os.path.relpath(paths[1], tmp_path)
    assert server.posts("holiday-images") == 1
    result = invoke("search", "idx.parquet", "a red car")
    assert result.exit_code == 0, result.output

    server.reset()
    result = invoke("search", "idx.parquet", "a red car", "--local")
    assert result.exit_code == 1, result.output
    assert "computed by the serving endpoint" in result.stderr
    assert "drop --local" in result.stderr
    result = invoke("search", "idx.parquet", "a red car", "--image-endpoint", "clip-image-embedding")
    assert result.exit_code == 1, result.output  # an option still wins, and is checked
    assert "holiday-images" in result.stderr
    assert server.posts() == 0


def test_files_without_the_models_content_are_read_and_compared_by_name(tmp_path: Path) -> None:
    from clip_client._cli.options import Common
    from clip_client._cli.outputs import options_for_rows

    # The settings as clip_client wrote them before content identity: no model_sha256, no endpoints.
    old_local = OutputMeta.from_json(
        json.dumps({"kind": "image", "model": "local /models/my clip torch.float16", "normalize": False}),
        tmp_path / "x",
    )
    assert old_local.model_sha256 is None
    assert old_local.endpoints == {}
    assert old_local.local_model == ("/models/my clip", "torch.float16")
    new = dataclasses_replace(old_local, model_sha256="ab" * 32)
    assert old_local.same_model(new)  # one digest missing: the names decide
    assert not old_local.same_model(dataclasses_replace(new, model="local /elsewhere torch.float16"))
    both = dataclasses_replace(new, model="local /elsewhere torch.float16")
    assert new.same_model(both)  # two digests: the content decides, not the folder
    assert not new.same_model(dataclasses_replace(both, model="local /elsewhere torch.float32"))
    assert not new.same_model(dataclasses_replace(both, model_sha256="cd" * 32))
    assert new.differences(both) == []

    with pytest.raises(OutputError, match=r"no longer there: pass --local --model FOLDER .*predates"):
        options_for_rows(Common(), old_local, tmp_path / "x.parquet")
    folder = tmp_path / "models" / "my clip"
    folder.mkdir(parents=True)
    moved = dataclasses_replace(old_local, model=f"local {folder} torch.float16")
    chosen = options_for_rows(Common(device="cpu"), moved, tmp_path / "x.parquet")
    assert (chosen.local, chosen.model, chosen.dtype, chosen.device) == (
        True,
        str(folder),
        "torch.float16",
        "cpu",
    )
    mine = options_for_rows(
        Common(local=True, model="elsewhere", given=frozenset({"local", "model"})), moved, tmp_path
    )
    assert (mine.model, mine.dtype) == ("elsewhere", "torch.float16")

    old_remote = OutputMeta(
        kind="image", model="https://h/serving-endpoints/pics/invocations", normalize=False
    )
    chosen = options_for_rows(Common(), old_remote, tmp_path / "x.parquet")
    assert (chosen.local, chosen.image_endpoint, chosen.text_endpoint) == (
        False,
        "pics",
        "clip-text-embedding",
    )
    given = Common(image_endpoint="mine", given=frozenset({"image_endpoint"}))
    assert options_for_rows(given, old_remote, tmp_path).image_endpoint == "mine"
    assert options_for_rows(given, None, tmp_path) is given  # a file of another writer: as given


def dataclasses_replace(meta: OutputMeta, **changes: object) -> OutputMeta:
    import dataclasses

    return dataclasses.replace(meta, **changes)  # type: ignore[arg-type]


def test_checkpoint_sha256_follows_the_content_and_reads_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from clip_client import local

    tiny = Path(write_tiny_clip(tmp_path / "tiny"))
    memo = tmp_path / "memo" / "checkpoints.json"
    digest = local.checkpoint_sha256(tiny, memo=memo)
    assert digest is not None
    assert len(digest) == 64
    shutil.copytree(tiny, tmp_path / "copy")
    assert local.checkpoint_sha256(tmp_path / "copy") == digest
    (tmp_path / "copy" / "tokenizer_config.json").write_text("{}")  # not what decides the embeddings
    assert local.checkpoint_sha256(tmp_path / "copy") == digest
    assert local.checkpoint_sha256("openai/clip-vit-large-patch14") is None  # a hub id
    assert local.checkpoint_sha256(tmp_path / "photos-that-do-not-exist") is None

    weights = next(p for p in tiny.iterdir() if p.suffix in (".safetensors", ".bin"))
    known = json.loads(memo.read_text())
    assert known[str(weights.resolve())][:2] == [weights.stat().st_size, weights.stat().st_mtime_ns]
    # A second process (no digest in memory) reads the memo instead of the file: a planted digest
    # of the same size and mtime shows through.
    monkeypatch.setattr(local, "_FILE_DIGESTS", {})
    known[str(weights.resolve())][2] = "0" * 64
    memo.write_text(json.dumps(known))
    assert local.checkpoint_sha256(tiny, memo=memo) != digest
    # Other weights (a new mtime, new bytes) are hashed again: another model.
    monkeypatch.setattr(local, "_FILE_DIGESTS", {})
    memo.unlink()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert local.checkpoint_sha256(tiny, memo=memo) not in (None, digest)


# --------------------------------------------------------------------------------------------------
# Ctrl-C once the output is complete


def _interrupting(monkeypatch: pytest.MonkeyPatch, target: object, name: str, presses: int) -> None:
    """``target.name`` then ``presses`` Ctrl-Cs (SIGINT to this process, handled in this thread)."""
    real = getattr(target, name)

    def then_interrupt(*args: object, **kwargs: object) -> object:
        done = real(*args, **kwargs)
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # Python runs the handler at its next instruction, here
        return done

    monkeypatch.setattr(target, name, then_interrupt)


def test_a_ctrl_c_once_the_output_is_complete_ends_with_the_runs_status_and_says_so(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from clip_client._cli import embed

    paths = write_pictures(tmp_path / "photos", 3)
    with monkeypatch.context() as m:
        _interrupting(m, ResumableOutput, "finish", presses=1)
        result = invoke("images", "photos", "--out", "o.parquet")
        assert result.exit_code == 0, result.output
        assert "wrote 3 rows to o.parquet" in result.stderr
        assert "interrupted after the output was complete: o.parquet is written whole" in result.stderr
        assert read_rows(tmp_path / "o.parquet").keys == rel(paths, tmp_path)
        assert not (tmp_path / "o.parquet.parts").exists()

        (tmp_path / "photos" / "empty.jpg").write_bytes(b"")
        result = invoke("images", "photos", "--out", "p.parquet")
        assert result.exit_code == 3, result.output  # the status the run earned
        assert "1 of 4 image(s) could not be embedded" in result.stderr
        assert "interrupted after the output was complete" in result.stderr
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's, as before

    with monkeypatch.context() as m:  # a second Ctrl-C stops at once
        _interrupting(m, ResumableOutput, "finish", presses=2)
        result = invoke("images", "photos", "--out", "q.parquet")
        assert result.exit_code == 130, result.output
        assert "interrupted" in result.stderr
        assert "output was complete" not in result.stderr
        assert len(read_rows(tmp_path / "q.parquet")) == 3  # written whole before the presses
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    with monkeypatch.context() as m:  # rows on stdout: complete once the last one is written
        _interrupting(m, embed, "write_jsonl", presses=1)
        result = invoke("texts", "a", "b")
        assert result.exit_code == 0, result.output
        assert [r["text"] for r in jsonl(result.stdout)] == ["a", "b"]
        assert "every row is on stdout" in result.stderr
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------------------------------
# Field faults in the outputs (issue 19): a file name that is not UTF-8, an unwritable --out, a kill
# while a run finishes


LATIN1 = os.fsdecode(b"caf\xe9.png")
"""A file name that is not UTF-8 (Latin-1 bytes), as Python lists it: with a lone surrogate."""


def _photos_with_a_latin1_name(folder: Path) -> list[str]:
    """Three pictures, one named `LATIN1`; the paths `images folder` lists, in its order."""
    first, second, third = write_pictures(folder, 3)
    second.rename(folder / LATIN1)
    return sorted(os.path.join(folder.name, n) for n in (first.name, LATIN1, third.name))


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".jsonl"])
def test_a_file_name_that_is_not_utf8_is_recorded_exactly_and_resumed_in_every_format(
    invoke, server: ServingServer, reference: ClipClient, tmp_path: Path, suffix: str
) -> None:  # type: ignore[no-untyped-def]
    paths = _photos_with_a_latin1_name(tmp_path / "photos")
    odd = os.path.join("photos", LATIN1)
    out = tmp_path / f"o{suffix}"
    result = invoke("images", "photos", "--out", out.name, "--no-cache", "--part-rows", "1")
    assert result.exit_code == 0, result.output
    assert "wrote 3 rows" in result.stderr
    back = read_rows(out)
    assert back.keys == paths  # the very str the folder listed
    assert os.fsencode(back.keys[paths.index(odd)]) == b"photos/caf\xe9.png"
    server.reset()
    np.testing.assert_array_equal(back.embeddings, reference.embed_images([tmp_path / k for k in paths]))
    assert not (tmp_path / f"o{suffix}.parts").exists()

    # On disk: valid UTF-8 everywhere; the name readable, and its exact bytes where the format needs them.
    if suffix == ".parquet":
        table = pq.read_table(out)
        assert table.column_names == ["path", "path_bytes", "size", "mtime_ns", "embedding"]
        at = paths.index(odd)
        assert table.column("path").to_pylist()[at] == "photos/caf\ufffd.png"
        assert table.column("path_bytes").to_pylist() == [
            b"photos/caf\xe9.png" if i == at else None for i in range(3)
        ]
    else:
        side = meta_path(out).read_bytes().decode("utf-8")  # strict: valid UTF-8
        assert "caf\\udce9.png" in (side if suffix == ".npy" else out.read_bytes().decode("utf-8"))
        if suffix == ".npy":
            assert json.loads(side)["path"] == paths

    # A rerun resumes from it: the name matches, nothing is embedded again.
    server.reset()
    again = invoke("images", "photos", "--out", out.name, "--no-cache")
    assert again.exit_code == 0, again.output
    assert "resuming: 3 of 3 image(s) already done" in again.stderr
    assert server.inputs(IMAGE) == []
    assert read_rows(out).keys == paths

    # And one more image: only it is embedded.
    write_pictures(tmp_path / "photos", 1, start=7)
    again = invoke("images", "photos", "--out", out.name, "--no-cache")
    assert again.exit_code == 0, again.output
    assert len(server.inputs(IMAGE)) == 1
    assert odd in read_rows(out).keys


def test_names_that_are_not_utf8_reach_stdout_and_every_writer_exactly(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    paths = _photos_with_a_latin1_name(tmp_path / "photos")
    result = invoke("images", "photos", "--no-cache")
    assert result.exit_code == 0, result.output
    assert [row["path"] for row in jsonl(result.stdout)] == paths
    # texts too: an argument that is not UTF-8 comes to Python the same way
    texts = Rows(
        [0, 1], _rows(["a", "b"]).embeddings, [os.fsdecode(b"\xe9t\xe9"), "plain"], _meta(kind="text")
    )
    for suffix in (".parquet", ".npy", ".jsonl"):
        write_rows(tmp_path / f"t{suffix}", texts)
        assert read_rows(tmp_path / f"t{suffix}").texts == texts.texts
    # A str no file name can hold (a surrogate os.fsencode refuses) is a typed error naming --out.
    with pytest.raises(OutputError, match=r"^--out .*x\.parquet: cannot write it \(row 0's path"):
        write_rows(tmp_path / "x.parquet", _rows(["\ud800.png"]))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder no new file can be made in, for this user (root ignores permissions: then /sys)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for folder in (locked, Path("/sys")):
        try:
            (folder / "probe").touch()
        except OSError:
            return folder
        (folder / "probe").unlink()
    pytest.skip("no folder here refuses a new file")


def test_an_output_that_cannot_be_written_is_refused_before_any_input_is_sent(
    invoke, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    write_pictures(tmp_path / "photos", 2)
    folder = _unwritable_folder(tmp_path)
    try:
        for suffix in (".parquet", ".npy", ".jsonl"):
            out = folder / f"o{suffix}"
            result = invoke("images", "photos", "--out", out)
            assert result.exit_code == 1, result.output
            assert f"error: --out {out}: cannot write in {folder}" in result.stderr
            assert ".tmp" not in result.stderr  # never a temporary's name
            assert "Traceback" not in result.output
        result = invoke("texts", "a", "--out", folder / "t.parquet")
        assert result.exit_code == 1, result.output
        assert f"--out {folder / 't.parquet'}: cannot write in {folder}" in result.stderr
        assert server.posts() == 0  # nothing sent, nothing embedded
    finally:
        (tmp_path / "locked").chmod(0o755)
    (tmp_path / "dir.parquet").mkdir()
    result = invoke("images", "photos", "--out", "dir.parquet")
    assert result.exit_code == 2, result.output  # a usage error, said by the option itself
    assert "is a directory" in result.output
    with pytest.raises(OutputError, match=r"^--out .*dir\.parquet is a folder: name a file"):
        check_writable(tmp_path / "dir.parquet")
    assert server.posts() == 0


def test_every_error_of_a_resumable_output_is_an_output_error_naming_out(tmp_path: Path) -> None:
    out = tmp_path / "o.parquet"
    (tmp_path / "o.parquet.parts").write_text("a file where the parts folder goes")
    store = ResumableOutput(out, _meta(), part_rows=1)
    store.open()
    with pytest.raises(OutputError, match=rf"^--out {out}: cannot create {store.parts} \("):
        store.add("a", _rows(["a"]).embeddings[0])
    store.parts.unlink()

    store = ResumableOutput(out, _meta(), part_rows=1)
    store.open()
    store.add("a", _rows(["a"]).embeddings[0])
    out.mkdir()  # the output's name taken by a folder once the run is under way
    with pytest.raises(OutputError, match=rf"^--out {out}: cannot write it \(Is a directory\)") as caught:
        store.finish(["a"])
    assert f"the finished rows in {store.parts} are kept" in str(caught.value)
    out.rmdir()
    again = ResumableOutput(out, _meta())
    assert again.open() == 1
    assert set(again.done_keys()) == {"a"}
    assert again.finish(["a"]).keys == ["a"]


def test_a_finished_output_wins_over_a_parts_folder_an_older_cleanup_left(
    invoke, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    paths = rel(write_pictures(tmp_path / "photos", 3), tmp_path)
    args = ["images", "photos", "--out", "o.parquet", "--no-cache", "--part-rows", "1"]
    assert invoke(*args).exit_code == 0
    before = read_rows(tmp_path / "o.parquet")
    # What a kill left while an older clip-client deleted the parts file by file: no manifest.
    parts = tmp_path / "o.parquet.parts"
    parts.mkdir()
    write_rows(parts / "part-000002.parquet", _rows(["photos/img_002.jpg"], meta=before.meta))
    (tmp_path / ".o.parquet.parts.abcd1234").mkdir()  # a parts folder being created when killed
    (tmp_path / ".o.parquet.abcd_123.tmp").write_bytes(b"half")  # an output being written
    server.reset()
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert server.inputs(IMAGE) == []
    after = read_rows(tmp_path / "o.parquet")
    assert after.keys == paths
    np.testing.assert_array_equal(
        after.embeddings, before.embeddings
    )  # the output's rows, not the leftover's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.parquet", "photos"]


# A runner of `clip-client ARGS` that kills the run right after the K-th change to the file system
# made once `ResumableOutput.<ARM_AT>` (`open` or `finish`) has begun (0: as it begins): every
# creation, chmod, fsync, rename and removal, those inside tempfile and shutil.rmtree included. It
# reads each K on stdin, runs the command in a child forked for it (so that it imports clip_client
# once) and prints the child's exit status.
_KILLED = 86
_KILL_AT_EVERY_STEP = f"""
import importlib, os, sys
from clip_client._cli import main, outputs

state = {{"armed": False, "steps": 0, "limit": -1}}

def step():
    if state["armed"]:
        state["steps"] += 1
        if state["steps"] >= state["limit"]:
            os._exit({_KILLED})

def counted(real, creates_only=False):
    def call(*args, **kwargs):
        done = real(*args, **kwargs)
        if not creates_only or args[1] & os.O_CREAT:
            step()
        return done
    return call

for name in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir", "chmod", "fsync"):
    setattr(os, name, counted(getattr(os, name)))
os.open = counted(os.open, creates_only=True)
arm_at = os.environ["ARM_AT"]
real = getattr(outputs.ResumableOutput, arm_at)

def armed(self, *args, **kwargs):
    state["armed"] = True
    if state["limit"] == 0:
        os._exit({_KILLED})
    return real(self, *args, **kwargs)

setattr(outputs.ResumableOutput, arm_at, armed)
# What a run imports on its way, once here rather than in every child (no thread is started by it).
for module in ("PIL.Image", "pandas", "databricks.sdk", "httpx", "rich.console", "pyarrow.parquet",
               "clip_client._client", "clip_client._remote.backend", "clip_client._core.images"):
    importlib.import_module(module)
command = ["clip-client", *sys.argv[1:]]
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stdout answers the test; the run writes --out
        state["limit"] = int(line)
        sys.argv = command
        try:
            main()
        except SystemExit as exc:
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        os._exit(0)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".jsonl"])
@pytest.mark.parametrize("resumed", [False, True], ids=["new", "resumed"])
def test_a_kill_at_any_step_leaves_what_the_same_command_finishes(
    env: dict[str, str], invoke, server: ServingServer, tmp_path: Path, suffix: str, resumed: bool
) -> None:  # type: ignore[no-untyped-def]
    """A new output (3 images), killed at every step of its finish; or a finished one, resumed with
    one image more, killed at every step from the moment it is opened. The same command then
    finishes, embedding none of what the output or the parts held, and leaves nothing behind."""
    paths = _photos_with_a_latin1_name(tmp_path / "photos")
    out = tmp_path / f"o{suffix}"
    args = ["images", "photos", "--out", out.name, "--no-cache", "--part-rows", "1"]
    if resumed:
        assert invoke(*args).exit_code == 0
        (new,) = write_pictures(tmp_path / "photos", 1, start=7)
        paths = sorted([*paths, os.path.join("photos", new.name)])
    ours = [out.name, *([meta_path(out).name] if suffix != ".parquet" else [])]
    before = {name: (tmp_path / name).read_bytes() for name in ours if (tmp_path / name).exists()}
    assert invoke("images", "photos", "--out", f"whole{suffix}", "--no-cache").exit_code == 0
    whole = read_rows(tmp_path / f"whole{suffix}")
    finished = sorted({*(p.name for p in tmp_path.iterdir()), *ours})

    runner = subprocess.Popen(
        [sys.executable, "-c", _KILL_AT_EVERY_STEP, *args], cwd=tmp_path, text=True,
        env={**env, "ARM_AT": "open" if resumed else "finish"},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert runner.stdin is not None
    assert runner.stdout is not None
    try:
        for k in range(100):
            server.reset()
            runner.stdin.write(f"{k}\n")
            runner.stdin.flush()
            status = int(runner.stdout.readline() or "-1")
            if status == 0:  # the run went to its end: every step has had its kill
                break
            assert status == _KILLED, (k, status)
            if not resumed:
                assert len(server.inputs(IMAGE)) == 3  # all embedded before the finish
            server.reset()
            result = invoke(*args)
            assert result.exit_code == 0, (k, result.output)
            # Nothing the output held, or the killed run finished, is embedded again.
            assert len(server.inputs(IMAGE)) <= (1 if resumed else 0), k
            back = read_rows(out)
            assert back.keys == paths, k
            np.testing.assert_array_equal(back.embeddings, whole.embeddings)
            assert sorted(p.name for p in tmp_path.iterdir()) == finished, k  # nothing left behind
            for name in ours:  # back to the state the run starts from
                (tmp_path / name).unlink()
            for name, data in before.items():
                (tmp_path / name).write_bytes(data)
    finally:
        _, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    # Every creation, rename, removal... was a kill point.
    assert k >= (9 if suffix == ".parquet" else 13) + (8 if resumed else 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == finished


# --------------------------------------------------------------------------------------------------
# docs/cli.md's option tables, against the commands


_COMMAND_NAME = r"`([a-z-]+(?: [a-z-]+)?)`"
"""A command's name in docs/cli.md: `search`, or a sub-command's, `index create`."""


def _leaf_commands() -> dict[str, Any]:
    """Every command the user runs, by the name typed: a group's sub-commands as `group sub`."""
    import typer

    found: dict[str, Any] = {}
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        if hasattr(command, "commands"):  # a group (typer's own click may not be click's)
            found.update({f"{name} {sub}": leaf for sub, leaf in command.commands.items()})
        else:
            found[name] = command
    return found


def _doc_options() -> set[tuple[str, str]]:
    """(command, option) of every row of docs/cli.md's option tables (first column "Option"): the
    commands of its "Commands" column ("every command": all), else those its section's heading names."""
    import re

    commands = set(_leaf_commands())
    text = (Path(__file__).parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    found: set[tuple[str, str]] = set()
    section: set[str] = set()
    header: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            section = {c for c in re.findall(_COMMAND_NAME, line) if c in commands}
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if header[0] != "Option" or set(line) <= set("|- "):
            continue
        if "Commands" in header:
            cell = cells[header.index("Commands")]
            names = commands if cell == "every command" else set(re.findall(_COMMAND_NAME, cell))
            assert names <= commands, (line, names - commands)
        else:
            names = section
        assert names, f"docs/cli.md: no command for the row {line!r}"
        options = [
            token
            for span in re.findall(r"`([^`]*)`", cells[0])
            for word in span.split()[:1]
            for token in word.split("/")
            if token.startswith("-")
        ]
        assert options, f"docs/cli.md: no option in the row {line!r}"
        found |= {(c, o) for c in names for o in options}
    return found


def test_the_docs_option_tables_list_exactly_each_commands_options() -> None:

    real = {
        (name, option)
        for name, command in _leaf_commands().items()
        for param in command.params
        if param.param_type_name == "option"
        for option in [*param.opts, *param.secondary_opts]
        if option not in ("--help", "-h")
    }
    documented = _doc_options()
    assert sorted(real - documented) == [], "options of the commands that docs/cli.md does not list"
    assert sorted(documented - real) == [], "options docs/cli.md lists that the commands do not take"
    text = (Path(__file__).parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    assert "\\|" not in text  # an escaped pipe shows its backslash inside code in the rendered page


# --------------------------------------------------------------------------------------------------
# What a fresh user found: writes, odd names, repeats, --out, odd input files


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_a_failed_write_leaves_the_earlier_output_and_its_sidecar_whole(
    invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:  # type: ignore[no-untyped-def]
    from clip_client._cli import outputs

    out = tmp_path / "small" / f"t{suffix}"
    first = invoke("texts", "a", "b", "--out", out)
    assert first.exit_code == 0, first.output
    data, side = out.read_bytes(), meta_path(out).read_bytes()

    def full_disk(f: object, *args: object, **kwargs: object) -> None:
        """The data file's writer, on a full disk (the sidecar is written by then)."""
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs, "_append_npy", full_disk)  # .npy's writer (rows after the header)
    monkeypatch.setattr(outputs, "write_jsonl", full_disk)  # .jsonl's
    failed = invoke("texts", "c", "d", "e", "--out", out)
    assert failed.exit_code == 1, failed.output
    assert "No space left on device" in failed.stderr
    assert out.read_bytes() == data  # the old output, whole
    assert meta_path(out).read_bytes() == side
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, meta_path(out).name])
    assert read_rows(out).texts == ["a", "b"]
    # With no earlier output, nothing at all is left: no sidecar beside no data file.
    fresh = tmp_path / "fresh" / f"t{suffix}"
    assert invoke("texts", "c", "--out", fresh).exit_code == 1
    assert list(fresh.parent.iterdir()) == []


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".jsonl"])
def test_an_out_name_that_is_not_utf8_is_written_read_and_resumed(
    invoke, server: ServingServer, tmp_path: Path, suffix: str
) -> None:  # type: ignore[no-untyped-def]
    write_pictures(tmp_path / "photos", 2)
    out = os.fsdecode(b"im\xe9" + suffix.encode())
    result = invoke("images", "photos", "--out", out, "--no-cache")
    assert result.exit_code == 0, result.output
    assert "wrote 2 rows to im\\xe9" in result.stderr  # the byte, shown as such
    assert "\udce9" not in result.output
    assert len(read_rows(tmp_path / out)) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    server.reset()
    again = invoke("images", "photos", "--out", out, "--no-cache")
    assert again.exit_code == 0, again.output
    assert "resuming: 2 of 2 image(s) already done" in again.stderr
    assert server.inputs(IMAGE) == []  # nothing embedded again
    texts_out = os.fsdecode(b"out\xe9" + suffix.encode())
    result = invoke("texts", "one", "--out", texts_out)
    assert result.exit_code == 0, result.output
    assert "wrote 1 row (" in result.stderr  # one row, not "1 rows"
    assert read_rows(tmp_path / texts_out).texts == ["one"]


def test_json_of_search_dedupe_and_classify_stays_utf8_and_tables_show_the_bytes(
    invoke, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    paths = _photos_with_a_latin1_name(tmp_path / "photos")
    odd = os.path.join("photos", LATIN1)
    assert invoke("images", "photos", "photos", "--out", "i.npy").exit_code == 0
    # Make the odd row a duplicate of the first, so dedupe lists it.
    matrix = np.load(tmp_path / "i.npy")
    at = paths.index(odd)
    matrix[1 if at == 0 else 0] = matrix[at]
    np.save(tmp_path / "i.npy", matrix)
    runs = {
        "search": invoke("search", "i.npy", "a red car", "--json"),
        "dedupe": invoke("dedupe", "i.npy", "--json"),
        "classify": invoke("classify", "photos", "--labels", "cat,dog", "--json"),
    }
    for name, result in runs.items():
        assert result.exit_code == 0, (name, result.output)
        raw = result.stdout_bytes
        raw.decode("utf-8")  # strict: valid UTF-8
        assert b"caf\\udce9.png" in raw, name
        assert odd in json.dumps([json.loads(line) for line in raw.decode().splitlines()], ensure_ascii=False)
    for args in (
        ["search", "i.npy", "a red car"],
        ["dedupe", "i.npy"],
        ["classify", "photos", "--labels", "cat,dog"],
    ):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        result.stdout_bytes.decode("utf-8")
        assert "photos/caf\\xe9.png" in result.stdout, args


def test_one_file_spelled_four_ways_is_one_input(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (a,) = write_pictures(tmp_path / "photos", 1)
    spellings = ["photos/" + a.name, "./photos/" + a.name, "photos//" + a.name, str(a)]
    result = invoke("images", *spellings, "--out", "o.jsonl")
    assert result.exit_code == 0, result.output
    assert "3 path(s) given more than once" in result.stderr
    assert "wrote 1 row to o.jsonl" in result.stderr
    assert read_rows(tmp_path / "o.jsonl").keys == ["photos/" + a.name]  # the first spelling


def test_out_errors_say_what_is_wrong_and_missing_folders_are_created(
    invoke, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mkimg.py").write_text("")
    result = invoke("texts", "a", "--out", "mkimg.py/x.npy")
    assert result.exit_code == 1, result.output
    assert "mkimg.py is a file, not a folder" in result.stderr
    result = invoke("texts", "a", "--out", "")
    assert result.exit_code == 2, result.output
    assert "empty" in result.output
    assert "directory" not in result.output
    if os.path.isdir("/proc") and not os.access("/proc", os.W_OK):
        result = invoke("texts", "a", "--out", "/proc/x.npy")
        assert result.exit_code == 1, result.output
        assert "not writable" in result.stderr
        assert "No such file" not in result.stderr
    assert server.posts() == 0
    result = invoke("texts", "a", "--out", "new/deeper/x.npy")
    assert result.exit_code == 0, result.output
    assert len(read_rows(tmp_path / "new/deeper/x.npy")) == 1  # like mkdir -p


def test_odd_index_files_are_refused_with_the_file_and_row_and_bad_rows_are_said(
    invoke, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "garbage.npy").write_bytes(
        b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (2,), }" + b" " * 60 + b"\n"
    )
    (tmp_path / "strings.jsonl").write_text('{"embedding": ["1", "2"]}\n')
    table = pa.table({"path": ["a", "b"], "embedding": pa.array([[1.0, 2.0], None], pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "null.parquet")
    expected = {
        "empty.jsonl": "empty.jsonl: no rows",
        "garbage.npy": "garbage.npy: not a float .npy array of shape (n, dim)",
        "strings.jsonl": 'strings.jsonl: line 1\'s "embedding" is not a list of numbers',
        "null.parquet": "null.parquet: row 1 has no embedding",
    }
    for name, message in expected.items():
        for command in (["dedupe", name], ["search", name, "a car"]):
            result = invoke(*command)
            assert result.exit_code == 1, result.output
            assert message in result.stderr, (command, result.stderr)
            assert "allow_pickle" not in result.output
            assert "Traceback" not in result.output
    # A NaN row and an all-zero row: `search` ranks them last with -inf, `dedupe` says it skips them.
    matrix = np.random.default_rng(1).standard_normal((4, 768)).astype(np.float32)
    matrix[1] = np.nan
    matrix[2] = 0
    np.save(tmp_path / "bad.npy", matrix)
    result = invoke("search", "bad.npy", "a red car", "--json")
    assert result.exit_code == 0, result.output
    hits = jsonl(result.stdout)
    assert [h["id"] for h in hits[-2:]] == [1, 2]
    assert [h["score"] for h in hits[-2:]] == [None, None]
    table_run = invoke("search", "bad.npy", "a red car")
    assert table_run.stdout.splitlines()[-1].split()[1] == "-inf"
    result = invoke("dedupe", "bad.npy")
    assert result.exit_code == 0, result.output
    assert "2 row(s) of bad.npy hold a NaN, an infinity or all zeros" in result.stderr


def test_images_rows_on_stdout_carry_size_and_mtime(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (a,) = write_pictures(tmp_path / "photos", 1)
    result = invoke("images", "photos")
    assert result.exit_code == 0, result.output
    (row,) = jsonl(result.stdout)
    st = a.stat()
    assert (row["size"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    assert list(row) == ["path", "size", "mtime_ns", "embedding"]


# --------------------------------------------------------------------------------------------------
# Advice in the command's words, on every path


def _said(result) -> str:  # type: ignore[no-untyped-def]
    """A run's stderr on one line (a usage error's box and wrapped lines joined)."""
    return " ".join(result.stderr.replace("│", " ").split())


def test_search_by_image_gives_the_size_advice_as_options_with_values_as_typed(
    invoke, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    write_pictures(tmp_path / "photos", 1)
    assert invoke("images", "photos", "--out", "idx.parquet").exit_code == 0
    big = tmp_path / "big.png"
    Image.fromarray(picture(64, 48, seed=3)).save(big)  # 3,072 pixels
    result = invoke("search", "idx.parquet", "--image", big, "--max-image-pixels", 1000)
    assert result.exit_code == 1, result.output
    said = _said(result)
    assert (
        "it is over --max-image-pixels 1000: raise --max-image-pixels if it is genuine "
        "(e.g. --max-image-pixels 3100)"
    ) in said
    assert "max_image_pixels" not in said
    assert "1,000" not in said  # a value the option could not parse


def test_an_unresolvable_host_is_advised_as_the_host_option() -> None:
    import httpx

    from clip_client._remote.status import map_transport_error

    request = httpx.Request("POST", "https://not-a-url/serving-endpoints/e/invocations")
    error = map_transport_error(httpx.ConnectError("Name or service not known", request=request), "e")
    assert "check DATABRICKS_HOST (or host=)" in str(error)  # Python callers read the keyword
    assert error.setting == "host"
    said = in_cli_words(error)
    assert "check DATABRICKS_HOST (or --host)" in said
    assert "host=" not in said


def test_a_profile_the_config_file_lacks_is_named_with_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    for name in [k for k in os.environ if k.startswith("DATABRICKS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "databrickscfg"
    config.write_text(
        "[DEFAULT]\nhost = https://x.example.com\ntoken = t\n"
        "[other]\nhost = https://y.example.com\ntoken = t\n"
    )
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config))
    result = CliRunner().invoke(app, ["texts", "a", "--no-cache", "--profile", "nope"])
    assert result.exit_code == 1, result.output
    said = _said(result)
    assert f"profile 'nope' is not in {str(config)!r} (its profiles: DEFAULT, other)" in said
    assert "Name one of its profiles with --profile" in said
    assert "pass --host" not in said
    assert "profile=" not in said

    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "none"))
    result = CliRunner().invoke(app, ["texts", "a", "--no-cache", "--profile", "nope"])
    assert result.exit_code == 1, result.output
    assert f"profile 'nope' was asked for, but there is no config file {str(tmp_path / 'none')!r}" in _said(
        result
    )


def test_a_model_that_looks_like_a_path_and_is_no_folder_is_said_so(invoke) -> None:  # type: ignore[no-untyped-def]
    result = invoke("texts", "a", "--local", "--model", "nowhere_dir/", "--device", "cpu", "--no-cache")
    assert result.exit_code == 1, result.output
    said = _said(result)
    assert "could not load CLIP model 'nowhere_dir/': there is no such folder" in said
    assert "Point --model at a folder" in said
    for wrong in ("hub cannot be reached", "HFValidationError", "hf download", "model="):
        assert wrong not in said


def test_search_says_that_the_checkpoint_folder_changed_since_the_file(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = write_tiny_clip(tmp_path / "tiny_copy")
    args = ("--local", "--model", model, "--device", "cpu")
    assert invoke("texts", "hello", *args, "--out", "s1.npy").exit_code == 0
    recorded = read_rows(tmp_path / "s1.npy").meta
    assert recorded is not None
    assert recorded.model_sha256 is not None
    config = model / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "zz_extra": 1}))
    result = invoke("search", "s1.npy", "hello", "--device", "cpu")
    assert result.exit_code == 1, result.output
    said = _said(result)
    assert f"computed by the checkpoint in {model}, whose content changed since" in said
    assert f"sha256 then {recorded.model_sha256[:12]}..., now " in said
    assert "--overwrite" in said
    assert "would be embedded by" not in said  # not the same name twice


def test_label_and_template_errors_name_the_options_and_the_files_lines(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import typer

    from clip_client._cli.search import _labels

    labels = tmp_path / "labels.txt"
    labels.write_text("cat\n\ndog\ncat\n")
    with pytest.raises(typer.BadParameter) as info:
        _labels(None, labels)
    assert info.value.message == f"line 4 of {labels}, 'cat', repeats line 1: give each once"
    with pytest.raises(typer.BadParameter) as info:
        _labels("cat,dog,cat", None)
    assert info.value.message == "label 3 of 3, 'cat', repeats label 1: give each once"
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(typer.BadParameter, match="holds no label"):
        _labels(None, tmp_path / "blank.txt")

    write_pictures(tmp_path / "photos", 1)
    result = invoke("classify", "photos", "--labels", "cat,dog", "--template", "no braces")
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "--template 1 of 1, 'no braces', has no '{}': each --template needs exactly one {}" in said
    assert "templates[" not in said


def test_a_resume_mismatch_is_said_in_the_commands_words() -> None:
    kinds = _meta(kind="text", preparation={}).differences(_meta())
    assert kinds == ["the file holds text embeddings, this run embeds images"]
    normalize = _meta().differences(_meta(normalize=True))
    assert len(normalize) == 1
    assert "the file was written with --no-normalize, this run has --normalize" in normalize[0]
    prepared = _meta(preparation={"image_preparation": "client"}).differences(
        _meta(preparation={"image_preparation": "server"})
    )
    assert prepared == ["--image-preparation client (this run: --image-preparation server)"]


def test_status_of_a_local_model_says_it_is_one(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = write_tiny_clip(tmp_path / "tiny")
    result = invoke("status", "--local", "--model", model, "--device", "cpu")
    assert result.exit_code == 0, result.output
    said = " ".join(result.stdout.split())
    assert "state: not a serving endpoint: the local model, in this process (no endpoint state)" in said
    assert "long texts: truncated by the local model's tokenizer at 77 tokens" in said
    assert "no control plane" not in said
    assert "truncated by the endpoint" not in said


def test_a_413_for_an_input_alone_advises_what_helps_and_settings_without_options_say_so() -> None:
    from clip_client.errors import PayloadTooLargeError

    batch = PayloadTooLargeError("request too large", endpoint="e")
    assert in_cli_words(batch).endswith(
        "Lower max_request_bytes (no command-line option; set it in Python) or --batch-size"
    )
    alone = PayloadTooLargeError("request too large", endpoint="e")
    alone.index = 0
    python = str(alone)
    assert python.startswith("input 0: ")
    assert "batch_size" not in python
    assert "image_preparation='client'" in python
    said = in_cli_words(alone)
    assert "--batch-size" not in said
    assert "--image-preparation client sends an image as a 224x224 crop" in said
    assert said.endswith("image_format='jpeg' (no command-line option; set it in Python)")
    no_option = "max_request_bytes (no command-line option; set it in Python)"
    assert flag_spelling("max_request_bytes") == no_option


# --------------------------------------------------------------------------------------------------
# Issue 20: outputs streamed in chunks, `texts --from` streamed and resumable, `search` in chunks


def _odd_rows(n: int, *, kind: str = "image", dim: int = 16, seed: int = 3) -> Rows:
    """`n` rows of `kind` with every field an output can hold: a name that is not UTF-8 among the
    keys or texts, stamps (one missing) for images."""
    matrix = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    if kind == "image":
        keys: list[object] = [f"dir/img_{i}.jpg" if i != 5 else f"dir/{LATIN1}" for i in range(n)]
        stamps = [None if i == 2 else (100 + i, 10**18 + i) for i in range(n)]
        return Rows(keys, matrix, None, _meta(dim=dim), stamps)  # type: ignore[arg-type]
    texts = [f"text {i}, ü" if i != 4 else os.fsdecode(b"\xe9t\xe9") for i in range(n)]
    return Rows(list(range(0, 2 * n, 2)), matrix, texts, _meta(kind="text", preparation={}, dim=dim))


def _in_chunks(rows: Rows, size: int) -> object:
    from clip_client._cli import outputs

    def chunks(vectors: bool) -> object:
        for start in range(0, len(rows), size):
            end = start + size
            yield Rows(
                rows.keys[start:end], rows.embeddings[start:end],
                None if rows.texts is None else rows.texts[start:end], rows.meta,
                None if rows.stamps is None else rows.stamps[start:end],
            )  # fmt: skip

    whole = outputs._Chunked.of(rows)
    return outputs._Chunked(
        whole.meta, whole.key_name, whole.dim, whole.count, whole.texts, whole.stamps, whole.exact, chunks
    )


@pytest.mark.parametrize("kind", ["image", "text"])
@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".jsonl"])
def test_an_output_written_in_chunks_equals_the_one_written_whole(
    tmp_path: Path, suffix: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clip_client._cli import outputs

    monkeypatch.setattr(outputs, "DEFAULT_CHUNK_ROWS", 4)  # Parquet row groups of 4 rows
    rows = _odd_rows(23, kind=kind)
    whole, chunked = tmp_path / f"whole{suffix}", tmp_path / f"chunked{suffix}"
    write_rows(whole, rows)
    outputs._write_chunked(chunked, outputs.output_format(chunked), _in_chunks(rows, 3))  # type: ignore[arg-type]
    if suffix == ".parquet":
        a, b = pq.read_table(whole), pq.read_table(chunked)
        assert a.schema == b.schema
        assert a.schema.metadata == b.schema.metadata
        assert a.equals(b)
        # Chunks of 3 gathered into row groups of at least 4 rows: 6, 6, 6 and 5.
        groups = pq.ParquetFile(chunked).metadata
        assert [groups.row_group(g).num_rows for g in range(groups.num_row_groups)] == [6, 6, 6, 5]
    else:  # the very bytes, data file and sidecar
        assert chunked.read_bytes() == whole.read_bytes()
        assert meta_path(chunked).read_bytes() == meta_path(whole).read_bytes()
    back = read_rows(chunked)
    assert back.keys == rows.keys
    assert back.texts == rows.texts
    np.testing.assert_array_equal(back.embeddings, rows.embeddings)
    # Read back in chunks: the same rows, in order.
    parts = list(outputs.read_chunks(chunked, chunk_rows=5))
    assert [len(p) for p in parts] == [5, 5, 5, 5, 3]
    assert [k for p in parts for k in p.keys] == rows.keys
    np.testing.assert_array_equal(np.concatenate([p.embeddings for p in parts]), rows.embeddings)
    if kind == "image":
        assert [s for p in parts for s in p.stamps or []] == rows.stamps


def test_texts_from_a_file_resume_after_a_failure_and_send_only_the_missing_rows(
    invoke, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    lines = [f"caption {i}" for i in range(95)]
    lines[30] = ""  # a blank line: skipped, and its number is no row's id
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["texts", "--from", "t.txt", "--out", "t.parquet", "--no-cache", "--batch-size", "5",
            "--max-concurrency", "1", "--part-rows", "10"]  # fmt: skip
    # Six batches are answered, the seventh is refused (400 is not retried), late enough that the
    # answered rows are all taken first: the run stops.
    refused = Reply(400, {"error_code": "BAD_REQUEST", "message": "no"}, delay=0.5)
    server.script = [Reply(answer=True)] * 6 + [refused]
    first = invoke(*args)
    assert first.exit_code == 1, first.output
    assert "rerun to resume" in first.stderr
    assert not (tmp_path / "t.parquet").exists()
    parts = sorted((tmp_path / "t.parquet.parts").glob("part-*.parquet"))
    kept = [k for part in parts for k in read_rows(part).keys]
    # The rows answered (30, in three parts; fewer only if the refusal overtook them), from the first.
    assert kept == list(range(len(kept)))
    assert len(kept) in (10, 20, 30)
    server.reset()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert f"resuming: {len(kept)} rows already done" in again.stderr
    assert "1 blank line(s) skipped" in again.stderr
    texts = [t for t in lines if t]
    # Only the missing rows, each once. Compared as a multiset: the batches waiting for the one
    # concurrency slot take it in no set order (the output's order is checked below).
    assert Counter(server.inputs(TEXT)) == Counter(texts[len(kept) :])
    back = read_rows(tmp_path / "t.parquet")
    assert back.keys == [i for i, t in enumerate(lines) if t]
    assert back.texts == texts
    np.testing.assert_array_equal(back.embeddings, text_rows(texts))
    assert not (tmp_path / "t.parquet.parts").exists()

    # The same command once more: nothing to embed, the output as it was.
    before = (tmp_path / "t.parquet").read_bytes()
    server.reset()
    third = invoke(*args)
    assert third.exit_code == 0, third.output
    assert server.posts() == 0
    assert (tmp_path / "t.parquet").read_bytes() == before


@pytest.mark.parametrize("suffix", [".parquet", ".npy", ".jsonl"])
def test_texts_detect_a_changed_input_and_embed_again_from_where_it_differs(
    invoke, server: ServingServer, tmp_path: Path, suffix: str
) -> None:  # type: ignore[no-untyped-def]
    lines = [f"line {i}" for i in range(40)]
    source = tmp_path / "t.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["texts", "--from", "t.txt", "--out", f"t{suffix}", "--no-cache", "--part-rows", "10"]
    assert invoke(*args).exit_code == 0
    lines[25] = "an edited line"
    lines.append("one more line")
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    server.reset()
    run = invoke(*args)
    assert run.exit_code == 0, run.output
    assert "differs from the earlier run's rows at id 25" in run.stderr
    assert "resuming: 25 rows already done" in run.stderr
    # The first 25 rows kept, the rest embedded once each (sent in no set order; see above).
    assert Counter(server.inputs(TEXT)) == Counter(lines[25:])
    back = read_rows(tmp_path / f"t{suffix}")
    assert back.keys == list(range(41))
    assert back.texts == lines
    np.testing.assert_array_equal(back.embeddings, text_rows(lines))

    # Other settings are refused, as for images, until --overwrite.
    refused = invoke(*args, "--normalize")
    assert refused.exit_code == 1, refused.output
    assert "normalize False (this run: True)" in refused.stderr
    assert invoke(*args, "--normalize", "--overwrite").exit_code == 0


def test_texts_read_csv_jsonl_parquet_and_stdin_as_streams(
    invoke, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    texts = ["a cat", "a dog, running", "ü"]
    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"caption": t, "n": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8"
    )
    pq.write_table(pa.table({"n": [1, 2, 3], "text": texts}), tmp_path / "t.parquet")
    for name, extra in (("t.jsonl", ["--column", "caption"]), ("t.parquet", [])):
        run = invoke("texts", "--from", name, *extra, "--out", f"o_{name}.npy")
        assert run.exit_code == 0, run.output
        back = read_rows(tmp_path / f"o_{name}.npy")
        assert back.keys == [0, 1, 2]
        assert back.texts == texts
        np.testing.assert_array_equal(back.embeddings, text_rows(texts))
    run = invoke("texts", "--from", "t.jsonl")  # no such key: the line is named, before any row is lost
    assert run.exit_code == 1, run.output
    assert "t.jsonl: line 1 has no string 'text'" in run.stderr
    run = invoke("texts", "--from", "t.parquet", "--column", "n")
    assert run.exit_code == 2, run.output
    assert "column 'n' holds int64, not strings" in " ".join(run.output.split())
    # stdin, and a file without --out: rows on stdout as they come, chunk by chunk.
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["texts", "--from", "-"], input="x\n\ny\n")
    assert result.exit_code == 0, result.output
    assert [(r["id"], r["text"]) for r in jsonl(result.stdout)] == [(0, "x"), (2, "y")]


# Texts --from are split into lines as JSON Lines and `wc -l` split them (issue: a tester found
# `str.splitlines` breaking lines on characters that are not newlines).

ODD_TEXTS = [
    "first",
    "line\u2028sep",
    "para\u2029sep",
    "nel\x85x",
    "tab\x0bvertical",
    "form\x0cfeed",
    "seps\x1c\x1d\x1e",
    "last",
]
"""Texts with each character `str.splitlines` breaks on but JSON Lines and .txt do not."""


def test_jsonl_texts_may_hold_the_line_separators_that_json_leaves_raw(invoke, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    texts = ["first", "line\u2028sep", "nel\x85x", "last"]
    (tmp_path / "u.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
    )
    assert "\u2028" in (tmp_path / "u.jsonl").read_text(encoding="utf-8")  # raw, as JSON allows
    run = invoke("texts", "--from", "u.jsonl", "--out", "u.parquet")
    assert run.exit_code == 0, run.output
    back = read_rows(tmp_path / "u.parquet")
    assert back.keys == [0, 1, 2, 3]
    assert back.texts == texts
    np.testing.assert_array_equal(back.embeddings, text_rows(texts))
    # Every odd character, with a CRLF line and a blank line, and on stdout.
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in ODD_TEXTS]
    lines[3] += "\r"
    (tmp_path / "odd.jsonl").write_bytes("\n".join([*lines[:5], "", *lines[5:]]).encode("utf-8"))
    run = invoke("texts", "--from", "odd.jsonl")
    assert run.exit_code == 0, run.output
    assert [(r["id"], r["text"]) for r in jsonl(run.stdout)] == [
        (i if i < 5 else i + 1, t) for i, t in enumerate(ODD_TEXTS)
    ]


def test_txt_and_stdin_lines_end_at_newlines_only_and_ids_stay_line_numbers(
    invoke, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    raw = (
        "\r\n".join(ODD_TEXTS[:3]) + "\n\n" + "\n".join(ODD_TEXTS[3:])
    )  # CRLF lines, a blank one, no last \n
    (tmp_path / "odd.txt").write_bytes(raw.encode("utf-8"))
    want = [(i if i < 3 else i + 1, t) for i, t in enumerate(ODD_TEXTS)]
    args = ["texts", "--from", "odd.txt", "--out", "odd.parquet", "--part-rows", "3"]
    run = invoke(*args)
    assert run.exit_code == 0, run.output
    assert "1 blank line(s) skipped" in run.stderr
    back = read_rows(tmp_path / "odd.parquet")
    assert list(zip(back.keys, back.texts or [], strict=True)) == want
    np.testing.assert_array_equal(back.embeddings, text_rows(ODD_TEXTS))
    # Read again on resume: the same lines, so every row is kept and nothing is sent.
    server.reset()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "resuming: 8 rows already done" in again.stderr
    assert "differs" not in again.stderr
    assert server.posts() == 0
    # The same from stdin.
    result = CliRunner().invoke(app, ["texts", "--from", "-"], input=raw.encode("utf-8"))
    assert result.exit_code == 0, result.output
    assert [(r["id"], r["text"]) for r in jsonl(result.stdout)] == want
    # A .csv is the csv module's: its rows, CRLF or not, a quoted newline kept, the odd characters text.
    (tmp_path / "odd.csv").write_bytes(
        (
            "caption\r\n"
            + "\r\n".join(ODD_TEXTS[:4])
            + '\r\n"two\nlines"\n'
            + "\n".join(ODD_TEXTS[4:])
            + "\n"
        ).encode()
    )
    run = invoke("texts", "--from", "odd.csv")
    assert run.exit_code == 0, run.output
    csv_texts = [*ODD_TEXTS[:4], "two\nlines", *ODD_TEXTS[4:]]
    assert [(r["id"], r["text"]) for r in jsonl(run.stdout)] == list(enumerate(csv_texts))


@pytest.mark.parametrize("finished", [True, False], ids=["from-out", "from-parts"])
def test_a_line_made_blank_or_filled_in_is_said_to_differ_at_its_own_id(
    invoke, server: ServingServer, tmp_path: Path, finished: bool
) -> None:  # type: ignore[no-untyped-def]
    lines = [f"line {i}" for i in range(40)]
    source = tmp_path / "t.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["texts", "--from", "t.txt", "--out", "t.parquet", "--no-cache", "--part-rows", "10",
            "--batch-size", "5", "--max-concurrency", "1"]  # fmt: skip
    if not finished:  # an interrupted run: its parts hold the first rows
        server.script = [Reply(answer=True)] * 6 + [
            Reply(400, {"error_code": "BAD_REQUEST", "message": "no"})
        ]
        assert invoke(*args).exit_code == 1
        assert (tmp_path / "t.parquet.parts").is_dir()
        server.reset()
    else:
        assert invoke(*args).exit_code == 0
    lines[2] = ""  # made blank: the earlier run's id 2 is no more
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = invoke(*args)
    assert run.exit_code == 0, run.output
    assert "differs from the earlier run's rows at id 2:" in run.stderr
    back = read_rows(tmp_path / "t.parquet")
    assert back.keys == [i for i, t in enumerate(lines) if t]
    np.testing.assert_array_equal(back.embeddings, text_rows([t for t in lines if t]))
    lines[2] = "filled in again"  # the earlier run has no id 2 now: the difference is still at 2
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = invoke(*args)
    assert run.exit_code == 0, run.output
    assert "differs from the earlier run's rows at id 2:" in run.stderr
    assert read_rows(tmp_path / "t.parquet").keys == list(range(40))


def test_bytes_that_are_not_utf8_name_their_line_and_the_rows_before_are_kept(
    invoke, server: ServingServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    lines = [f"caption {i}".encode() for i in range(6000)]
    lines[5000] = b"caf\xe9 au lait"  # Latin-1, on line 5001: far past the first read of the file
    (tmp_path / "late.txt").write_bytes(b"\n".join(lines) + b"\n")
    args = ["texts", "--from", "late.txt", "--out", "late.parquet", "--part-rows", "1000"]
    run = invoke(*args)
    assert run.exit_code == 1, run.output
    said = " ".join(run.stderr.split())
    assert "late.txt: line 5001 is not UTF-8 text (invalid continuation byte, byte 4 of the line)" in said
    assert "re-encode it as UTF-8" in said
    assert "rerun to resume" in said
    kept = [
        k
        for part in sorted((tmp_path / "late.parquet.parts").glob("part-*.parquet"))
        for k in read_rows(part).keys
    ]
    assert kept == list(range(5000))  # every row before the line: the stream finished them first
    # A bad line among the rows the parts hold is the input's fault, not a damaged part.
    (tmp_path / "late.txt").write_bytes(b"\n".join([*lines[:10], b"\xff", *lines[11:]]) + b"\n")
    run = invoke(*args)
    assert run.exit_code == 1, run.output
    assert "late.txt: line 11 is not UTF-8 text" in " ".join(run.stderr.split())
    assert "damaged" not in run.stderr
    # Re-encoded, the same command resumes.
    lines[5000] = "café au lait".encode()
    (tmp_path / "late.txt").write_bytes(b"\n".join(lines) + b"\n")
    server.reset()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "resuming: 5000 rows already done" in again.stderr
    assert sorted(server.inputs(TEXT)) == sorted(line.decode() for line in lines[5000:])  # each once
    assert read_rows(tmp_path / "late.parquet").keys == list(range(6000))
    # stdin, .jsonl and .csv name the line too (a BOM is no byte of the text).
    result = CliRunner().invoke(app, ["texts", "--from", "-"], input=b"ok\nbad \xff\n")
    assert result.exit_code == 1
    assert [(r["id"], r["text"]) for r in jsonl(result.stdout)] == [(0, "ok")]  # the rows before it
    assert "stdin: line 2 is not UTF-8 text (invalid start byte, byte 5 of the line)" in " ".join(
        result.stderr.split()
    )
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "ok"}\n\n{"text": "\xe9"}\n')
    run = invoke("texts", "--from", "b.jsonl")
    assert "b.jsonl: line 3 is not UTF-8 text" in " ".join(run.stderr.split())
    (tmp_path / "b.csv").write_bytes(b'\xef\xbb\xbfcaption\n"a\nb"\n\xe9t\xe9\n')
    run = invoke("texts", "--from", "b.csv")
    assert "b.csv: line 4 is not UTF-8 text (invalid continuation byte, byte 1 of the line)" in " ".join(
        run.stderr.split()
    )
    (tmp_path / "h.csv").write_bytes(b"\xef\xbb\xbfcapt\xe9on\n")
    run = invoke("texts", "--from", "h.csv")
    assert run.exit_code == 1
    assert "h.csv: line 1 is not UTF-8 text (invalid continuation byte, byte 8 of the line)" in " ".join(
        run.stderr.split()
    )


def test_a_texts_run_holds_no_more_memory_for_four_times_the_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store of a `texts --from` run, fed N and then 4N rows of 256-d, and its finish into each
    format: the peak of Python's allocations (tracemalloc) does not grow with the row count."""
    import tracemalloc

    from clip_client._cli import outputs

    monkeypatch.setattr(outputs, "DEFAULT_CHUNK_ROWS", 200)
    meta = _meta(kind="text", preparation={})
    row = np.ones(256, np.float32)

    def peak(n: int, suffix: str) -> int:
        store = outputs.ResumableTexts(tmp_path / f"{n}{suffix}", meta, part_rows=100)
        store.open()
        todo = store.resume((i, f"text number {i}") for i in range(n))
        tracemalloc.start()
        try:
            for key, text in todo:
                store.add(key, text, row)
            written = store.finish()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert written.count == n

    for suffix in (".parquet", ".npy", ".jsonl"):
        peak(300, suffix)  # first: what a first call imports is no row's memory
        small, large = peak(1_500, suffix), peak(6_000, suffix)
        # 4,500 more rows would be 4.6 MB more held (1 KiB of vector each): the margin is a tenth of that.
        assert large < small + 460_000, (suffix, small, large)
    assert len(read_rows(tmp_path / "6000.npy")) == 6_000
    # The same for a resumed run: it reads the parts' ids and texts alongside the input, in chunks.
    for n in (1_500, 6_000):
        store = outputs.ResumableTexts(tmp_path / f"r{n}.parquet", meta, part_rows=100)
        store.open()
        for key, text in store.resume((i, f"t{i}") for i in range(n)):
            store.add(key, text, row)
        store.flush()
    peaks = []
    for n in (1_500, 6_000):
        store = outputs.ResumableTexts(tmp_path / f"r{n}.parquet", meta, part_rows=100)
        store.open()
        tracemalloc.start()
        try:
            rest = list(store.resume((i, f"t{i}") for i in range(n + 10)))
            store.finish()
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert store.kept == n
        assert [k for k, _ in rest] == list(range(n, n + 10))
    assert peaks[1] < peaks[0] + 460_000, peaks


def test_search_reads_its_index_in_chunks_and_merges_the_top_k_exactly(
    invoke, server: ServingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from clip_client._cli import outputs

    texts = [f"caption {i % 7}" for i in range(50)]  # repeats: equal scores, ordered by row
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert invoke("texts", "--from", "t.txt", "--out", "t.parquet").exit_code == 0
    index = read_rows(tmp_path / "t.parquet")
    want = cosine_topk(text_rows(["caption 3"])[0], index.embeddings, 12)
    monkeypatch.setattr(outputs, "DEFAULT_CHUNK_ROWS", 8)
    run = invoke("search", "t.parquet", "caption 3", "-k", "12", "--json")
    assert run.exit_code == 0, run.output
    hits = jsonl(run.stdout)
    assert [h["id"] for h in hits] == want.indices[0].tolist()
    assert [h["text"] for h in hits] == [texts[i] for i in want.indices[0]]
    np.testing.assert_allclose([h["score"] for h in hits], want.scores[0], atol=1e-6)


@pytest.mark.parametrize("out", [None, "e.parquet"])
def test_an_image_gone_between_the_listing_and_its_read_is_a_failed_input_not_a_gap(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: str | None
) -> None:  # type: ignore[no-untyped-def]
    """The run lists its images into the ledger, then lists them again as it embeds them: an image
    removed in between is named among the failures (exit 3), never silently missing."""
    import clip_client._cli.embed as embed

    write_pictures(tmp_path / "photos", 4)
    real = embed._listing
    calls = []

    def listing(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        calls.append(1)
        for item in real(*args, **kwargs):  # type: ignore[arg-type]
            if len(calls) > 1 and item.endswith("img_002.jpg"):
                continue  # gone by the time the run reads it
            yield item

    monkeypatch.setattr(embed, "_listing", listing)
    result = cli("images", "photos", *(["--out", out] if out else []))
    assert result.rc == 3, result
    assert "1 of 4 image(s) could not be embedded" in result.err
    assert "img_002.jpg: listed when the run started, but gone when it was read" in result.err
    if out:
        assert len(read_rows(tmp_path / out).keys) == 3
    else:
        assert len(result.out.splitlines()) == 3
    monkeypatch.setattr(embed, "_listing", listing)
    calls.clear()
    strict = cli("images", "photos", "--strict", "--out", "s.parquet")
    assert strict.rc != 0
    assert "img_002.jpg" in strict.err
