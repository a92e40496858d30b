"""Images, end to end: the pixels the server receives are exactly what transformers' CLIP image
processor would compute from the original file, for every kind of image and every kind of input.

The client sends a 224x224 crop instead of the file; that is only sound if the crop is the very
input the served model would have computed itself. Each test here runs the real client against the
real loopback server (``tests/serving_server.py``), decodes what arrived, and compares it bit for bit
with ``CLIPImageProcessor`` (rescale and normalise off, so it returns the resized and cropped RGB
pixels) run on the original file.
"""

from __future__ import annotations

import base64
import io
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bad_inputs import BAD_IMAGES
from clip_reference import processed
from harness import close_and_drain_sync, records
from image_factory import (
    KINDS,
    encode,
    exif_bytes,
    flat_with_noisy_rows,
    picture,
    screenshot,
    write_images,
)
from PIL import Image, ImageOps
from serving_server import ServingServer, expected_vector, image_pixels

import clip_client._core.images as images_mod
from clip_client import AsyncClipClient, ClipClient, ImageDecodeError, InvalidInputError
from clip_client._core.images import ImageOptions, clip_resize_crop, prepare_image, to_rgb
from clip_client._core.png import png_rgb

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
EXIF_KINDS = {"exif6_jpeg", "exif3_jpeg", "exif8_jpeg", "exact224_exif6_jpeg"}
ALL_KINDS = list(KINDS)

#: The ``client`` fixture's client does not retry: each test sees exactly the requests it caused.
pytestmark = pytest.mark.client(max_retries=0)


# --------------------------------------------------------------------------------------------------
# Fixtures and the reference


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every kind of image file, written once per session."""
    return write_images(tmp_path_factory.mktemp("images"))


def reference(processor: Any, name: str, path: Path) -> np.ndarray:
    """What the served model computes from the original file of kind ``name``.

    EXIF orientation is applied first, as the client does and the processor does not. Every mode,
    16-bit grey included, is the processor's own conversion: the client's contract.
    """
    with Image.open(path) as img:
        if name in EXIF_KINDS:
            return processed(processor, ImageOps.exif_transpose(img))
        return processed(processor, img)


@pytest.fixture(scope="session")
def references(images: dict[str, Path], processor: Any) -> dict[str, np.ndarray]:
    return {name: reference(processor, name, path) for name, path in images.items()}


def decoded(record: str) -> bytes:
    return base64.b64decode(record)


def assert_rows_match_records(rows: np.ndarray, recs: list[str]) -> None:
    """Row i is the server's answer for record i (the answers are a pure function of the bytes)."""
    assert rows.shape == (len(recs), 768)
    for i, rec in enumerate(recs):
        np.testing.assert_array_equal(rows[i], expected_vector("image", decoded(rec)), err_msg=f"row {i}")


# --------------------------------------------------------------------------------------------------
# The key proof: server pixels == CLIPImageProcessor(original file), for every kind


@pytest.mark.parametrize("name", ALL_KINDS)
def test_server_receives_processor_pixels(
    name: str,
    images: dict[str, Path],
    references: dict[str, np.ndarray],
    client: ClipClient,
    server: ServingServer,
) -> None:
    row = client.embed_image(images[name])
    [rec] = records(server)
    got = image_pixels(rec)
    assert got.shape == (224, 224, 3)
    assert np.array_equal(got, references[name]), (
        f"{name}: {int((got != references[name]).any(axis=2).sum())} pixels differ from the processor"
    )
    np.testing.assert_array_equal(row, expected_vector("image", decoded(rec)))


def test_all_kinds_in_one_call_come_back_in_input_order(
    images: dict[str, Path], references: dict[str, np.ndarray], client: ClipClient, server: ServingServer
) -> None:
    paths = [images[n] for n in ALL_KINDS]
    rows = client.embed_images(paths)
    recs = records(server)
    assert len(ALL_KINDS) <= 32  # fewer than batch_size: one request, records in input order
    assert len(server.received) == 1
    assert len(recs) == len(ALL_KINDS)
    for name, rec in zip(ALL_KINDS, recs):
        assert np.array_equal(image_pixels(rec), references[name]), name
    assert_rows_match_records(rows, recs)


