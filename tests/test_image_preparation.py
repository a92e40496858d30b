"""``image_preparation="server"``: files go to the endpoint as given, in-memory images as lossless
PNGs at their own size, and the client still refuses what is not an image, and what is too large
to send, input by input.

The end-to-end tests run once per client (sync and async, the ``make`` fixture) against the
loopback server, and read what it received; the pixel tests compare against transformers' CLIP
processor (``clip_reference``), the reference the endpoint runs.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
from bad_inputs import BAD_IMAGES
from clip_reference import processed
from harness import IMAGE, Make, records
from image_factory import (
    MEMORY_MODES,
    encode,
    exif_bytes,
    noise,
    picture,
    wide_grey,
    write_mode_files,
)
from PIL import Image
from serving_server import ServingServer, expected_vector

from clip_client import (
    BadRequestError,
    CallContext,
    ClipClient,
    EmbeddingArray,
    ImageDecodeError,
    InputKind,
    InvalidInputError,
    PreparedImage,
    Settings,
)
from clip_client._core.images import ImageOptions, png_lossless, prepare_image

SERVER = {"image_preparation": "server"}


def jpeg_file(path: Path, width: int = 320, height: int = 240, seed: int = 0) -> Path:
    Image.fromarray(picture(width, height, 3, seed), "RGB").save(path, "JPEG", quality=90)
    return path


def noise_png(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """An incompressible PNG: about ``3 * width * height`` bytes."""
    path.write_bytes(encode(Image.fromarray(noise(width, height, seed), "RGB")))
    return path


def original_rows(files: Sequence[bytes]) -> np.ndarray:
    """What the loopback server answers when it receives these very files."""
    return np.stack([expected_vector("image", raw) for raw in files])


def received_files(server: ServingServer) -> list[bytes]:
    return [base64.b64decode(b64) for b64 in records(server)]


def decoding_model(kind: str, inputs: list[str]) -> list[list[float]]:
    """A server model that decodes every image, as an endpoint does: a file that does not decode
    fails the request (a 400, as an exception in ``predict`` does on MLflow)."""
    rows = []
    for value in inputs:
        raw = value.encode() if kind == "text" else base64.b64decode(value)
        if kind == "image":
            with Image.open(io.BytesIO(raw)) as img:
                img.load()
        rows.append(expected_vector(kind, raw).tolist())
    return rows


def decoded(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.format == "PNG"
    return img


# --------------------------------------------------------------------------------------------------
# File inputs: their own bytes, whatever their kind


async def test_every_kind_of_file_input_arrives_as_its_own_bytes(
    make: Make, server: ServingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    jpeg = jpeg_file(tmp_path / "photo.jpg", 640, 480, seed=1)
    big = jpeg_file(tmp_path / "big.jpg", 1800, 1200, seed=2)  # far larger than the 224x224 crop
    rgba = Image.fromarray(picture(300, 200, 4, seed=3), "RGBA")
    png = encode(rgba, "PNG")
    gif = encode(rgba.convert("P"), "GIF")
    webp = encode(rgba.convert("RGB"), "WEBP", quality=80)
    exif = encode(Image.fromarray(picture(200, 120, 3, seed=4)), "JPEG", exif=exif_bytes(6))
    (tmp_path / "tilde.png").write_bytes(png)
    inputs: list[Any] = [
        str(jpeg),  # a path as str
        big,  # a pathlib.Path
        png,  # bytes
        bytearray(gif),
        memoryview(webp),
        "data:image/jpeg;base64," + base64.b64encode(exif).decode(),  # a data URI
        base64.b64encode(jpeg.read_bytes()).decode(),  # plain base64, as a table column holds it
        "~/tilde.png",  # a ~ path
    ]
    files = [jpeg.read_bytes(), big.read_bytes(), png, gif, webp, exif, jpeg.read_bytes(), png]

    out = await make(**SERVER).embed_images(inputs)

    assert received_files(server) == files  # byte for byte, in order: nothing decoded or re-encoded
    np.testing.assert_array_equal(out, original_rows(files))


async def test_a_224x224_crop_and_the_original_are_both_sent_as_given(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    """Client-side preparation sends 224x224 PNGs; server-side sends the file, whatever its size."""
    photo = jpeg_file(tmp_path / "photo.jpg", 640, 480)

    await make().embed_images([photo])
    await make(**SERVER).embed_images([photo])

    client_side, server_side = received_files(server)
    assert decoded(client_side).size == (224, 224)
    assert server_side == photo.read_bytes()


# --------------------------------------------------------------------------------------------------
# In-memory images: lossless PNGs of their own pixels, at their own size


def _in_memory_inputs() -> list[tuple[str, Any, Any]]:
    """(name, input, the image the endpoint must decode: same mode and pixels)."""
    rgb = picture(301, 207, 3, seed=10)
    rgba = picture(150, 170, 4, seed=11)
    grey = picture(123, 99, 1, seed=12)[:, :, 0]
    pil_rgb = Image.fromarray(rgb, "RGB")
    pil_la = Image.fromarray(picture(90, 140, 2, seed=13), "LA")
    pil_p = Image.fromarray(rgb, "RGB").quantize(40, dither=Image.Dither.NONE)
    pil_p.info["transparency"] = 7
    pil_1 = Image.fromarray(grey > 128).convert("1")
    pil_16 = Image.fromarray(wide_grey(160, 120, 65535, seed=14).astype(np.uint16))
    pil_key = Image.fromarray(rgb, "RGB")
    pil_key.info["transparency"] = (0, 0, 0)
    return [
        ("RGB array", rgb, Image.fromarray(rgb, "RGB")),
        ("RGBA array", rgba, Image.fromarray(rgba, "RGBA")),
        ("HxW array", grey, Image.fromarray(grey, "L")),
        ("HxWx1 array", grey[:, :, None], Image.fromarray(grey, "L")),
        ("RGB image", pil_rgb, pil_rgb),
        ("LA image", pil_la, pil_la),
        ("P image with a transparent index", pil_p, pil_p),
        ("1 image", pil_1, pil_1),
        ("I;16 image", pil_16, pil_16),
        ("RGB image with a colour key", pil_key, pil_key),
    ]


async def test_in_memory_images_arrive_as_lossless_pngs_in_their_own_mode(
    make: Make, server: ServingServer
) -> None:
    cases = _in_memory_inputs()
    stack = np.stack([picture(64, 48, 3, seed=s) for s in (20, 21)])  # a 4-D array: two images

    out = await make(**SERVER).embed_images([value for _, value, _ in cases])
    await make(**SERVER).embed_images(stack)

    sent = received_files(server)
    assert len(sent) == len(cases) + 2
    for (name, _, want), png in zip(cases, sent, strict=False):
        got = decoded(png)
        assert (got.mode, got.size) == (want.mode, want.size), name
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
        assert got.info.get("transparency") == want.info.get("transparency"), name
    for picture_, png in zip(stack, sent[len(cases) :], strict=True):
        np.testing.assert_array_equal(np.asarray(decoded(png)), picture_)
    np.testing.assert_array_equal(out, original_rows(sent[: len(cases)]))


def _every_mode(folder: Path) -> dict[str, Image.Image]:
    """One in-memory image of every mode Pillow's decoders produce, and of those only a caller makes."""
    images = {}
    for name, path in write_mode_files(folder).items():
        with Image.open(path) as img:
            images[name] = img.copy()  # loaded; mode, palette and info kept
    images.update({f"{name} (in memory)": make() for name, (_, make) in MEMORY_MODES.items()})
    return images


