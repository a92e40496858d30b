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
    "MEMORY_MODES",
    "MODE_FILES",
    "encode",
    "exif_bytes",
    "noise",
    "picture",
    "png",
    "png_header_only",
    "raw_exif",
    "wide_grey",
    "write_images",
    "write_mode_files",
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


def noise(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A uint8 HxWx3 picture of uniform noise: incompressible, so its files are as large as they get."""
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


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


def raw_exif(entries: list[tuple[int, int, int, bytes]], big_endian: bool = False) -> bytes:
    """An EXIF block (``Exif\\0\\0`` and a one-IFD TIFF) holding ``entries`` as given: each is
    (tag, TIFF type, count, value bytes), the value stored inline when it has 4 bytes or fewer and
    after the IFD otherwise. Nothing is checked, so a test can store a tag with the wrong type or
    count, which ``Image.Exif`` would refuse to write."""
    order = ">" if big_endian else "<"
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd, data = struct.pack(order + "H", len(entries)), b""
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            ifd += struct.pack(order + "HHI", tag, kind, count) + value.ljust(4, b"\x00")
        else:
            ifd += struct.pack(order + "HHII", tag, kind, count, data_at + len(data))
            data += value
    head = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(order + "I", 8)
    return b"Exif\x00\x00" + head + ifd + b"\x00\x00\x00\x00" + data


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


def _rgb_file(width: int, height: int, fmt: str, seed: int, **save: object) -> Callable[[Path], None]:
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
    "rgb_jpeg": ("rgb.jpg", _rgb_file(640, 480, "JPEG", seed=1, quality=90)),
    "rgb_png": ("rgb.png", _rgb_file(300, 200, "PNG", seed=11)),
    "rgba_png": ("rgba.png", _rgba_png),
    "la_png": ("la.png", _la_png),
    "rgb_colour_key_png": ("rgb_colour_key.png", _rgb_colour_key_png),
    "palette_gif": ("palette.gif", _palette_gif),
    "palette_png": ("palette_trns.png", _palette_png),
    "cmyk_jpeg": ("cmyk.jpg", _cmyk_jpeg),
    "gray16_png": ("gray16.png", _gray16_png),
    "gray8_png": ("gray8.png", _gray8_png),
    "bilevel_png": ("bilevel.png", _bilevel_png),
    "webp": ("rgb.webp", _rgb_file(333, 251, "WEBP", seed=12, lossless=True, method=0)),
    "bmp": ("rgb.bmp", _rgb_file(181, 203, "BMP", seed=13)),
    "exif6_jpeg": ("exif6.jpg", _exif_jpeg(320, 240, 6, seed=14)),
    "exif3_jpeg": ("exif3.jpg", _exif_jpeg(300, 260, 3, seed=15)),
    "exif8_jpeg": ("exif8.jpg", _exif_jpeg(260, 380, 8, seed=16)),
    "tiny_3x2_png": ("tiny_3x2.png", _rgb_file(3, 2, "PNG", seed=17)),
    "tiny_1x1_png": ("tiny_1x1.png", _rgb_file(1, 1, "PNG", seed=18)),
    "wide_jpeg": ("wide.jpg", _rgb_file(2000, 50, "JPEG", seed=19, quality=90)),
    "tall_png": ("tall.png", _rgb_file(50, 2000, "PNG", seed=20)),
    "large_jpeg": ("large.jpg", _large_jpeg),
    "exact224_png": ("exact224.png", _rgb_file(224, 224, "PNG", seed=22)),
    "exact224_jpeg": ("exact224.jpg", _rgb_file(224, 224, "JPEG", seed=23, quality=90)),
    "exact224_exif6_jpeg": ("exact224_exif6.jpg", _exif_jpeg(224, 224, 6, seed=24)),
}


# --------------------------------------------------------------------------------------------------
# Every mode Pillow's decoders produce, in files of the formats that store it


def wide_grey(width: int, height: int, top: int, seed: int, low: int = 0) -> np.ndarray:
    """An int64 greyscale ramp from ``low`` to ``top`` (both present) with noise: 16-bit test data.
    ``top=4095`` is a 12-bit camera frame, ``top=65535`` full-range 16-bit."""
    ramp = np.linspace(low, top, width * height).reshape(height, width)
    rng = np.random.default_rng(seed)
    wide = np.clip(np.rint(ramp + rng.normal(0, (top - low) / 70, ramp.shape)), low, top).astype(np.int64)
    wide[0, 0], wide[0, 1] = low, top
    return wide


def set_tiff_short(raw: bytes, tag: int, value: int) -> bytes:
    """``raw`` (a little-endian TIFF as Pillow writes it) with the first IFD's SHORT ``tag`` set to
    ``value``: how a test writes TIFF variants Pillow's encoder does not (associated alpha)."""
    assert raw[:4] == b"II*\x00"
    out = bytearray(raw)
    (ifd,) = struct.unpack_from("<I", raw, 4)
    (count,) = struct.unpack_from("<H", raw, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        entry_tag, entry_type, entry_count = struct.unpack_from("<HHI", raw, entry)
        if entry_tag == tag:
            assert (entry_type, entry_count) == (3, 1), (entry_type, entry_count)
            struct.pack_into("<H", out, entry + 8, value)
            return bytes(out)
    raise AssertionError(f"tag {tag} not in the TIFF")


def _png16(path: Path, pixels: np.ndarray, colour: int) -> None:
    """A 16-bit PNG (grey: colour 0, or RGB: colour 2) written by hand: Pillow writes no 48-bit PNGs."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    height, width = pixels.shape[:2]
    rows = pixels.astype(">u2").reshape(height, -1)
    data = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b""))


def _save(make: Callable[[], Image.Image], fmt: str, **save: object) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        make().save(path, fmt, **save)

    return write


def _rgba(width: int = 230, height: int = 170, seed: int = 100) -> Image.Image:
    arr = picture(width, height, 4, seed)
    arr[:, : width // 5, 3] = 0  # a fully transparent band, a partial gradient elsewhere
    return Image.fromarray(arr, "RGBA")


def _rgb(width: int = 230, height: int = 170, seed: int = 101) -> Image.Image:
    return Image.fromarray(picture(width, height, 3, seed), "RGB")


def _grey(width: int = 230, height: int = 170, seed: int = 102) -> Image.Image:
    return Image.fromarray(picture(width, height, 1, seed)[:, :, 0], "L")


def _palette(colours: int = 48) -> Image.Image:
    return _rgb(seed=103).quantize(colours, dither=Image.Dither.NONE)


def _u16(wide: np.ndarray) -> Image.Image:
    return Image.fromarray(wide.astype(np.uint16))  # mode I;16


def _i32(wide: np.ndarray) -> Image.Image:
    return Image.fromarray(wide.astype(np.int32))  # mode I


def _associated_alpha(mode: str) -> Callable[[Path], None]:
    """A TIFF whose alpha is premultiplied (ExtraSamples = 1): Pillow opens grey+alpha as ``La``
    and unpremultiplies RGB+alpha to ``RGBA``."""

    def write(path: Path) -> None:
        buf = io.BytesIO()
        _rgba(seed=104).convert(mode).save(buf, "TIFF")
        path.write_bytes(set_tiff_short(buf.getvalue(), 338, 1))

    return write


def _rgb48_png(path: Path) -> None:
    """16 bits per channel: a picture in the high bytes, noise in the low ones (Pillow keeps the high)."""
    high = picture(230, 170, 3, seed=107).astype(np.int64)
    low = np.random.default_rng(107).integers(0, 256, high.shape)
    _png16(path, high * 256 + low, 2)


def _grey16_png_with_key(path: Path) -> None:
    wide = wide_grey(200, 150, 4095, seed=105)
    wide[40:80, 50:120] = 1000  # the colour key: transparent where the value is exactly 1000
    _u16(wide).save(path, "PNG", transparency=1000)


def _big_endian_tiff(top: int, seed: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        _u16(wide_grey(210, 160, top, seed)).convert("I").convert("I;16B").save(path, "TIFF")

    return write


def _float_image() -> Image.Image:
    rng = np.random.default_rng(106)
    values = np.linspace(-40.0, 320.0, 200 * 150).reshape(150, 200) + rng.normal(0, 9, (150, 200))
    values[0, :4] = (-0.5, 0.5, 254.99, 255.5)
    return Image.fromarray(values.astype(np.float32), "F")


#: name -> (mode Pillow decodes the file to, file name, writer).
MODE_FILES: dict[str, tuple[str, str, Callable[[Path], None]]] = {
    "1 png": ("1", "bilevel.png", _save(lambda: _grey().convert("1"), "PNG")),
    "1 tiff": ("1", "bilevel.tif", _save(lambda: _grey().convert("1"), "TIFF")),
    "1 bmp": ("1", "bilevel.bmp", _save(lambda: _grey().convert("1"), "BMP")),
    "L png": ("L", "grey.png", _save(_grey, "PNG")),
    "L jpeg": ("L", "grey.jpg", _save(_grey, "JPEG", quality=90)),
    "L tiff": ("L", "grey.tif", _save(_grey, "TIFF")),
    "L bmp": ("L", "grey.bmp", _save(_grey, "BMP")),
    "L+key png": ("L", "grey_key.png", _save(_grey, "PNG", transparency=120)),
    "LA png": ("LA", "grey_alpha.png", _save(lambda: _rgba().convert("LA"), "PNG")),
    "LA tiff": ("LA", "grey_alpha.tif", _save(lambda: _rgba().convert("LA"), "TIFF")),
    "La tiff": ("La", "grey_assoc_alpha.tif", _associated_alpha("LA")),
    "P png": ("P", "palette.png", _save(_palette, "PNG")),
    "P gif": ("P", "palette.gif", _save(_palette, "GIF")),
    "P bmp": ("P", "palette.bmp", _save(_palette, "BMP")),
    "P tiff": ("P", "palette.tif", _save(_palette, "TIFF")),
    "P+alpha png": ("P", "palette_alpha.png", _save(_palette, "PNG", transparency=bytes(range(0, 240, 5)))),
    "P+index gif": ("P", "palette_index.gif", _save(_palette, "GIF", transparency=5)),
    "PA tiff": ("PA", "palette_alpha.tif", _save(lambda: _rgba().convert("PA"), "TIFF")),
    "RGB jpeg": ("RGB", "rgb.jpg", _save(_rgb, "JPEG", quality=90)),
    "RGB png": ("RGB", "rgb.png", _save(_rgb, "PNG")),
    "RGB+key png": ("RGB", "rgb_key.png", _save(_rgb, "PNG", transparency=(0, 0, 0))),
    "RGB 16-bit png": ("RGB", "rgb48.png", _rgb48_png),
    "RGB webp": ("RGB", "rgb.webp", _save(_rgb, "WEBP", lossless=True)),
    "RGB bmp": ("RGB", "rgb.bmp", _save(_rgb, "BMP")),
    "RGB tiff": ("RGB", "rgb.tif", _save(_rgb, "TIFF")),
    "RGB tga": ("RGB", "rgb.tga", _save(_rgb, "TGA")),
    "RGB ppm": ("RGB", "rgb.ppm", _save(_rgb, "PPM")),
    "RGB qoi": ("RGB", "rgb.qoi", _save(_rgb, "QOI")),
    "RGBA png": ("RGBA", "rgba.png", _save(_rgba, "PNG")),
    "RGBA webp": ("RGBA", "rgba.webp", _save(_rgba, "WEBP", lossless=True)),
    "RGBA tiff": ("RGBA", "rgba.tif", _save(_rgba, "TIFF")),
    "RGBA tga": ("RGBA", "rgba.tga", _save(_rgba, "TGA")),
    "RGBA assoc tiff": ("RGBA", "rgba_assoc.tif", _associated_alpha("RGBA")),
    "CMYK jpeg": ("CMYK", "cmyk.jpg", _save(lambda: _rgb().convert("CMYK"), "JPEG", quality=92)),
    "CMYK tiff": ("CMYK", "cmyk.tif", _save(lambda: _rgb().convert("CMYK"), "TIFF")),
    "YCbCr tiff": ("YCbCr", "ycbcr.tif", _save(lambda: _rgb().convert("YCbCr"), "TIFF")),
    "LAB tiff": ("LAB", "lab.tif", _save(lambda: _rgb().convert("LAB"), "TIFF")),
    "I tiff": ("I", "int32.tif", _save(lambda: _i32(wide_grey(200, 150, 70000, 108, -900)), "TIFF")),
    "I 16-bit pgm": ("I", "grey16.pgm", _save(lambda: _u16(wide_grey(200, 150, 65535, 109)), "PPM")),
    "I;16 png": ("I;16", "grey16.png", lambda p: _png16(p, wide_grey(300, 260, 65535, 110), 0)),
    "I;16 png 12-bit": ("I;16", "grey12.png", _save(lambda: _u16(wide_grey(240, 180, 4095, 111)), "PNG")),
    "I;16+key png": ("I;16", "grey16_key.png", _grey16_png_with_key),
    "I;16 tiff 12-bit": ("I;16", "camera12.tif", _save(lambda: _u16(wide_grey(320, 240, 4095, 112)), "TIFF")),
    "I;16 tiff": ("I;16", "grey16.tif", _save(lambda: _u16(wide_grey(200, 150, 65535, 113)), "TIFF")),
    "I;16B tiff 12-bit": ("I;16B", "camera12_be.tif", _big_endian_tiff(4095, 114)),
    "I;16B tiff": ("I;16B", "grey16_be.tif", _big_endian_tiff(65535, 115)),
    "F tiff": ("F", "float.tif", _save(_float_image, "TIFF")),
    "F pfm": ("F", "float.pfm", _save(_float_image, "PPM")),
}


def _in_memory_la() -> Image.Image:
    return _rgba(seed=120).convert("LA").convert("La")


#: Modes no decoder produces but a caller can pass as a PIL image: name -> (mode, make).
MEMORY_MODES: dict[str, tuple[str, Callable[[], Image.Image]]] = {
    "RGBa": ("RGBa", lambda: _rgba(seed=121).convert("RGBa")),
    "RGBX": ("RGBX", lambda: _rgb(seed=122).convert("RGBX")),
    "HSV": ("HSV", lambda: _rgb(seed=123).convert("HSV")),
    "La": ("La", _in_memory_la),
    "I;16L": ("I;16L", lambda: _u16(wide_grey(200, 150, 65535, 124)).convert("I").convert("I;16L")),
    "I;16N": ("I;16N", lambda: _u16(wide_grey(200, 150, 4095, 125)).convert("I").convert("I;16N")),
    "I": ("I", lambda: _i32(wide_grey(200, 150, 1000, 126, -200))),
    "F": ("F", _float_image),
    "YCbCr": ("YCbCr", lambda: _rgb(seed=127).convert("YCbCr")),
    "RGB+key": ("RGB", lambda: _with_info(_rgb(seed=128), transparency=(0, 0, 0))),
    "I;16+key": ("I;16", lambda: _with_info(_u16(wide_grey(200, 150, 600, 129)), transparency=300)),
}


def _with_info(img: Image.Image, **info: object) -> Image.Image:
    img.info.update(info)
    return img


def write_mode_files(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """Write the named entries of :data:`MODE_FILES` (all by default) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in names if names is not None else list(MODE_FILES):
        _, file_name, write = MODE_FILES[name]
        out[name] = folder / file_name
        write(out[name])
    return out


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


def png(arr: np.ndarray) -> bytes:
    """The PNG file of a uint8 array (HxW grey, HxWx3 RGB or HxWx4 RGBA)."""
    return encode(Image.fromarray(arr), "PNG")
