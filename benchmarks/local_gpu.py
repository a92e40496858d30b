"""Local-mode throughput: ``ClipClient.local`` against the loop people write by hand.

Builds a CLIP with ViT-L/14's exact dimensions and random weights (no download, the same FLOPs as
``openai/clip-vit-large-patch14``), writes it to a temporary folder, and measures in one run:

* baseline: ``CLIPProcessor`` + ``CLIPModel`` in float32, one batch at a time (open the JPEGs,
  run the processor, forward, ``.cpu()``), as in the model card;
* clip_client: ``ClipClient.local(folder)`` on the same files and texts (fp16 on CUDA, SDPA,
  pinned uint8 copies, image decoding overlapped with the forward passes).

Prints images/s and texts/s per batch size and the ratio. Run on a GPU box::

    python benchmarks/local_gpu.py                     # ViT-L/14 dims, CUDA if available
    python benchmarks/local_gpu.py --smoke             # tiny config, a few items: CI smoke run

Tests never time anything; this script is where speed is measured.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tiny_clip import TINY, VIT_L14, write_clip_checkpoint


def write_jpegs(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Photo-sized JPEGs (1280x960) of smooth noise, the realistic case of decode + resize work."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    paths = []
    for i in range(count):
        arr = np.roll(base, i, axis=1)
        img = Image.fromarray(arr).resize((1280, 960), Image.Resampling.BILINEAR)
        path = folder / f"img_{i:05d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, few items (CI)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda if available)")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, default 32,128,256 (GPU)")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--texts", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also measure compile=True")
    args = parser.parse_args()

    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    from clip_client import ClipClient

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.startswith("cuda")
    dims = TINY if args.smoke else VIT_L14
    default_sizes = "4,16" if args.smoke else ("32,128,256" if on_gpu else "8,32")
    sizes = [int(x) for x in (args.batch_sizes or default_sizes).split(",")]
    n_images = args.images or (16 if args.smoke else (2048 if on_gpu else 64))
    n_texts = args.texts or (32 if args.smoke else (8192 if on_gpu else 256))

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_clip_checkpoint(Path(tmp) / "ckpt", dims)
        paths = write_jpegs(Path(tmp), n_images)
        words = ["a", "photo", "of", "the", "cat", "and", "a", "dog", "on", "a", "red", "car", "in", "snow"]
        texts = [" ".join(words[i % 7 :] + words[: i % 5]) + f" {i}" for i in range(n_texts)]

        model = CLIPModel.from_pretrained(ckpt).to(device).eval()
        processor = CLIPImageProcessor.from_pretrained(ckpt)
        tokenizer = CLIPTokenizer.from_pretrained(ckpt)

        def baseline_images(bs: int) -> None:
            with torch.no_grad():
                for i in range(0, len(paths), bs):
                    imgs = [Image.open(p).convert("RGB") for p in paths[i : i + bs]]
                    pv = processor(images=imgs, return_tensors="pt")["pixel_values"].to(device)
                    out = model.get_image_features(pixel_values=pv)
                    getattr(out, "pooler_output", out).cpu()

        def baseline_texts(bs: int) -> None:
            with torch.no_grad():
                for i in range(0, len(texts), bs):
                    enc = tokenizer(texts[i : i + bs], padding=True, truncation=True, return_tensors="pt")
                    out = model.get_text_features(**{k: v.to(device) for k, v in enc.items()})
                    getattr(out, "pooler_output", out).cpu()

        variants: list[tuple[str, bool]] = [("clip_client", False)]
        if args.compile:
            variants.append(("clip_client compile", True))
        gpu_name = torch.cuda.get_device_name(0) if on_gpu else platform.processor() or platform.machine()
        print(f"# local mode, {'tiny' if args.smoke else 'ViT-L/14-sized'} model on {device} ({gpu_name})")
        print(f"# torch {torch.__version__}, {n_images} 1280x960 JPEGs, {n_texts} texts\n")
        print("| batch | what | baseline fp32 /s | clip_client /s | ratio |")
        print("|---:|---|---:|---:|---:|")
        baseline_images(sizes[0])  # warm-up: CUDA context, kernel selection
        for name, compiled in variants:
            for bs in sizes:
                client = ClipClient.local(ckpt, device=device, batch_size=bs, compile=compiled)
                client.embed_images(paths[: 2 * bs])  # warm-up (and compilation)
                client.embed_texts(texts[: 2 * bs])
                rows = (
                    ("images", n_images, partial(baseline_images, bs), partial(client.embed_images, paths)),
                    ("texts", n_texts, partial(baseline_texts, bs), partial(client.embed_texts, texts)),
                )
                for kind, n, base, ours in rows:
                    t_base = timed(base, sync)
                    t_ours = timed(ours, sync)
                    print(
                        f"| {bs} | {kind} ({name}) | {n / t_base:,.1f} | {n / t_ours:,.1f} "
                        f"| {t_base / t_ours:.2f}x |"
                    )
                client.close()
    if args.smoke:
        print("\nsmoke run: targets not evaluated (a tiny model and a few items: these numbers mean little)")


if __name__ == "__main__":
    main()