def test_the_endpoints_processor_sees_the_same_pixels_from_the_png_as_from_the_image(
    processor: Any, tmp_path: Path
) -> None:
    """For every mode: the PNG sent, decoded and put through transformers' CLIP processor (the PIL
    path), gives exactly the pixels the processor computes from the in-memory image itself. Modes a
    PNG holds keep their mode and pixels; the others are sent as the processor's own RGB conversion.
    ``La``, which the processor refuses, is sent as the client's exact composite."""
    opts = ImageOptions(preparation="server")
    kept = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}
    images = _every_mode(tmp_path)
    assert {img.mode for img in images.values()} >= kept | {"CMYK", "F", "I", "La", "LAB", "I;16B"}
    for name, img in images.items():
        png = prepare_image(img, 0, opts).encoded
        assert png is not None
        sent = decoded(png)
        assert sent.size == img.size, name
        if img.mode in kept and not (img.mode == "P" and img.palette and img.palette.mode != "RGB"):
            assert sent.mode == img.mode, name
            np.testing.assert_array_equal(np.asarray(sent), np.asarray(img), err_msg=name)
        else:
            assert sent.mode == "RGB", name
        if img.mode == "La":
            want = prepare_image(img, 0, ImageOptions(want="pixels")).pixels
        else:
            want = processed(processor, img)
        np.testing.assert_array_equal(processed(processor, sent), want, err_msg=name)


