"""Pixel parity for every mode Pillow's decoders produce (issue 9, part 3).

The contract: for every file the endpoint could decode, the pixels the client sends equal the pixels
the served ``CLIPImageProcessor`` (PIL path) computes from that file. Each file here is written by
Pillow in a format that stores its mode (``image_factory.MODE_FILES``), checked to decode to that
mode, and compared bit for bit: the prepared pixels, the encoded record, and the records a client
sends. Modes no decoder produces are checked as in-memory PIL images (``MEMORY_MODES``).

The one mode the processor cannot take, ``La`` (a TIFF with premultiplied grey alpha: Pillow has no
conversion from it), is composited onto white exactly, from the premultiplied values. 16-bit
scaling is an opt-in (``high_bit_depth="scale"``) and so is checked apart.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clip_reference import processed
from harness import records
from image_factory import MEMORY_MODES, MODE_FILES, wide_grey, write_mode_files
from PIL import Image
from serving_server import ServingServer, expected_vector, image_pixels

from clip_client import ClipClient
from clip_client._core.images import ImageOptions, prepare_image


def premultiplied_on_white(img: Image.Image) -> Image.Image:
    """A premultiplied grey+alpha (La) image composited onto white: L + (255 - a)."""
    grey, alpha = (np.asarray(img)[:, :, i].astype(int) for i in (0, 1))
    return Image.fromarray(np.clip(grey + 255 - alpha, 0, 255).astype(np.uint8), "L")


@pytest.fixture(scope="module")
def mode_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_mode_files(tmp_path_factory.mktemp("modes"))


def served(processor: Any, img: Image.Image) -> np.ndarray:
    """What the served processor computes from ``img``. It raises on La, which Pillow cannot
    convert (checked here); for La the client's rule is compositing the premultiplied values onto
    white, and this returns the processor's pixels for that composite."""
    if img.mode == "La":
        with pytest.raises(ValueError, match="La"):
            processed(processor, img)
        return processed(processor, premultiplied_on_white(img))
    return processed(processor, img)


def prepared_pixels(value: object, opts: ImageOptions | None = None) -> np.ndarray:
    out = prepare_image(value, 0, opts or ImageOptions(want="pixels")).pixels
    assert out is not None
    assert out.shape == (224, 224, 3)
    assert out.dtype == np.uint8
    return out


def sent_pixels(value: object) -> np.ndarray:
    """The pixels the endpoint decodes from the record the client would send."""
    raw = prepare_image(value, 0, ImageOptions()).encoded
    assert raw is not None
    with Image.open(io.BytesIO(raw)) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (224, 224))
        return np.asarray(img)


@pytest.mark.parametrize("name", list(MODE_FILES))
def test_every_decoded_mode_matches_the_processor(
    name: str, mode_files: dict[str, Path], processor: Any
) -> None:
    mode = MODE_FILES[name][0]
    path = mode_files[name]
    with Image.open(path) as img:
        assert img.mode == mode, "the file must really exercise this mode"
        want = served(processor, img)
    np.testing.assert_array_equal(prepared_pixels(path), want)
    np.testing.assert_array_equal(sent_pixels(path), want)
    np.testing.assert_array_equal(prepared_pixels(path.read_bytes()), want)
    with Image.open(path) as lazy:  # the caller's own, lazily opened, PIL image
        np.testing.assert_array_equal(prepared_pixels(lazy), want)


@pytest.mark.parametrize("name", list(MEMORY_MODES))
def test_every_in_memory_mode_matches_the_processor(name: str, processor: Any) -> None:
    mode, make = MEMORY_MODES[name]
    img = make()
    assert img.mode == mode
    want = served(processor, make())
    np.testing.assert_array_equal(prepared_pixels(img), want)
    np.testing.assert_array_equal(sent_pixels(make()), want)


def test_every_decoded_mode_through_the_client(
    mode_files: dict[str, Path], processor: Any, client: ClipClient, server: ServingServer
) -> None:
    names = list(MODE_FILES)
    rows = client.embed_images([mode_files[n] for n in names])
    recs = records(server)
    assert len(recs) == len(names)  # in more than one batch, so matched by answer, not by order
    by_row = {expected_vector("image", base64.b64decode(r)).tobytes(): r for r in recs}
    for name, row in zip(names, rows):
        with Image.open(mode_files[name]) as img:
            want = served(processor, img)
        np.testing.assert_array_equal(image_pixels(by_row[row.tobytes()]), want, err_msg=name)


def test_a_twelve_bit_camera_frame_is_what_the_served_model_sees(
    mode_files: dict[str, Path], processor: Any
) -> None:
    """The issue's example: 12-bit data in a 16-bit TIFF. Pillow, so the endpoint, clips it at 255:
    mostly white. Scaling 0..65535 (the opt-in) makes it mostly black instead."""
    for name in ("I;16 tiff 12-bit", "I;16B tiff 12-bit"):
        path = mode_files[name]
        with Image.open(path) as img:
            assert int(np.asarray(img).max()) == 4095
            want = processed(processor, img)
        got = prepared_pixels(path)
        np.testing.assert_array_equal(got, want)
        assert got.mean() > 200
        scaled = prepared_pixels(path, ImageOptions(want="pixels", high_bit_depth="scale"))
        assert scaled.max() <= 16
        assert np.abs(scaled.astype(int) - want.astype(int)).max() > 200


def test_scaling_sixteen_bit_is_an_opt_in_with_its_own_rule(mode_files: dict[str, Path]) -> None:
    """``high_bit_depth="scale"``: 0..65535 onto 0..255 with rounding, before the resize; a PNG
    colour key stays transparent (white); 8-bit modes are untouched."""
    scale = ImageOptions(want="pixels", high_bit_depth="scale")
    path = mode_files["I;16 png"]
    with Image.open(path) as img:
        wide = np.asarray(img).astype(np.int64)
    grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    want = prepared_pixels(Image.fromarray(grey, "L"))
    np.testing.assert_array_equal(prepared_pixels(path, scale), want)
    assert 100 < want.mean() < 155

    key = wide_grey(40, 30, 600, seed=300)
    key[10:20, 10:20] = 300
    keyed = Image.fromarray(key.astype(np.uint16))
    keyed.info["transparency"] = 300
    out = prepared_pixels(keyed, scale)
    assert (out[85:135, 45:105] == 255).all()  # the keyed square, resized and cropped: white
    assert out[:40].mean() < 10  # elsewhere 0..600 scaled: near black

    for name in ("RGB png", "L png", "F tiff"):
        np.testing.assert_array_equal(
            prepared_pixels(mode_files[name], scale), prepared_pixels(mode_files[name]), err_msg=name
        )