def test_order_survives_many_concurrent_batches(
    images: dict[str, Path], references: dict[str, np.ndarray], server: ServingServer
) -> None:
    """Small batches in flight at once may arrive in any order; the rows must not."""
    names = ALL_KINDS + ALL_KINDS[::-1]
    with ClipClient(host=server.url, token="t", batch_size=3, max_concurrency=4, max_retries=0) as c:
        rows = c.embed_images([images[n] for n in names])
    assert len(server.received) == -(-len(names) // 3)
    # Each input's row must be the answer for the record holding that input's pixels.
    by_pixels = {image_pixels(r).tobytes(): r for r in records(server)}
    assert len(by_pixels) == len(ALL_KINDS)  # every kind is a distinct picture
    for i, name in enumerate(names):
        rec = by_pixels[references[name].tobytes()]
        np.testing.assert_array_equal(rows[i], expected_vector("image", decoded(rec)), err_msg=name)


ASYNC_KINDS = [
    "rgba_png",
    "palette_gif",
    "cmyk_jpeg",
    "gray16_png",
    "exif8_jpeg",
    "tiny_1x1_png",
    "exact224_png",
]


async def test_async_client_sends_the_same_pixels(
    images: dict[str, Path], references: dict[str, np.ndarray], server: ServingServer
) -> None:
    async with AsyncClipClient(host=server.url, token="t", batch_size=2, max_retries=0) as c:
        rows = await c.embed_images([images[n] for n in ASYNC_KINDS])
        one = await c.embed_image(str(images["large_jpeg"]))
    recs = records(server)
    assert len(recs) == len(ASYNC_KINDS) + 1
    by_pixels = {image_pixels(r).tobytes(): r for r in recs}
    for i, name in enumerate(ASYNC_KINDS):
        rec = by_pixels[references[name].tobytes()]
        np.testing.assert_array_equal(rows[i], expected_vector("image", decoded(rec)), err_msg=name)
    rec = by_pixels[references["large_jpeg"].tobytes()]
    np.testing.assert_array_equal(one, expected_vector("image", decoded(rec)))


def test_sixteen_bit_is_clipped_like_the_processor(images: dict[str, Path]) -> None:
    """The 16-bit reference above is Pillow's conversion, which clips at 255 (so this full-range
    gradient turns mostly white): check the client against numpy and Pillow, and that scaling (the
    opt-in) gives the mid-grey picture instead."""
    with Image.open(images["gray16_png"]) as img:
        assert img.mode.startswith("I;16")
        wide = np.asarray(img).astype(np.int64)
        assert wide.min() == 0
        assert wide.max() == 65535
        rgb = np.asarray(to_rgb(img))
        plain = np.asarray(img.convert("RGB"))
        scaled = np.asarray(to_rgb(img, "scale"))
    for channel in range(3):
        assert np.array_equal(rgb[:, :, channel], np.minimum(wide, 255))
        assert np.array_equal(scaled[:, :, channel], np.rint(wide * 255 / 65535).astype(np.uint8))
    assert np.array_equal(rgb, plain)  # exactly Pillow's conversion, as the processor's
    assert (rgb == 255).mean() > 0.9  # what the served model sees of such a file
    assert rgb.min() == 0
    assert rgb.max() == 255
    assert 100 < scaled.mean() < 155


# --------------------------------------------------------------------------------------------------
# Pass-through, wire format and size


def test_exact_size_png_and_jpeg_files_are_sent_byte_for_byte(
    images: dict[str, Path], client: ClipClient, server: ServingServer
) -> None:
    client.embed_images([images["exact224_png"], images["exact224_jpeg"]])
    recs = records(server)
    assert decoded(recs[0]) == images["exact224_png"].read_bytes()
    assert decoded(recs[1]) == images["exact224_jpeg"].read_bytes()


def test_exact_size_images_that_need_work_are_not_passed_through(
    images: dict[str, Path],
    references: dict[str, np.ndarray],
    client: ClipClient,
    server: ServingServer,
    tmp_path: Path,
) -> None:
    rgba = tmp_path / "rgba224.png"
    arr = picture(224, 224, 4, seed=40)
    Image.fromarray(arr, "RGBA").save(rgba)
    gray = tmp_path / "gray224.png"
    Image.fromarray(arr[:, :, 0], "L").save(gray)
    exif = images["exact224_exif6_jpeg"]
    client.embed_images([exif, rgba, gray])
    recs = records(server)
    for rec, path in zip(recs, [exif, rgba, gray]):
        assert decoded(rec) != path.read_bytes()
        assert decoded(rec).startswith(PNG_MAGIC)
    # The rotated one is rotated: it is not the stored pixels, it is the processor's on the
    # transposed image.
    with Image.open(exif) as img:
        stored = np.asarray(img.convert("RGB"))
    assert not np.array_equal(image_pixels(recs[0]), stored)
    assert np.array_equal(image_pixels(recs[0]), references["exact224_exif6_jpeg"])
    assert np.array_equal(image_pixels(recs[0]), np.rot90(stored, k=-1))  # orientation 6: 90° clockwise


def test_records_are_png_by_default(
    images: dict[str, Path], client: ClipClient, server: ServingServer
) -> None:
    client.embed_images([images[n] for n in ("rgb_jpeg", "cmyk_jpeg", "rgba_png", "large_jpeg")])
    for rec in records(server):
        assert decoded(rec).startswith(PNG_MAGIC)


def test_records_are_jpeg_when_asked(
    images: dict[str, Path], references: dict[str, np.ndarray], server: ServingServer
) -> None:
    names = ["rgb_jpeg", "rgba_png", "gray16_png", "large_jpeg"]
    with ClipClient(host=server.url, token="t", image_format="jpeg", max_retries=0) as c:
        c.embed_images([images[n] for n in names])
    for name, rec in zip(names, records(server)):
        raw = decoded(rec)
        assert raw.startswith(JPEG_MAGIC), name
        with Image.open(io.BytesIO(raw)) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (224, 224))
        # Lossy, so only close to the exact pixels (a wrong crop or orientation is off by tens).
        diff = np.abs(image_pixels(rec).astype(int) - references[name].astype(int))
        assert diff.mean() < 8, (name, diff.mean())