def test_a_p_image_with_an_rgba_palette_is_sent_as_the_processor_converts_it(processor: Any) -> None:
    """Pillow writes an RGBA palette as a tRNS chunk, which reads back as a transparency the image
    did not have (the processor would then composite onto white where it did not): sent as RGB."""
    rgba = Image.fromarray(picture(80, 60, 4, seed=30), "RGBA")
    img = rgba.convert("P")
    assert img.palette is not None
    assert img.palette.mode == "RGBA"

    sent = decoded(png_lossless(img))

    assert sent.mode == "RGB"
    np.testing.assert_array_equal(processed(processor, sent), processed(processor, img))


def test_an_in_memory_image_is_sent_upright_without_its_exif(tmp_path: Path) -> None:
    """A PIL image opened from a rotated JPEG: the PNG holds the pixels as a viewer shows them (as
    client-side preparation uses them), with no orientation tag left for anyone to apply twice."""
    path = tmp_path / "rotated.jpg"
    Image.fromarray(picture(200, 120, 3, seed=31)).save(path, "JPEG", quality=95, exif=exif_bytes(6))
    with Image.open(path) as img:
        png = prepare_image(img, 0, ImageOptions(preparation="server")).encoded
        upright = np.asarray(img.transpose(Image.Transpose.ROTATE_270))
    assert png is not None
    sent = decoded(png)
    assert sent.size == (120, 200)
    assert not sent.getexif()
    np.testing.assert_array_equal(np.asarray(sent), upright)


def test_high_bit_depth_scale_applies_to_in_memory_images_not_to_files(tmp_path: Path) -> None:
    wide = Image.fromarray(wide_grey(90, 70, 65535, seed=32).astype(np.uint16))
    path = tmp_path / "grey16.png"
    wide.save(path)
    opts = ImageOptions(preparation="server", high_bit_depth="scale")

    png = prepare_image(wide, 0, opts).encoded
    raw = prepare_image(path, 0, opts).encoded

    assert png is not None
    sent = decoded(png)
    assert sent.mode == "L"
    scaled = (np.asarray(wide).astype(np.int64) * 255 + 32767) // 65535
    np.testing.assert_array_equal(np.asarray(sent), scaled)
    assert raw == path.read_bytes()  # a file goes as given: its endpoint decides what 16 bits mean


