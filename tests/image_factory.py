"""Real image files of many kinds, written with Pillow into a folder, for the image tests.

``write_images(folder)`` writes every kind and returns ``{name: path}``; the pictures are gradients
plus seeded noise, so resampling and cropping change pixels measurably and every run writes the same
bytes. ``KINDS`` describes each one. Generating the whole set takes well under a second.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "EXIF_ORIENTATION",
    "KINDS",
    "exif_bytes",
    "picture",
    "png_header_only",
    "write_images",
]

EXIF_ORIENTATION = 0x0112


def picture(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A uint8 HxWxC picture: a different gradient per channel plus noise, so that no two pixels,
    rows or crops are alike and any error in the resize or the crop offset shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    fx = x / max(width - 1, 1)
    fy = y / max(height - 1, 1)
    planes = [255 * fx, 255 * fy, 255 * (1 - fx) * fy + 60 * np.sin(x / 7.0), 255 * (fx + fy) / 2]
    base = np.stack(planes[:channels], axis=-1)
    noisy = base + rng.normal(0.0, 18.0, size=base.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def screenshot(size: int = 224) -> np.ndarray:
    """Black text and a red box on white: flat regions and repeated glyphs, like a screenshot."""
    from PIL import ImageDraw

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for y in range(0, size, 14):
        draw.text((4, y), "The quick brown fox jumps 0123", fill=(0, 0, 0))
    draw.rectangle((150, 20, 210, 80), fill=(255, 0, 0))
    return np.asarray(img)


def flat_with_noisy_rows(size: int = 224, rows: int = 5) -> np.ndarray:
    """One flat colour with ``rows`` rows of noise at the top."""
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:] = (30, 120, 200)
    arr[:rows] = np.random.default_rng(0).integers(0, 256, (rows, size, 3), dtype=np.uint8)
    return arr


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` 8-bit grey pixels and holds none: opening it reads
    only the header, so it stands in cheaply for a huge image (or a 0x0 one)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------------------------------
# One writer per kind. Each takes the target path and writes the file.


def _rgb(width: int, height: int, fmt: str, seed: int, **save: object) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        Image.fromarray(picture(width, height, 3, seed), "RGB").save(path, fmt, **save)

    return write


def _rgba_png(path: Path) -> None:
    arr = picture(300, 200, 4, seed=2)
    alpha = arr[:, :, 3]
    alpha[:, :60] = 0  # fully transparent band
    alpha[:, 240:] = 255  # fully opaque band; a partial gradient in between
    Image.fromarray(arr, "RGBA").save(path, "PNG")


def _la_png(path: Path) -> None:
    arr = picture(210, 260, 2, seed=3)
    Image.fromarray(arr, "LA").save(path, "PNG")


def _rgb_colour_key_png(path: Path) -> None:
    """An RGB PNG whose tRNS chunk makes one colour transparent (no alpha channel)."""
    arr = picture(280, 210, 3, seed=25)
    arr[50:150, 70:200] = (10, 200, 30)
    Image.fromarray(arr, "RGB").save(path, "PNG", transparency=(10, 200, 30))


def _palette_gif(path: Path) -> None:
    rgb = Image.fromarray(picture(320, 240, 3, seed=4), "RGB")
    pal = rgb.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    idx = np.asarray(pal).copy()
    idx[40:120, 50:200] = 63  # a transparent rectangle
    out = Image.fromarray(idx, "P")
    out.putpalette(pal.getpalette() or [])
    out.save(path, "GIF", transparency=63)


def _palette_png(path: Path) -> None:
    """Palette PNG with per-entry alpha (a tRNS chunk), a common web format."""
    rgb = Image.fromarray(picture(230, 180, 3, seed=5), "RGB")
    pal = rgb.quantize(colors=16, dither=Image.Dither.NONE)
    alphas = bytes(range(0, 256, 16))  # entry i has alpha 16*i
    pal.save(path, "PNG", transparency=alphas)


def _cmyk_jpeg(path: Path) -> None:
    arr = picture(400, 300, 4, seed=6)
    Image.fromarray(arr, "CMYK").save(path, "JPEG", quality=92)


def _gray16_png(path: Path) -> None:
    height, width = 192, 256
    ramp = np.linspace(0, 65535, width * height).reshape(height, width)
    rng = np.random.default_rng(7)
    wide = np.clip(np.rint(ramp + rng.normal(0, 900, ramp.shape)), 0, 65535).astype(np.uint16)
    wide[0, 0], wide[0, 1] = 0, 65535  # both ends of the range present
    Image.fromarray(wide).save(path, "PNG")


def _gray8_png(path: Path) -> None:
    Image.fromarray(picture(250, 333, 1, seed=8)[:, :, 0], "L").save(path, "PNG")


def _exif_jpeg(width: int, height: int, orientation: int, seed: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        img = Image.fromarray(picture(width, height, 3, seed), "RGB")
        img.save(path, "JPEG", quality=90, exif=exif_bytes(orientation))

    return write


def _large_jpeg(path: Path) -> None:
    """4000x3000: noise at a quarter of the resolution, upscaled, keeps generation fast while the
    full-size file is still megabytes."""
    small = Image.fromarray(picture(1000, 750, 3, seed=21), "RGB")
    small.resize((4000, 3000), Image.Resampling.BILINEAR).save(path, "JPEG", quality=90)


def _bilevel_png(path: Path) -> None:
    arr = picture(97, 131, 1, seed=9)[:, :, 0] > 128
    Image.fromarray(arr).convert("1").save(path, "PNG")


#: name -> (file name, writer). Names are what tests refer to.
KINDS: dict[str, tuple[str, Callable[[Path], None]]] = {
    "rgb_jpeg": ("rgb.jpg", _rgb(640, 480, "JPEG", seed=1, quality=90)),
    "rgb_png": ("rgb.png", _rgb(300, 200, "PNG", seed=11)),
    "rgba_png": ("rgba.png", _rgba_png),
    "la_png": ("la.png", _la_png),
    "rgb_colour_key_png": ("rgb_colour_key.png", _rgb_colour_key_png),
    "palette_gif": ("palette.gif", _palette_gif),
    "palette_png": ("palette_trns.png", _palette_png),
    "cmyk_jpeg": ("cmyk.jpg", _cmyk_jpeg),
    "gray16_png": ("gray16.png", _gray16_png),
    "gray8_png": ("gray8.png", _gray8_png),
    "bilevel_png": ("bilevel.png", _bilevel_png),
    "webp": ("rgb.webp", _rgb(333, 251, "WEBP", seed=12, lossless=True, method=0)),
    "bmp": ("rgb.bmp", _rgb(181, 203, "BMP", seed=13)),
    "exif6_jpeg": ("exif6.jpg", _exif_jpeg(320, 240, 6, seed=14)),
    "exif3_jpeg": ("exif3.jpg", _exif_jpeg(300, 260, 3, seed=15)),
    "exif8_jpeg": ("exif8.jpg", _exif_jpeg(260, 380, 8, seed=16)),
    "tiny_3x2_png": ("tiny_3x2.png", _rgb(3, 2, "PNG", seed=17)),
    "tiny_1x1_png": ("tiny_1x1.png", _rgb(1, 1, "PNG", seed=18)),
    "wide_jpeg": ("wide.jpg", _rgb(2000, 50, "JPEG", seed=19, quality=90)),
    "tall_png": ("tall.png", _rgb(50, 2000, "PNG", seed=20)),
    "large_jpeg": ("large.jpg", _large_jpeg),
    "exact224_png": ("exact224.png", _rgb(224, 224, "PNG", seed=22)),
    "exact224_jpeg": ("exact224.jpg", _rgb(224, 224, "JPEG", seed=23, quality=90)),
    "exact224_exif6_jpeg": ("exact224_exif6.jpg", _exif_jpeg(224, 224, 6, seed=24)),
}


def write_images(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the named kinds (all by default) into ``folder``; returns ``{name: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in names if names is not None else list(KINDS):
        file_name, write = KINDS[name]
        path = folder / file_name
        write(path)
        out[name] = path
    return out


def encode(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    """An image's file bytes, for tests that pass bytes rather than paths."""
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()
