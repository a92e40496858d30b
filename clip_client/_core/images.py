"""Image inputs to CLIP-ready pixels: decode, orient, convert to RGB, resize and crop exactly as the
served model does, then encode.

The served model (`CLIPModel` + `CLIPImageProcessor`) converts to RGB with `transformers`'
`convert_to_rgb` (Pillow's own mode conversions, alpha composited onto white), resizes the
shortest edge to 224 with Pillow BICUBIC and center-crops 224x224 at the floor offset. A 224x224 RGB
image passes through that unchanged, so doing the same conversion, resize and crop here and sending
the result losslessly gives the server exactly the pixels it would have computed from the original
file, in a fraction of the bytes.

With `image_preparation="server"` the endpoint does that work instead: a file input goes as given
(after its header shows an image Pillow can open), an in-memory image as a lossless PNG at its own
size (`png_lossless`).

Every input is prepared independently: whatever goes wrong with one becomes an
[`ImageDecodeError`][clip_client.ImageDecodeError] (or [`InvalidInputError`][clip_client.InvalidInputError])
naming its index, never an untyped exception, so `on_error="mark"` can contain it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import math
import os
import stat
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from .. import _constants as C
from ..errors import ClipClientError, ImageDecodeError, InvalidInputError
from ..types import HighBitDepth, ImageFormat, ImagePreparation
from .png import png_8bit, png_rgb

__all__ = [
    "ImageOptions",
    "InvalidBase64",
    "PreparedImage",
    "clip_resize_crop",
    "from_plain_base64",
    "png_lossless",
    "png_rgb",
    "prepare_image",
    "to_rgb",
]

_EXIF_ORIENTATION = 0x0112
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""EXIF orientation -> the transpose that shows the image upright: Pillow's own table
(`ImageOps.exif_transpose`), applied here without that function's rewrite of the metadata,
which raises on a tag stored with the wrong type.
"""
_MAX_INTERMEDIATE_PIXELS = 64_000_000
"""Above this many pixels the full-size intermediate of an extreme aspect ratio (a 30000x10 banner)
would not fit in memory; such images are resized from the needed region only (see below).
"""
# Integer greyscale wider than 8 bits; `high_bit_depth="scale"` maps 0..65535 onto 0..255.
_WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_SUGGESTED_DIGITS = 2
"""Pixel counts the advice suggests for `max_image_pixels` are rounded up to this many digits."""
_QUOTED_CHARS = 200
"""At most this much of an exception's text is quoted in an error message."""


@dataclass(frozen=True)
class ImageOptions:
    """How images are prepared; derived from the client settings."""

    size: int = C.DEFAULT_IMAGE_SIZE
    format: ImageFormat = C.DEFAULT_IMAGE_FORMAT
    jpeg_quality: int = C.DEFAULT_JPEG_QUALITY
    max_pixels: int = C.DEFAULT_MAX_IMAGE_PIXELS
    fast_decode: bool = False
    """Let libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale (never below `size` on the short
    side) before the exact resize: several times faster on photos, close to but not bit-exact.
    """
    want: Literal["encoded", "pixels"] = "encoded"
    """"encoded": file bytes for the wire; "pixels": a uint8 array for the in-process model."""
    high_bit_depth: HighBitDepth = C.DEFAULT_HIGH_BIT_DEPTH
    """16-bit and 32-bit integer greyscale (`I;16`, `I;16B`, `I;16L`, `I;16N`, `I`):
    "clip" (the default) does what the served processor does, Pillow's conversion, which clips
    every value above 255 to 255; "scale" maps 0..65535 linearly onto 0..255 instead (a useful
    picture of full-range 16-bit data, but not the embedding the endpoint computes from the file).
    """
    preparation: ImagePreparation = C.DEFAULT_IMAGE_PREPARATION
    """"client": decode, resize and crop here, send `size` x `size` (the default). "server": the
    endpoint prepares; a file input is sent as given, an in-memory image as a lossless PNG at its
    own size (`format`, `jpeg_quality`, `fast_decode` and `size` then play no part).
    Ignored when `want == "pixels"`: a backend that takes pixels is its own server.
    """


