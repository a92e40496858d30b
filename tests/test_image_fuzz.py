"""Fuzz: only ``ClipClientError`` subclasses ever escape image preparation, and nothing hangs.

Real JPEG, PNG, WebP, GIF and TIFF files written by Pillow are mutated by hypothesis (bytes
overwritten, the file truncated, EXIF blocks replaced by random bytes or by IFDs whose entries have
random tags, types, counts and offsets, image headers declaring random sizes) and prepared. Whatever
happens must be a prepared 224x224 image or an :class:`InvalidInputError` naming the input's index;
an unexpected failure must be an :class:`ImageDecodeError` with its cause chained.

The budget is fixed for CI: ``derandomize=True`` (the same examples on every run, no example
database), about 300 examples in all, a per-example deadline that only a hang would reach, and
pytest-timeout over each test.
"""

from __future__ import annotations

import base64
import functools
import io
import random
import struct
import zlib
from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pytest
from harness import records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_factory import encode, exif_bytes, picture, raw_exif
from PIL import Image
from serving_server import ServingServer, expected_vector

from clip_client import ClipClient, ImageDecodeError, InvalidInputError
from clip_client._core.images import ImageOptions, prepare_image
from clip_client.errors import ClipClientError

#: A small bomb guard, so that a mutated header cannot make one example decode a 100 MP image.
MAX_PIXELS = 1_000_000
OPTS = ImageOptions(max_pixels=MAX_PIXELS)
INDEX = 7


def fuzz(examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=timedelta(seconds=10),  # a hang, not a slow machine
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        print_blob=False,
    )


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Maker"
    exif[0x011A] = 72.0
    return exif.tobytes()


@functools.cache
def seed_file(fmt: str) -> bytes:
    """A small real file of ``fmt`` with the metadata that format carries."""
    rgb = Image.fromarray(picture(64, 48, 3, seed=400), "RGB")
    buf = io.BytesIO()
    if fmt == "JPEG":
        rgb.save(buf, "JPEG", quality=85, exif=_exif())
    elif fmt == "PNG":
        rgb.convert("RGBA").save(buf, "PNG", exif=exif_bytes(3))
    elif fmt == "WEBP":
        rgb.save(buf, "WEBP", lossless=True, exif=_exif())
    elif fmt == "GIF":
        frames = [rgb.quantize(32), rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).quantize(32)]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], transparency=2, duration=40)
    else:
        rgb.save(buf, "TIFF", tiffinfo={0x0112: 6, 0x010F: "Maker"})
    return buf.getvalue()


def prepares_or_fails_typed(data: bytes) -> None:
    """The property: a 224x224 image, or a typed error naming the input."""
    try:
        out = prepare_image(data, INDEX, OPTS)
    except ClipClientError as exc:
        check_typed_error(exc)
        return
    assert out.encoded is not None
    with Image.open(io.BytesIO(out.encoded)) as img:
        assert (img.mode, img.size) == ("RGB", (224, 224))


def check_typed_error(exc: ClipClientError) -> None:
    assert isinstance(exc, InvalidInputError), type(exc)
    assert exc.index == INDEX
    assert len(str(exc)) < 600
    if "unexpected" in str(exc):
        assert isinstance(exc, ImageDecodeError)
        assert exc.__cause__ is not None


def mutated(raw: bytes) -> st.SearchStrategy[bytes]:
    """``raw`` with up to 8 bytes overwritten (often in the first 64: the headers) and maybe cut."""
    position = st.one_of(st.integers(0, min(63, len(raw) - 1)), st.integers(0, len(raw) - 1))
    flips = st.lists(st.tuples(position, st.integers(0, 255)), max_size=8)
    cut = st.one_of(st.none(), st.integers(0, len(raw)))

    def apply(flips: list[tuple[int, int]], cut: int | None) -> bytes:
        data = bytearray(raw)
        for pos, byte in flips:
            data[pos] = byte
        return bytes(data[:cut])

    return st.builds(apply, flips, cut)


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
def test_mutated_files_raise_only_typed_errors(fmt: str) -> None:
    @fuzz(40)
    @given(data=mutated(seed_file(fmt)))
    def check(data: bytes) -> None:
        prepares_or_fails_typed(data)

    check()


