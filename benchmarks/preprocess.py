"""Image preparation: images/s per core on real-world sizes, bytes per request item, and what
``fast_decode`` changes, for the client against what users do today, side by side in one run.

    python benchmarks/preprocess.py            # 1 MP and 12 MP JPEGs, a 1920x1080 PNG (about 2 min)
    python benchmarks/preprocess.py --smoke    # one file per size, one pass (CI)

Per-core figures run every preparation single-threaded in this process; the "all cores" column runs
the same function on a pool of one thread per core (what ClipClient's preparation pool does).
"""

from __future__ import annotations

import argparse
import base64
import io
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, features

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _serve import ROOT, machine, photo

from clip_client._core.images import ImageOptions, clip_resize_crop, encode, prepare_image, to_rgb
from clip_client._core.wire import encode_record, record_size

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
EXACT = ImageOptions()
FAST = ImageOptions(fast_decode=True)
BMP = ImageOptions(format="bmp")


@dataclass
class Sample:
    name: str
    paths: list[Path]


def make_samples(folder: Path, count: dict[str, int]) -> list[Sample]:
    specs = [
        ("1 MP JPEG 1152x864", (1152, 864), "JPEG"),
        ("12 MP JPEG 4000x3000", (4000, 3000), "JPEG"),
        ("PNG 1920x1080", (1920, 1080), "PNG"),
    ]
    samples = []
    for i, (name, size, fmt) in enumerate(specs):
        paths = []
        for j in range(count[fmt if size != (4000, 3000) else "12MP"]):
            path = folder / f"s{i}_{j}.{'jpg' if fmt == 'JPEG' else 'png'}"
            options: dict[str, Any] = {"quality": 90} if fmt == "JPEG" else {"compress_level": 6}
            photo(*size, seed=100 * i + j).save(path, fmt, **options)
            paths.append(path)
        samples.append(Sample(name, paths))
    return samples


# -- the preparations ----------------------------------------------------------------------------------


def decode_floor(path: Path) -> Any:
    with Image.open(path) as img:
        img.load()
        return img.size


def client_exact(path: Path) -> bytes:
    return prepare_image(path, 0, EXACT).b64()


def client_fast(path: Path) -> bytes:
    return prepare_image(path, 0, FAST).b64()


def client_bmp(path: Path) -> bytes:
    return prepare_image(path, 0, BMP).b64()


def naive(path: Path) -> bytes:
    img = Image.open(path).convert("RGB").resize((224, 224))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue())


def original_b64(path: Path) -> bytes:
    return base64.b64encode(path.read_bytes())


