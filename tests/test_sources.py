"""clip_client.sources: tar shards (webdataset layout) and fsspec object stores give the same rows
as the same images in a folder; listing is lazy; a bad member or a missing object is one failed
input named by its key; the `images` command reads shards and URIs and resumes them.

Real parts throughout: Pillow images, shards written with `tarfile`, fsspec's `memory://` store,
the loopback serving endpoint, and the command through typer's CliRunner.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from image_factory import picture
from PIL import Image

# The command's fixtures (`cli` and what it needs): one copy, in test_cli.
from test_cli import cli, env, in_workspace  # noqa: F401

from clip_client import AsyncClipClient, ClipClient, InvalidInputError, SourceItem, iter_images
from clip_client._cli.embed import gather_images
from clip_client._cli.outputs import OutputError
from clip_client.sources import NothingFoundError

fsspec = pytest.importorskip("fsspec")
from fsspec.implementations.memory import MemoryFileSystem  # noqa: E402

N = 7
MTIME = 1_700_000_000


def encoded(i: int) -> tuple[str, bytes]:
    """The i-th picture as (extension, bytes): JPEG and PNG alternately, of different sizes."""
    fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
    buf = io.BytesIO()
    Image.fromarray(picture(40 + 3 * i, 30 + 2 * i, seed=i)).save(buf, fmt)
    return ext, buf.getvalue()


@pytest.fixture
def images() -> dict[str, tuple[str, bytes]]:
    """key -> (extension, bytes): the collection every source below holds."""
    return {f"{i:06d}": encoded(i) for i in range(N)}


def write_folder(folder: Path, images: dict[str, tuple[str, bytes]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, (ext, data) in images.items():
        (folder / f"{key}.{ext}").write_bytes(data)
    return folder


def add(tf: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.type = len(data), MTIME, kind
    tf.addfile(info, io.BytesIO(data))


def shard_bytes(images: dict[str, tuple[str, bytes]], mode: str = "w") -> bytes:
    """A webdataset shard: each KEY.jpg/png beside its KEY.json and KEY.txt."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for key, (ext, data) in images.items():
            add(tf, f"{key}.json", b'{"caption": "a picture"}')
            add(tf, f"{key}.{ext}", data)
            add(tf, f"{key}.txt", b"a picture")
    return buf.getvalue()


def rows(client: ClipClient, items: list[SourceItem]) -> dict[str, np.ndarray]:
    vectors = client.embed_images(items)
    return {item.key: v for item, v in zip(items, vectors, strict=True)}


@pytest.fixture
def memory() -> Iterator[MemoryFileSystem]:
    fs = MemoryFileSystem()
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]
    yield fs
    fs.store.clear()
    fs.pseudo_dirs[:] = [""]


# --------------------------------------------------------------------------------------------------
# Same rows from a folder, a shard and an object store


def test_a_shard_and_an_object_store_give_the_folders_rows(
    client: ClipClient, images: dict[str, tuple[str, bytes]], memory: MemoryFileSystem, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "photos", images)
    (tmp_path / "shard.tar").write_bytes(shard_bytes(images))
    (tmp_path / "shard.tar.gz").write_bytes(shard_bytes(images, "w:gz"))
    for key, (ext, data) in images.items():
        memory.pipe(f"/bucket/photos/{key}.{ext}", data)
    memory.pipe("/bucket/shards/shard-000000.tar", shard_bytes(images))

    from_folder = rows(client, list(iter_images(folder)))
    # The folder's keys are its files' paths, in sorted order; a shard's are its webdataset keys.
    assert list(from_folder) == [str(folder / f"{k}.{ext}") for k, (ext, _) in images.items()]
    by_key = {Path(path).stem: v for path, v in from_folder.items()}
    # The same images as paths: what the folder's items must equal.
    direct = client.embed_images([str(folder / f"{k}.{ext}") for k, (ext, _) in images.items()])
    np.testing.assert_array_equal(np.stack(list(from_folder.values())), direct)

    for source, reread in [
        (tmp_path / "shard.tar", False),
        (tmp_path / "shard.tar", True),  # listed by seeking, each member read again by offset
        (tmp_path / "shard.tar.gz", True),  # compressed: streamed either way
        ("memory://bucket/shards/shard-000000.tar", False),
        ("memory://bucket/shards/shard-000000.tar", True),
    ]:
        got = rows(client, list(iter_images(source, reread=reread)))
        assert list(got) == list(images), source  # the keys, in the shard's order
        for key, vector in got.items():
            np.testing.assert_array_equal(vector, by_key[key], err_msg=f"{source} {key}")

    from_store = rows(client, list(iter_images("memory://bucket/photos")))
    assert list(from_store) == [f"memory://bucket/photos/{k}.{ext}" for k, (ext, _) in images.items()]
    for uri, vector in from_store.items():
        np.testing.assert_array_equal(vector, by_key[uri.rsplit("/", 1)[1].split(".")[0]])