@dataclass(frozen=True)
class PreparedImage:
    """One image input, prepared exactly as the served `CLIPImageProcessor` would see it: decoded,
    oriented, converted to RGB, resized (shortest edge, Pillow BICUBIC) and centre-cropped to
    `image_size` x `image_size`. What a [`Backend`][clip_client.Backend] receives in
    `payload()`: one of the two fields is set, as its `image_input` asks.

    Attributes:
        encoded: the crop as an image file (PNG unless `image_format` says otherwise), or the
            caller's own file when it already was a `image_size` square RGB PNG/JPEG. With
            `image_preparation="server"`: the input's own file bytes, as given, of any size and
            format; or, for a PIL image or an array, a lossless PNG of it at its own size.
        pixels: the crop as a `(image_size, image_size, 3)` uint8 RGB array.
    """

    encoded: bytes | None = None
    pixels: npt.NDArray[np.uint8] | None = None

    def b64(self) -> bytes:
        if self.encoded is None:
            raise ValueError("this image was prepared as pixels, not as encoded bytes")
        return base64.b64encode(self.encoded)


@dataclass
class _Source:
    """What one input turned out to be, filled in as it is opened."""

    path: str | None = None
    """The path as the caller gave it (before `~` expansion), for messages; None if not a file."""
    raw: bytes | None = None
    """The encoded file, when the input was a file, bytes, a data URI or a base64 string."""
    img: Image.Image | None = None
    """The opened image; the caller's own when `shared`."""
    shared: bool = False
    """A PIL image the caller passed: it may appear many times in one call, or in concurrent calls."""


def prepare_image(value: object, index: int | None, opts: ImageOptions) -> PreparedImage:
    """Turn one user input into a [`PreparedImage`][clip_client.PreparedImage] (`opts.size` x `opts.size` RGB:
    PNG, BMP or JPEG bytes, or an `(size, size, 3)` uint8 array when `opts.want == "pixels"`).

    With `opts.preparation == "server"` (and `want == "encoded"`) nothing is resized: a file
    input's bytes come back as given, once its header shows an image Pillow can open within
    `max_pixels` (its pixels are not decoded, so a file corrupt past its header fails on the
    endpoint, as a 400); a PIL image or an array comes back as `png_lossless` of it, EXIF
    orientation applied.

    Raises [`InvalidInputError`][clip_client.InvalidInputError] for an input of the wrong kind (a missing
    file, a URL, a float array...) and [`ImageDecodeError`][clip_client.ImageDecodeError] for data that does
    not decode to an image. Any other exception one input raises while being prepared (a Pillow bug, a
    metadata parser tripping on a malformed file) becomes an
    [`ImageDecodeError`][clip_client.ImageDecodeError] too, with the original chained as `__cause__`: one bad
    input never escapes as an untyped error. Each names `index` (None for a bare call) and the path where the
    input was one.

    Thread-safe: a PIL image the caller passed is touched by one thread at a time, however many
    times it appears in one call or in concurrent calls; distinct inputs prepare in parallel.
    """
    src = _Source()
    try:
        return _prepare(value, index, opts, src)
    except ClipClientError:
        raise
    except Exception as exc:  # one input's failure, whatever it is, must be typed and contained
        raise ImageDecodeError(
            f"cannot prepare image: unexpected {type(exc).__name__} ({_quote(exc)})",
            index=index,
            path=src.path,
        ) from exc
    finally:
        if src.img is not None and not src.shared:
            src.img.close()


def _prepare(value: object, index: int | None, opts: ImageOptions, src: _Source) -> PreparedImage:
    img = _open(value, index, src)
    path = src.path
    _check_size(img, index, path, opts)
    if opts.preparation == "server" and opts.want == "encoded":
        if src.raw is not None:  # a file: its header has been read, which is all the check wanted
            return PreparedImage(encoded=src.raw)
        with _exclusive(img) if src.shared else nullcontext():
            _load(img, index, path)
            return PreparedImage(encoded=png_lossless(_exif_transpose(img), opts.high_bit_depth))
    if src.raw is not None and opts.want == "encoded" and _is_ready_as_is(img, opts.size):
        # Already a 224x224 RGB PNG/JPEG with no rotation: the server decodes these very bytes to
        # the pixels we would send. Decode once anyway so a corrupt file fails here, not remotely.
        _load(img, index, path)
        return PreparedImage(encoded=src.raw)
    if opts.fast_decode and src.raw is not None:  # only on images we opened: never the caller's
        _draft(img, opts.size)
    with _exclusive(img) if src.shared else nullcontext():
        _load(img, index, path)
        oriented = _exif_transpose(img)
        try:
            rgb = to_rgb(oriented, opts.high_bit_depth)
        except ValueError as exc:
            raise ImageDecodeError(
                f"cannot convert image mode {img.mode!r} to RGB ({_quote(exc)})", index=index, path=path
            ) from exc
        out = clip_resize_crop(rgb, opts.size)
        if out is img:  # a size x size RGB image of the caller's: take our own copy under the lock
            out = img.copy()
    if opts.want == "pixels":
        return PreparedImage(pixels=np.asarray(out, dtype=np.uint8))
    return PreparedImage(encoded=encode(out, opts.format, opts.jpeg_quality))


