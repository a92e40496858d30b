"""The local-mode image pipeline: preparation in a thread pool ahead of the model, in order, bounded.

Everything runs through the real parts: a tiny random CLIP written by `tiny_clip`, loaded by
`LocalBackend` through transformers, real JPEG/PNG files written with Pillow, and the client's own
thread pools. Nothing here measures time (`benchmarks/pipeline_peer.py` does).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from image_factory import picture
from PIL import Image

from clip_client import ClipClient, ImageDecodeError, LocalBackend
from clip_client._client import _PREP_WORKERS
from clip_client._core.concurrency import CallContext
from clip_client._core.images import ImageOptions, prepare_image
from clip_client.types import EmbeddingArray, InputKind

BATCH = 4


def _photos(folder: Path, count: int) -> list[Path]:
    """Files of different sizes, formats and aspect ratios, so each needs its own resize and crop."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        w, h = 230 + 37 * (i % 5), 240 + 29 * (i % 7)
        if i % 3 == 1:
            w, h = h, w
        path = folder / f"{i:03d}.{'png' if i % 4 == 0 else 'jpg'}"
        Image.fromarray(picture(w, h, seed=i)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def backend(tiny_checkpoint: Path) -> LocalBackend:
    return LocalBackend(tiny_checkpoint, device="cpu", batch_size=BATCH)


def _serial(backend: LocalBackend, paths: Sequence[Path]) -> EmbeddingArray:
    """The serial path: each file prepared in this thread, in order, then the model on the same
    batches (the same batch composition: a matrix product may round differently per batch size)."""
    opts = ImageOptions(size=backend.image_size, want="pixels")
    pixels = [prepare_image(p, i, opts).pixels for i, p in enumerate(paths)]
    rows = [backend.embed("image", pixels[i : i + BATCH]) for i in range(0, len(pixels), BATCH)]
    return np.concatenate(rows)


def test_parallel_preparation_is_bit_identical_to_the_serial_path(
    tmp_path: Path, backend: LocalBackend
) -> None:
    paths = _photos(tmp_path / "photos", 4 * BATCH + 3)  # a short last batch too
    with ClipClient(backend=backend, normalize=False) as client:
        together = client.embed_images(paths)
        streamed = list(client.iter_embed_images(iter(paths)))
    expected = _serial(backend, paths)
    assert together.dtype == np.float32
    assert together.shape == expected.shape
    assert np.array_equal(together, expected)  # bit for bit, row i from file i
    assert [i for i, _ in streamed] == list(range(len(paths)))
    assert np.array_equal(np.stack([row for _, row in streamed]), expected)


def test_an_image_that_fails_is_named_among_parallel_ones(tmp_path: Path, backend: LocalBackend) -> None:
    paths = _photos(tmp_path / "photos", 3 * BATCH)
    bad = tmp_path / "photos" / "broken.jpg"
    bad.write_bytes(paths[1].read_bytes()[:200])  # a truncated JPEG
    inputs = [*paths[:6], bad, *paths[6:]]
    with ClipClient(backend=backend, normalize=False) as client:
        with pytest.raises(ImageDecodeError) as caught:
            client.embed_images(inputs)
        marked = client.embed_images(inputs, on_error="mark")
    assert caught.value.index == 6
    assert caught.value.path == str(bad)
    assert [f.index for f in marked.failures] == [6]
    assert str(bad) in str(marked.failures[0].error)
    good = np.delete(marked.embeddings, 6, axis=0)
    assert np.isnan(marked.embeddings[6]).all()
    assert np.array_equal(good, _serial(backend, paths))  # every other row, in its place


class _GatedBackend(LocalBackend):
    """The real model, whose first forward pass waits until the input generator has run as far
    ahead as the pipeline lets it (or past the bound, which the test then reports)."""

    gate: threading.Event

    def embed(
        self, kind: InputKind, payloads: Sequence[Any], ctx: CallContext | None = None
    ) -> EmbeddingArray:
        self.gate.wait(timeout=2.0)  # a bounded pipeline stops reading first; the wait then ends
        return super().embed(kind, payloads, ctx)


def test_the_input_is_read_a_bounded_number_of_batches_ahead(tmp_path: Path, tiny_checkpoint: Path) -> None:
    backend = _GatedBackend(tiny_checkpoint, device="cpu", batch_size=BATCH)
    backend.gate = threading.Event()
    source = _photos(tmp_path / "photos", 5)
    total = 400
    with ClipClient(backend=backend) as client:
        window = 2 * client._concurrency()  # batches in flight (max_concurrency 2 in local mode: 4)
        # What the pipeline may hold: the preparation lookahead, the batches in flight, the open
        # batch, and finished rows waiting behind an earlier batch (another window's worth).
        bound = max(2 * _PREP_WORKERS, BATCH) + (2 * window + 1) * BATCH + 1
        assert bound < total
        read, handed, widest = [0], [0], [0]

        def images() -> Iterator[Path]:
            for i in range(total):
                widest[0] = max(widest[0], read[0] - handed[0])
                if read[0] - handed[0] > bound:
                    backend.gate.set()  # unbounded: let the model go, the assertion below fails
                read[0] += 1
                yield source[i % len(source)]

        for index, _row in client.iter_embed_images(images()):
            assert index == handed[0]
            handed[0] += 1
            backend.gate.set()
    assert handed[0] == total
    assert 0 < widest[0] <= bound


def test_onednn_linear_layers_agree_with_pytorchs_default(tmp_path: Path, tiny_checkpoint: Path) -> None:
    import torch

    from clip_client._onednn import PackedLinear

    packed = LocalBackend(tiny_checkpoint, device="cpu")
    default = LocalBackend(tiny_checkpoint, device="cpu", onednn=False)
    assert packed.onednn is torch._C._has_mkldnn
    assert default.onednn is False
    kinds = {type(m) for m in default._model.modules()}
    assert PackedLinear not in kinds
    assert torch.nn.Linear in kinds
    if packed.onednn:
        assert not any(type(m) is torch.nn.Linear for m in packed._model.modules())
    paths = _photos(tmp_path / "photos", 6)
    opts = ImageOptions(size=packed.image_size, want="pixels")
    pixels = [prepare_image(p, i, opts).pixels for i, p in enumerate(paths)]
    texts = ["a photo of a cat", "", "the dog on a red car in snow " * 20]
    cases: list[tuple[InputKind, list[Any]]] = [("image", pixels), ("text", texts)]
    for kind, inputs in cases:
        got, expected = packed.embed(kind, inputs), default.embed(kind, inputs)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