def test_items_carry_stamps_for_resume(
    images: dict[str, tuple[str, bytes]], memory: MemoryFileSystem, tmp_path: Path
) -> None:
    folder = write_folder(tmp_path / "photos", images)
    (tmp_path / "shard.tar").write_bytes(shard_bytes(images))
    memory.pipe("/bucket/a.jpg", images["000000"][1])

    (first,) = itertools.islice(iter_images(folder), 1)
    st = (folder / "000000.jpg").stat()
    assert first.stamp == (st.st_size, st.st_mtime_ns)
    member = next(iter_images(tmp_path / "shard.tar"))
    assert member.stamp == (len(images["000000"][1]), MTIME * 1_000_000_000)
    assert member.source == str(tmp_path / "shard.tar")
    (obj,) = iter_images("memory://bucket/a.jpg")
    assert obj.stamp is not None
    assert obj.stamp[0] == len(images["000000"][1])
    # An item is its key wherever a row id goes.
    assert {member: 1}["000000"] == 1
    assert isinstance(member, str)


def test_brace_patterns_and_uri_globs_expand_in_order(
    images: dict[str, tuple[str, bytes]], memory: MemoryFileSystem, tmp_path: Path
) -> None:
    keys = list(images)
    parts = [dict(list(images.items())[:3]), dict(list(images.items())[3:])]
    for i, part in enumerate(parts):
        (tmp_path / f"shard-{i:06d}.tar").write_bytes(shard_bytes(part))
        memory.pipe(f"/b/shard-{i:06d}.tar", shard_bytes(part))
    assert [i.key for i in iter_images(str(tmp_path / "shard-{000000..000001}.tar"))] == keys
    assert [i.key for i in iter_images("memory://b/shard-{000000..000001}.tar")] == keys
    assert [i.key for i in iter_images("memory://b/shard-*.tar")] == keys


def test_braces_expand_lazily_one_name_at_a_time(memory: MemoryFileSystem, tmp_path: Path) -> None:
    # 10^11 names: expanding them up front (a list, or itertools.product) runs out of memory.
    huge = "x-{0..99999999999}.tar"
    local = iter_images(str(tmp_path / huge))
    first = next(local)
    assert first.key == str(tmp_path / "x-0.tar")  # the first shard, which does not exist: a failed input
    with pytest.raises(InvalidInputError) as info:
        first.read()
    assert info.value.path == str(tmp_path / "x-0.tar")
    assert next(local).key == str(tmp_path / "x-1.tar")  # the generator goes on where it stopped
    local.close()

    memory.pipe("/b/x-0.tar", shard_bytes({"000000": encoded(0)}))
    remote = iter_images(f"memory://b/{huge}", prefetch=0)
    assert next(remote).key == "000000"  # the first shard's row
    missing = next(remote)
    assert missing.key == "memory://b/x-1.tar"
    with pytest.raises(InvalidInputError, match="no such object"):
        missing.read()
    remote.close()