def _quote(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= _QUOTED_CHARS else f"{text[: _QUOTED_CHARS - 20]}…{text[-19:]}"


# --------------------------------------------------------------------------------------------------
# One caller's PIL image, one thread at a time

_locks_guard = threading.Lock()
_locks: dict[int, tuple[threading.Lock, list[int]]] = {}
"""id(image) -> [its lock, how many threads hold or wait for it]. Keyed by id because PIL images
define __eq__ and so are unhashable; an id stays unique while some thread holds a reference to
the image, which every thread in this table does, and the entry goes when the last one leaves.
"""


@contextmanager
def _exclusive(img: Image.Image) -> Iterator[None]:
    """Serialise everything that reads or changes a caller's PIL image (`load` of a lazily opened
    file, the EXIF read, `convert`, `resize`): Pillow objects are not thread-safe, and two
    threads loading one lazy image at once read its file through one file pointer and fail with
    false "truncated" errors."""
    key = id(img)
    with _locks_guard:
        entry = _locks.get(key)
        if entry is None:
            entry = _locks[key] = (threading.Lock(), [0])
        entry[1][0] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _locks_guard:
            entry[1][0] -= 1
            if entry[1][0] == 0:
                del _locks[key]


def clip_resize_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shortest edge to `size` (Pillow BICUBIC, long edge truncated) and center-crop
    `size` x `size` at the floor offset: `CLIPImageProcessor`'s arithmetic, bit for bit."""
    width, height = img.size
    if (width, height) == (size, size):
        return img
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if new_w * new_h <= _MAX_INTERMEDIATE_PIXELS:
        return _crop(
            img.resize((new_w, new_h), Image.Resampling.BICUBIC), (left, top, left + size, top + size)
        )
    # Extreme aspect ratio: resizing the whole image would allocate gigabytes. Resample only the
    # region that survives the crop (plus the filter's reach), in two single-axis passes,
    # horizontal then vertical. A single resize(box=...) call does not round like the full resize:
    # on a tall image it moves a quarter of the pixels by up to 8 levels. Done this way the result
    # is within one level of the full resize, in about 1 pixel in 10,000 (Pillow's float32 box).
    sx, sy = width / new_w, height / new_h
    x0, x1, y0, y1 = left * sx, (left + size) * sx, top * sy, (top + size) * sy
    reach_x, reach_y = 2 * max(sx, 1.0) + 1, 2 * max(sy, 1.0) + 1  # BICUBIC support, in source pixels
    c0, c1 = max(0, math.floor(x0 - reach_x)), min(width, math.ceil(x1 + reach_x))
    r0, r1 = max(0, math.floor(y0 - reach_y)), min(height, math.ceil(y1 + reach_y))
    band = _crop(img, (c0, r0, c1, r1))
    rows = band.resize((size, r1 - r0), Image.Resampling.BICUBIC, box=(x0 - c0, 0, x1 - c0, r1 - r0))
    return rows.resize((size, size), Image.Resampling.BICUBIC, box=(0, y0 - r0, size, y1 - r0))


def _crop(img: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """`img.crop(box)`, pixel for pixel in every mode, without Pillow's decompression-bomb check
    of the crop's size against its process-wide `MAX_IMAGE_PIXELS` (the client's
    `max_image_pixels` is the one limit): a nearest-neighbour resize at scale 1 copies the box."""
    left, top, right, bottom = box
    return img.resize((right - left, bottom - top), Image.Resampling.NEAREST, box=box)


def to_rgb(img: Image.Image, high_bit_depth: HighBitDepth = "clip") -> Image.Image:
    """RGB exactly as the served processor makes it: `transformers`' `convert_to_rgb` (PIL path),
    which composites onto white any image with an alpha band (a band named `A`: `RGBA`, `LA`,
    `PA`, and also `LAB`, whose alpha is opaque) or with `transparency` in its info (a palette's
    alpha, or an `L`/`RGB`/`I;16` colour key), and gives everything else to Pillow's
    `convert("RGB")`. Pillow's conversions are the rule for every mode: 16-bit and 32-bit integer
    grey clip at 255 (so most of a 16-bit picture turns white), floats (`F`) are truncated and
    clipped to 0..255, premultiplied `RGBa` drops its alpha band.

    Two departures: one for a mode the endpoint cannot take at all, and one opt-in.

    - `La` (grey with premultiplied alpha: Pillow opens grey TIFFs with associated alpha so) has
      no Pillow conversion, so the processor raises on it; here it is composited onto white
      straight from the premultiplied values, `L + 255 - a`, exactly.
    - `high_bit_depth="scale"` (opt-in) maps 16-bit and 32-bit integer grey from 0..65535 onto
      0..255, `(v * 255 + 32767) // 65535` after clipping to 0..65535, keeping a colour key as
      transparency, instead of clipping at 255: a useful picture of full-range data, but not what
      the endpoint computes from the same file.

    Raises `ValueError` for a mode Pillow cannot convert.
    """
    if high_bit_depth == "scale" and img.mode in _WIDE_MODES:
        img = _scaled_to_8_bits(img)
    elif img.mode == "La":
        premultiplied = np.asarray(img).astype(np.int16)
        on_white = premultiplied[:, :, 0] + 255 - premultiplied[:, :, 1]
        img = Image.fromarray(np.clip(on_white, 0, 255).astype(np.uint8), "L")
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _scaled_to_8_bits(img: Image.Image) -> Image.Image:
    wide = np.asarray(img).astype(np.int64)
    grey = Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8), "L")
    key = img.info.get("transparency")
    if not isinstance(key, int):
        return grey
    alpha = np.where(wide == key, 0, 255).astype(np.uint8)  # a 16-bit grey PNG's tRNS colour key
    return Image.merge("LA", (grey, Image.fromarray(alpha, "L")))