def test_records_are_lossless_bmp_when_asked(
    images: dict[str, Path], references: dict[str, np.ndarray], server: ServingServer
) -> None:
    names = ["rgb_jpeg", "rgba_png", "gray16_png", "exif6_jpeg", "large_jpeg"]
    with ClipClient(host=server.url, token="t", image_format="bmp", max_retries=0) as c:
        c.embed_images([images[n] for n in names])
    for name, rec in zip(names, records(server)):
        raw = decoded(rec)
        assert raw.startswith(b"BM"), name
        with Image.open(io.BytesIO(raw)) as img:
            assert (img.format, img.mode, img.size) == ("BMP", "RGB", (224, 224))
        # Lossless: exactly the pixels the processor computes from the original file.
        np.testing.assert_array_equal(image_pixels(rec), references[name], err_msg=name)


def test_bytes_sent_are_a_small_fraction_of_the_original(
    images: dict[str, Path], client: ClipClient, server: ServingServer
) -> None:
    original = images["large_jpeg"].read_bytes()
    client.embed_image(images["large_jpeg"])
    [received] = server.received
    assert received.nbytes * 10 < len(base64.b64encode(original))


# --------------------------------------------------------------------------------------------------
# Every accepted input type gives the same record for the same picture


def _embed_each(client: ClipClient, server: ServingServer, inputs: dict[str, object]) -> dict[str, str]:
    rows = client.embed_images(list(inputs.values()))
    recs = records(server)
    assert_rows_match_records(rows, recs)
    return dict(zip(inputs, recs))


def test_every_input_type_gives_the_same_record(
    images: dict[str, Path], references: dict[str, np.ndarray], client: ClipClient, server: ServingServer
) -> None:
    path = images["rgb_png"]
    raw = path.read_bytes()
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    inputs: dict[str, object] = {
        "str": str(path),
        "Path": path,
        "bytes": raw,
        "bytearray": bytearray(raw),
        "memoryview": memoryview(raw),
        "data URI": "data:image/png;base64," + base64.b64encode(raw).decode(),
        "PIL": pil,
        "HxWx3": arr,
        "HxWx3 view": np.flipud(np.flipud(arr)),  # a non-contiguous view of the same pixels
    }
    got = _embed_each(client, server, inputs)
    first = got["str"]
    assert np.array_equal(image_pixels(first), references["rgb_png"])
    for kind, rec in got.items():
        assert rec == first, kind


def test_grey_arrays_match_the_grey_file(
    images: dict[str, Path], references: dict[str, np.ndarray], client: ClipClient, server: ServingServer
) -> None:
    path = images["gray8_png"]
    arr = np.asarray(Image.open(path))
    assert arr.ndim == 2
    got = _embed_each(
        client, server, {"path": path, "PIL": Image.open(path), "HxW": arr, "HxWx1": arr[:, :, None]}
    )
    assert np.array_equal(image_pixels(got["path"]), references["gray8_png"])
    assert len(set(got.values())) == 1, got.keys()


def test_rgba_array_is_composited_onto_white_like_the_file(
    images: dict[str, Path], references: dict[str, np.ndarray], client: ClipClient, server: ServingServer
) -> None:
    path = images["rgba_png"]
    arr = np.asarray(Image.open(path))
    assert arr.shape[2] == 4
    assert arr[:, :, 3].min() == 0
    assert 0 < arr[:, :, 3].mean() < 255
    got = _embed_each(client, server, {"path": path, "PIL": Image.open(path), "HxWx4": arr})
    assert len(set(got.values())) == 1
    pixels = image_pixels(got["HxWx4"])
    assert np.array_equal(pixels, references["rgba_png"])
    # The fully transparent band (source x < 60, x < 11 after the resize and crop) is white.
    assert (pixels[:, :8] == 255).all()


def test_a_4d_stack_is_a_list_of_images(client: ClipClient, server: ServingServer) -> None:
    stack = np.stack([picture(180, 120, 3, seed=s) for s in (50, 51, 52)])
    assert stack.shape == (3, 120, 180, 3)
    rows = client.embed_images(stack)
    from_stack = records(server)
    server.received.clear()
    rows_list = client.embed_images([stack[0], stack[1], stack[2]])
    assert records(server) == from_stack
    assert len(set(from_stack)) == 3
    np.testing.assert_array_equal(rows, rows_list)
    assert_rows_match_records(rows, from_stack)