#: Tags an EXIF block may hold; an IFD pointer (0x8769, 0x8825, 0xA005) makes the parser follow
#: the value as an offset.
TAGS = [0x0112, 0x010F, 0x0110, 0x011A, 0x011B, 0x0128, 0x0131, 0x0132, 0x0201, 0x8769, 0x8825, 0xA005]
ENTRY = st.tuples(
    st.sampled_from(TAGS),
    st.integers(0, 14),  # TIFF types 1-13, and a few that do not exist
    st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)),
    st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=5, max_size=24)),
)
EXIF_BLOCKS = st.one_of(
    st.binary(max_size=160).map(lambda b: b"Exif\x00\x00" + b),
    st.builds(raw_exif, st.lists(ENTRY, min_size=1, max_size=6), st.booleans()),
    st.builds(
        lambda entries, big: raw_exif([(0x0112, 3, 1, struct.pack(">H" if big else "<H", 6)), *entries], big),
        st.lists(ENTRY, max_size=4),
        st.booleans(),
    ),
)


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_rewritten_exif_blocks_raise_only_typed_errors(fmt: str) -> None:
    rgb = Image.fromarray(picture(48, 36, 3, seed=401), "RGB")

    @fuzz(30)
    @given(block=EXIF_BLOCKS)
    def check(block: bytes) -> None:
        prepares_or_fails_typed(encode(rgb, fmt, exif=block, **({"lossless": True} if fmt == "WEBP" else {})))

    check()


def _png_of_size(width: int, height: int) -> bytes:
    raw = bytearray(seed_file("PNG"))
    struct.pack_into(">II", raw, 16, width, height)
    struct.pack_into(">I", raw, 29, zlib.crc32(bytes(raw[12:29])))  # IHDR's CRC, so it parses
    return bytes(raw)


def _gif_of_size(width: int, height: int) -> bytes:
    raw = bytearray(seed_file("GIF"))
    struct.pack_into("<HH", raw, 6, width, height)  # the logical screen
    return bytes(raw)


def _bmp_of_size(width: int, height: int) -> bytes:
    raw = bytearray(encode(Image.fromarray(picture(16, 12, 3, seed=402), "RGB"), "BMP"))
    struct.pack_into("<ii", raw, 18, width, height)
    return bytes(raw)


@pytest.mark.timeout(120)
@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    ("fmt", "make", "largest"),
    [("PNG", _png_of_size, 2**31 - 1), ("GIF", _gif_of_size, 2**16 - 1), ("BMP", _bmp_of_size, 2**31 - 1)],
)
def test_declared_sizes_over_the_guard_are_refused_before_decoding(
    fmt: str, make: Callable[[int, int], bytes], largest: int
) -> None:
    side = st.one_of(st.integers(1, 4096), st.integers(1, largest))

    @fuzz(25)
    @given(width=side, height=side)
    def check(width: int, height: int) -> None:
        data = make(width, height)
        if width * height <= MAX_PIXELS:
            prepares_or_fails_typed(data)
            return
        with pytest.raises(ImageDecodeError) as info:
            prepare_image(data, INDEX, OPTS)
        message = str(info.value)
        assert "max_image_pixels" in message or "decompression bomb" in message, message

    check()


@pytest.mark.filterwarnings("ignore")
def test_mutants_in_one_call_with_on_error_mark(client: ClipClient, server: ServingServer) -> None:
    """Through the client: every mutant gets a row or a marked typed failure, in input order."""
    rng = random.Random(5)
    inputs: list[object] = []
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "TIFF"):
        raw = seed_file(fmt)
        inputs.append(raw)
        for _ in range(5):
            data = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(min(len(data), 200))] = rng.randrange(256)
            inputs.append(bytes(data[: rng.choice([len(data), rng.randrange(len(data))])]))
    inputs.append(raw_exif([(0x0112, 3, 1, b"\x06\x00"), (0x011A, 2, 5, b"abcd\x00")]))  # not an image
    result = client.embed_images(inputs, on_error="mark")
    assert len(result) == len(inputs)
    failed = {f.index for f in result.failures}
    assert {0, 6, 12, 18, 24}.isdisjoint(failed)  # the unmutated files embed
    assert len(inputs) - 1 in failed
    for failure in result.failures:
        assert isinstance(failure.error, InvalidInputError)
        assert failure.error.index == failure.index
    assert np.isnan(result.embeddings[~result.ok]).all()
    sent = records(server)
    assert len(sent) == len(inputs) - len(failed)
    answers = {expected_vector("image", base64.b64decode(r)).tobytes() for r in sent}
    assert all(row.tobytes() in answers for row in result.embeddings[result.ok])
