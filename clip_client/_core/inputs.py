"""Input checks: what a caller passed is a list of texts or of images, named by index when not."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import (
    InvalidInputError,
)

if TYPE_CHECKING:
    from .images import ImageOptions, PreparedImage

__all__ = [
    "check_image_list",
    "check_text",
    "check_text_list",
    "prepare_input",
    "refuse_single_image",
    "refuse_single_text",
]


# --------------------------------------------------------------------------------------------------
# Input checks


def check_text(text: object, index: int | None) -> str:
    """A text the model can take, or an [`InvalidInputError`][clip_client.InvalidInputError] naming
    `index`."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raise InvalidInputError("texts must be str, got bytes; decode them first", index=index)
    if not isinstance(text, str):
        raise InvalidInputError(f"texts must be str, got {type(text).__name__}", index=index)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"text is not valid Unicode (lone surrogate at character {exc.start}); it was probably "
            "decoded from bytes with errors='surrogateescape'",
            index=index,
        ) from None
    return text


def refuse_single_text(texts: object) -> Iterable[object]:
    """The texts as an iterable, refusing a bare string (which would iterate character by character)."""
    if isinstance(texts, str):
        raise TypeError("embed_texts() takes a list of strings; for one string use embed_text(text)")
    if isinstance(texts, (bytes, bytearray, memoryview)) or not isinstance(texts, Iterable):
        raise TypeError(f"embed_texts() takes a list of strings, got {type(texts).__name__}")
    return texts


def check_text_list(texts: object) -> list[str]:
    """Every text checked up front: text checks are cheap, so a bad one costs no request at all."""
    return [check_text(t, i) for i, t in enumerate(refuse_single_text(texts))]


def refuse_single_image(images: object) -> Iterable[object]:
    """The images as an iterable, refusing a single image passed where a list belongs (a path
    string or bytes would otherwise be iterated character by character)."""
    from PIL import Image

    single = (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)
    if isinstance(images, single) or (isinstance(images, np.ndarray) and images.ndim < 4):
        raise TypeError(
            f"embed_images() takes a list of images, got a single {type(images).__name__}; "
            "for one image use embed_image(image)"
        )
    if not isinstance(images, Iterable):
        raise TypeError(f"embed_images() takes a list of images, got {type(images).__name__}")
    return images


def check_image_list(images: object) -> Sequence[object]:
    """The images as a sequence (a generator is read into a list; a 4-D array is a stack)."""
    items = refuse_single_image(images)
    if isinstance(items, np.ndarray):  # a stack of images, N x H x W x C
        return list(items)
    return items if isinstance(items, Sequence) else list(items)


def prepare_input(value: object, index: int | None, opts: ImageOptions) -> PreparedImage:
    """`prepare_image` of one input, reading a [`SourceItem`][clip_client.SourceItem] (a tar member,
    an object, a file of a listing) first: its errors, reading or decoding, name its key as `path`.
    Any other input goes to `prepare_image` as it is."""
    from ..sources import SourceItem
    from .images import prepare_image

    if not isinstance(value, SourceItem):
        return prepare_image(value, index, opts)
    if value.local_path is not None:  # a local file: opened as any path is, with the same messages
        return prepare_image(value.local_path, index, opts)
    try:
        data = value.read()
        return prepare_image(data, index, opts)
    except InvalidInputError as exc:
        exc.index, exc.path = index, value.key
        exc.args = (exc._format(),)
        raise
    except Exception as exc:  # a source's own failure (an fsspec plugin's error): one input's, typed
        raise InvalidInputError(
            f"cannot read: {type(exc).__name__}: {exc}", index=index, path=value.key
        ) from exc
