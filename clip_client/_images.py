"""Image inputs to CLIP-ready pixels: decode, orient, convert to RGB, resize and crop exactly as the
served model does, then encode.

The served model (``CLIPModel`` + ``CLIPImageProcessor``) resizes the shortest edge to 224 with
Pillow BICUBIC, center-crops 224x224 at the floor offset and converts to RGB, compositing alpha onto
white. A 224x224 RGB image passes through that unchanged, so doing the same resize and crop here and
sending the result losslessly gives the server exactly the pixels it would have computed from the
original file, in a fraction of the bytes.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError, InvalidInputError
from .types import ImageFormat

__all__ = ["ImageOptions", "PreparedImage", "clip_resize_crop", "png_rgb", "prepare_image", "to_rgb"]

_EXIF_ORIENTATION = 0x0112
#: Above this many pixels the full-size intermediate of an extreme aspect ratio (a 30000x10 banner)
#: would not fit in memory; such images are resized from the needed region only (see below).
_MAX_INTERMEDIATE_PIXELS = 64_000_000
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class ImageOptions:
    """How images are prepared; derived from the client settings."""

    size: int = 224
    format: ImageFormat = "png"
    jpeg_quality: int = 95
    max_pixels: int = 178_956_970
    #: Let libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale (never below ``size`` on the short
    #: side) before the exact resize: several times faster on photos, close to but not bit-exact.
    fast_decode: bool = False
    #: "encoded": file bytes for the wire; "pixels": a uint8 array for the in-process model.
    want: Literal["encoded", "pixels"] = "encoded"


@dataclass(frozen=True)
class PreparedImage:
    """A CLIP-ready image: ``size`` x ``size`` RGB, as encoded bytes or pixels (whichever was asked)."""

    encoded: bytes | None = None
    pixels: npt.NDArray[np.uint8] | None = None

    def b64(self) -> bytes:
        if self.encoded is None:
            raise ValueError("this image was prepared as pixels, not as encoded bytes")
        return base64.b64encode(self.encoded)


def prepare_image(value: object, index: int | None, opts: ImageOptions) -> PreparedImage:
    """Turn one user input into a :class:`PreparedImage`, or raise an error that names ``index``."""
    raw, path, img = _open(value, index, opts)
    try:
        _check_size(img, index, path, opts)
        if raw is not None and opts.want == "encoded" and _is_ready_as_is(img, opts.size):
            # Already a 224x224 RGB PNG/JPEG with no rotation: the server decodes these very bytes to
            # the pixels we would send. Decode once anyway so a corrupt file fails here, not remotely.
            _load(img, index, path)
            return PreparedImage(encoded=raw)
        if opts.fast_decode and raw is not None:  # only on images we opened: never the caller's
            _draft(img, opts.size)
        _load(img, index, path)
        try:
            rgb = to_rgb(_exif_transpose(img))
        except ValueError as exc:
            raise ImageDecodeError(
                f"cannot convert image mode {img.mode!r} to RGB ({exc})", index=index, path=path
            ) from exc
        out = clip_resize_crop(rgb, opts.size)
        if opts.want == "pixels":
            return PreparedImage(pixels=np.asarray(out, dtype=np.uint8))
        return PreparedImage(encoded=encode(out, opts.format, opts.jpeg_quality))
    finally:
        if raw is not None or path is not None:
            img.close()


def clip_resize_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shortest edge to ``size`` (Pillow BICUBIC, long edge truncated) and center-crop
    ``size`` x ``size`` at the floor offset: ``CLIPImageProcessor``'s arithmetic, bit for bit."""
    width, height = img.size
    if (width, height) == (size, size):
        return img
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    if new_w * new_h <= _MAX_INTERMEDIATE_PIXELS:
        return img.resize((new_w, new_h), Image.Resampling.BICUBIC).crop((left, top, left + size, top + size))
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
    band = img.crop((c0, r0, c1, r1))
    rows = band.resize((size, r1 - r0), Image.Resampling.BICUBIC, box=(x0 - c0, 0, x1 - c0, r1 - r0))
    return rows.resize((size, size), Image.Resampling.BICUBIC, box=(0, y0 - r0, size, y1 - r0))


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB as ``transformers``' ``convert_to_rgb`` makes it: alpha (and palette or colour-key
    transparency) composited onto white. 16-bit and float images are scaled to 8 bits first rather
    than clipped to white, which is what a plain ``convert("RGB")`` would do to them."""
    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        img = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    transparency = img.info.get("transparency") is not None  # a palette index or an RGB/L colour key
    if img.mode == "RGB" and not transparency:
        return img
    if "A" in img.getbands() or transparency:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_AVERAGE = 3  # PNG filter type 3: each byte minus the mean of its left and upper neighbours


def png_rgb(pixels: npt.NDArray[np.uint8]) -> bytes:
    """A standard PNG (8-bit RGB, no interlace) of an ``(H, W, 3)`` uint8 array: lossless.

    Pillow's PNG encoder tries all five filters on every row and keeps the best, which costs as much
    as the deflate itself. Here every row uses the Average filter, computed for the whole image in a
    few numpy operations, and zlib codes it with its run-length strategy; when a quarter or more of
    the filtered bytes are zero (flat regions: graphics, screenshots, backgrounds) zlib's default
    strategy is tried too, since it also finds repeated shapes such as glyphs, and the smaller kept.
    On 224x224 photos this is about 2.7x faster than Pillow's fastest setting for 1-6% more bytes;
    on screenshots it is 6x smaller (``benchmarks/preprocess.py``). Any PNG decoder returns ``pixels``.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"png_rgb takes (H, W, 3) uint8 pixels, not {pixels.shape} {pixels.dtype}")
    height, width = pixels.shape[:2]
    rows = np.ascontiguousarray(pixels).reshape(height, width * 3)
    # floor((left + up) / 2), with zeros left of the first pixel and above the first row (the spec's
    # "Average" predictor); uint16 holds the sum, and the uint8 cast of the difference is its mod 256.
    mean = np.zeros(rows.shape, dtype=np.uint16)
    mean[:, 3:] = rows[:, :-3]
    mean[1:] += rows[:-1]
    mean >>= 1
    filtered = np.empty((height, width * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = _PNG_AVERAGE
    np.subtract(rows, mean, out=filtered[:, 1:], casting="unsafe")
    data = _deflate(filtered.data, zlib.Z_RLE)
    if 4 * np.count_nonzero(filtered) <= 3 * filtered.size:
        other = _deflate(filtered.data, zlib.Z_DEFAULT_STRATEGY)
        data = other if len(other) < len(data) else data
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, no interlace
    return b"".join(
        (_PNG_SIGNATURE, _png_chunk(b"IHDR", header), _png_chunk(b"IDAT", data), _png_chunk(b"IEND", b""))
    )


def _deflate(data: memoryview, strategy: int) -> bytes:
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, strategy)
    return deflate.compress(data) + deflate.flush()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


# --------------------------------------------------------------------------------------------------
# Opening the many kinds of input


def _open(
    value: object, index: int | None, opts: ImageOptions
) -> tuple[bytes | None, str | None, Image.Image]:
    """Returns (encoded bytes if the input was a file or bytes, path if any, an opened image)."""
    if isinstance(value, Image.Image):
        return None, None, value
    if isinstance(value, np.ndarray):
        return None, None, _from_array(value, index)
    path: str | None = None
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        what = "bytes"
    elif isinstance(value, str) and value.startswith("data:"):
        raw = _from_data_uri(value, index)
        what = "data URI"
    elif isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not isinstance(path, str):
            raise InvalidInputError("bytes paths are not supported; pass a str or pathlib.Path", index=index)
        raw = _read_file(path, index)
        what = "file"
    else:
        raise InvalidInputError(_unsupported(value), index=index)
    if not raw:
        raise ImageDecodeError(f"the {what} is empty (0 bytes)", index=index, path=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(
            f"image refused as a possible decompression bomb ({exc}); raise max_image_pixels and "
            "PIL.Image.MAX_IMAGE_PIXELS if it is genuine",
            index=index,
            path=path,
        ) from exc
    except UnidentifiedImageError as exc:
        hint = "" if path is None else " (is it really an image, whatever its extension?)"
        raise ImageDecodeError(
            f"not a recognised image format{hint}; expected JPEG, PNG, GIF, WebP, BMP, TIFF...",
            index=index,
            path=path,
        ) from exc
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(f"cannot read image: {exc}", index=index, path=path) from exc
    return raw, path, img


def _read_file(path: str, index: int | None) -> bytes:
    if path.startswith(("http://", "https://", "s3://", "gs://", "abfss://", "dbfs:/")):
        raise InvalidInputError(
            "URLs are not fetched; download the file first (or pass a local path, /dbfs/... or "
            "/Volumes/... path, or the bytes)",
            index=index,
            path=path,
        )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidInputError("no such file", index=index, path=path) from None
    except OSError as exc:
        raise InvalidInputError(f"cannot access file: {exc.strerror or exc}", index=index, path=path) from exc
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInputError("is a directory, not an image file", index=index, path=path)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(
            "is not a regular file (a FIFO, socket or device); pass the image's bytes instead",
            index=index,
            path=path,
        )
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot read file: {exc.strerror or exc}", index=index, path=path) from exc


def _from_data_uri(uri: str, index: int | None) -> bytes:
    head, sep, data = uri.partition(",")
    if not sep or not head.endswith(";base64"):
        raise InvalidInputError(
            "data URIs must look like 'data:image/png;base64,<data>'", index=index, path=None
        )
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"the data URI's base64 is invalid ({exc})", index=index) from exc


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
            f"image is {width}x{height} = {width * height:,} pixels, over max_image_pixels="
            f"{opts.max_pixels:,} (a decompression-bomb guard); raise max_image_pixels if it is genuine",
            index=index,
            path=path,
        )


def _load(img: Image.Image, index: int | None, path: str | None) -> None:
    try:
        img.load()
    except _DECODE_ERRORS as exc:
        raise ImageDecodeError(
            f"cannot decode image ({exc}); the file may be truncated or corrupt", index=index, path=path
        ) from exc


def _draft(img: Image.Image, size: int) -> None:
    """Ask libjpeg for a reduced-scale decode whose short side stays at least twice ``size``, so
    the bicubic resize still has real pixels to average (only JPEGs support this)."""
    width, height = img.size
    short = min(width, height)
    if img.format != "JPEG" or short < 4 * size:
        return
    scale = 2 * size / short
    img.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block must not make an otherwise good image fail
        return 1
    return value if isinstance(value, int) else 1


def _exif_transpose(img: Image.Image) -> Image.Image:
    if _orientation(img) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


def _is_ready_as_is(img: Image.Image, size: int) -> bool:
    return (
        img.format in ("PNG", "JPEG")
        and img.mode == "RGB"
        and img.size == (size, size)
        and img.info.get("transparency") is None
        and _orientation(img) == 1
    )
