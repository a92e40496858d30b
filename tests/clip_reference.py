"""The reference the image tests compare against: transformers' CLIP image processor, PIL path.

``make_processor()`` builds it offline from its class defaults (no hub, no preprocessor_config
download); ``processed(processor, img)`` runs it with rescale and normalise off, so it returns the
resized, center-cropped RGB pixels the served model computes from ``img``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest
from PIL import Image

__all__ = ["make_processor", "processed"]


@functools.cache
def _processor_class() -> Any:
    transformers = pytest.importorskip("transformers")
    # The PIL backend where it exists (transformers 5), else the classic one. Import by name so
    # transformers logs no fallback warning.
    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def make_processor() -> Any:
    """A CLIP image processor with the served defaults (BICUBIC, shortest edge 224, crop 224)."""
    return _processor_class()()


def processed(processor: Any, img: Image.Image, size: int = 224) -> np.ndarray:
    """The processor's resized and center-cropped RGB pixels, HxWx3 uint8."""
    out = processor(
        images=img,
        do_rescale=False,
        do_normalize=False,
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        return_tensors=None,
    )["pixel_values"][0]
    arr = np.asarray(out)
    assert arr.shape == (3, size, size)
    assert np.array_equal(arr, np.round(arr)), "the processor returned non-integral pixels"
    assert arr.min() >= 0
    assert arr.max() <= 255
    return np.ascontiguousarray(np.transpose(arr, (1, 2, 0))).astype(np.uint8)