# --------------------------------------------------------------------------------------------------
# Bad inputs: the right error, naming the input, and no request for its batch


def _check_error(
    exc: InvalidInputError, cls: type[Exception], words: str, index: int | None, path: object
) -> None:
    assert type(exc) is cls, f"{type(exc).__name__}: {exc}"
    assert exc.index == index
    assert words.lower() in str(exc).lower()
    if isinstance(path, (str, Path)):
        assert exc.path == str(path)
        assert repr(str(path)) in str(exc)
    else:
        assert exc.path is None
    if index is not None:
        assert str(exc).startswith(f"input {index}")


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_input_alone(case: str, tmp_path: Path, client: ClipClient, server: ServingServer) -> None:
    bad = BAD_IMAGES[case]
    cls, words, is_path = bad.error, bad.says, bad.is_path
    value = bad.make(tmp_path)
    with pytest.raises(cls) as info:
        client.embed_images([value])
    _check_error(info.value, cls, words, 0, value if is_path else None)
    assert server.requests == []
    assert server.received == []


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_input_among_good_ones_names_its_index(
    case: str, tmp_path: Path, images: dict[str, Path], client: ClipClient, server: ServingServer
) -> None:
    bad = BAD_IMAGES[case]
    cls, words, is_path = bad.error, bad.says, bad.is_path
    value = bad.make(tmp_path)
    with pytest.raises(cls) as info:
        client.embed_images([images["rgb_png"], images["rgb_jpeg"], value, images["gray8_png"]])
    _check_error(info.value, cls, words, 2, value if is_path else None)
    assert server.requests == []  # all four share one batch, and it was never sent


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_input_to_embed_image_has_no_index(
    case: str, tmp_path: Path, client: ClipClient, server: ServingServer
) -> None:
    bad = BAD_IMAGES[case]
    cls, words, is_path = bad.error, bad.says, bad.is_path
    value = bad.make(tmp_path)
    with pytest.raises(cls) as info:
        client.embed_image(value)  # type: ignore[arg-type]
    _check_error(info.value, cls, words, None, value if is_path else None)
    assert server.requests == []


@pytest.mark.parametrize("case", ["missing file", "NaN-filled float array", "truncated JPEG", "None"])
async def test_bad_input_async(
    case: str, tmp_path: Path, images: dict[str, Path], server: ServingServer
) -> None:
    bad = BAD_IMAGES[case]
    cls, words, is_path = bad.error, bad.says, bad.is_path
    value = bad.make(tmp_path)
    async with AsyncClipClient(host=server.url, token="t", max_retries=0) as c:
        with pytest.raises(cls) as info:
            await c.embed_images([images["rgb_png"], value])
        _check_error(info.value, cls, words, 1, value if is_path else None)
        with pytest.raises(cls) as info:
            await c.embed_image(value)  # type: ignore[arg-type]
        _check_error(info.value, cls, words, None, value if is_path else None)
    assert server.requests == []