def encode(img: Image.Image, fmt: ImageFormat, jpeg_quality: int) -> bytes:
    if fmt == "png":
        return png_rgb(np.asarray(img))  # prepared images are RGB: to_rgb runs before the resize
    buf = io.BytesIO()
    if fmt == "bmp":
        # Lossless and uncompressed: nearly free to encode, ~50% more bytes on the wire than PNG.
        img.save(buf, format="BMP")
    else:
        img.save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue()


_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16"})
"""Modes a PNG holds and Pillow reads back as the same mode, pixels and transparency (`P` only
with an RGB palette: an RGBA palette is written as a tRNS chunk, which reads back as a
`transparency` the image did not have, and `convert_to_rgb` then composites where it did not).
"""
_FAST_PNG_MODES = frozenset({"L", "LA", "RGB", "RGBA"})
"""Modes the fast writer takes (when no `transparency` colour key needs a tRNS chunk)."""


def png_lossless(img: Image.Image, high_bit_depth: HighBitDepth = "clip") -> bytes:
    """A PNG of `img` at its own size from which an endpoint's processor sees what it would see
    from `img` itself: what `image_preparation="server"` sends for a PIL image or an array.

    The processor's first step is `convert_to_rgb` (Pillow's conversions, alpha and colour keys
    composited onto white), so an image whose mode a PNG holds is written in that mode, pixels and
    transparency as they are (`1`, `L`, `LA`, `RGB`, `RGBA`, `I;16`, `P` with an RGB
    palette); `L`, `LA`, `RGB` and `RGBA` go through the fast writer of `png_rgb`.
    Every other mode (`CMYK`, `YCbCr`, `LAB`, `HSV`, `F`, `I`, `I;16B`, `RGBa`,
    `La`, `PA`, `P` with an RGBA palette...) is first converted as `to_rgb` does, which is
    `convert_to_rgb`'s own result (and for `La`, which the processor cannot take, the client's
    exact composite). `high_bit_depth="scale"` scales 16-bit and 32-bit grey to 8 bits first, as
    in client-side preparation. No EXIF or ICC profile is written: orient the pixels first.

    Raises `ValueError` for a mode Pillow cannot convert.
    """
    if high_bit_depth == "scale" and img.mode in _WIDE_MODES:
        img = _scaled_to_8_bits(img)
    keyed = img.info.get("transparency") is not None
    if img.mode in _FAST_PNG_MODES and not (keyed and img.mode in ("L", "RGB")):
        return png_8bit(np.asarray(img))
    if img.mode in _PNG_MODES and (img.mode != "P" or img.palette is None or img.palette.mode == "RGB"):
        buf = io.BytesIO()
        try:
            img.save(buf, "PNG", compress_level=1, icc_profile=None)
        except (OSError, ValueError, TypeError):  # a transparency Pillow cannot write: convert instead
            pass
        else:
            return buf.getvalue()
    return png_8bit(np.asarray(to_rgb(img, high_bit_depth)))


