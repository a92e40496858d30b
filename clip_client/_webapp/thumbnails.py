"""Thumbnails made on demand with Pillow and kept in a bounded on-disk cache (LRU by bytes and count)."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

THUMBNAIL_SIZE = 256
"""The longest side of a thumbnail, in pixels."""

CACHE_MAX_BYTES = 256 * 1024 * 1024
"""The thumbnail cache's bound in bytes (256 MiB): the least recently used go first."""

CACHE_MAX_FILES = 100_000
"""The thumbnail cache's bound in files."""


class ThumbnailError(Exception):
    """The image cannot be made into a thumbnail (not an image, too many pixels, truncated)."""


def make_thumbnail(data: bytes, *, size: int = THUMBNAIL_SIZE, max_pixels: int | None = None) -> bytes:
    """A JPEG at most `size` pixels on its longest side, turned upright by its EXIF orientation.

    Raises:
        ThumbnailError: `data` is not an image Pillow reads, or has more than `max_pixels` pixels
            (checked from the header, before decoding).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if max_pixels is not None and w * h > max_pixels:
                raise ThumbnailError(f"the image is {w}x{h}, over {max_pixels:,} pixels")
            if img.format == "JPEG":
                img.draft("RGB", (size * 2, size * 2))  # decode at a reduced scale: much faster
            upright = ImageOps.exif_transpose(img)
            upright.thumbnail((size, size))
            rgb = upright.convert("RGB")
            out = io.BytesIO()
            rgb.save(out, "JPEG", quality=85)
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ThumbnailError(f"not a readable image ({type(exc).__name__})") from None


class ThumbnailCache:
    """A folder of thumbnails named by the hash of their image's bytes and size; the least recently
    used are deleted once the folder holds more than `max_bytes` or `max_files`. Safe across threads
    (one process per folder)."""

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int = CACHE_MAX_BYTES,
        max_files: int = CACHE_MAX_FILES,
        size: int = THUMBNAIL_SIZE,
        max_pixels: int | None = None,
    ) -> None:
        if max_bytes < 1 or max_files < 1:
            raise ValueError("max_bytes and max_files must be >= 1")
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.size = size
        self.max_pixels = max_pixels
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._files: OrderedDict[str, int] = OrderedDict()  # name -> bytes, least recently used first
        self._bytes = 0
        found = []
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False) and entry.name.endswith(".jpg"):
                st = entry.stat(follow_symlinks=False)
                found.append((st.st_mtime_ns, entry.name, st.st_size))
        for _, name, nbytes in sorted(found):
            self._files[name] = nbytes
            self._bytes += nbytes
        with self._lock:
            self._evict()

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._files)

    def get(self, data: bytes) -> bytes:
        """The thumbnail of the image `data`, from the cache or made now (and cached).

        Raises:
            ThumbnailError: as `make_thumbnail`.
        """
        name = hashlib.sha256(data).hexdigest()[:40] + f"-{self.size}.jpg"
        path = self.folder / name
        with self._lock:
            if name in self._files:
                try:
                    thumb = path.read_bytes()
                except OSError:
                    self._forget(name)
                else:
                    self._files.move_to_end(name)
                    os.utime(path)
                    return thumb
        thumb = make_thumbnail(data, size=self.size, max_pixels=self.max_pixels)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(thumb)
            os.replace(tmp, path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            return thumb  # served, not cached (a full disk)
        with self._lock:
            if name in self._files:
                self._bytes -= self._files[name]
            self._files[name] = len(thumb)
            self._files.move_to_end(name)
            self._bytes += len(thumb)
            self._evict()
        return thumb

    def _forget(self, name: str) -> None:
        self._bytes -= self._files.pop(name, 0)

    def _evict(self) -> None:
        while self._files and (self._bytes > self.max_bytes or len(self._files) > self.max_files):
            name, nbytes = self._files.popitem(last=False)
            self._bytes -= nbytes
            (self.folder / name).unlink(missing_ok=True)