async def test_one_lazily_opened_image_many_times_in_one_call_gives_one_png(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    """A lazily opened PIL image, many times in one call: the preparation threads load and encode it
    one at a time (concurrent loads through one file pointer fail), and every copy sent is the same."""
    path = jpeg_file(tmp_path / "photo.jpg", 640, 480)
    with Image.open(path) as lazy:
        await make(batch_size=4, **SERVER).embed_images([lazy] * 16)
    with Image.open(path) as img:
        want = np.asarray(img.convert("RGB"))

    sent = received_files(server)
    assert len(sent) == 16
    assert len(set(sent)) == 1
    np.testing.assert_array_equal(np.asarray(decoded(sent[0])), want)


# --------------------------------------------------------------------------------------------------
# What is not an image fails here, with its index and path; what is corrupt past its header fails there

#: Bad inputs that pass a header check: only a full decode (client-side preparation) finds them.
_CORRUPT_PAST_THE_HEADER = {"truncated JPEG", "truncated 224x224 JPEG"}


@pytest.mark.parametrize("case", sorted(set(BAD_IMAGES) - _CORRUPT_PAST_THE_HEADER))
def test_a_bad_input_fails_as_it_does_with_client_side_preparation(case: str, tmp_path: Path) -> None:
    bad = BAD_IMAGES[case]
    value = bad.make(tmp_path)

    with pytest.raises(bad.error, match=re.escape(bad.says)) as info:
        prepare_image(value, 5, ImageOptions(preparation="server"))

    assert type(info.value) is bad.error
    assert info.value.index == 5
    assert (info.value.path is not None) == bad.is_path


async def test_non_images_fail_on_the_client_raised_with_their_index_and_path(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    good = jpeg_file(tmp_path / "good.jpg")
    notes = tmp_path / "notes.jpg"
    notes.write_bytes(b"these are my notes, not a picture\n" * 20)

    with pytest.raises(ImageDecodeError, match="not a recognised image format") as info:
        await make(**SERVER).embed_images([good, good, notes, good])

    assert info.value.index == 2
    assert info.value.path == str(notes)
    assert f"input 2, path '{notes}'" in str(info.value)
    assert server.posts(IMAGE) == 0  # it failed before its batch was sent, and so did the call


async def test_non_images_fail_on_the_client_marked_while_the_others_embed(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    good = [jpeg_file(tmp_path / f"good{i}.jpg", seed=i) for i in range(3)]
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"not a picture" * 50)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(encode(Image.new("L", (3000, 3000))))

    result = await make(max_image_pixels=1_000_000, **SERVER).embed_images(
        [good[0], notes, good[1], b"\x00garbage" * 9, bomb, good[2]], on_error="mark"
    )

    assert [f.index for f in result.failures] == [1, 3, 4]
    errors = [f.error for f in result.failures]
    assert all(isinstance(e, ImageDecodeError) for e in errors)
    assert (errors[0].path, errors[1].path, errors[2].path) == (str(notes), None, str(bomb))
    assert "max_image_pixels" in str(errors[2])  # the bomb guard reads only the header
    files = [p.read_bytes() for p in good]
    assert received_files(server) == files
    np.testing.assert_array_equal(result.embeddings[[0, 2, 5]], original_rows(files))


async def test_a_file_corrupt_past_its_header_fails_on_the_endpoint_alone(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    """The client reads headers only: a truncated JPEG reaches the endpoint, whose decoder refuses
    it (a 400); with ``on_error="mark"`` the client isolates it and the others embed."""
    server.model = decoding_model
    good = [jpeg_file(tmp_path / f"good{i}.jpg", seed=i) for i in range(3)]
    whole = good[1].read_bytes()
    truncated = whole[: len(whole) // 2]

    result = await make(**SERVER).embed_images([good[0], truncated, good[1], good[2]], on_error="mark")

    assert [f.index for f in result.failures] == [1]
    assert isinstance(result.failures[0].error, BadRequestError)
    files = [p.read_bytes() for p in good]
    np.testing.assert_array_equal(result.embeddings[[0, 2, 3]], original_rows(files))


# --------------------------------------------------------------------------------------------------
# Byte-aware batching with originals


async def test_an_original_too_large_to_send_alone_fails_by_index_while_the_others_embed(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    small = [jpeg_file(tmp_path / f"small{i}.jpg", seed=i) for i in range(4)]
    huge = noise_png(tmp_path / "huge.png", 600, 500)  # ~900 KB, 1.2 MB as base64
    inputs = [small[0], small[1], huge, small[2], small[3]]
    client = make(max_request_bytes=500_000, **SERVER)

    result = await client.embed_images(inputs, on_error="mark")

    assert [f.index for f in result.failures] == [2]
    error = result.failures[0].error
    assert isinstance(error, InvalidInputError)
    assert error.index == 2
    assert "max_request_bytes=500,000" in str(error)
    files = [p.read_bytes() for p in small]
    assert received_files(server) == files  # never sent
    np.testing.assert_array_equal(result.embeddings[[0, 1, 3, 4]], original_rows(files))
    # the same file prepared on the client is a 224x224 crop, well within the limit
    assert (await make(max_request_bytes=500_000).embed_images([huge])).shape == (1, 768)


async def test_an_original_too_large_to_send_alone_raises_before_it_is_sent(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    huge = noise_png(tmp_path / "huge.png", 600, 500)

    with pytest.raises(InvalidInputError, match="max_request_bytes") as info:
        await make(max_request_bytes=500_000, **SERVER).embed_images([huge])

    assert info.value.index == 0
    assert server.posts(IMAGE) == 0


async def test_requests_of_large_originals_stay_under_max_request_bytes_in_order(
    make: Make, server: ServingServer, tmp_path: Path
) -> None:
    limit = 1_000_000
    paths = [noise_png(tmp_path / f"n{i}.png", 300, 250 + 10 * i, seed=i) for i in range(9)]
    files = [p.read_bytes() for p in paths]  # 225-290 KB each: three or four fit in a request
    client = make(max_request_bytes=limit, batch_size=32, max_concurrency=2, **SERVER)

    out = await client.embed_images(paths)

    sizes = [r.nbytes for r in server.received]
    assert all(size <= limit for size in sizes), sizes
    assert len(server.received) >= 3  # the byte limit, not batch_size, split them
    assert max(len(r.inputs) for r in server.received) > 1
    assert sorted(received_files(server), key=files.index) == files
    np.testing.assert_array_equal(out, original_rows(files))


# --------------------------------------------------------------------------------------------------
# Local mode and other backends that take pixels: prepared here regardless


class PixelBackend:
    """A backend that takes pixels, as the local model does: its own server."""

    image_input = "pixels"
    max_request_bytes = None
    batch_size = None
    image_size = None
    dim = 4

    def __init__(self) -> None:
        self.pixels: list[np.ndarray] = []

    def endpoint(self, kind: InputKind) -> str | None:
        return None

    def payload(self, kind: InputKind, item: str | PreparedImage) -> tuple[Any, int]:
        assert isinstance(item, PreparedImage)
        assert item.encoded is None
        assert item.pixels is not None
        self.pixels.append(item.pixels)
        return item.pixels, 0

    def embed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
        return np.stack([p[100:104, 100, 0] for p in payloads]).astype(np.float32)

    async def aembed(self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext) -> EmbeddingArray:
        return self.embed(kind, payloads, ctx)

    def concurrency_limit(self) -> int | None:
        return None

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def test_a_backend_that_takes_pixels_gets_the_same_crop_whichever_preparation(tmp_path: Path) -> None:
    photo = jpeg_file(tmp_path / "photo.jpg", 640, 480)
    inputs: list[Any] = [photo, photo.read_bytes(), Image.open(photo), picture(90, 300, 3, seed=40)]
    crops = []
    for preparation in ("client", "server"):
        backend = PixelBackend()
        with ClipClient(backend=backend, image_preparation=preparation) as client:
            assert client.settings.image_preparation == preparation
            client.embed_images(inputs)
        crops.append(backend.pixels)
    assert all(p.shape == (224, 224, 3) for p in crops[1])
    for client_side, server_side in zip(*crops, strict=True):
        np.testing.assert_array_equal(client_side, server_side)


def test_local_mode_ignores_server_preparation(tmp_path: Path) -> None:
    """``ClipClient.local`` prepares in-process whatever ``image_preparation`` says: the model is in
    this process, and its preparation is the exact one, so the embeddings are the same."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_clip import write_tiny_clip

    from clip_client import LocalBackend

    backend = LocalBackend(write_tiny_clip(tmp_path / "tiny"), device="cpu", dtype="float32")
    photo = jpeg_file(tmp_path / "photo.jpg", 500, 300)
    inputs: list[Any] = [photo, Image.open(photo), picture(100, 80, 4, seed=41)]
    with (
        ClipClient(backend=backend) as client_side,
        ClipClient(backend=backend, image_preparation="server") as server_side,
    ):
        np.testing.assert_array_equal(server_side.embed_images(inputs), client_side.embed_images(inputs))


# --------------------------------------------------------------------------------------------------
# The setting


def test_the_setting_defaults_to_client_and_takes_client_or_server() -> None:
    assert Settings().image_preparation == "client"
    assert Settings(image_preparation="server").image_preparation == "server"
    for bad in ("Server", "edge", "", None, 1):
        with pytest.raises(pydantic.ValidationError, match="image_preparation"):
            Settings(image_preparation=bad)


def test_a_bad_value_fails_at_construction(server: ServingServer) -> None:
    with pytest.raises(ValueError, match="image_preparation"):
        ClipClient(**server.client_kwargs(image_preparation="servers"))
    with ClipClient(**server.client_kwargs(image_preparation="server")) as client:
        assert client.settings.image_preparation == "server"
        assert client._image_options().preparation == "server"
