"""Offline (batch) embedding of a folder of images to a .npy file, with the model in this process.

Made for a GPU box or a laptop with no workspace: the CLIP model runs in-process (local mode), on the
device and in the dtype you pick (``--device cuda:1``, ``--dtype bfloat16``; by default CUDA in
float16 when there is a GPU, else CPU in float32), ``--batch-size`` images per forward pass (default
128 on CUDA, 32 on CPU). Images stream through ``iter_embed_images``: they are read, decoded and
prepared a few batches ahead of the model, and each row is written straight into the output file (a
``numpy`` memory map), so memory does not grow with the folder.

Writes ``OUT`` (float32, shape ``(n_images, 768)`` for ViT-L/14, rows in the order of the paths
file; ``--normalize`` for unit-length rows) and ``OUT`` with the suffix ``.txt``: the image paths,
one per line, row ``i`` of the array being line ``i``. An image that cannot be read keeps its line
and gets a row of NaN, and is reported. When databricks-sdk finds a workspace and ``--local`` is not
given, the same runs through the workspace's endpoints instead (``--device``/``--dtype`` then do not
apply). Without ``--images``, a few demo images are written into a temporary folder, and the output
goes there too::

    python examples/offline_embedding.py --local --images ~/photos --out photos.npy
    python examples/offline_embedding.py --local /models/clip-vit-l14 --images ~/photos --out photos.npy \\
        --device cuda:0 --dtype bfloat16 --batch-size 256 --normalize
    python examples/offline_embedding.py --local /models/clip-vit-l14   # demo images
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _shared import IMAGE_SUFFIXES, add_local_argument, list_images, open_client

from clip_client import ClipClient, ClipClientError, LocalBackend, ModelLoadError


def write_demo_images(folder: Path, n: int = 6) -> None:
    """``n`` noisy gradients of different sizes, as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 200 + 20 * i, 300 - 10 * i
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 25, size=(h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"demo-{i}.png")


def open_client_for(args: argparse.Namespace) -> ClipClient:
    """Local mode with the device, dtype and batch size asked for; the workspace's endpoints when one
    resolves and --local is not given."""
    options: dict[str, Any] = {"normalize": args.normalize}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    client = open_client(
        ClipClient, args.local, local_options={"device": args.device, "dtype": args.dtype}, **options
    )
    if (args.device or args.dtype) and not isinstance(client.backend, LocalBackend):
        print("--device/--dtype apply to local mode only; the endpoint's own are used", file=sys.stderr)
    return client


def embed_folder(args: argparse.Namespace, folder: Path, out: Path) -> int:
    paths = list_images(folder)
    if not paths:
        print(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}", file=sys.stderr)
        return 1
    listing = out.with_suffix(".txt")
    matrix: np.memmap[Any, np.dtype[np.float32]] | None = None
    started = time.perf_counter()
    with open_client_for(args) as client:
        print(client)
        # Rows arrive in input order, a few batches at a time; "mark" keeps going past a bad file.
        with client.iter_embed_images(paths, on_error="mark", progress=args.progress) as stream:
            for index, vector in stream:
                if matrix is None:  # the width is known from the first row (768 for ViT-L/14)
                    matrix = np.lib.format.open_memmap(
                        out, mode="w+", dtype=np.float32, shape=(len(paths), vector.shape[0])
                    )
                matrix[index] = vector
            failures = stream.failures
    seconds = time.perf_counter() - started
    assert matrix is not None
    matrix.flush()
    listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    for failure in failures:
        print(f"failed (NaN row {failure.index}): {paths[failure.index]}: {failure.error}", file=sys.stderr)
    rows, dim = matrix.shape
    print(f"wrote {rows} x {dim} float32 embeddings to {out} ({len(failures)} failed, NaN rows)")
    print(f"wrote the {rows} image paths, in row order, to {listing}")
    print(f"{rows / seconds:.1f} images/s ({seconds:.2f} s, model load included)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_local_argument(parser)
    parser.add_argument(
        "--images", type=Path, metavar="DIR", help="the folder to embed (default: demo images)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="FILE.npy", help="the output array (default embeddings.npy)"
    )
    parser.add_argument("--device", help="cuda, cuda:1, cpu... (default: CUDA when available, else CPU)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="the model's dtype")
    parser.add_argument(
        "--batch-size", type=int, help="images per forward pass (default 128 on CUDA, 32 on CPU)"
    )
    parser.add_argument("--normalize", action="store_true", help="write unit-length (L2-normalised) rows")
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    args = parser.parse_args()
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    with tempfile.TemporaryDirectory(prefix="clip-offline-") as tmp:
        if args.images is None:
            folder = Path(tmp) / "images"
            folder.mkdir()
            write_demo_images(folder)
            out = args.out or Path(tmp) / "embeddings.npy"
        else:
            folder = args.images.expanduser()
            if not folder.is_dir():
                parser.error(f"--images {str(folder)!r} is not a folder")
            out = (args.out or Path("embeddings.npy")).expanduser()
        if out.suffix != ".npy":
            parser.error(f"--out {str(out)!r} must end in .npy")
        try:
            return embed_folder(args, folder, out)
        except ModelLoadError as exc:
            print(f"error: {exc} (with this script: --local FOLDER)", file=sys.stderr)
            return 1
        except (ClipClientError, ValueError, ImportError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
