"""The catalogue of bad inputs: each one, the exact error it gets, and what its message says.

:data:`BAD_IMAGES` is every kind of image input that must fail while being prepared (so before any
request carries it), :data:`BAD_TEXTS` every kind of text that must fail its check. Every test of
bad inputs takes its cases from here: ``test_images`` (alone, among good inputs, to
``embed_image``, async), ``test_reliability`` (through both clients, raised and marked, with no
request spent) and ``test_core`` (``check_text_list``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from image_factory import KINDS, noise, png, png_header_only
from PIL import Image

from clip_client import ImageDecodeError, InvalidInputError

__all__ = ["BAD_IMAGES", "BAD_TEXTS", "BadImage", "BadText"]


@dataclass(frozen=True)
class BadImage:
    """A bad image input: ``make(folder)`` writes whatever files it needs into ``folder`` and returns
    the input. ``error`` is the exact class it gets, and its message holds ``says`` verbatim.
    ``is_path``: the input names a file (or URL), which the error's ``path`` keeps and its message
    quotes; otherwise ``path`` is None."""

    make: Callable[[Path], object]
    error: type[InvalidInputError]
    says: str
    is_path: bool


@dataclass(frozen=True)
class BadText:
    """A bad text input, the exact class of its error, and what its message says, verbatim."""

    value: object
    error: type[InvalidInputError]
    says: str


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _directory(folder: Path) -> Path:
    sub = folder / "a-folder.png"
    sub.mkdir()
    return sub


def _fifo(folder: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = folder / "pipe.png"
    os.mkfifo(path)
    return path


def _kind(folder: Path, name: str) -> Path:
    """The ``image_factory`` file of kind ``name``, written into ``folder``."""
    file_name, write = KINDS[name]
    path = folder / file_name
    write(path)
    return path


def _truncated(name: str) -> Callable[[Path], Path]:
    """The first half of the ``image_factory`` file of kind ``name``."""

    def make(folder: Path) -> Path:
        raw = _kind(folder, name).read_bytes()
        return _write(folder / f"truncated_{KINDS[name][0]}", raw[: len(raw) // 2])

    return make


#: id -> the bad image input and what it gets.
BAD_IMAGES: dict[str, BadImage] = {
    # files that are not there, or not files
    "missing file": BadImage(lambda f: f / "no-such-file.jpg", InvalidInputError, "no such file", True),
    "directory": BadImage(_directory, InvalidInputError, "is a directory", True),
    "FIFO": BadImage(_fifo, InvalidInputError, "not a regular file", True),
    "URL": BadImage(lambda f: "https://example.com/cat.jpg", InvalidInputError, "URLs are not fetched", True),
    # files that are not images, or broken ones
    "empty file": BadImage(lambda f: _write(f / "empty.jpg", b""), ImageDecodeError, "empty", True),
    "truncated JPEG": BadImage(_truncated("rgb_jpeg"), ImageDecodeError, "truncated", True),
    "truncated 224x224 JPEG": BadImage(_truncated("exact224_jpeg"), ImageDecodeError, "truncated", True),
    "text file named .png": BadImage(
        lambda f: _write(f / "notes.png", b"these are my notes, not a picture\n" * 20),
        ImageDecodeError,
        "not a recognised image format",
        True,
    ),
    "30000x30000 PNG": BadImage(
        lambda f: _write(f / "bomb.png", png_header_only(30000, 30000)),
        ImageDecodeError,
        "decompression bomb",
        True,
    ),
    "0x0 PNG file": BadImage(
        lambda f: _write(f / "zero.png", png_header_only(0, 0)),
        ImageDecodeError,
        "not a recognised image format",
        True,
    ),
    # bytes and strings that are not images
    "garbage bytes": BadImage(
        lambda f: b"\x00\x01garbage" * 10, ImageDecodeError, "not a recognised image format", False
    ),
    "data URI with bad base64": BadImage(
        lambda f: "data:image/png;base64,@@not base64@@", ImageDecodeError, "base64", False
    ),
    "data URI without base64": BadImage(
        lambda f: "data:image/png,abc", InvalidInputError, "data:image/png;base64", False
    ),
    # pictures without pixels, and arrays that are not pictures
    "0x0 PIL image": BadImage(lambda f: Image.new("RGB", (0, 0)), ImageDecodeError, "no pixels (0x0)", False),
    "0x0 array": BadImage(lambda f: np.zeros((0, 0, 3), dtype=np.uint8), InvalidInputError, "empty", False),
    "0x8 array": BadImage(lambda f: np.zeros((0, 8, 3), dtype=np.uint8), InvalidInputError, "empty", False),
    "NaN-filled float array": BadImage(
        lambda f: np.full((32, 32, 3), np.nan, dtype=np.float32), InvalidInputError, "must be uint8", False
    ),
    "two-channel array": BadImage(lambda f: np.zeros((8, 8, 2), np.uint8), InvalidInputError, "shape", False),
    "4-D array in a list": BadImage(
        lambda f: np.zeros((1, 8, 8, 3), np.uint8), InvalidInputError, "shape", False
    ),
    # not images at all
    "None": BadImage(lambda f: None, InvalidInputError, "got None", False),
    "int": BadImage(lambda f: 7, InvalidInputError, "type int", False),
    "nested list of bytes": BadImage(
        lambda f: [png(noise(224, 224))], InvalidInputError, "nested list", False
    ),
    "nested list of a path": BadImage(
        lambda f: [str(_kind(f, "rgb_png"))], InvalidInputError, "nested list", False
    ),
}

#: id -> the bad text input and what it gets.
BAD_TEXTS: dict[str, BadText] = {
    "None": BadText(None, InvalidInputError, "got NoneType"),
    "int": BadText(7, InvalidInputError, "got int"),
    "float": BadText(3.5, InvalidInputError, "got float"),
    "bytes": BadText(b"a photo of a cat", InvalidInputError, "got bytes"),
    "bytearray": BadText(bytearray(b"x"), InvalidInputError, "got bytes"),
    "nested list": BadText(["a", "b"], InvalidInputError, "got list"),
    "NaN-filled float array": BadText(np.full(4, np.nan), InvalidInputError, "got ndarray"),
    "lone high surrogate": BadText("a\ud800b", InvalidInputError, "lone surrogate"),
    "lone low surrogate": BadText(
        b"caf\xe9".decode("utf-8", "surrogateescape"), InvalidInputError, "lone surrogate"
    ),
}
