"""Image inputs from the field (issue 9): each test builds the input and asserts the right value.

- Malformed metadata: an EXIF tag stored with the wrong type makes Pillow's ``exif_transpose``
  raise; the client still applies a readable orientation, and ignores metadata it cannot read.
- Any unexpected exception one input raises while being prepared is that input's
  ``ImageDecodeError``, so ``on_error="mark"`` contains it and the other inputs embed.
- One PIL image object used many times in one call, or by concurrent calls, gives the right row
  every time (it used to give false "truncated" errors as threads loaded it at once).
- Plain base64 strings (a Databricks table's ``image_base64`` column) are images, not paths; no
  message echoes more than a short excerpt of an input.
- ``~`` in paths is expanded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clip_reference import processed
from harness import records
from image_factory import encode, exif_bytes, picture, raw_exif
from PIL import Image, ImageOps
from serving_server import ServingServer, expected_vector, image_pixels

from clip_client import AsyncClipClient, ClipClient, ImageDecodeError, InvalidInputError
from clip_client._core.images import ImageOptions, prepare_image

PIXELS = ImageOptions(want="pixels")


def pixels_of(value: object, opts: ImageOptions = PIXELS) -> np.ndarray:
    out = prepare_image(value, 0, opts).pixels
    assert out is not None
    return out


# --------------------------------------------------------------------------------------------------
# Malformed metadata

ORIENTATION_6 = (0x0112, 3, 1, struct.pack("<H", 6))
#: A valid Orientation 6 plus one tag stored with the wrong type, and what Pillow's
#: ``ImageOps.exif_transpose`` raises when it rewrites the block.
WRONG_TYPES: dict[str, tuple[tuple[int, int, int, bytes], type[Exception]]] = {
    "Make as RATIONAL": ((0x010F, 5, 1, struct.pack("<II", 1, 2)), AttributeError),
    "XResolution as ASCII": ((0x011A, 2, 5, b"abcd\x00"), TypeError),
    "ResolutionUnit as two BYTEs": ((0x0128, 1, 2, b"\x01\x02"), struct.error),
    "Exif IFD pointer as SRATIONAL": ((0x8769, 9, 2, b"\xff" * 16), ValueError),
}


@pytest.mark.filterwarnings("ignore:Metadata Warning:UserWarning")
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_a_wrongly_typed_exif_tag_does_not_stop_the_orientation(
    case: str, fmt: str, processor: Any, tmp_path: Path
) -> None:
    tag, pillow_raises = WRONG_TYPES[case]
    stored = Image.fromarray(picture(160, 120, 3, seed=200), "RGB")
    save: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(encode(stored, fmt, exif=raw_exif([ORIENTATION_6, tag]), **save))
    with Image.open(path) as img:
        assert img.getexif().get(0x0112) == 6
        with pytest.raises(pillow_raises):  # the fault is real: Pillow's own transpose fails
            ImageOps.exif_transpose(img)
    with Image.open(path) as img:
        upright = img.transpose(Image.Transpose.ROTATE_270)  # what orientation 6 means
        want = processed(processor, upright)
    assert upright.size == (120, 160)
    np.testing.assert_array_equal(pixels_of(path), want)
    with Image.open(path) as img:  # a caller's PIL image of the same file too
        np.testing.assert_array_equal(pixels_of(img), want)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's "Corrupt EXIF data" and the like
@pytest.mark.parametrize(
    ("case", "entries"),
    [
        ("orientation as ASCII", [(0x0112, 2, 2, b"6\x00")]),
        ("orientation out of range", [(0x0112, 3, 1, struct.pack("<H", 9))]),
        ("IFD claims 65535 entries", None),
        ("orientation pointing past the end", [(0x0112, 3, 1000, struct.pack("<I", 0x7FFFFFF0))]),
    ],
)
def test_unreadable_orientation_leaves_the_stored_pixels(
    case: str, entries: list[tuple[int, int, int, bytes]] | None, processor: Any
) -> None:
    stored = Image.fromarray(picture(150, 110, 3, seed=201), "RGB")
    block = raw_exif(entries) if entries else b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + bytes(10)
    raw = encode(stored, "JPEG", exif=block)
    with Image.open(io.BytesIO(raw)) as img:
        assert img.getexif().get(0x0112) not in (2, 3, 4, 5, 6, 7, 8)
        want = processed(processor, img)
    np.testing.assert_array_equal(pixels_of(raw), want)


def test_orientation_stored_as_a_rational_is_applied_as_pillow_does(processor: Any) -> None:
    stored = Image.fromarray(picture(150, 110, 3, seed=202), "RGB")
    raw = encode(stored, "JPEG", exif=raw_exif([(0x0112, 5, 1, struct.pack("<II", 6, 1))]))
    with Image.open(io.BytesIO(raw)) as img:
        assert img.getexif().get(0x0112) == 6  # an IFDRational equal to 6
        want = processed(processor, ImageOps.exif_transpose(img))
    np.testing.assert_array_equal(pixels_of(raw), want)
    assert want.shape == (224, 224, 3)


def test_metadata_whose_parser_raises_is_ignored(processor: Any) -> None:
    img = Image.open(io.BytesIO(encode(Image.fromarray(picture(90, 70, 3, seed=203)), "PNG")))

    def broken_exif() -> Image.Exif:
        raise struct.error("unpack requires a buffer of 4 bytes")

    img.getexif = broken_exif  # type: ignore[method-assign]
    img.load()
    want = processed(processor, img)
    np.testing.assert_array_equal(pixels_of(img), want)


def test_every_exif_orientation_is_applied_by_the_clients_own_transpose(processor: Any) -> None:
    stored = Image.fromarray(picture(70, 50, 3, seed=204), "RGB")
    results = set()
    for orientation in range(1, 9):
        raw = encode(stored, "PNG", exif=exif_bytes(orientation))
        with Image.open(io.BytesIO(raw)) as img:
            want = processed(processor, ImageOps.exif_transpose(img))
        got = pixels_of(raw)
        np.testing.assert_array_equal(got, want, err_msg=str(orientation))
        results.add(got.tobytes())
    assert len(results) == 8  # eight different pictures: none was skipped


# --------------------------------------------------------------------------------------------------
# Whatever one input raises is that input's ImageDecodeError


class ExplodingPath(os.PathLike[str]):
    """A path-like whose ``__fspath__`` fails with an error no image code expects."""

    def __fspath__(self) -> str:
        raise KeyError("mount table entry vanished")


def _exploding_image() -> Image.Image:
    img = Image.fromarray(picture(50, 40, 3, seed=205), "RGB")

    def load() -> None:
        raise RuntimeError("decoder state corrupted")

    img.load = load  # type: ignore[method-assign,assignment]
    return img


@pytest.mark.parametrize(
    ("make", "cause"),
    [(ExplodingPath, KeyError), (_exploding_image, RuntimeError)],
    ids=["path-like", "PIL image"],
)
def test_an_unexpected_exception_becomes_this_inputs_image_decode_error(
    make: Callable[[], object], cause: type[Exception]
) -> None:
    with pytest.raises(ImageDecodeError) as info:
        prepare_image(make(), 5, ImageOptions())
    assert info.value.index == 5
    assert str(info.value).startswith("input 5: cannot prepare image: unexpected")
    assert cause.__name__ in str(info.value)
    assert isinstance(info.value.__cause__, cause)


def test_on_error_mark_contains_unexpected_failures(client: ClipClient, server: ServingServer) -> None:
    bad_exif = encode(
        Image.fromarray(picture(120, 90, 3, seed=206)),
        "JPEG",
        exif=raw_exif([ORIENTATION_6, WRONG_TYPES["XResolution as ASCII"][0]]),
    )
    good = [picture(100, 80, 3, seed=s) for s in (207, 208)]
    inputs: list[object] = [good[0], ExplodingPath(), bad_exif, _exploding_image(), good[1]]
    result = client.embed_images(inputs, on_error="mark")
    assert [f.index for f in result.failures] == [1, 3]
    for failure in result.failures:
        assert type(failure.error) is ImageDecodeError
        assert failure.error.index == failure.index
        assert failure.error.__cause__ is not None
    assert result.ok.tolist() == [True, False, True, False, True]
    recs = records(server)
    assert len(recs) == 3  # the three good inputs, the malformed-EXIF one among them, rotated
    for row, rec in zip(result.embeddings[result.ok], recs):
        np.testing.assert_array_equal(row, expected_vector("image", base64.b64decode(rec)))
    np.testing.assert_array_equal(image_pixels(recs[1]), pixels_of(bad_exif))  # rotated, not failed
    with pytest.raises(ImageDecodeError) as info:  # and with on_error="raise": typed, with its index
        client.embed_images(inputs)
    assert info.value.index == 1


# --------------------------------------------------------------------------------------------------
# One image object, many uses at once

SHARED_REPEATS = 24


@pytest.fixture(scope="module")
def shared_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("shared")
    photo = Image.fromarray(picture(1200, 900, 3, seed=210), "RGB")
    files = {"jpeg": folder / "photo.jpg", "png": folder / "photo.png", "gif": folder / "palette.gif"}
    photo.save(files["jpeg"], quality=90, exif=exif_bytes(6))
    photo.resize((600, 450)).save(files["png"])
    photo.resize((500, 380)).quantize(64, dither=Image.Dither.NONE).save(files["gif"], transparency=3)
    return files


def _reference_row(server: ServingServer, path: Path) -> np.ndarray:
    """The row for ``path`` from a client of its own, the file read from disk."""
    with ClipClient(**server.client_kwargs()) as c:
        row = c.embed_image(path)
    server.received.clear()
    return row


@pytest.mark.parametrize("kind", ["jpeg", "png", "gif"])
def test_one_lazy_image_many_times_in_one_call(
    kind: str, shared_files: dict[str, Path], client: ClipClient, server: ServingServer
) -> None:
    path = shared_files[kind]
    want = _reference_row(server, path)
    for attempt in range(4):  # each attempt a fresh, not yet loaded image
        img = Image.open(path)
        assert img.tile, "lazily opened: its pixels are not read yet"
        rows = client.embed_images([img] * SHARED_REPEATS)
        assert rows.shape == (SHARED_REPEATS, 768)
        for i, row in enumerate(rows):
            np.testing.assert_array_equal(row, want, err_msg=f"attempt {attempt}, row {i}")
        img.close()


def test_one_lazy_image_shared_by_concurrent_calls(
    shared_files: dict[str, Path], client: ClipClient, server: ServingServer
) -> None:
    want = {kind: _reference_row(server, path) for kind, path in shared_files.items()}
    for _ in range(2):
        shared = {kind: Image.open(path) for kind, path in shared_files.items()}
        order = ["jpeg", "png", "gif", "jpeg", "gif", "png"]
        results: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []
        start = threading.Barrier(len(order))

        def call(i: int, kind: str) -> None:
            try:
                start.wait()
                results[i] = client.embed_images([shared[kind]] * 8 + [shared[order[i - 1]]] * 4)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(i, k)) for i, k in enumerate(order)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for i, kind in enumerate(order):
            for j, row in enumerate(results[i]):
                np.testing.assert_array_equal(row, want[kind if j < 8 else order[i - 1]], err_msg=f"{i}/{j}")


async def test_one_lazy_image_shared_by_async_calls(
    shared_files: dict[str, Path], server: ServingServer
) -> None:
    want = _reference_row(server, shared_files["jpeg"])
    async with AsyncClipClient(**server.client_kwargs()) as c:
        img = Image.open(shared_files["jpeg"])
        rows_a, rows_b = await asyncio.gather(
            c.embed_images([img] * SHARED_REPEATS), c.embed_images([img] * (SHARED_REPEATS // 2))
        )
    for row in [*rows_a, *rows_b]:
        np.testing.assert_array_equal(row, want)


def test_distinct_images_still_prepare_in_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-object lock is per object: two threads preparing two images overlap."""
    import clip_client._core.images as images_mod

    inside = threading.Barrier(2, timeout=10)
    real = images_mod.to_rgb

    def meet_then_convert(img: Image.Image, high_bit_depth: Any = "clip") -> Image.Image:
        inside.wait()  # both threads must be inside their locks at once, or this times out
        return real(img, high_bit_depth)

    monkeypatch.setattr(images_mod, "to_rgb", meet_then_convert)
    imgs = [Image.fromarray(picture(60, 40, 3, seed=s), "RGB") for s in (211, 212)]
    out: list[object] = []
    threads = [threading.Thread(target=lambda im=im: out.append(prepare_image(im, 0, PIXELS))) for im in imgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2
    assert images_mod._locks == {}  # every entry released


# --------------------------------------------------------------------------------------------------
# Plain base64 strings, and short messages


@pytest.fixture(scope="module")
def format_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    rgb = Image.fromarray(picture(180, 130, 3, seed=220), "RGB")
    files: dict[str, Path] = {}
    for fmt, ext, save in [
        ("JPEG", "jpg", {"quality": 90}),
        ("PNG", "png", {}),
        ("GIF", "gif", {}),
        ("WEBP", "webp", {"lossless": True}),
        ("BMP", "bmp", {}),
        ("TIFF", "tif", {}),
        ("JPEG2000", "jp2", {}),
        ("AVIF", "avif", {}),
    ]:
        files[fmt] = folder / f"picture.{ext}"
        rgb.save(files[fmt], fmt, **save)
    files["TIFF big-endian"] = folder / "picture_be.tif"
    grey = Image.fromarray(picture(180, 130, 1, seed=221)[:, :, 0].astype(np.uint16) * 200)
    grey.convert("I").convert("I;16B").save(files["TIFF big-endian"])
    return files


def test_plain_base64_strings_are_images(
    format_files: dict[str, Path], client: ClipClient, server: ServingServer
) -> None:
    names = list(format_files)
    paths = [format_files[n] for n in names]
    b64 = [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]
    assert b64[names.index("JPEG")].startswith("/9j/")  # looks like an absolute path
    from_paths = client.embed_images(paths)
    from_b64 = client.embed_images(b64)
    recs = records(server)
    assert recs[: len(names)] == recs[len(names) :]  # the very same records
    np.testing.assert_array_equal(from_paths, from_b64)


def test_mime_base64_with_line_breaks_and_surrounding_whitespace(format_files: dict[str, Path]) -> None:
    raw = format_files["PNG"].read_bytes()
    mime = base64.encodebytes(raw).decode("ascii")  # 76-character lines
    assert mime.count("\n") > 10
    for text in (mime, "\n  " + mime + "  \r\n", mime.replace("\n", "\r\n")):
        np.testing.assert_array_equal(pixels_of(text), pixels_of(raw))


def test_a_pandas_series_of_base64_strings(
    format_files: dict[str, Path], client: ClipClient, server: ServingServer
) -> None:
    pd = pytest.importorskip("pandas")
    raws = [format_files[n].read_bytes() for n in ("JPEG", "PNG", "WEBP")]
    df = pd.DataFrame({"image_base64": [base64.b64encode(r).decode() for r in raws]}, index=[10, 20, 30])
    rows = client.embed_images(df["image_base64"])
    np.testing.assert_array_equal(rows, client.embed_images(raws))


def test_a_file_named_like_base64_is_read_as_a_file(
    format_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = base64.b64encode(format_files["PNG"].read_bytes()).decode()
    name = png[:16]  # "iVBORw0KGgoAAAAN": the base64 of a PNG's first 12 bytes
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(format_files["JPEG"].read_bytes())
    np.testing.assert_array_equal(pixels_of(name), pixels_of(format_files["JPEG"]))  # the file wins
    (tmp_path / name).unlink()
    with pytest.raises(ImageDecodeError, match="not a recognised image format") as info:
        prepare_image(name, 0, PIXELS)  # no such file: decoded as base64, a PNG signature and no more
    assert info.value.path is None


def test_a_long_string_that_is_neither_gives_a_short_clear_message() -> None:
    text = "x" * 247_112
    with pytest.raises(InvalidInputError) as info:
        prepare_image(text, 4, ImageOptions())
    message = str(info.value)
    assert len(message) < 300
    assert "not an existing file" in message
    assert "not base64 of an image either" in message
    assert "247,112 characters" in message
    assert info.value.path == text  # the attribute keeps it all
    assert info.value.index == 4


def test_truncated_base64_of_an_image_says_so(format_files: dict[str, Path]) -> None:
    b64 = base64.b64encode(format_files["JPEG"].read_bytes()).decode()
    with pytest.raises(InvalidInputError) as info:
        prepare_image(b64[:-3], 0, ImageOptions())
    message = str(info.value)
    assert "JPEG's base64" in message
    assert "no such file" in message
    assert len(message) < 400
    assert b64[100:140] not in message  # an excerpt only


def test_base64_of_something_that_is_not_an_image_is_a_path() -> None:
    text = base64.b64encode(b"just some text, not an image at all").decode()
    with pytest.raises(InvalidInputError, match="no such file") as info:
        prepare_image(text, 0, ImageOptions())
    assert info.value.path == text


@pytest.mark.parametrize("length", [0, 1, 119, 120, 121, 5000])
def test_messages_quote_at_most_an_excerpt_of_a_path(length: int) -> None:
    path = "".join(chr(ord("a") + i % 26) for i in range(length))
    exc = InvalidInputError("something is wrong", index=2, path=path)
    assert exc.path == path
    if length <= InvalidInputError.PATH_SHOWN:
        assert repr(path) in str(exc)
    else:
        assert path not in str(exc)
        assert path[:60] in str(exc)
        assert path[-20:] in str(exc)
        assert f"({length:,} characters)" in str(exc)
        assert len(str(exc)) < 160


# --------------------------------------------------------------------------------------------------
# ~ in paths


def test_tilde_is_expanded(
    format_files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(format_files["PNG"].read_bytes())
    want = pixels_of(format_files["PNG"])
    np.testing.assert_array_equal(pixels_of("~/photos/a.png"), want)
    np.testing.assert_array_equal(pixels_of(Path("~/photos/a.png")), want)
    for missing in ("~/photos/nope.png", Path("~/photos/nope.png")):
        with pytest.raises(InvalidInputError, match="no such file") as info:
            prepare_image(missing, 1, ImageOptions())
        assert info.value.path == "~/photos/nope.png"  # as the caller gave it
        assert str(tmp_path / "photos" / "nope.png") in str(info.value)  # and what it expanded to
    with pytest.raises(InvalidInputError, match="directory") as info:
        prepare_image("~/photos", 1, ImageOptions())
    assert info.value.path == "~/photos"


def test_tilde_through_the_client(
    format_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    client: ClipClient,
    server: ServingServer,
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "b.jpg").write_bytes(format_files["JPEG"].read_bytes())
    rows = client.embed_images(["~/b.jpg", format_files["JPEG"]])
    np.testing.assert_array_equal(rows[0], rows[1])
    assert len(set(records(server))) == 1
