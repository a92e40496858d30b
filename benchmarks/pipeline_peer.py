"""Local-mode image pipeline against the peer: ``clip-retrieval inference`` (or the DataLoader loop).

One run, side by side, on the same folder of photos and the same checkpoint:

* **clip_client**: ``ClipClient.local(folder)`` on CPU, ``iter_embed_images`` over the files, each row
  written to a ``.npy`` as it comes (preparation in a thread pool a bounded number of batches ahead,
  the model on the request threads, the writes in the consumer: all three overlap).
* **clip-retrieval**: ``clip_retrieval.clip_inference.main.main`` (what ``clip-retrieval inference``
  runs) with ``clip_model="hf_clip:<checkpoint>"``, the same batch size and its default 4
  preprocessing workers, in its own virtual environment (its pins: numpy<2, transformers 4.x,
  torch from PyPI), given by ``--peer-python`` or ``$CLIP_RETRIEVAL_PYTHON``. Its per-batch times
  come from a wrapper around its ``OutputSink.add`` (the moment a batch's embeddings reach its
  writer); nothing else of it is changed.
* **DataLoader loop** (when clip-retrieval is not available, or with ``--sides``): the loop users
  write: a torch ``DataLoader`` with 2 workers running ``CLIPProcessor``'s image processor, then
  ``CLIPModel.get_image_features`` under ``torch.no_grad``.

The photos: real photographs, scikit-learn's two sample images (``china.jpg``, ``flower.jpg``,
640x427, shipped with scikit-learn: this machine has no network), each output a random crop (50-100%
of the side), a random horizontal flip, resized (Lanczos) to a realistic camera size from 640x480 to
1920x1080 (one in five portrait), saved as JPEG at quality 80-95. Larger sizes are upscaled from the
640x427 sources, so they are smoother than real 1080p photos and decode slightly faster.

The model: no real ViT-L/14 weights are on this machine (no hub access), so the checkpoint is a
``CLIPConfig`` with ViT-L/14's real dimensions and random weights (``tests/tiny_clip.py``,
``save_pretrained``): the compute of ``openai/clip-vit-large-patch14``. ``--smoke`` uses the tiny
test config instead.

Each side runs in its own process, one after another. Measured per side:

* start-up: from the process's launch to its first batch of rows, less that batch's time at the
  steady rate (imports, model load, the peer's warm-up passes);
* end to end: images / (last row written - process launched), start-up and model load included;
* steady state: images after the first ``--skip`` batches / the time they took (start-up, warm-up and
  the first batches excluded);
* peak memory: the largest sum of PSS (proportional set size, shared pages split between the
  processes that map them) over the side's process tree, sampled every 0.2 s, so DataLoader workers
  count (the main process's own ``ru_maxrss`` is not shown: a child forked from this parent, which
  has torch loaded, starts with the parent's resident pages counted);
* agreement: 1 - cosine between each row and clip_client's row for the same file.

``--ceiling`` also times the model alone (one batch of random pixels after a warm-up batch, in
clip_client's environment): the most any pipeline can reach on this machine.

Run::

    python benchmarks/pipeline_peer.py --smoke          # tiny model, a few images: seconds (CI)
    python benchmarks/pipeline_peer.py                  # ViT-L/14 dims, 32 photos
    python benchmarks/pipeline_peer.py --full           # ViT-L/14 dims, 96 photos (about 8 min on 2 cores)

Tests never time anything; this script is where speed is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 720), (1280, 960), (1600, 1200), (1920, 1080)]
MODES = {
    # photos, batch size, batches skipped for the steady state, model dims
    "smoke": (12, 4, 1, "tiny"),
    "default": (32, 8, 1, "vit-l14"),
    "full": (96, 8, 2, "vit-l14"),
}


# --------------------------------------------------------------------------------------------------
# Inputs


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEGs of realistic camera sizes cut from scikit-learn's two sample photographs."""
    from PIL import Image
    from sklearn.datasets import images as sample_images_module

    where = Path(sample_images_module.__path__[0])
    sources = [Image.open(where / name).convert("RGB") for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        if rng.random() < 0.2:
            w, h = h, w
        frac = rng.uniform(0.5, 1.0)
        cw, ch = int(src.width * frac), int(src.height * frac)
        x, y = int(rng.integers(0, src.width - cw + 1)), int(rng.integers(0, src.height - ch + 1))
        crop = src.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"{i:06d}.jpg"
        crop.resize((w, h), Image.Resampling.LANCZOS).save(path, quality=int(rng.integers(80, 96)))
        paths.append(path)
    return paths


def write_checkpoint(folder: Path, dims: str) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_clip import TINY, VIT_L14, write_clip_checkpoint

    # The tiny config keeps CLIP's real vocabulary size: the peer's warm-up tokenises with OpenAI's.
    return write_clip_checkpoint(folder, VIT_L14 if dims == "vit-l14" else {**TINY, "vocab_size": 49408})


# --------------------------------------------------------------------------------------------------
# The sides, each in its own process (`--side NAME`): they write a JSON of times and a .npy of rows


def side_clip_client(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from clip_client import ClipClient

    paths = sorted(Path(args.folder).glob("*.jpg"))
    client = ClipClient.local(args.ckpt, device="cpu", batch_size=args.batch_size)
    ready = time.time()
    out = np.lib.format.open_memmap(
        args.rows, mode="w+", dtype=np.float32, shape=(len(paths), client.backend.dim)
    )
    done = []
    for i, row in client.iter_embed_images(paths):
        out[i] = row
        if (i + 1) % args.batch_size == 0 or i + 1 == len(paths):
            done.append((time.time(), (i % args.batch_size) + 1))
    out.flush()
    result: dict[str, Any] = {"ready": ready, "batches": done, "names": [p.name for p in paths]}
    result["onednn"] = bool(getattr(client.backend, "onednn", False))
    client.close()
    return result


def side_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """The model alone, one batch of random pixels after a warm-up batch: with clip_client's oneDNN
    Linear layers, then (a fresh load) with PyTorch's default Linear."""
    import torch

    sys.path.insert(0, str(ROOT))
    from clip_client import LocalBackend

    rng = np.random.default_rng(0)
    pixels = list(rng.integers(0, 256, (args.batch_size, 224, 224, 3), dtype=np.uint8))
    result: dict[str, Any] = {"threads": torch.get_num_threads()}
    for key, onednn in (("ceiling", None), ("ceiling_default_linear", False)):
        backend = LocalBackend(args.ckpt, device="cpu", batch_size=args.batch_size, onednn=onednn)
        backend.embed("image", pixels)  # warm-up
        start = time.perf_counter()
        backend.embed("image", pixels)
        result[key] = args.batch_size / (time.perf_counter() - start)
        del backend
    return result


def side_dataloader(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from transformers import CLIPModel, CLIPProcessor

    paths = sorted(Path(args.folder).glob("*.jpg"))
    processor = CLIPProcessor.from_pretrained(args.ckpt).image_processor
    model = CLIPModel.from_pretrained(args.ckpt).eval()

    class Photos(Dataset[Any]):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int) -> Any:
            with Image.open(paths[i]) as img:
                return processor(images=img.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    ready = time.time()
    rows, done = [], []
    with torch.no_grad():
        for pixels in DataLoader(Photos(), batch_size=args.batch_size, num_workers=2):
            out = model.get_image_features(pixel_values=pixels)
            rows.append(getattr(out, "pooler_output", out).float().numpy())
            done.append((time.time(), len(pixels)))
    np.save(args.rows, np.concatenate(rows))
    return {"ready": ready, "batches": done, "names": [p.name for p in paths]}


def side_clip_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd
    from clip_retrieval.clip_inference import main as inference
    from clip_retrieval.clip_inference import writer

    done: list[tuple[float, int]] = []
    add = writer.OutputSink.add

    def timed_add(self: Any, sample: dict[str, Any]) -> None:
        add(self, sample)
        done.append((time.time(), int(sample["image_embs"].shape[0])))

    writer.OutputSink.add = timed_add  # type: ignore[method-assign]
    out = Path(args.rows).with_suffix("")
    inference.main(
        input_dataset=args.folder,
        output_folder=str(out),
        batch_size=args.batch_size,
        num_prepro_workers=args.peer_workers,
        enable_text=False,
        enable_metadata=False,
        clip_model=f"hf_clip:{args.ckpt}",
    )
    rows = np.concatenate([np.load(p) for p in sorted((out / "img_emb").glob("*.npy"))]).astype(np.float32)
    meta = pd.concat(pd.read_parquet(p) for p in sorted((out / "metadata").glob("*.parquet")))
    np.save(args.rows, rows)
    return {"ready": None, "batches": done, "names": [Path(p).name for p in meta["image_path"]]}


SIDES = {
    "ceiling": side_ceiling,
    "clip_client": side_clip_client,
    "dataloader": side_dataloader,
    "clip-retrieval": side_clip_retrieval,
}
LABELS = {
    "clip_client": "clip_client (`ClipClient.local`)",
    "clip-retrieval": "clip-retrieval inference",
    "dataloader": "DataLoader loop (`CLIPProcessor`)",
}


def environment() -> str:
    import torch
    import transformers

    return f"torch {torch.__version__}, transformers {transformers.__version__}, numpy {np.__version__}"


# --------------------------------------------------------------------------------------------------
# The parent: run each side, watch its memory, compare


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_side(name: str, python: str, common: list[str], workdir: Path, rows: bool = True) -> dict[str, Any]:
    rows_path = workdir / f"{name}.npy"
    report = workdir / f"{name}.json"
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--side",
        name,
        "--rows",
        str(rows_path),
        "--report",
        str(report),
    ]
    launched = time.time()
    env = dict(os.environ, PYTHONWARNINGS="ignore", TRANSFORMERS_VERBOSITY="error", WANDB_MODE="disabled")
    proc = subprocess.Popen(
        cmd + common, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree(proc.pid)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert proc.stdout is not None
    log = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    watcher.join()
    if proc.returncode != 0:
        raise RuntimeError(f"side {name} failed ({proc.returncode}):\n{log[-4000:]}")
    result: dict[str, Any] = json.loads(report.read_text())
    result.update(launched=launched, pss_mib=peak[0] / 1024, rss_mib=usage.ru_maxrss / 1024)
    if rows:
        result["rows"] = np.load(rows_path)
    return result


def summarise(result: dict[str, Any], skip: int) -> dict[str, float]:
    times = np.array([t for t, _ in result["batches"]])
    counts = np.array([n for _, n in result["batches"]])
    total = int(counts.sum())
    steady = float(counts[skip:].sum() / (times[-1] - times[skip - 1])) if len(times) > skip else float("nan")
    return {
        "images": total,
        "start": float(times[0] - counts[0] / steady - result["launched"])
        if steady == steady
        else float("nan"),
        "end_to_end": total / float(times[-1] - result["launched"]),
        "steady": steady,
    }


def agreement(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[float, float]:
    """max and mean of 1 - cosine between rows of the same file."""
    index = {name: i for i, name in enumerate(ours["names"])}
    order = [index[name] for name in theirs["names"]]
    if sorted(order) != list(range(len(ours["names"]))):
        raise RuntimeError("the sides did not embed the same set of files")
    a, b = ours["rows"][order].astype(np.float64), theirs["rows"].astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float((1 - cos).max()), float((1 - cos).mean())


def find_peer_python(given: str | None) -> str | None:
    candidate = given or os.environ.get("CLIP_RETRIEVAL_PYTHON")
    for python in [candidate] if candidate else [sys.executable]:
        check = subprocess.run(
            [python, "-c", "import clip_retrieval.clip_inference.main"], capture_output=True, check=False
        )
        if check.returncode == 0:
            return python
        if candidate:  # asked for by name: say why it cannot be used rather than compare with another peer
            raise SystemExit(
                f"{python} cannot import clip-retrieval:\n{check.stderr.decode(errors='replace')[-2000:]}"
            )
    return None


def scale_rows(
    mode: str,
    *,
    peer_python: str | None = None,
    sides: list[str] | None = None,
    peer_workers: int = 4,
    ceiling: bool | None = None,
) -> list[str]:
    """Run the comparison at `mode`'s size (`"smoke"`, `"default"` or `"full"`) and return its
    Markdown lines: a header comment, the table of sides, and the ratios of clip_client to each peer.

    The peer is clip-retrieval when `peer_python` (or `$CLIP_RETRIEVAL_PYTHON`, or this
    interpreter) can import it, else the DataLoader loop; `sides` overrides the choice."""
    photos, batch, skip, dims = MODES[mode]
    ceiling = mode != "smoke" if ceiling is None else ceiling
    peer = find_peer_python(peer_python)
    chosen = sides or ["clip_client", "clip-retrieval" if peer else "dataloader"]
    lines = []
    with tempfile.TemporaryDirectory(prefix="pipeline-peer-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        ckpt = write_checkpoint(work / "ckpt", dims)
        make_photos(work / "photos", photos)
        made = time.perf_counter() - started
        common = [
            "--folder", str(work / "photos"), "--ckpt", str(ckpt), "--batch-size", str(batch),
            "--peer-workers", str(peer_workers),
        ]  # fmt: skip
        results = {}
        for name in chosen:
            python = peer if name == "clip-retrieval" and peer else sys.executable
            results[name] = run_side(name, python, common, work)
            results[name]["env"] = subprocess.run(
                [python, str(Path(__file__).resolve()), "--env"], capture_output=True, text=True, check=True
            ).stdout.strip()
        alone = run_side("ceiling", sys.executable, common, work, rows=False) if ceiling else None
    ours = results["clip_client"]
    model = "tiny random CLIP" if dims == "tiny" else "random-weight CLIP with ViT-L/14's dimensions"
    lines.append(
        f"# {model}, CPU ({platform.machine()}, {os.cpu_count()} cores), {photos} photos 640x480-1920x1080 "
        f"(crops of scikit-learn's sample photos), batch {batch}, steady state after {skip} batch(es); "
        f"checkpoint + photos written in {made:.0f} s"
    )
    if not peer and "clip-retrieval" not in chosen:
        lines.append("# clip-retrieval is not installed here: the peer is the DataLoader loop users write")
    lines.append(f"# clip_client's Linear layers (MLP activations fused in) through oneDNN: {ours['onednn']}")
    if alone is not None:
        lines.append(
            f"# model alone (one batch of random pixels, {alone['threads']} torch threads): "
            f"{alone['ceiling']:.2f} images/s with clip_client's oneDNN layers, "
            f"{alone['ceiling_default_linear']:.2f} with PyTorch's default"
        )
    lines += [
        "",
        (
            "| pipeline | environment | start-up s | end to end images/s | steady images/s | peak PSS MiB "
            "| 1 - cos max | 1 - cos mean |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    stats = {name: summarise(r, skip) for name, r in results.items()}
    for name, r in results.items():
        s = stats[name]
        worst, mean = agreement(ours, r)
        lines.append(
            f"| {LABELS[name]} | {r['env']} | {s['start']:.1f} | {s['end_to_end']:.3f} | {s['steady']:.3f} | "
            f"{r['pss_mib']:,.0f} | {worst:.1e} | {mean:.1e} |"
        )
    lines += ["", "| clip_client / peer | end to end | steady state | peak PSS |", "|---|---:|---:|---:|"]
    for name in results:
        if name != "clip_client":
            a, b = stats["clip_client"], stats[name]
            ratios = (a["end_to_end"] / b["end_to_end"], a["steady"] / b["steady"])
            memory = ours["pss_mib"] / results[name]["pss_mib"]
            lines.append(f"| {LABELS[name]} | {ratios[0]:.2f}x | {ratios[1]:.2f}x | {memory:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few photos: seconds (CI)")
    parser.add_argument("--full", action="store_true", help="96 photos (about 8 minutes on 2 cores)")
    parser.add_argument(
        "--peer-python", help="a python that imports clip_retrieval (default $CLIP_RETRIEVAL_PYTHON)"
    )
    parser.add_argument("--sides", help="comma-separated: clip_client,clip-retrieval,dataloader")
    parser.add_argument("--peer-workers", type=int, default=4, help="clip-retrieval's num_prepro_workers")
    parser.add_argument(
        "--ceiling", action="store_true", default=None, help="also time the model alone (not in smoke)"
    )
    # one side, in its own process (the parent runs these)
    parser.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--env", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.env:
        print(environment())
        return
    if args.side:
        Path(args.report).write_text(json.dumps(SIDES[args.side](args)))
        return
    mode = "smoke" if args.smoke else "full" if args.full else "default"
    sides = args.sides.split(",") if args.sides else None
    for line in scale_rows(
        mode, peer_python=args.peer_python, sides=sides, peer_workers=args.peer_workers, ceiling=args.ceiling
    ):
        print(line)
    if args.smoke:
        print("\nsmoke run: a tiny model and a few photos, these numbers mean little")


if __name__ == "__main__":
    main()