def test_brace_expansion_is_braceexpands() -> None:
    braceexpand = pytest.importorskip("braceexpand").braceexpand
    from clip_client.sources import _braces

    for pattern in [
        "s-{000000..000011}.tar", "x{a,b}{1..3}y", "python{2.{5..7},3.{2,3}}", "{4..1}", "{2..-1}",
        "{-05..3}", "{a..g..2}", "{z..a..3}", "{Z..a}", "{1..10..-3}", "index{,.bak}", r"{1\{2,3}",
        r"a\\b{1,2}", "{}", "{x}", "a{b{c,d}}e", "{{a,b},{c..e}}", "a{,}b", "no{brace",
    ]:  # fmt: skip
        try:
            expected: Any = list(braceexpand(pattern))
        except ValueError:
            expected = ValueError
        try:
            got: Any = list(_braces(pattern))
        except ValueError:
            got = ValueError
        assert got == expected, pattern
    with pytest.raises(ValueError, match="unbalanced braces"):
        list(iter_images("a{1{2,3}.tar"))


def test_a_uri_glob_that_matches_nothing_is_one_failed_input_as_a_local_one_is(
    images: dict[str, tuple[str, bytes]], memory: MemoryFileSystem, tmp_path: Path
) -> None:
    memory.pipe("/b/shard-000000.tar", shard_bytes(images))
    items = list(iter_images(["memory://b/zz*.tar", "memory://b/shard-*.tar"]))
    assert [i.key for i in items] == ["memory://b/zz*.tar", *images]
    with pytest.raises(InvalidInputError, match="no object matches") as info:
        items[0].read()
    assert info.value.path == "memory://b/zz*.tar"
    # A local pattern is not globbed: it names nothing, and is one failed input just the same.
    (local,) = iter_images(str(tmp_path / "zz*.tar"))
    with pytest.raises(InvalidInputError) as info:
        local.read()
    assert info.value.path == str(tmp_path / "zz*.tar")


def test_globs_must_be_a_list_and_sources_must_be_str_paths(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(encoded(1)[1])
    (folder / "readme.txt").write_text("not an image")
    with pytest.raises(TypeError, match=r"globs.*\['\*\.png'\].*not a single str"):
        iter_images(folder, globs="*.png")  # would be ["*", ".", "p", "n", "g"]: "*" takes readme.txt
    assert [i.key for i in iter_images(folder, globs=["*.png"])] == [str(folder / "a.png")]
    with pytest.raises(TypeError, match=r"os\.fsdecode"):
        iter_images(bytes(folder))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"os\.fsdecode"):
        list(iter_images([bytes(folder)]))  # type: ignore[list-item]
    assert [i.key for i in iter_images(os.fsdecode(bytes(folder)))] == [str(folder / "a.png")]


# --------------------------------------------------------------------------------------------------
# Failures: one input each, named by its key