# --------------------------------------------------------------------------------------------------
# Opening the many kinds of input

_URL_PREFIXES = ("http://", "https://", "s3://", "gs://", "abfss://", "dbfs:/")


def _open(value: object, index: int | None, src: _Source) -> Image.Image:
    """Open one input (without decoding its pixels yet) and record what it was in `src`."""
    if isinstance(value, Image.Image):
        src.img, src.shared = value, True
        return value
    if isinstance(value, np.ndarray):
        src.img = _from_array(value, index)
        return src.img
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        what = "image bytes"
    elif isinstance(value, str) and value.startswith("data:"):
        raw = _from_data_uri(value, index)
        what = "data URI"
    elif isinstance(value, (str, os.PathLike)):
        raw, src.path = _from_path_or_base64(value, index)
        what = "file" if src.path is not None else "base64 string"
    else:
        raise InvalidInputError(_unsupported(value), index=index)
    src.raw = raw
    path = src.path
    if not raw:
        verb = "are" if what.endswith("bytes") else "is"
        raise ImageDecodeError(f"the {what} {verb} empty (0 bytes)", index=index, path=path)
    try:
        src.img = _open_header(raw)
    except UnidentifiedImageError as exc:
        hint = "" if path is None else " (is it really an image, whatever its extension?)"
        raise ImageDecodeError(
            f"not a recognised image format{hint}; expected JPEG, PNG, GIF, WebP, BMP, TIFF...",
            index=index,
            path=path,
        ) from exc
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"cannot read image: {_quote(exc)}", index=index, path=path) from exc
    return src.img


