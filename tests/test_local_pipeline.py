"""The local-mode image pipeline: preparation in a thread pool ahead of the model, in order, bounded.

Everything runs through the real parts: a tiny random CLIP written by `tiny_clip`, loaded by
`LocalBackend` through transformers, real JPEG/PNG files written with Pillow, and the client's own
thread pools. Nothing here measures time (`benchmarks/pipeline_peer.py` does).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from image_factory import picture
from PIL import Image

from clip_client import AsyncClipClient, ClipClient, ImageDecodeError, LocalBackend
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

    from clip_client._onednn import FusedMLP, PackedLinear

    packed = LocalBackend(tiny_checkpoint, device="cpu")
    default = LocalBackend(tiny_checkpoint, device="cpu", onednn=False)
    assert packed.onednn is torch._C._has_mkldnn
    assert default.onednn is False
    kinds = {type(m) for m in default._model.modules()}
    assert PackedLinear not in kinds
    assert torch.nn.Linear in kinds
    if packed.onednn:
        assert not any(type(m) is torch.nn.Linear for m in packed._model.modules())
        # every MLP block (QuickGELU in this checkpoint) runs its activation inside fc1's kernel
        blocks = [m for m in default._model.modules() if type(m).__name__ == "CLIPMLP"]
        fused = [m for m in packed._model.modules() if isinstance(m, FusedMLP)]
        assert len(fused) == len(blocks) > 0
        assert all(m.fc1.unary == "swish" for m in fused)
    paths = _photos(tmp_path / "photos", 6)
    opts = ImageOptions(size=packed.image_size, want="pixels")
    pixels = [prepare_image(p, i, opts).pixels for i, p in enumerate(paths)]
    texts = ["a photo of a cat", "", "the dog on a red car in snow " * 20]
    cases: list[tuple[InputKind, list[Any]]] = [("image", pixels), ("text", texts)]
    for kind, inputs in cases:
        got, expected = packed.embed(kind, inputs), default.embed(kind, inputs)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_onednn_fuses_exact_gelu_too(tmp_path: Path) -> None:
    """A checkpoint whose MLPs use exact GELU (LAION's CLIPs) gets oneDNN's erf GELU post-op."""
    import torch
    from tiny_clip import TINY, write_clip_checkpoint

    from clip_client._onednn import FusedMLP

    if not torch._C._has_mkldnn:
        pytest.skip("this torch build has no oneDNN")
    dims: dict[str, Any] = {**TINY, "text": {**TINY["text"], "hidden_act": "gelu"}}  # type: ignore[dict-item]
    dims["vision"] = {**TINY["vision"], "hidden_act": "gelu"}  # type: ignore[dict-item]
    ckpt = write_clip_checkpoint(tmp_path / "gelu-clip", dims)
    packed = LocalBackend(ckpt, device="cpu")
    default = LocalBackend(ckpt, device="cpu", onednn=False)
    fused = [m for m in packed._model.modules() if isinstance(m, FusedMLP)]
    assert fused
    assert {(m.fc1.unary, m.fc1.algorithm) for m in fused} == {("gelu", "none")}
    pixels = list(np.random.default_rng(3).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8))
    for kind, inputs in (("image", pixels), ("text", ["a cat", "two dogs on a sofa"])):
        got, expected = packed.embed(kind, inputs), default.embed(kind, inputs)  # type: ignore[arg-type]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_a_fused_mlp_block_computes_the_block(activation: str, dtype_name: str) -> None:
    import torch
    from transformers.activations import ACT2FN

    from clip_client._onednn import FusedMLP, _mlp_activation

    if not torch._C._has_mkldnn:
        pytest.skip("this torch build has no oneDNN")
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    block = torch.nn.Module()
    block.fc1, block.fc2 = torch.nn.Linear(48, 192), torch.nn.Linear(192, 48)
    block.activation_fn = ACT2FN[activation]
    block.to(dtype)
    assert _mlp_activation(block) == activation
    x = torch.randn(2, 7, 48, dtype=dtype) * 3  # wide enough that the activation's tails matter
    with torch.inference_mode():
        expected = block.fc2(block.activation_fn(block.fc1(x))).float()
        got = FusedMLP(block.fc1, block.fc2, activation)(x).float()
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= tolerance * scale
    with pytest.raises(ValueError, match="relu"):
        FusedMLP(block.fc1, block.fc2, "relu")


def test_a_block_whose_forward_is_not_fc2_of_act_of_fc1_keeps_its_layers_apart() -> None:
    """`pack_linears` checks the fused block against the block's own forward; one that does more
    (here a residual) than fc2(act(fc1(x))) keeps that forward, with its two layers packed."""
    import torch
    from transformers.activations import ACT2FN

    from clip_client._onednn import FusedMLP, PackedLinear, pack_linears

    if not torch._C._has_mkldnn:
        pytest.skip("this torch build has no oneDNN")

    class Residual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)
            self.activation_fn = ACT2FN["quick_gelu"]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = x + self.fc2(self.activation_fn(self.fc1(x)))
            return out

    torch.manual_seed(0)
    model = torch.nn.Sequential(Residual(), torch.nn.Linear(32, 32), Residual())
    x = torch.randn(3, 5, 32)
    with torch.inference_mode():
        expected = model(x)
        assert pack_linears(model, torch.float32)
        got = model(x)
    assert not any(isinstance(m, FusedMLP) for m in model.modules())
    assert [type(m) for m in model] == [Residual, PackedLinear, Residual]
    assert all(type(m.fc1) is PackedLinear and type(m.fc2) is PackedLinear for m in (model[0], model[2]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# A closed client: a stream that `close` overtook raises the client's own closed error


class _HeldFile(io.BytesIO):
    """An image file whose pixel data cannot be read until `release` is set; `reading` is set once
    a worker thread is blocked on it."""

    def __init__(self, data: bytes, reading: threading.Event, release: threading.Event) -> None:
        super().__init__(data)
        self.held = False
        self.reading, self.release = reading, release

    def read(self, size: int | None = -1) -> bytes:
        if self.held:
            self.reading.set()
            self.release.wait(timeout=10)
        return super().read(size)


def _held_image(reading: threading.Event, release: threading.Event) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(picture(64, 48, seed=9)).save(buf, "PNG")
    held = _HeldFile(buf.getvalue(), reading, release)
    image = Image.open(held)  # the header now; the pixels on load(), in a worker
    held.held = True
    return image


@pytest.mark.parametrize("kind", ["image", "text"])
def test_a_stream_read_after_close_raises_the_closed_error(tiny_checkpoint: Path, kind: str) -> None:
    client = ClipClient.local(tiny_checkpoint, device="cpu", batch_size=BATCH)
    if kind == "image":
        stream = client.iter_embed_images(
            picture(32, 32, seed=i) for i in range(20 * BATCH + 8 * _PREP_WORKERS)
        )
    else:
        stream = client.iter_embed_texts(f"text {i}" for i in range(40 * BATCH))
    rows = iter(stream)
    next(rows)
    client.close()
    with pytest.raises(RuntimeError, match=r"^this ClipClient is closed$"):
        list(rows)


def test_a_stream_made_before_close_and_read_after_it_raises_the_closed_error(tiny_checkpoint: Path) -> None:
    client = ClipClient.local(tiny_checkpoint, device="cpu", batch_size=BATCH)
    stream = client.iter_embed_images([picture(32, 32, seed=i) for i in range(3)])
    client.close()
    with pytest.raises(RuntimeError, match=r"^this ClipClient is closed$"):
        list(stream)
    assert client._prep_pool is None
    assert client._request_threads is None


def test_close_from_another_thread_mid_stream_raises_the_closed_error(tiny_checkpoint: Path) -> None:
    """The workers are held on images while later ones wait in the pool's queue, and the stream
    waits for a held one: `close` cancels those queued, and the stream meets a cancelled work item
    (or a pool that takes no more) once the held ones are let go."""
    reading, release = threading.Event(), threading.Event()
    held = [_held_image(reading, release) for _ in range(_PREP_WORKERS)]
    images: list[Any] = [picture(32, 32, seed=i) for i in range(BATCH)]
    images += held + [picture(32, 32, seed=i) for i in range(4 * _PREP_WORKERS + BATCH)]
    client = ClipClient.local(tiny_checkpoint, device="cpu", batch_size=BATCH)

    def close_when_held() -> None:
        reading.wait(timeout=10)
        client.close()
        release.set()

    closer = threading.Thread(target=close_when_held)
    closer.start()
    try:
        with pytest.raises(RuntimeError, match=r"^this ClipClient is closed$"):
            list(client.iter_embed_images(images))  # waits on a held image while `close` runs
    finally:
        release.set()
        closer.join()


async def test_an_async_stream_that_close_overtook_raises_the_closed_error(tiny_checkpoint: Path) -> None:
    client = AsyncClipClient.local(tiny_checkpoint, device="cpu", batch_size=BATCH)
    stream = client.iter_embed_images(picture(32, 32, seed=i) for i in range(20 * BATCH + 8 * _PREP_WORKERS))
    rows = stream.__aiter__()
    await rows.__anext__()
    await client.close()
    with pytest.raises(RuntimeError, match=r"^this AsyncClipClient is closed$"):
        async for _ in rows:
            pass
    with pytest.raises(RuntimeError, match=r"^this AsyncClipClient is closed$"):
        async for _ in client.iter_embed_texts(["made after close is refused at once"]):
            pass