def test_a_corrupt_member_a_missing_object_and_a_url_are_failed_inputs_named_by_key(
    client: ClipClient, images: dict[str, tuple[str, bytes]], memory: MemoryFileSystem, tmp_path: Path
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        add(tf, "good.jpg", images["000000"][1])
        add(tf, "broken.jpg", b"\xff\xd8 not really a jpeg")
        add(tf, "twice.jpg", images["000002"][1])
        add(tf, "twice.png", images["000001"][1])
        add(tf, "link.jpg", b"", tarfile.SYMTYPE)
        add(tf, "last.png", images["000001"][1])
    (tmp_path / "bad.tar").write_bytes(buf.getvalue())
    memory.pipe("/bucket/here.jpg", images["000000"][1])
    sources = [
        tmp_path / "bad.tar",
        "memory://bucket/missing.jpg",
        "memory://bucket/here.jpg",
        "https://h/x.jpg",
    ]

    items = list(iter_images(sources))
    assert [i.key for i in items] == [
        "good", "broken", "twice", "link", "last",
        "memory://bucket/missing.jpg", "memory://bucket/here.jpg", "https://h/x.jpg",
    ]  # fmt: skip
    result = client.embed_images(items, on_error="mark")
    failed = {f.index: f.error for f in result.failures}
    assert sorted(failed) == [1, 2, 3, 5, 7]
    for index, error in failed.items():
        assert isinstance(error, InvalidInputError)
        assert error.path == items[index].key
        assert error.index == index
        assert repr(items[index].key) in str(error)
    assert "not a recognised image" in str(failed[1]) or "cannot" in str(failed[1])
    assert "2 images (twice.jpg, twice.png)" in str(failed[2])
    assert "is a link" in str(failed[3])
    assert "no such object" in str(failed[5])
    assert "URLs are not fetched" in str(failed[7])
    ok = [i for i in range(len(items)) if i not in failed]
    assert ok == [0, 4, 6]
    np.testing.assert_array_equal(result.embeddings[6], result.embeddings[0])  # the same picture

    # With on_error="raise", the first one stops the call, named the same way.
    with pytest.raises(InvalidInputError) as info:
        client.embed_images(list(iter_images("memory://bucket/missing.jpg")))
    assert info.value.path == "memory://bucket/missing.jpg"


async def test_the_async_client_reads_items_the_same_way(
    client: ClipClient, aclient: AsyncClipClient, images: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    (tmp_path / "shard.tar").write_bytes(shard_bytes(images))
    sources = [tmp_path / "shard.tar", tmp_path / "missing.tar"]
    expected = client.embed_images(list(iter_images(sources)), on_error="mark")
    got = await aclient.embed_images(list(iter_images(sources)), on_error="mark")
    np.testing.assert_array_equal(got.embeddings[:N], expected.embeddings[:N])
    assert [(f.index, f.error.path) for f in got.failures] == [(N, str(tmp_path / "missing.tar"))]
    async with aclient.iter_embed_images(iter_images(tmp_path / "shard.tar")) as stream:
        rows = [vector async for _, vector in stream]
    np.testing.assert_array_equal(np.stack(rows), expected.embeddings[:N])


def test_a_shard_cut_short_keeps_the_members_before_the_cut(
    client: ClipClient, images: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    whole = shard_bytes(images)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: len(whole) // 2])
    items = list(iter_images(cut))
    assert items[-1].key == str(cut)
    assert 0 < len(items) - 1 < N
    with client.iter_embed_images(items, on_error="mark") as stream:
        done = [index for index, _ in stream]
    assert done == list(range(len(items)))  # every input has its row, in order
    assert [f.index for f in stream.failures] == [len(items) - 1]
    assert stream.failures[0].error.path == str(cut)
    assert "ends early" in str(stream.failures[0].error)


def twelve_jpegs() -> tuple[bytes, list[int]]:
    """A shard of 12 JPEG members, each beside its KEY.txt, and the offsets of its members' headers
    (the JPEGs' and the .txt's, in order)."""
    images = {f"{i:06d}": ("jpg", encoded(2 * i)[1]) for i in range(12)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for key, (ext, data) in images.items():
            add(tf, f"{key}.{ext}", data)
            add(tf, f"{key}.txt", b"a picture")
    whole = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(whole)) as tf:
        headers = [m.offset for m in tf.getmembers()]
    return whole, headers


def test_a_shard_cut_at_a_header_or_without_its_end_marker_is_failed_as_the_shard(  # type: ignore[no-untyped-def]
    client: ClipClient,
    memory: MemoryFileSystem,
    tmp_path: Path,
    cli,  # noqa: F811
) -> None:
    """tarfile reads a missing or short header as the end of the archive: the members after the cut
    must not vanish silently. A shard must end with one or more whole zero blocks."""
    import gzip

    whole, headers = twelve_jpegs()
    keys = [f"{i:06d}" for i in range(12)]
    last_end = headers[-1] + 2 * tarfile.BLOCKSIZE  # after the last member (a 9-byte .txt): no zero block
    assert whole[last_end:] == bytes(len(whole) - last_end)  # the rest is the end marker and padding
    cuts = {  # name -> (bytes, images kept before the cut)
        "at-header.tar": (whole[: headers[12]], 6),  # on a block boundary, where 000006.jpg's header starts
        "mid-header.tar": (whole[: headers[12] + 100], 6),  # inside that header
        "mid-txt-header.tar": (whole[: headers[13] + 300], 7),  # inside the header of 000006.txt
        "no-end-marker.tar": (whole[:last_end], 12),  # every member whole, but no zero block
        "partial-end-block.tar": (whole[: last_end + 700], 12),  # a zero block and a part of one
        "data-after-end.tar": (whole + whole, 12),  # two tars end to end: the second is not read
    }
    for name, (data, kept) in cuts.items():
        (tmp_path / name).write_bytes(data)
        memory.pipe(f"/bucket/{name}", data)
        for source in (str(tmp_path / name), f"memory://bucket/{name}"):
            for reread in (False, True):
                items = list(iter_images(source, reread=reread))
                where = f"{source} reread={reread}"
                assert [i.key for i in items] == [*keys[:kept], source], where
                result = client.embed_images(items, on_error="mark")
                assert [(f.index, f.error.path) for f in result.failures] == [(kept, source)], where
                message = str(result.failures[0].error)
                assert "ends early" in message or "after its end-of-archive marker" in message, where
    # Compressed: a whole gzip stream of a tar cut at a header, and a gzip stream itself cut short.
    (tmp_path / "at-header.tar.gz").write_bytes(gzip.compress(cuts["at-header.tar"][0]))
    packed = gzip.compress(whole)
    (tmp_path / "gz-cut.tar.gz").write_bytes(packed[: len(packed) // 2])
    for name in ("at-header.tar.gz", "gz-cut.tar.gz"):
        items = list(iter_images(tmp_path / name, reread=True))
        assert items[-1].key == str(tmp_path / name)
        assert [i.key for i in items[:-1]] == keys[: len(items) - 1]
        assert name != "at-header.tar.gz" or len(items) == 7
        with pytest.raises(InvalidInputError, match="ends early"):
            items[-1].read()

    # A shard whose end marker is a single zero block (some writers emit one) is whole.
    for end in (last_end + tarfile.BLOCKSIZE, last_end + 2 * tarfile.BLOCKSIZE, len(whole)):
        (tmp_path / "one-block.tar").write_bytes(whole[:end])
        for reread in (False, True):
            items = list(iter_images(tmp_path / "one-block.tar", reread=reread))
            assert [i.key for i in items] == keys
            assert client.embed_images(items, on_error="mark").failures == []

    # The command reports it: rows for the members before the cut, the shard failed, exit status 3.
    run = cli("images", "at-header.tar", "--out", "t.parquet")
    assert run.rc == 3, run
    assert "at-header.tar" in run.err
    assert "ends early" in run.err
    assert pq.read_table(tmp_path / "t.parquet").column(0).to_pylist() == keys[:6]


def test_an_image_member_without_a_webdataset_key_is_a_failed_input(
    client: ClipClient, images: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    """`.hidden.jpg` has no webdataset key (the key ends at the first dot of the base name): it is
    one failed input named by the member's name, in the shard's order, never dropped."""
    jpeg, png = images["000000"][1], images["000001"][1]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        add(tf, "a.jpg", jpeg)
        add(tf, ".hidden.jpg", jpeg)  # between a sample's members: it follows the sample
        add(tf, "a.txt", b"a picture")
        add(tf, "dir", b"", tarfile.DIRTYPE)  # a directory: not an image, skipped
        add(tf, "dir/._b.png", png)  # macOS's AppleDouble file beside dir/b.png
        add(tf, "dir/b.png", png)
        add(tf, "dir/b.json", b"{}")
        add(tf, "notes", b"no extension")  # matches no glob: skipped
        add(tf, "lone.txt", b"a text with no image")  # matches no glob: skipped
        add(tf, "c.jpg", jpeg)
    (tmp_path / "odd.tar").write_bytes(buf.getvalue())

    for reread in (False, True):
        items = list(iter_images(tmp_path / "odd.tar", reread=reread))
        assert [i.key for i in items] == ["a", ".hidden.jpg", "dir/._b.png", "dir/b", "c"]
        result = client.embed_images(items, on_error="mark")
        failed = {f.index: f.error for f in result.failures}
        assert sorted(failed) == [1, 2]
        for index, error in failed.items():
            assert isinstance(error, InvalidInputError)
            assert error.path == items[index].key
            assert "has no webdataset key" in str(error)
            assert "starts with a dot" in str(error)
        np.testing.assert_array_equal(result.embeddings[4], result.embeddings[0])  # the same picture
        assert items[1].stamp == (len(jpeg), MTIME * 1_000_000_000)

    # A glob that matches a name with no extension: that member has no key either.
    only = list(iter_images(tmp_path / "odd.tar", globs=["notes", "*.png"]))
    assert [i.key for i in only] == ["dir/._b.png", "dir/b", "notes"]
    with pytest.raises(InvalidInputError, match="has no extension"):
        only[2].read()
    # A shard whose only image has no key is not "no images found": its one image is listed, failed.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        add(tf, ".only.jpg", jpeg)
    (tmp_path / "dot.tar").write_bytes(buf.getvalue())
    (item,) = iter_images(tmp_path / "dot.tar")
    assert item.key == ".only.jpg"
    with pytest.raises(InvalidInputError, match="rename it"):
        item.read()


def test_a_source_with_no_images_says_so(tmp_path: Path, memory: MemoryFileSystem) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        add(tf, "a.json", b"{}")
    (tmp_path / "meta.tar").write_bytes(buf.getvalue())
    memory.pipe("/bucket/prefix/a.txt", b"text")
    for source in (tmp_path / "empty", tmp_path / "meta.tar", "memory://bucket/prefix"):
        with pytest.raises(NothingFoundError) as info:
            list(iter_images(source))
        assert info.value.path == str(source)
        assert "no images found" in str(info.value)
    with pytest.raises(ValueError, match="prefetch"):
        iter_images(tmp_path, prefetch=-1)


# --------------------------------------------------------------------------------------------------
# Laziness: listing and reading stream, with bounded read-ahead


class CountingFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """A memory store of its own that counts directory listings and object reads."""

    protocol = "counting"
    store: dict[str, Any] = {}  # noqa: RUF012
    pseudo_dirs = [""]  # noqa: RUF012
    listed = 0
    read = 0

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return super()._strip_protocol(path.replace("counting://", "memory://", 1))  # type: ignore[no-any-return]

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        type(self).listed += 1
        return super().ls(path, detail=detail, **kwargs)

    def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> Any:
        type(self).read += 1
        return super().cat_file(path, start, end, **kwargs)


def test_listing_is_lazy_and_reading_ahead_is_bounded() -> None:
    fsspec.register_implementation("counting", CountingFileSystem, clobber=True)
    fs = CountingFileSystem()
    _, data = encoded(0)
    folders, per_folder = 40, 5
    for d in range(folders):
        for f in range(per_folder):
            fs.pipe(f"/bucket/{d:03d}/{f}.jpg", data)
    CountingFileSystem.listed = CountingFileSystem.read = 0

    items = iter_images("counting://bucket", recursive=True, prefetch=4)
    assert CountingFileSystem.listed == 0  # nothing happens before the first item is asked for
    first = next(items)
    assert first.key == "counting://bucket/000/0.jpg"
    assert CountingFileSystem.listed <= 3  # the root and the first folder, not all 40
    assert CountingFileSystem.read <= 4  # at most `prefetch` objects read ahead
    assert first.read() == data
    rest = list(items)
    assert len(rest) == folders * per_folder - 1
    assert CountingFileSystem.listed == folders + 1
    assert [i.key for i in rest[:6]] == [f"counting://bucket/000/{f}.jpg" for f in range(1, 5)] + [
        "counting://bucket/001/0.jpg",
        "counting://bucket/001/1.jpg",
    ]
    assert all(i.read() == data for i in rest)
    assert CountingFileSystem.read == folders * per_folder  # each object read once, ahead or not

    # prefetch=0: nothing is read until an item is.
    CountingFileSystem.read = 0
    lazy = list(iter_images("counting://bucket/000", prefetch=0))
    assert len(lazy) == per_folder
    assert CountingFileSystem.read == 0


def test_a_streamed_shard_is_read_as_it_is_consumed(
    images: dict[str, tuple[str, bytes]], tmp_path: Path
) -> None:
    many = {f"{i:06d}": images[f"{i % N:06d}"] for i in range(200)}
    (tmp_path / "big.tar").write_bytes(shard_bytes(many))

    class Counting(io.FileIO):
        consumed = 0

        def readinto(self, b: Any) -> int:
            n = super().readinto(b)
            Counting.consumed += n or 0
            return n or 0

    from clip_client import sources

    opened = sources._tar_items(
        str(tmp_path / "big.tar"), lambda: Counting(tmp_path / "big.tar"), ("*.jpg", "*.png"), hold=True
    )
    next(opened)
    assert Counting.consumed < (tmp_path / "big.tar").stat().st_size / 4
    opened.close()


# --------------------------------------------------------------------------------------------------
# The `images` command


def test_gather_images_lists_shards_and_uris_and_refuses_a_key_twice(
    images: dict[str, tuple[str, bytes]], memory: MemoryFileSystem, tmp_path: Path
) -> None:
    (tmp_path / "a.tar").write_bytes(shard_bytes(images))
    (tmp_path / "b.tar").write_bytes(shard_bytes(images))
    memory.pipe("/bucket/p/x.jpg", images["000000"][1])
    listed = gather_images([str(tmp_path / "a.tar"), "memory://bucket/p"], recursive=False, globs=())
    assert listed == [*images, "memory://bucket/p/x.jpg"]
    assert all(isinstance(i, SourceItem) for i in listed)
    # The same shard twice is one input; two shards with the same keys are two images: refused.
    again = gather_images([tmp_path / "a.tar", tmp_path / "a.tar"], recursive=False, globs=())
    assert again == list(images)
    with pytest.raises(OutputError, match="names two images"):
        gather_images([tmp_path / "a.tar", tmp_path / "b.tar"], recursive=False, globs=())
    memory.pipe("/bucket/nothing/a.txt", b"")
    with pytest.raises(OutputError, match="no images found in memory://bucket/nothing"):
        gather_images(["memory://bucket/nothing"], recursive=False, globs=())


def test_the_images_command_embeds_a_shard_as_its_folder_and_resumes_it(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    images: dict[str, tuple[str, bytes]],
    tmp_path: Path,
) -> None:
    write_folder(tmp_path / "photos", images)
    (tmp_path / "shard-000000.tar").write_bytes(shard_bytes(dict(list(images.items())[:4])))
    (tmp_path / "shard-000001.tar").write_bytes(shard_bytes(dict(list(images.items())[4:])))

    folder = cli("images", "photos", "--out", "folder.parquet")
    assert folder.rc == 0, folder
    shards = cli("images", "shard-{000000..000001}.tar", "--out", "shards.parquet")
    assert shards.rc == 0, shards
    a, b = pq.read_table(tmp_path / "folder.parquet"), pq.read_table(tmp_path / "shards.parquet")
    key = b.column_names[0]
    assert b.column(key).to_pylist() == list(images)
    by_stem = {
        Path(p).stem: v
        for p, v in zip(a.column(key).to_pylist(), a.column("embedding").to_pylist(), strict=True)
    }
    for k, v in zip(b.column(key).to_pylist(), b.column("embedding").to_pylist(), strict=True):
        np.testing.assert_array_equal(np.asarray(v), np.asarray(by_stem[k]))
    assert b.column("size").to_pylist() == [len(d) for _, d in images.values()]
    assert b.column("mtime_ns").to_pylist() == [MTIME * 1_000_000_000] * N

    # A rerun finds every key done, by key and stamp; a member whose stamp changed is embedded again.
    again = cli("images", "shard-{000000..000001}.tar", "--out", "shards.parquet")
    assert again.rc == 0, again
    assert f"{N} of {N} image(s) already done" in again.err
    changed = dict(list(images.items())[4:])
    changed["000005"] = encoded(99)
    (tmp_path / "shard-000001.tar").write_bytes(shard_bytes(changed))
    third = cli("images", "shard-{000000..000001}.tar", "--out", "shards.parquet")
    assert third.rc == 0, third
    assert "1 changed since" in third.err
    c = pq.read_table(tmp_path / "shards.parquet")
    assert c.column(key).to_pylist() == list(images)
    assert c.column("embedding").to_pylist()[5] != b.column("embedding").to_pylist()[5]


def test_a_key_repeated_later_in_a_shard_is_a_failure_not_a_dropped_image(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    images: dict[str, tuple[str, bytes]],
    tmp_path: Path,
) -> None:
    """`k1.jpg`, `k2.jpg`, `k1.png`: the PNG is not the JPEG's sample (a sample's files are next to
    each other), so it is reported by its member name, in both the stream and plain-tar readings,
    never taken for `k1` again and dropped as a repeat."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        add(tf, "k1.jpg", images["000000"][1])
        add(tf, "k2.jpg", images["000001"][1])
        add(tf, "k1.png", images["000002"][1])
    (tmp_path / "r.tar").write_bytes(buf.getvalue())
    for reread in (False, True):  # members held as read, or read again by offset
        items = list(iter_images(tmp_path / "r.tar", reread=reread))
        assert [i.key for i in items] == ["k1", "k2", "k1.png"]
        with pytest.raises(InvalidInputError, match="repeats the webdataset key 'k1'"):
            items[2].read()
    run = cli("images", "r.tar", "--out", "r.parquet")
    assert run.rc == 3, run
    assert "1 of 3 image(s) could not be embedded" in run.err
    assert "repeats the webdataset key 'k1' of the earlier member k1.jpg" in run.err
    assert "more than once" not in run.err
    assert pq.read_table(tmp_path / "r.parquet").column(0).to_pylist() == ["k1", "k2"]


def test_the_images_command_reports_a_bad_member_by_key(  # type: ignore[no-untyped-def]
    cli,  # noqa: F811
    images: dict[str, tuple[str, bytes]],
    tmp_path: Path,
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        add(tf, "fine.jpg", images["000000"][1])
        add(tf, "smashed.png", b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    run = cli("images", "s.tar", "--out", "s.parquet")
    assert run.rc == 3, run
    assert "1 of 2 image(s) could not be embedded" in run.err
    assert "smashed" in run.err
    assert pq.read_table(tmp_path / "s.parquet").column(0).to_pylist() == ["fine"]
    # On stdout (JSON Lines), the same: the good member's row by its key, the bad one reported.
    to_stdout = cli("images", "s.tar")
    assert to_stdout.rc == 3, to_stdout
    assert [json.loads(line)["path"] for line in to_stdout.out.splitlines()] == ["fine"]
    assert "smashed" in to_stdout.err