def _open_header(raw: bytes) -> Image.Image:
    """`Image.open` (the header only), with the client's `max_image_pixels`, checked next by
    `_check_size`, as the one size limit: Pillow's own (`PIL.Image.MAX_IMAGE_PIXELS`, a process
    global this module never changes) warns above it and refuses above twice it. Its warning is
    silenced for this call; an image it refuses is opened again without its check."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError:
            pass  # over Pillow's limit, which is not the client's: the header says more below
    return _open_without_pillows_limit(raw)


def _open_without_pillows_limit(raw: bytes) -> Image.Image:
    """What `Image.open` does for bytes, less its decompression-bomb check: the first registered
    format that accepts the header and opens it (Pillow's registry, `Image.ID`/`Image.OPEN`,
    the one `Image.register_open` fills)."""
    Image.init()
    prefix = raw[:16]
    for name in Image.ID:
        factory, accept = Image.OPEN[name]
        accepted = accept(prefix) if accept is not None else True
        if not accepted or isinstance(accepted, str):  # a str is Pillow's "no, and here is why"
            continue
        try:
            return factory(io.BytesIO(raw), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue
    raise UnidentifiedImageError("cannot identify image file")


def _from_path_or_base64(value: str | os.PathLike[str], index: int | None) -> tuple[bytes, str | None]:
    """The file's bytes and the path as given; or, for a `str` that names no file but is the
    plain base64 of an image (a Databricks table's `image_base64` column), the decoded bytes and
    no path. A leading `~` is expanded (`os.path.expanduser`), for `str` and `os.PathLike`
    alike; messages show the path as given, plus what it expanded to."""
    given = os.fspath(value)
    if not isinstance(given, str):
        raise InvalidInputError("bytes paths are not supported; pass a str or pathlib.Path", index=index)
    if given.lower().startswith("file://"):
        raise InvalidInputError(
            "file:// URLs are not read; pass the path itself (the part after file://)",
            index=index,
            path=given,
        )
    if given.lower().startswith(_URL_PREFIXES):
        raise InvalidInputError(
            "URLs are not fetched; download the file first (or pass a local path, /dbfs/... or "
            "/Volumes/... path, or the bytes)",
            index=index,
            path=given,
        )
    path = os.path.expanduser(given)
    expanded = "" if path == given else f" (~ expanded to {path!r})"
    try:
        st = os.stat(path)
    except (OSError, ValueError) as exc:
        # A file of that name wins (a real file may be named like base64: "/9j/..." is how every
        # JPEG's base64 starts); only a string that names no file is tried as base64.
        try:
            decoded = from_plain_base64(given) if isinstance(value, str) else None
        except InvalidBase64 as bad:
            raise InvalidInputError(
                f"no such file, and not base64 of an image either: {bad}", index=index, path=given
            ) from None
        if decoded is not None:
            return decoded, None
        raise _stat_error(exc, expanded, index, given) from (
            None if isinstance(exc, FileNotFoundError) else exc
        )
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(f"is a directory, not an image file{expanded}", index=index, path=given)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(
            f"is not a regular file (a FIFO, socket or device){expanded}; pass the image's bytes instead",
            index=index,
            path=given,
        )
    try:
        with open(path, "rb") as fh:
            return fh.read(), given
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read file{expanded}: {exc.strerror or _quote(exc)}", index=index, path=given
        ) from exc


def _stat_error(exc: OSError | ValueError, expanded: str, index: int | None, given: str) -> InvalidInputError:
    """The error for a string or path that names no readable file (and is no image's base64)."""
    if isinstance(exc, ValueError):  # an embedded NUL character
        reason = f"not a valid file path ({_quote(exc)})"
    elif exc.errno == errno.ENAMETOOLONG:
        reason = "not an existing file (too long for a file name), and not base64 of an image either"
    elif isinstance(exc, FileNotFoundError):
        reason = f"no such file{expanded}"
    else:
        reason = f"cannot access file{expanded}: {exc.strerror or _quote(exc)}"
    return InvalidInputError(reason, index=index, path=given)


_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (  # (signature, offset, format)
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WebP"),  # after b"RIFF" and the length
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "BigTIFF"),
    (b"MM\x00+", 0, "BigTIFF"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypavis", 4, "AVIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
)
"""Leading bytes of the image formats a plain base64 string is accepted for, and their names."""
# Base64 characters decoded to test a string's signature: 12 bytes, enough for every one above.
_PROBE_CHARS = 16
_WHITESPACE = str.maketrans("", "", " \t\r\n\v\f")


def _image_signature(head: bytes) -> str | None:
    for signature, offset, name in _SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if head[:4] == b"RIFF" and head[8:12] != b"WEBP":
        return None
    # BMP: "BM", the file size, then two reserved 16-bit fields that writers leave at zero.
    return "BMP" if head[:2] == b"BM" and head[6:10] == b"\x00\x00\x00\x00" else None


class InvalidBase64(ValueError):
    """A string that starts like the base64 of an image, but is not valid base64 as a whole."""


def from_plain_base64(text: str) -> bytes | None:
    """The bytes a plain base64 string (standard alphabet, padded; surrounding whitespace and MIME
    line breaks tolerated) encodes, when they start like an image file; None when the string does
    not start like the base64 of an image. Only a short prefix is decoded to test that, so a long
    string that is not base64 costs next to nothing. Raises `InvalidBase64` when the start
    fits but the whole does not decode (strictly: no stray characters, correct padding)."""
    probe = text.lstrip()[: 4 * _PROBE_CHARS].translate(_WHITESPACE)[:_PROBE_CHARS]
    if len(probe) < _PROBE_CHARS:
        return None
    try:
        head = base64.b64decode(probe, validate=True)
    except (binascii.Error, ValueError):
        return None
    kind = _image_signature(head)
    if kind is None:
        return None
    try:
        return base64.b64decode(text.translate(_WHITESPACE), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidBase64(f"it starts like a {kind}'s base64, but {_quote(exc)}") from exc


def _from_data_uri(uri: str, index: int | None) -> bytes:
    head, sep, data = uri.partition(",")
    if not sep or not head.endswith(";base64"):
        raise InvalidInputError(
            "data URIs must look like 'data:image/png;base64,<data>'", index=index, path=None
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"the data URI's base64 is invalid ({_quote(exc)})", index=index) from exc


def _from_array(arr: npt.NDArray[np.generic], index: int | None) -> Image.Image:
    if arr.dtype != np.uint8:
        hint = ""
        if np.issubdtype(arr.dtype, np.floating):
            hint = "; for floats in [0, 1] use (arr * 255).round().clip(0, 255).astype(np.uint8)"
        raise InvalidInputError(f"image arrays must be uint8, got {arr.dtype}{hint}", index=index)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise InvalidInputError(
            f"image arrays must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got shape {arr.shape}",
            index=index,
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInputError(f"image array is empty (shape {arr.shape})", index=index)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.ndim if arr.ndim == 2 else arr.shape[2]]
    return Image.fromarray(np.ascontiguousarray(arr), mode)


def _unsupported(value: object) -> str:
    kind = type(value).__name__
    if value is None:
        return "got None; expected an image path, bytes, a PIL image or a uint8 array"
    if isinstance(value, (list, tuple)):
        return f"got a nested {kind}; pass a flat list of images"
    return (
        f"unsupported image input of type {kind}; expected a path (str or os.PathLike), a "
        "data:image/...;base64 URI, bytes, a PIL.Image.Image or a uint8 numpy array"
    )


# --------------------------------------------------------------------------------------------------
# Checks and decoding


def _check_size(img: Image.Image, index: int | None, path: str | None, opts: ImageOptions) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})", index=index, path=path)
    if width * height > opts.max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height:,} pixels, refused as a possible "
            "decompression bomb",
            index=index,
            path=path,
            setting="max_image_pixels",
            suggestion=_round_up(width * height),
            # The advice names the limit too, so that each caller reads it under the setting's name.
            advice=f"it is over {{max_image_pixels={opts.max_pixels:_}}}: raise {{max_image_pixels}} if it "
            "is genuine",
        )