def clip_processor() -> Any:
    """``CLIPImageProcessor`` configured as openai/clip-vit-large-patch14's, without the hub. With no
    torchvision, transformers 5 falls back to its PIL backend, which this names explicitly."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    return Processor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )


# -- timing --------------------------------------------------------------------------------------------


def per_image(fn: Callable[[Path], Any], paths: Sequence[Path], min_time: float) -> float:
    """Seconds per image, single-threaded: whole passes over ``paths`` until ``min_time`` has passed."""
    fn(paths[0])  # warm-up
    done = 0
    start = time.perf_counter()
    while True:
        for p in paths:
            fn(p)
        done += len(paths)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / done


def all_cores(
    fn: Callable[[Path], Any], paths: Sequence[Path], seconds_each: float, min_time: float
) -> float:
    """Images/s on a pool of one thread per core."""
    workers = os.cpu_count() or 1
    reps = max(1, math.ceil(min_time * workers / (seconds_each * len(paths))))
    work = list(paths) * reps
    with ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter()
        list(pool.map(fn, work))
        return len(work) / (time.perf_counter() - start)


def stages(path: Path, reps: int) -> dict[str, float]:
    """Milliseconds per stage (median of ``reps`` calls) of the client's default path, of its
    fast_decode path, and of one alternative PNG encoding."""
    out: dict[str, float] = {}

    def clock(name: str, fn: Callable[[], Any]) -> Any:
        result = fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times) * 1000
        return result

    raw = path.read_bytes()

    def decoded() -> Image.Image:
        img = Image.open(io.BytesIO(raw))
        img.load()
        return img

    img = clock("read+decode", decoded)
    rgb = clock("to RGB", lambda: to_rgb(img))
    crop = clock("resize+crop", lambda: clip_resize_crop(rgb, 224))
    png = clock("PNG encode (client)", lambda: encode(crop, "png", 95))
    clock("base64", lambda: base64.b64encode(png))

    def pillow_png(**options: Any) -> Callable[[], bytes]:
        def save() -> bytes:
            buf = io.BytesIO()
            crop.save(buf, format="PNG", **options)
            return buf.getvalue()

        return save

    # Pillow tries all five PNG filters on every row; the client's writer uses one (Average).
    out["alt: Pillow PNG Z_RLE bytes"] = len(
        clock("alt: PNG encode, Pillow Z_RLE (before)", pillow_png(compress_type=zlib.Z_RLE))
    )
    out["alt: PNG default bytes"] = len(clock("alt: PNG encode, Pillow default", pillow_png()))
    out["PNG client bytes"] = len(png)

    def drafted() -> Image.Image:
        im = Image.open(io.BytesIO(raw))
        if im.format == "JPEG" and min(im.size) >= 4 * 224:
            scale = 2 * 224 / min(im.size)
            im.draft(None, (math.ceil(im.size[0] * scale), math.ceil(im.size[1] * scale)))
        im.load()
        return im

    small = clock("fast_decode: draft decode", drafted)
    out["fast_decode: decoded size"] = small.size[0] * 10_000 + small.size[1]  # unpacked when printed
    clock("fast_decode: resize+crop", lambda: clip_resize_crop(to_rgb(small), 224))
    return out


# -- fast_decode's effect --------------------------------------------------------------------------------


def pixels(path: Path, opts: ImageOptions) -> np.ndarray:
    prepared = prepare_image(path, 0, ImageOptions(fast_decode=opts.fast_decode, want="pixels"))
    assert prepared.pixels is not None
    return prepared.pixels


def jpeg_pixels(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def squash_pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((224, 224)))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)  # type: ignore[no-any-return]


def effect_table(samples: list[Sample], tmp: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_clip import write_tiny_clip
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from clip_client import ClipClient

    ckpt = write_tiny_clip(tmp / "tiny_clip")
    model = ClipClient.local(ckpt, device="cpu")
    print(
        "| image | variant vs the exact path | max abs pixel diff | mean abs pixel diff | values changed |"
        " tiny-CLIP cosine (min) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for sample in samples:
        if not sample.name.endswith(("JPEG 1152x864", "JPEG 4000x3000")):
            continue
        exact = [pixels(p, EXACT) for p in sample.paths]
        variants = {
            "fast_decode=True": [pixels(p, FAST) for p in sample.paths],
            "for scale: image_format='jpeg' (q95)": [jpeg_pixels(x, 95) for x in exact],
            "for scale: naive squash to 224x224": [squash_pixels(p) for p in sample.paths],
        }
        base = model.embed_images(exact)
        for name, arrs in variants.items():
            diff = np.abs(np.stack(exact).astype(np.int16) - np.stack(arrs).astype(np.int16))
            cos = cosine(base, model.embed_images(arrs))
            print(
                f"| {sample.name} | {name} | {int(diff.max())} | {diff.mean():.3f} | {np.mean(diff > 0):.1%} "
                f"| {cos.min():.6f} |"
            )
    model.close()


# -- the run -------------------------------------------------------------------------------------------


def png_writers(photo_crop: Image.Image, reps: int) -> None:
    """The client's PNG writer against Pillow's on 224x224 content of four kinds: time and bytes."""
    from image_factory import flat_with_noisy_rows, screenshot  # tests/, on the path via _serve

    noise = np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    contents = {
        "photo (the 1 MP sample's crop)": photo_crop,
        "screenshot (text on white)": Image.fromarray(screenshot()),
        "flat colour, 5 noisy rows": Image.fromarray(flat_with_noisy_rows()),
        "noise": Image.fromarray(noise),
    }

    def pillow(img: Image.Image, **options: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG", **options)
        return buf.getvalue()

    writers: dict[str, Callable[[Image.Image], bytes]] = {
        "client (Average filter, RLE/default)": lambda img: encode(img, "png", 95),
        "Pillow, Z_RLE (the client before)": lambda img: pillow(img, compress_type=zlib.Z_RLE),
        "Pillow, defaults": pillow,
    }
    print("| content | " + " | ".join(f"{w}: ms / bytes" for w in writers) + " |")
    print("|---|" + "---:|" * len(writers))
    for name, img in contents.items():
        cells = []
        for write in writers.values():
            best = float("inf")
            for _ in range(reps):
                start = time.perf_counter()
                out = write(img)
                best = min(best, time.perf_counter() - start)
            cells.append(f"{best * 1000:.2f} / {len(out):,}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one file per size, one short pass (CI)")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per measurement; default 1.5")
    args = parser.parse_args()
    smoke = args.smoke
    min_time = args.min_time or (0.05 if smoke else 1.5)
    counts = {"JPEG": 1, "12MP": 1, "PNG": 1} if smoke else {"JPEG": 8, "12MP": 3, "PNG": 4}
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)

    import transformers

    processor = clip_processor()

    def hf(path: Path) -> Any:
        return processor(images=Image.open(path), return_tensors="np")["pixel_values"]

    methods: list[tuple[str, Callable[[Path], Any]]] = [
        ("decode floor: Image.open().load()", decode_floor),
        ("clip_client prepare_image (exact, PNG) + base64", client_exact),
        ("clip_client prepare_image fast_decode=True + base64", client_fast),
        ("clip_client prepare_image image_format='bmp' (exact) + base64", client_bmp),
        ("naive: open, convert RGB, resize((224,224)), JPEG q75, base64", naive),
        (f"{type(processor).__name__} on the original (transformers {transformers.__version__})", hf),
        ("today: read + base64 the original (no preparation)", original_b64),
    ]
    cores = os.cpu_count() or 1
    print(f"# preprocess{' (smoke)' if smoke else ''}: {machine()}")
    print(
        f"# Pillow {Image.__version__}, libjpeg-turbo {features.version('jpg')} "
        f"({'yes' if features.check_feature('libjpeg_turbo') else 'no'}), zlib-ng "
        f"{'yes' if features.check_feature('zlib_ng') else 'no'}; per core = one thread in this process; "
        f"all cores = a pool of {cores} threads; synthetic photos (JPEG q90)"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        samples = make_samples(tmp, counts)
        print()
        print(
            "| image | preparation | ms per image (1 thread) | images/s per core | x decode floor |"
            f" images/s, {cores} threads |"
        )
        print("|---|---|---:|---:|---:|---:|")
        speed: dict[tuple[str, str], float] = {}
        for sample in samples:
            floor = None
            for label, fn in methods:
                t = per_image(fn, sample.paths, min_time)
                floor = floor or t
                speed[(sample.name, label)] = t
                rate = all_cores(fn, sample.paths, t, min_time)
                print(
                    f"| {sample.name} | {label} | {t * 1000:,.2f} | {1 / t:,.1f} | {t / floor:.2f}x "
                    f"| {rate:,.1f} |"
                )
        print()
        print(
            "| image | client speed / naive's | client speed / CLIPImageProcessor's | fast_decode speed-up |"
            " client time / decode floor | fast_decode time / decode floor |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        hf_label = methods[4][0]
        for sample in samples:

            def t(label: str, sample: Sample = sample) -> float:
                return speed[(sample.name, label)]

            exact, fast, floor = t(methods[1][0]), t(methods[2][0]), t(methods[0][0])
            print(
                f"| {sample.name} | {t(methods[3][0]) / exact:.2f}x | {t(hf_label) / exact:.2f}x "
                f"| {exact / fast:.2f}x | {exact / floor:.2f}x | {fast / floor:.2f}x |"
            )

        print(
            "\nWhere the client's time goes (ms, median of single-threaded calls, first file of each size):\n"
        )
        names = [
            "read+decode",
            "to RGB",
            "resize+crop",
            "PNG encode (client)",
            "base64",
            "fast_decode: draft decode",
            "fast_decode: resize+crop",
            "alt: PNG encode, Pillow Z_RLE (before)",
            "alt: PNG encode, Pillow default",
        ]
        print(
            "| image | " + " | ".join(names) + " | PNG bytes client / Pillow Z_RLE / Pillow default "
            "| fast_decode decodes at |"
        )
        print("|---|" + "---:|" * (len(names) + 2))
        for sample in samples:
            st = stages(sample.paths[0], 2 if smoke else 15)
            size = int(st["fast_decode: decoded size"])
            print(
                f"| {sample.name} | "
                + " | ".join(f"{st[n]:.2f}" for n in names)
                + f" | {st['PNG client bytes']:,.0f} / {st['alt: Pillow PNG Z_RLE bytes']:,.0f} "
                f"/ {st['alt: PNG default bytes']:,.0f} "
                f"| {size // 10_000}x{size % 10_000} |"
            )

        print("\nBytes per request item (the JSON record, mean over the files):\n")
        print(
            "| image | original file | today: record of the original base64'd | client record (PNG) |"
            " client record (image_format='bmp') | client record (image_format='jpeg', q95) "
            "| naive 224 JPEG q75 record | today / client (PNG) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        jpeg_opts = ImageOptions(format="jpeg")
        for sample in samples:
            n = len(sample.paths)
            raw = sum(p.stat().st_size for p in sample.paths) / n
            today = sum(record_size(encode_record(original_b64(p))) for p in sample.paths) / n
            ours = sum(record_size(encode_record(client_exact(p))) for p in sample.paths) / n
            ours_jpeg = (
                sum(record_size(encode_record(prepare_image(p, 0, jpeg_opts).b64())) for p in sample.paths)
                / n
            )
            squash = sum(record_size(encode_record(naive(p))) for p in sample.paths) / n
            ours_bmp = sum(record_size(encode_record(client_bmp(p))) for p in sample.paths) / n
            print(
                f"| {sample.name} | {raw:,.0f} | {today:,.0f} | {ours:,.0f} | {ours_bmp:,.0f} "
                f"| {ours_jpeg:,.0f} | {squash:,.0f} | {today / ours:.1f}x |"
            )

        print("\nThe PNG writer (best of single-threaded runs, 224x224 content):\n")
        with Image.open(samples[0].paths[0]) as first:
            png_writers(clip_resize_crop(to_rgb(first), 224), 3 if smoke else 30)

        print(
            "\nfast_decode's effect on the 224x224 pixels sent (model-independent), and the cosine "
            "similarity of embeddings\nfrom a TINY RANDOM CLIP (tests/tiny_clip.py, not ViT-L/14: only an "
            "illustration of scale) against the exact path's:\n"
        )
        effect_table(samples, tmp)
        print(
            "\nfast_decode only acts on JPEGs whose short side is at least 4 x 224 = 896 px; it decodes "
            "at 1/2, 1/4 or 1/8 scale,\nkeeping the short side at least 2 x 224, then runs the exact resize."
        )
    if smoke:
        print("\nsmoke run: targets not evaluated (one file per size, one short pass: numbers mean little)")


if __name__ == "__main__":
    main()