def test_over_max_image_pixels(images: dict[str, Path], server: ServingServer) -> None:
    with ClipClient(host=server.url, token="t", max_image_pixels=100_000, max_retries=0) as c:
        with pytest.raises(ImageDecodeError) as info:
            c.embed_images([images["rgb_jpeg"]])  # 640x480 = 307,200 pixels
        _check_error(info.value, ImageDecodeError, "max_image_pixels=100,000", 0, images["rgb_jpeg"])
        assert "640x480" in str(info.value)
        with pytest.raises(ImageDecodeError) as info:
            c.embed_image(picture(400, 300))
        assert info.value.index is None
        assert "max_image_pixels" in str(info.value)
        c.embed_image(images["rgb_png"])  # 300x200 = 60,000: fine
    assert len(server.received) == 1


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` bilevel pixels and holds one row of them: enough
    for its header to open, cheap however large it claims to be."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" + bytes((width + 7) // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def test_pillows_own_limit_does_not_second_guess_max_image_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's ``max_image_pixels`` is the one limit: an image over Pillow's own
    (``PIL.Image.MAX_IMAGE_PIXELS``, refused by ``Image.open`` above twice it) but under the
    client's is prepared, and Pillow's process-wide global is never changed."""
    # Over twice Pillow's default limit (2 x 89,478,485): only the header is read when the endpoint
    # prepares images, so 400 million pixels cost nothing here.
    default = Image.MAX_IMAGE_PIXELS
    assert default is not None
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(20_000, 20_000))
    server_side = ImageOptions(max_pixels=10**9, preparation="server")
    assert prepare_image(str(huge), 0, server_side).encoded == huge.read_bytes()
    assert Image.MAX_IMAGE_PIXELS == default
    with pytest.raises(ImageDecodeError) as info:
        prepare_image(str(huge), 3, ImageOptions(preparation="server"))  # the client's default limit
    assert info.value.setting == "max_image_pixels"
    assert info.value.suggestion == 400_000_000
    assert info.value.index == 3
    assert info.value.path == str(huge)
    assert "decompression bomb" in str(info.value)
    assert "max_image_pixels=178,956,970" in str(info.value)

    # Decoded in full, with Pillow's limit lowered below the image (as a caller of Pillow may):
    # the pixels are prepared exactly as with Pillow's limit out of the way.
    pixels = picture(64, 48, seed=1)  # 3,072 pixels
    path = tmp_path / "p.png"
    Image.fromarray(pixels).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    want = prepare_image(str(path), 0, ImageOptions(want="pixels")).pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above 2,000 pixels
    got = prepare_image(str(path), 0, ImageOptions(want="pixels", max_pixels=5000)).pixels
    assert got is not None
    assert want is not None
    np.testing.assert_array_equal(got, want)
    assert Image.MAX_IMAGE_PIXELS == 1000  # unchanged

    with pytest.raises(ImageDecodeError) as info:
        prepare_image(str(path), 0, ImageOptions(max_pixels=2000))
    error = info.value
    assert error.setting == "max_image_pixels"
    assert error.suggestion == 3100  # the image's 3,072 pixels, rounded up
    assert error.path == str(path)
    assert "64x48" in str(error)
    assert "raise max_image_pixels if it is genuine (e.g. max_image_pixels=3100)" in str(error)
    # The fields cross process boundaries (Spark workers) with the error.
    back = pickle.loads(pickle.dumps(error))
    assert (back.setting, back.suggestion, back.advice(), str(back)) == (
        error.setting,
        error.suggestion,
        error.advice(),
        str(error),
    )


def test_bad_batch_after_good_batches_sends_only_the_good_ones(
    images: dict[str, Path], tmp_path: Path, server: ServingServer
) -> None:
    """The error names the bad input even when earlier batches were already sent."""
    good = [images["rgb_png"]] * 4
    c = ClipClient(host=server.url, token="t", batch_size=2, max_concurrency=1, max_retries=0)
    try:
        with pytest.raises(InvalidInputError) as info:
            c.embed_images([*good, tmp_path / "missing.png", images["rgb_png"]])
    finally:
        close_and_drain_sync(c)  # a batch still on the wire must not reach the next test
    assert info.value.index == 4
    assert all(len(r.inputs) == 2 for r in server.received)
    assert len(server.inputs()) <= 4  # the batch holding input 4 never went out


@pytest.mark.parametrize(
    "single",
    ["str", "Path", "bytes", "bytearray", "memoryview", "PIL", "HxWx3", "HxW"],
)
def test_embed_images_refuses_a_single_image(
    single: str, images: dict[str, Path], client: ClipClient, server: ServingServer
) -> None:
    path = images["rgb_png"]
    value: object = {
        "str": str(path),
        "Path": path,
        "bytes": path.read_bytes(),
        "bytearray": bytearray(path.read_bytes()),
        "memoryview": memoryview(path.read_bytes()),
        "PIL": Image.open(path),
        "HxWx3": picture(20, 10),
        "HxW": picture(20, 10)[:, :, 0],
    }[single]
    with pytest.raises(TypeError, match=r"embed_image\(") as info:
        client.embed_images(value)  # type: ignore[arg-type]
    assert "list" in str(info.value)
    assert server.requests == []


async def test_async_embed_images_refuses_a_single_image(
    images: dict[str, Path], server: ServingServer
) -> None:
    async with AsyncClipClient(host=server.url, token="t") as c:
        with pytest.raises(TypeError, match=r"embed_image\("):
            await c.embed_images(str(images["rgb_png"]))  # type: ignore[arg-type]
    assert server.requests == []


# --------------------------------------------------------------------------------------------------
# Unit tests of clip_client._core.images


def _sizes() -> list[tuple[int, int]]:
    """40 (w, h) pairs: random ones (odd and even, up- and downscaled), 1-pixel edges, and the
    boundaries around the target size."""
    rng = np.random.default_rng(1234)
    sizes = [(int(w), int(h)) for w, h in rng.integers(2, 900, size=(24, 2))]
    sizes += [(1, 1), (1, 57), (57, 1), (1, 224), (224, 1), (2, 3), (3, 2)]
    sizes += [(224, 224), (225, 224), (224, 225), (223, 224), (448, 224), (224, 449), (671, 673), (1001, 299)]
    sizes += [(int(rng.integers(1000, 1600)), int(rng.integers(7, 40)))]
    assert len(sizes) == 40
    return sizes


@pytest.mark.parametrize("wh", _sizes(), ids=lambda wh: f"{wh[0]}x{wh[1]}")
def test_clip_resize_crop_equals_the_processor(wh: tuple[int, int], processor: Any) -> None:
    width, height = wh
    img = Image.fromarray(picture(width, height, 3, seed=width * 7 + height), "RGB")
    out = clip_resize_crop(img, 224)
    assert out.size == (224, 224)
    assert np.array_equal(np.asarray(out), processed(processor, img))


@pytest.mark.parametrize("size", [32, 64, 97])
def test_clip_resize_crop_other_sizes(size: int, processor: Any) -> None:
    for width, height in [(300, 200), (201, 333), (size, size), (size + 1, size), (5, 80)]:
        img = Image.fromarray(picture(width, height, 3, seed=size + width), "RGB")
        out = clip_resize_crop(img, size)
        assert out.size == (size, size)
        assert np.array_equal(np.asarray(out), processed(processor, img, size)), (width, height)


@pytest.mark.parametrize("wh", [(3000, 20), (20, 3000), (5000, 37), (37, 5000), (640, 480), (203, 301)])
def test_region_only_resize_matches_the_full_one(
    wh: tuple[int, int], processor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Extreme aspect ratios resample only the cropped region. Forced on for ordinary shapes, it
    must agree with the processor to one level in a handful of pixels, whichever way the image lies."""
    monkeypatch.setattr(images_mod, "_MAX_INTERMEDIATE_PIXELS", 0)
    width, height = wh
    img = Image.fromarray(picture(width, height, 3, seed=width + height), "RGB")
    out = np.asarray(clip_resize_crop(img, 224)).astype(int)
    diff = np.abs(out - processed(processor, img).astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.001


def test_extreme_aspect_ratio_is_prepared_without_a_huge_intermediate() -> None:
    # A full resize would be 2,986,666 x 224 pixels (2 GB); the region-only path makes 224 x 224.
    arr = picture(40000, 3, 3, seed=60)
    prepared = prepare_image(arr, 0, ImageOptions(want="pixels"))
    assert prepared.pixels is not None
    assert prepared.pixels.shape == (224, 224, 3)
    # The crop is the middle of the strip: 3 source pixels wide around x = 20000.
    middle = arr[:, 19998:20002].reshape(-1, 3).astype(float).mean(axis=0)
    assert np.abs(prepared.pixels.reshape(-1, 3).mean(axis=0) - middle).max() < 20


def _mode_image(mode: str) -> Image.Image:
    rgba = picture(37, 23, 4, seed=70)
    base = Image.fromarray(rgba, "RGBA")
    if mode in ("RGBA", "RGB", "L", "LA", "CMYK", "YCbCr", "1", "HSV", "RGBX"):
        return base.convert(mode) if mode != "RGBA" else base
    if mode == "La":
        return base.convert("LA").convert("La")
    if mode == "RGBa":
        return base.convert("RGBa")
    if mode == "P":
        return base.convert("RGB").quantize(32)
    if mode == "P+transparency":
        img = base.convert("RGB").quantize(32)
        img.info["transparency"] = 3
        return img
    if mode == "PA":
        return base.convert("PA")
    if mode == "L+transparency":
        img = base.convert("L")
        img.info["transparency"] = int(np.asarray(img)[0, 0])
        return img
    if mode == "RGB+transparency":
        img = base.convert("RGB")
        img.info["transparency"] = tuple(int(v) for v in np.asarray(img)[0, 0])
        return img
    raise AssertionError(mode)


EIGHT_BIT_MODES = [
    "RGB",
    "RGBA",
    "RGBa",
    "RGBX",
    "L",
    "LA",
    "1",
    "P",
    "P+transparency",
    "PA",
    "CMYK",
    "YCbCr",
    "HSV",
    "L+transparency",
    "RGB+transparency",
]


@pytest.mark.parametrize("mode", EIGHT_BIT_MODES)
def test_to_rgb_matches_transformers_convert_to_rgb(mode: str) -> None:
    pytest.importorskip("transformers")
    from transformers.image_transforms import convert_to_rgb

    img = _mode_image(mode)
    out = to_rgb(img)
    assert out.mode == "RGB"
    assert out.size == img.size
    want = np.asarray(convert_to_rgb(img, return_numpy=True))
    assert np.array_equal(np.asarray(out), want)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P+transparency", "L+transparency", "RGB+transparency"])
def test_to_rgb_puts_transparency_on_white(mode: str) -> None:
    img = _mode_image(mode)
    alpha = np.asarray(img.convert("RGBA"))[:, :, 3]
    assert (alpha == 0).any()
    out = np.asarray(to_rgb(img))
    assert (out[alpha == 0] == 255).all()


def test_a_mode_pillow_cannot_convert_is_an_image_decode_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pillow 13 converts every mode it decodes (La goes through LA); a mode it cannot convert must
    # still fail as this input's ImageDecodeError, with Pillow's reason and the ValueError chained.
    def refuse(img: Image.Image, high_bit_depth: str = "clip") -> Image.Image:
        raise ValueError(f"conversion from {img.mode} to RGB not supported")

    monkeypatch.setattr(images_mod, "to_rgb", refuse)
    with pytest.raises(ImageDecodeError, match="cannot convert image mode 'RGBA'") as info:
        prepare_image(_mode_image("RGBA"), 3, ImageOptions())
    assert info.value.index == 3
    assert "not supported" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_premultiplied_grey_alpha_is_composited_onto_white(processor: Any) -> None:
    """The processor raises on La (Pillow has no conversion from it); the client composites the
    premultiplied values onto white exactly: L + (255 - a)."""
    img = _mode_image("La")
    with pytest.raises(ValueError, match="La"):
        processed(processor, img)
    grey, alpha = (np.asarray(img)[:, :, i].astype(int) for i in (0, 1))
    assert (alpha == 0).any()
    assert ((alpha > 0) & (alpha < 255)).any()
    on_white = np.clip(grey + 255 - alpha, 0, 255).astype(np.uint8)
    out = np.asarray(to_rgb(img))
    for channel in range(3):
        assert np.array_equal(out[:, :, channel], on_white)
    assert (out[alpha == 0] == 255).all()
    got = prepare_image(img, 0, ImageOptions(want="pixels")).pixels
    assert np.array_equal(got, processed(processor, Image.fromarray(on_white, "L")))


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_to_rgb_clips_sixteen_bit_by_default(mode: str) -> None:
    wide = np.linspace(0, 65535, 16 * 9).round().astype(np.uint16).reshape(9, 16)
    img = Image.fromarray(wide) if mode == "I;16" else Image.fromarray(wide.astype(np.int32))
    assert img.mode == mode
    out = np.asarray(to_rgb(img))
    assert out.shape == (9, 16, 3)
    for channel in range(3):
        assert np.array_equal(out[:, :, channel], np.minimum(wide, 255))
    assert np.array_equal(out, np.asarray(img.convert("RGB")))


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_to_rgb_scales_sixteen_bit_when_asked(mode: str) -> None:
    wide = np.linspace(0, 65535, 16 * 9).round().astype(np.uint16).reshape(9, 16)
    img = Image.fromarray(wide) if mode == "I;16" else Image.fromarray(wide.astype(np.int32))
    assert img.mode == mode
    out = np.asarray(to_rgb(img, "scale"))
    want = np.rint(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert out.shape == (9, 16, 3)
    for channel in range(3):
        assert np.array_equal(out[:, :, channel], want)
    # And through prepare_image, with the option on ImageOptions.
    pixels = prepare_image(img, 0, ImageOptions(want="pixels", high_bit_depth="scale")).pixels
    grey = Image.fromarray(want, "L").convert("RGB")
    assert np.array_equal(pixels, np.asarray(clip_resize_crop(grey, 224)))


def test_to_rgb_float_is_truncated_and_clipped_like_pillow() -> None:
    values = np.array([[-3.0, 0.4, 0.6, 127.5, 254.6, 300.0]], dtype=np.float32)
    out = np.asarray(to_rgb(Image.fromarray(values)))
    assert out[0, :, 0].tolist() == [0, 0, 0, 127, 254, 255]


def test_prepare_image_applies_each_exif_orientation(tmp_path: Path) -> None:
    arr = picture(60, 40, 3, seed=80)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.png"
        Image.fromarray(arr, "RGB").save(path, exif=exif_bytes(orientation))
        with Image.open(path) as img:
            want = np.asarray(clip_resize_crop(ImageOps.exif_transpose(img).convert("RGB"), 224))
        got = prepare_image(path, 0, ImageOptions(want="pixels")).pixels
        assert np.array_equal(got, want), orientation
    # Orientations 5 to 8 swap width and height; the result must reflect that.
    six = prepare_image(tmp_path / "o6.png", 0, ImageOptions(want="pixels")).pixels
    one = prepare_image(tmp_path / "o1.png", 0, ImageOptions(want="pixels")).pixels
    assert not np.array_equal(six, one)


def test_prepare_image_leaves_the_callers_pil_image_open_and_unchanged() -> None:
    img = Image.fromarray(picture(300, 200, 4, seed=90), "RGBA")
    before = np.asarray(img).copy()
    prepare_image(img, 0, ImageOptions())
    assert img.mode == "RGBA"
    assert np.array_equal(np.asarray(img), before)


# --------------------------------------------------------------------------------------------------
# fast_decode: libjpeg's reduced-scale decode before the exact resize (opt-in, not bit-exact)


def test_fast_decode_is_close_to_exact_on_large_jpegs_and_identical_on_small_ones(
    images: dict[str, Path], server: ServingServer
) -> None:
    from clip_client._core.images import ImageOptions, prepare_image

    exact, fast = ImageOptions(want="pixels"), ImageOptions(want="pixels", fast_decode=True)
    large = images["large_jpeg"]  # 4000x3000: decoded at 1/4 scale
    a, b = prepare_image(large, 0, exact).pixels, prepare_image(large, 0, fast).pixels
    assert a is not None
    assert b is not None
    assert a.shape == b.shape == (224, 224, 3)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert 0 < diff.mean() < 1.0  # really a different decode, and only slightly different pixels
    assert diff.max() <= 8
    for name in ("rgb_jpeg", "rgba_png", "exif6_jpeg"):  # too small for a draft, or not a JPEG
        x, y = prepare_image(images[name], 0, exact).pixels, prepare_image(images[name], 0, fast).pixels
        np.testing.assert_array_equal(x, y, err_msg=name)
    # Through the client: the setting reaches the preparation.
    with ClipClient(host=server.url, token="t", fast_decode=True, max_retries=0) as c:
        c.embed_image(large)
    np.testing.assert_array_equal(image_pixels(records(server)[0]), b)


# --------------------------------------------------------------------------------------------------
# The PNG writer


def _unfilter_png(raw: bytes) -> tuple[int, int, np.ndarray]:
    """An independent reader for the PNGs ``png_rgb`` writes: checks the signature, every chunk's
    CRC and the IHDR fields, inflates IDAT and undoes each row's filter per the PNG specification
    (all five filter types, so the test does not assume which one the writer picked)."""
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        tag, data = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", raw[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(data, zlib.crc32(tag)), tag
        chunks.append((tag, data))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR"
    assert chunks[-1] == (b"IEND", b"")
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour, comp, filt, interlace) == (8, 2, 0, 0, 0)
    stream = zlib.decompress(b"".join(d for t, d in chunks if t == b"IDAT"))
    stride = width * 3
    assert len(stream) == height * (stride + 1)
    out = np.zeros((height, stride), dtype=np.int64)
    for y in range(height):
        kind, line = stream[y * (stride + 1)], stream[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        for x in range(stride):
            a = out[y, x - 3] if x >= 3 else 0
            b = out[y - 1, x] if y > 0 else 0
            c = out[y - 1, x - 3] if x >= 3 and y > 0 else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                assert kind == 4, kind
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[y, x] = (line[x] + pred) % 256
    return width, height, out.reshape(height, width, 3).astype(np.uint8)


def _png_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [
        ("1x1", rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)),
        ("1x9", rng.integers(0, 256, (1, 9, 3), dtype=np.uint8)),
        ("9x1", rng.integers(0, 256, (9, 1, 3), dtype=np.uint8)),
        ("noise", rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)),
        ("white", np.full((5, 6, 3), 255, dtype=np.uint8)),  # left + up = 510: needs more than 8 bits
        ("black", np.zeros((5, 6, 3), dtype=np.uint8)),
        (
            "extremes",
            (np.indices((8, 8)).sum(axis=0)[..., None] % 2 * 255).repeat(3, axis=2).astype(np.uint8),
        ),
        ("photo", picture(40, 24, 3, seed=3)),
    ]


@pytest.mark.parametrize("case", _png_cases(), ids=lambda c: c[0])
def test_png_rgb_is_a_valid_lossless_png(case: tuple[str, np.ndarray]) -> None:
    _, pixels = case
    raw = png_rgb(pixels)
    width, height, decoded_pixels = _unfilter_png(raw)
    assert (width, height) == (pixels.shape[1], pixels.shape[0])
    np.testing.assert_array_equal(decoded_pixels, pixels)
    with Image.open(io.BytesIO(raw)) as img:  # and Pillow, the server's decoder, agrees
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (width, height))
        np.testing.assert_array_equal(np.asarray(img), pixels)


def test_png_rgb_round_trips_full_size_images_through_pillow() -> None:
    rng = np.random.default_rng(11)
    for pixels in (picture(224, 224, 3, seed=5), rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)):
        with Image.open(io.BytesIO(png_rgb(pixels))) as img:
            np.testing.assert_array_equal(np.asarray(img), pixels)


@pytest.mark.parametrize(
    ("name", "make", "bound"),
    [
        ("photo", lambda: picture(224, 224, 3, seed=9), 1.15),
        ("flat", flat_with_noisy_rows, 1.5),
        ("screenshot", screenshot, 1.5),
    ],
)
def test_png_rgb_compresses_about_as_well_as_pillow(
    name: str, make: Callable[[], np.ndarray], bound: float
) -> None:
    # Guards the filter and the choice of strategy: unfiltered rows deflate to far more bytes on
    # photos, and run-length coding alone leaves a screenshot ~9x larger than Pillow's PNG.
    pixels = make()
    pillow = len(encode(Image.fromarray(pixels, "RGB"), "PNG"))
    unfiltered = len(zlib.compress(b"".join(b"\x00" + row.tobytes() for row in pixels), 9))
    ours = len(png_rgb(pixels))
    assert ours <= bound * pillow, (name, ours, pillow)
    if name == "photo":
        assert ours < unfiltered, (ours, unfiltered)


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)]
)
def test_png_rgb_refuses_anything_but_rgb_uint8(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="png_rgb takes"):
        png_rgb(bad)