def _round_up(pixels: int) -> int:
    """`pixels` rounded up to two significant digits: 3,072 -> 3,100; 199,983,872 -> 200,000,000."""
    step: int = 10 ** max(len(str(pixels)) - _SUGGESTED_DIGITS, 0)
    return -(-pixels // step) * step


def _load(img: Image.Image, index: int | None, path: str | None) -> None:
    try:
        img.load()
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(
            f"cannot decode image ({exc}); the file may be truncated or corrupt", index=index, path=path
        ) from exc


def _draft(img: Image.Image, size: int) -> None:
    """Ask libjpeg for a reduced-scale decode whose short side stays at least twice `size`, so
    the bicubic resize still has real pixels to average (only JPEGs support this)."""
    width, height = img.size
    short = min(width, height)
    if img.format != "JPEG" or short < 4 * size:
        return
    scale = 2 * size / short
    img.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))


def _transpose_method(img: Image.Image) -> Image.Transpose | None:
    """The transpose that applies the image's EXIF orientation (2 to 8), or None for orientation 1,
    none at all, or metadata that cannot be read: a malformed EXIF block (`struct.error`, a wrong
    type, a bad offset) leaves the pixels as stored rather than failing the image. Like Pillow, an
    orientation stored as another numeric type (`6.0`) counts."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
        return _ORIENTATION_TRANSPOSE.get(value) if not isinstance(value, bool) else None
    except Exception:  # whatever the parser trips on, the metadata is ignored
        return None


def _exif_transpose(img: Image.Image) -> Image.Image:
    """The image as a viewer shows it. Pillow's `ImageOps.exif_transpose` also rewrites the EXIF
    block (`Exif.tobytes`), which raises on a tag stored with the wrong type; only the pixels
    matter here, so this transposes and leaves the metadata alone."""
    method = _transpose_method(img)
    return img if method is None else img.transpose(method)


def _is_ready_as_is(img: Image.Image, size: int) -> bool:
    return (
        img.format in ("PNG", "JPEG")
        and img.mode == "RGB"
        and img.size == (size, size)
        and img.info.get("transparency") is None
        and _transpose_method(img) is None
    )
