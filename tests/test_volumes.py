"""Unity Catalog volumes off-cluster: `/Volumes/...` (and `dbfs:/Volumes/...`) paths that are not
mounted here are read through the workspace's Files API, and give the same rows as the same images
in a local folder.

Real parts throughout: Pillow images in a folder that a loopback Files API serves
(`serving_server.FilesServer`, which is also the serving endpoint, so one workspace answers both),
databricks-sdk's own `WorkspaceClient().files` talking to it, and the command through typer's
CliRunner. The listing pages are two entries long, so every folder is listed in pages.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from harness import Make, Serve
from PIL import Image
from serving_server import TOKEN, FilesServer, Reply

# The command's fixtures (`cli`, `invoke` and what they need): one copy, in test_cli.
from test_cli import cli, env, in_workspace, invoke, write_pictures  # noqa: F401

from clip_client import ClipClient, InvalidInputError, SourceItem, iter_images
from clip_client._remote.sdk_errors import typed_error
from clip_client._remote.volumes import (
    VolumeFiles,
    remote_volume_path,
    volume_files,
    volume_path,
)
from clip_client.errors import APIStatusError
from clip_client.sources import NothingFoundError, SourceNotFoundError

VOLUME = "/Volumes/main/default/photos"
N = 5


@pytest.fixture
def volume_root(tmp_path: Path) -> Path:
    """What the fake Files API serves as `/Volumes`: `main/default/photos` holds N pictures written
    by Pillow, a text file and a subfolder `more/` of two more pictures."""
    root = tmp_path / "volumes"
    photos = root / "main" / "default" / "photos"
    write_pictures(photos, N)
    write_pictures(photos / "more", 2, start=N)
    (photos / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def server(serve: Serve, volume_root: Path) -> FilesServer:
    """The workspace of these tests: the serving endpoint and the Files API over `volume_root`."""
    started = serve(cls=FilesServer, root=volume_root, page_size=2)
    assert isinstance(started, FilesServer)
    return started


def names(server: FilesServer, recursive: bool = False) -> list[str]:
    """The pictures below the volume folder, as paths relative to it, sorted."""
    local = server.local(VOLUME)
    found = local.rglob("*") if recursive else local.glob("*")
    return sorted(str(p.relative_to(local)) for p in found if p.suffix in (".png", ".jpg"))


def workspace(server: FilesServer) -> dict[str, str]:
    return {"host": server.url, "token": TOKEN}


# --------------------------------------------------------------------------------------------------
# What a volume path is


def test_volume_paths_and_what_is_read_through_the_files_api(tmp_path: Path) -> None:
    assert volume_path("/Volumes/a/b/c/x.jpg") == "/Volumes/a/b/c/x.jpg"
    assert volume_path("dbfs:/Volumes/a/b/c/x.jpg") == "/Volumes/a/b/c/x.jpg"
    assert volume_path("/dbfs/a.jpg") is None
    assert volume_path("volumes/a.jpg") is None
    assert remote_volume_path("/Volumes/a/b/c/x.jpg") == "/Volumes/a/b/c/x.jpg"  # not mounted here
    assert remote_volume_path(Path("/Volumes/a/b/c/x.jpg")) == "/Volumes/a/b/c/x.jpg"
    assert remote_volume_path(str(tmp_path)) is None
    assert remote_volume_path(b"/Volumes/a") is None


# --------------------------------------------------------------------------------------------------
# Listing


def test_a_volume_folder_is_listed_page_by_page_and_read_as_its_local_folder(server: FilesServer) -> None:
    items = list(iter_images(VOLUME, storage_options=workspace(server)))
    assert [i.key for i in items] == [f"{VOLUME}/{n}" for n in names(server)]
    assert server.listings == 4  # 5 pictures, a text file and a folder: 7 entries, 2 a page
    local = server.local(VOLUME)
    for item in items:
        assert isinstance(item, SourceItem)
        assert item.local_path is None
        assert item.read() == (local / item.key.rsplit("/", 1)[-1]).read_bytes()
        st = (local / item.key.rsplit("/", 1)[-1]).stat()
        assert item.stamp == (st.st_size, st.st_mtime_ns // 1_000_000 * 1_000_000)
    assert sum(server.downloads.values()) == N  # prefetched once each, handed over once

    deep = list(iter_images(f"dbfs:{VOLUME}/", recursive=True, storage_options=workspace(server)))
    assert [i.key for i in deep] == [f"dbfs:{VOLUME}/{n}" for n in names(server, recursive=True)]
    assert all(i.source == f"dbfs:{VOLUME}/" for i in deep)


def test_listing_streams_a_page_at_a_time(server: FilesServer) -> None:
    """Nothing is listed before the first item is asked for, and the first item comes after the
    first page, not after the whole folder."""
    listing = iter_images(VOLUME, storage_options=workspace(server), prefetch=0)
    assert server.fs_requests == []
    first = next(listing)
    assert first.key == f"{VOLUME}/{names(server)[0]}"
    assert server.listings == 1
    assert len(list(listing)) == N - 1
    assert server.listings == 4


def test_a_missing_volume_folder_is_a_typed_error_and_an_empty_one_finds_nothing(
    server: FilesServer,
) -> None:
    with pytest.raises(SourceNotFoundError) as info:
        list(iter_images(f"{VOLUME}/nope", storage_options=workspace(server)))
    assert info.value.path == f"{VOLUME}/nope"
    assert "no such folder or file in the volume" in str(info.value)
    assert isinstance(info.value, InvalidInputError)
    (server.local(VOLUME) / "empty").mkdir()
    with pytest.raises(NothingFoundError):
        list(iter_images(f"{VOLUME}/empty", storage_options=workspace(server)))
    # A missing file named as such is one failed input, as a local file that is not there is.
    (missing,) = iter_images(f"{VOLUME}/gone.jpg", storage_options=workspace(server))
    with pytest.raises(InvalidInputError, match="no such file") as read:
        missing.read()
    assert read.value.path == f"{VOLUME}/gone.jpg"


def test_a_subfolder_that_cannot_be_listed_is_one_failed_input_after_the_others(server: FilesServer) -> None:
    server.denied.add(f"{VOLUME}/more")
    items = list(iter_images(VOLUME, recursive=True, storage_options=workspace(server), prefetch=0))
    assert [i.key for i in items] == [f"{VOLUME}/{n}" for n in names(server)] + [f"{VOLUME}/more"]
    with pytest.raises(
        InvalidInputError, match="cannot list folder: cannot access folder: permission denied"
    ):
        items[-1].read()


def test_transient_failures_are_retried_for_listing_and_reading(server: FilesServer) -> None:
    files = VolumeFiles(volume_files(host=server.url, token=TOKEN).files, backoff=0.01, backoff_max=0.01)
    options = {"volume_files": files}
    # databricks-sdk retries 429 (after Retry-After) and 503 itself; 500 and 502 are this package's.
    server.transient = [429, 500, 502, 503, 500]
    items = list(iter_images(VOLUME, storage_options=options, prefetch=0))
    assert [i.key for i in items] == [f"{VOLUME}/{n}" for n in names(server)]
    server.transient = [500, 429, 502, 503]
    assert items[0].read() == (server.local(VOLUME) / names(server)[0]).read_bytes()
    statuses = Counter(p for m, p, q in server.fs_requests)
    assert statuses[f"{VOLUME}/{names(server)[0]}"] == 5  # four failures, then the bytes
    assert server.transient == []


def test_a_failure_that_outlasts_the_retries_names_the_path_and_status(server: FilesServer) -> None:
    files = VolumeFiles(
        volume_files(host=server.url, token=TOKEN).files, backoff=0.01, backoff_max=0.01, max_retries=2
    )
    # prefetch=0: the read happens in `item.read()`, not ahead in the pool before the faults are set
    (item,) = iter_images(f"{VOLUME}/{names(server)[0]}", storage_options={"volume_files": files}, prefetch=0)
    server.transient = [500] * 3
    with pytest.raises(InvalidInputError) as info:
        item.read()
    assert info.value.path == item.key
    assert "cannot read file through the Files API: Injected HTTP 500" in str(info.value)
    assert "gave up after 3 attempts" in str(info.value)
    assert TOKEN not in str(info.value) + repr(info.value) + repr(files)


def test_reads_ahead_are_bounded(server: FilesServer) -> None:
    files = VolumeFiles(volume_files(host=server.url, token=TOKEN).files, max_in_flight=2)
    write_pictures(server.local(VOLUME) / "many", 24)
    items = list(iter_images(f"{VOLUME}/many", storage_options={"volume_files": files}, prefetch=16))
    assert len(items) == 24
    assert all(item.read() for item in items)
    assert 1 <= files.max_seen_in_flight <= 2


def test_sdk_errors_become_typed_errors_without_the_token() -> None:
    from databricks.sdk.errors import platform
    from databricks.sdk.errors.base import DatabricksError

    error = typed_error(
        platform.PermissionDenied(f"no READ VOLUME for Bearer {TOKEN}", error_code="PERMISSION_DENIED")
    )
    assert isinstance(error, APIStatusError)
    assert error.status_code == 403
    assert error.error_code == "PERMISSION_DENIED"
    assert TOKEN not in str(error)
    cause = platform.TemporarilyUnavailable("busy", error_code="TEMPORARILY_UNAVAILABLE")
    timed_out = TimeoutError("Timed out after 0:00:10")
    timed_out.__cause__ = cause
    again = typed_error(timed_out)  # databricks-sdk's own retries ran out: the last failure counts
    assert isinstance(again, APIStatusError)
    assert again.status_code == 503
    # Statuses the SDK has no class for: from the reason phrase of an answer without a body.
    bad_gateway = typed_error(DatabricksError("Bad Gateway"))
    assert isinstance(bad_gateway, APIStatusError)
    assert bad_gateway.status_code == 502
    # Or from the error code of a JSON body (a 502 that says TEMPORARILY_UNAVAILABLE): retried.
    said = typed_error(DatabricksError("busy", error_code="TEMPORARILY_UNAVAILABLE"))
    assert isinstance(said, APIStatusError)
    assert said.status_code == 503


def test_every_workspace_service_reads_an_sdk_failure_s_status_alike() -> None:
    """Volumes, Vector Search and deploy read a databricks-sdk failure's status one way
    (`sdk_status`): by its class, else by what its message says (statuses the SDK has no class
    for, 502 and 555), else by its error code; the settings the SDK appends are not the message."""
    from databricks.sdk.errors import platform
    from databricks.sdk.errors.base import DatabricksError

    from clip_client._remote.sdk_errors import sdk_message, sdk_status
    from clip_client.deploy import _sdk_refused
    from clip_client.vector_search import _Call, _refusal

    cases = [
        (platform.NotFound("no such index"), 404),
        (platform.DeadlineExceeded("too slow"), 504),
        (DatabricksError("Bad Gateway"), 502),
        (DatabricksError("unable to parse response.\n< 555 \n< {}"), 555),
        (DatabricksError("busy", error_code="TEMPORARILY_UNAVAILABLE"), 503),
        (DatabricksError("something else"), None),
    ]
    for exc, status in cases:
        assert sdk_status(exc) == status, exc
        assert _refusal(exc, _Call(lambda: None, "query", index="main.default.idx")).status_code == status
        assert _sdk_refused(exc, "https://x.test", "clip-text-embedding", "update").status_code == status
    assert sdk_status(ValueError("Bad Gateway")) is None
    refused = platform.PermissionDenied("no CAN QUERY. Config: host=https://example.test, auth_type=pat")
    assert sdk_message(refused) == "no CAN QUERY"


# --------------------------------------------------------------------------------------------------
# embed_images


async def test_embed_images_over_volume_paths_gives_the_rows_of_the_local_files(
    make: Make, server: FilesServer
) -> None:
    local = server.local(VOLUME)
    pictures = names(server)
    client = make()
    expected = await client.embed_images([str(local / n) for n in pictures])
    on_volume = await client.embed_images([f"{VOLUME}/{n}" for n in pictures])
    np.testing.assert_array_equal(on_volume, expected)
    as_dbfs = await client.embed_images([f"dbfs:{VOLUME}/{n}" for n in pictures])
    np.testing.assert_array_equal(as_dbfs, expected)
    assert server.downloads == Counter({f"{VOLUME}/{n}": 2 for n in pictures})
    # Items listed from the volume embed the same.
    listed = list(iter_images(VOLUME, storage_options=workspace(server)))
    np.testing.assert_array_equal(await client.embed_images(listed), expected)


async def test_a_missing_or_forbidden_volume_file_is_one_failed_input_named_by_index_and_path(
    make: Make, server: FilesServer, tmp_path: Path
) -> None:
    pictures = names(server)
    server.denied.add(f"{VOLUME}/{pictures[1]}")
    paths = [
        f"{VOLUME}/{pictures[0]}",
        f"{VOLUME}/{pictures[1]}",
        f"{VOLUME}/gone.jpg",
        f"{VOLUME}/{pictures[2]}",
    ]
    client = make()
    result = await client.embed_images(paths, on_error="mark")
    assert [f.index for f in result.failures] == [1, 2]
    forbidden, missing = (f.error for f in result.failures)
    assert isinstance(forbidden, InvalidInputError)
    assert isinstance(missing, InvalidInputError)
    assert (forbidden.index, forbidden.path) == (1, paths[1])
    assert (missing.index, missing.path) == (2, paths[2])
    assert "permission denied" in str(forbidden)
    assert "HTTP 403 PERMISSION_DENIED" in str(forbidden)
    assert str(missing).startswith(f"input 2, path {paths[2]!r}: no such file")
    # The words of a local file that is not there.
    local = await client.embed_images([str(tmp_path / "gone.jpg")], on_error="mark")
    assert type(local.failures[0].error) is type(missing)
    assert str(local.failures[0].error).split(": ", 1)[1].startswith("no such file")
    assert np.isfinite(result.embeddings[[0, 3]]).all()
    for failure in result.failures:
        assert TOKEN not in str(failure.error) + repr(failure.error)
    with pytest.raises(InvalidInputError, match="permission denied") as info:
        await client.embed_images(paths)
    assert (info.value.index, info.value.path) == (1, paths[1])


def test_a_local_model_reads_volumes_through_the_default_workspace(
    server: FilesServer, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABRICKS_HOST", server.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "none"))
    pictures = names(server)
    with ClipClient.local(str(tiny_checkpoint), device="cpu") as client:
        expected = client.embed_images([str(server.local(VOLUME) / n) for n in pictures])
        np.testing.assert_array_equal(client.embed_images([f"{VOLUME}/{n}" for n in pictures]), expected)


# --------------------------------------------------------------------------------------------------
# The images command


def test_the_images_command_over_a_volume_gives_the_rows_of_the_local_folder(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
    tmp_path: Path,
) -> None:
    local = cli("images", str(server.local(VOLUME)), "--recursive", "--out", "local.parquet")
    assert local.rc == 0, local
    remote = cli("images", VOLUME, "--recursive", "--out", "volume.parquet")
    assert remote.rc == 0, remote
    a, b = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "volume.parquet")
    key = b.column_names[0]
    assert b.column(key).to_pylist() == [f"{VOLUME}/{n}" for n in names(server, recursive=True)]
    by_name = {
        os.path.relpath(p, server.local(VOLUME)): v
        for p, v in zip(a.column(key).to_pylist(), a.column("embedding").to_pylist(), strict=True)
    }
    for k, v in zip(b.column(key).to_pylist(), b.column("embedding").to_pylist(), strict=True):
        np.testing.assert_array_equal(np.asarray(v), np.asarray(by_name[k.removeprefix(VOLUME + "/")]))
    assert server.listings >= 2 * 4  # listed, then read again as it is embedded: pages of two

    dbfs = cli("images", f"dbfs:{VOLUME}", "--recursive", "--out", "dbfs.parquet")
    assert dbfs.rc == 0, dbfs
    c = pq.read_table(tmp_path / "dbfs.parquet")
    assert c.column("embedding").to_pylist() == b.column("embedding").to_pylist()


def test_an_interrupted_volume_run_resumes_and_downloads_only_the_missing_images(  # type: ignore[no-untyped-def]
    invoke,  # noqa: F811
    server: FilesServer,
    tmp_path: Path,
) -> None:
    write_pictures(server.local(VOLUME) / "big", 20)
    folder = f"{VOLUME}/big"
    args = ["images", folder, "--out", "big.parquet", "--no-cache", "--batch-size", "2",
            "--max-concurrency", "1", "--part-rows", "4"]  # fmt: skip
    # Four batches are answered, the fifth is refused (a 403 stops the run: every batch would fail).
    refused = Reply(403, {"error_code": "PERMISSION_DENIED", "message": "no"}, delay=0.5)
    server.script = [Reply(answer=True)] * 4 + [refused]
    first = invoke(*args)
    assert first.exit_code == 1, first.output
    assert "rerun to resume" in first.stderr
    assert not (tmp_path / "big.parquet").exists()
    done = first.stderr.split(" finished row(s) kept")[0].rsplit(" ", 1)[-1]
    kept = int(done)
    assert 0 < kept < 20

    server.reset()
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert f"resuming: {kept} of 20 image(s) already done" in again.stderr
    assert sum(server.downloads.values()) == 20 - kept  # only the missing images are read
    out = pq.read_table(tmp_path / "big.parquet")
    keys = out.column(out.column_names[0]).to_pylist()
    assert keys == [f"{folder}/img_{i:03d}.{'png' if i % 2 else 'jpg'}" for i in range(20)]

    # The same rows as a run that was never interrupted.
    server.reset()
    whole = invoke("images", folder, "--out", "whole.parquet", "--no-cache")
    assert whole.exit_code == 0, whole.output
    assert (
        pq.read_table(tmp_path / "whole.parquet").column("embedding").to_pylist()
        == out.column("embedding").to_pylist()
    )


def test_the_images_command_names_missing_and_forbidden_volume_files(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
    tmp_path: Path,
) -> None:
    pictures = names(server)
    server.denied.add(f"{VOLUME}/{pictures[0]}")
    run = cli(
        "images",
        f"{VOLUME}/{pictures[0]}",
        f"{VOLUME}/gone.jpg",
        f"{VOLUME}/{pictures[1]}",
        "--out",
        "o.parquet",
    )
    assert run.rc == 3, run
    assert "2 of 3 image(s) could not be embedded" in run.err
    assert f"{VOLUME}/{pictures[0]}: cannot access file: permission denied" in run.err
    assert f"{VOLUME}/gone.jpg: no such file" in run.err
    assert pq.read_table(tmp_path / "o.parquet").column(0).to_pylist() == [f"{VOLUME}/{pictures[1]}"]

    missing = cli("images", f"{VOLUME}/nope", "--out", "n.parquet")
    assert missing.rc == 1, missing
    assert f"{VOLUME}/nope: no such folder or file in the volume" in missing.err
    assert "Files API" in missing.err


def test_the_images_command_retries_transient_files_api_failures(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
    tmp_path: Path,
) -> None:
    server.transient = [429, 503, 500]
    run = cli("images", VOLUME, "--out", "o.parquet")
    assert run.rc == 0, run
    assert len(pq.read_table(tmp_path / "o.parquet")) == N
    assert server.transient == []


def _touch(path: Path, seconds: int) -> None:
    os.utime(path, (seconds, seconds))


def test_a_changed_volume_file_is_embedded_again_on_resume(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
    tmp_path: Path,
) -> None:
    first = cli("images", VOLUME, "--out", "o.parquet")
    assert first.rc == 0, first
    target = server.local(VOLUME) / names(server)[1]
    Image.new("RGB", (50, 40), (200, 10, 10)).save(target)
    _touch(target, 1_800_000_000)
    server.reset()
    again = cli("images", VOLUME, "--out", "o.parquet")
    assert again.rc == 0, again
    assert f"resuming: {N - 1} of {N} image(s) already done; 1 changed since" in again.err
    assert sum(server.downloads.values()) == 1


# --------------------------------------------------------------------------------------------------
# A folder that cannot be read: an error about the folder, never one failed "image"


def test_a_wrong_token_on_a_volume_folder_is_an_authentication_error(server: FilesServer) -> None:
    from clip_client.errors import AuthenticationError

    for source in (VOLUME, f"{VOLUME}/more", f"{VOLUME}/{names(server)[0]}"):
        with pytest.raises(AuthenticationError) as info:
            list(iter_images(source, storage_options={"host": server.url, "token": "wrong"}))
        assert info.value.status_code == 401
        assert source in str(info.value)
        assert "wrong" not in str(info.value)


def test_the_images_command_stops_at_a_wrong_token_without_an_output(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
    tmp_path: Path,
) -> None:
    run = cli("images", VOLUME, "--out", "e.parquet", extra_env={"DATABRICKS_TOKEN": "wrong"})
    assert run.rc == 1, run
    assert "401" in run.err
    assert "could not be embedded" not in run.err
    assert not (tmp_path / "e.parquet").exists()


def test_a_forbidden_or_failing_volume_folder_is_an_error_about_the_folder(server: FilesServer) -> None:
    server.denied.add(VOLUME)
    with pytest.raises(InvalidInputError) as info:
        list(iter_images(VOLUME, storage_options=workspace(server)))
    assert info.value.path == VOLUME
    assert "permission denied" in str(info.value)
    assert f"User does not have READ VOLUME on {VOLUME}" in str(info.value)  # the server's words
    assert "folder" in str(info.value)
    server.reset()
    files = VolumeFiles(
        volume_files(host=server.url, token=TOKEN).files, backoff=0.01, backoff_max=0.01, max_retries=1
    )
    server.transient = [500] * 50
    with pytest.raises(InvalidInputError) as failing:
        list(iter_images(VOLUME, storage_options={"volume_files": files}))
    assert failing.value.path == VOLUME
    assert "cannot list folder: cannot read folder through the Files API" in str(failing.value)
    assert "gave up after 2 attempts" in str(failing.value)
    assert "no such file" not in str(failing.value)


def test_the_images_command_says_a_forbidden_volume_folder_and_writes_nothing(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
    tmp_path: Path,
) -> None:
    server.denied.add(f"{VOLUME}/more")
    run = cli("images", f"{VOLUME}/more", "--out", "f.parquet")
    assert run.rc == 1, run
    assert f"{VOLUME}/more" in run.err
    assert "permission denied" in run.err
    assert "could not be embedded" not in run.err
    assert not (tmp_path / "f.parquet").exists()


def test_strict_names_a_failed_volume_file_by_its_path(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
) -> None:
    pictures = names(server, recursive=True)
    secret = f"{VOLUME}/more/{pictures[-1].rsplit('/', 1)[-1]}"
    server.denied.add(secret)
    run = cli("images", f"{VOLUME}/more", "--out", "c.npy", "--strict")
    assert run.rc != 0, run
    assert "SourceItem" not in run.err
    assert f"path {secret!r}" in run.err or f"{secret}:" in run.err


def test_two_spellings_of_one_volume_file_are_one_input(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
    tmp_path: Path,
) -> None:
    first = names(server)[0]
    run = cli(
        "images",
        f"{VOLUME}/{first}",
        f"dbfs:{VOLUME}/{first}",
        f"{VOLUME}//{first}",
        f"{VOLUME}/./{first}",
        "--out",
        "o.parquet",
    )
    assert run.rc == 0, run
    assert "3 path(s) given more than once; each is embedded once" in run.err
    assert pq.read_table(tmp_path / "o.parquet").column(0).to_pylist() == [f"{VOLUME}/{first}"]
    # A folder given twice, once with a trailing slash and once as dbfs:, is listed once.
    both = cli("images", VOLUME, f"dbfs:{VOLUME}/", "--out", "b.parquet")
    assert both.rc == 0, both
    assert len(pq.read_table(tmp_path / "b.parquet")) == N
    # The Files API is asked for the path itself, never a spelling with `//` or `.`.
    assert all("//" not in p and "/./" not in p for _, p, _ in server.fs_requests)
    # Keys are normalised as local paths are, the `dbfs:` scheme kept as given.
    options = workspace(server)
    assert [i.key for i in iter_images(f"dbfs:{VOLUME}//./{first}", storage_options=options)] == [
        f"dbfs:{VOLUME}/{first}"
    ]
    assert [i.key for i in iter_images(f"{VOLUME}//more/.", storage_options=options)] == [
        f"{VOLUME}/more/{n.rsplit('/', 1)[-1]}" for n in names(server, recursive=True) if "/" in n
    ]
    assert volume_path("dbfs:/Volumes/a//b/./c/") == "/Volumes/a/b/c"
    assert volume_path("dbfs:/Volumes") == volume_path("/Volumes") == "/Volumes"
    assert volume_path("/Volumes/../etc/x") is None  # climbs out: a local path


async def test_embed_images_on_a_volume_folder_says_it_is_a_folder(make: Make, server: FilesServer) -> None:
    client = make()
    with pytest.raises(InvalidInputError) as info:
        await client.embed_images([f"{VOLUME}/more"])
    assert "is a folder" in str(info.value)
    assert "iter_images" in str(info.value)


def test_the_images_command_on_a_catalog_or_the_volumes_root_is_a_clear_error(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
) -> None:
    for source in ("/Volumes", "/Volumes/", "/Volumes/cat", "dbfs:/Volumes/cat/sch"):
        run = cli("images", source, "--out", "v.parquet")
        assert run.rc == 1, (source, run)
        assert "could not be embedded" not in run.err
        assert "/Volumes/CATALOG/SCHEMA/VOLUME" in run.err


def test_the_images_command_quotes_the_servers_message_for_a_forbidden_file(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    server: FilesServer,
) -> None:
    picture = f"{VOLUME}/{names(server)[0]}"
    server.denied.add(picture)
    run = cli("images", picture, f"{VOLUME}/{names(server)[1]}", "--out", "o.parquet")
    assert run.rc == 3, run
    assert f"User does not have READ VOLUME on {picture}" in run.err
    assert "Forbidden" not in run.err


def test_volume_files_are_read_by_the_plain_download_without_sdk_warnings(
    server: FilesServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One GET of /api/2.0/fs/files a file: not databricks-sdk's pre-signed URL walk
    (`/fs/endpoints`, `/fs/create-download-url`, then the fallback), whose failures it logs as
    warnings ("IO_OFFLOAD ... failed 3 transfers in a row") that reach a library user's stderr."""
    files = VolumeFiles(volume_files(host=server.url, token=TOKEN).files)
    write_pictures(server.local(VOLUME) / "many", 6)
    with caplog.at_level("INFO", logger="databricks.sdk"):
        items = list(iter_images(f"{VOLUME}/many", storage_options={"volume_files": files}, prefetch=0))
        assert all(item.read() for item in items)
    assert not [p for _, p in server.requests if "/fs/create-download-url" in p or "/fs/endpoints" in p]
    assert sum(server.downloads.values()) == 6
    assert not [r for r in caplog.records if "transfers in a row" in r.getMessage()]
    # The package adds no handler of its own to databricks-sdk's loggers (nor to its own).
    import logging

    assert logging.getLogger("databricks.sdk").handlers == []
    assert logging.getLogger("clip_client").handlers == []
