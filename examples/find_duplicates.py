"""Near-duplicate finder: groups of images in a folder that are copies of one another.

Every image of the folder is embedded, and ``clip_client.search.find_duplicates`` groups the images
whose CLIP embeddings have a cosine similarity of at least ``--threshold`` (0.95 by default: resized,
re-encoded or lightly edited copies of one picture; lower it for looser matches). Each group is
printed with every member's cosine similarity to the group's first image; images that match nothing
are not listed.

Through your workspace's CLIP endpoints when databricks-sdk finds one (``DATABRICKS_HOST`` +
``DATABRICKS_TOKEN``, a profile, OAuth M2M...), else in local mode; ``--local [MODEL_OR_FOLDER]``
forces local mode, with a hub id or a checkpoint folder. Without ``--images``, a few demo images are
drawn into a temporary folder, one of them planted twice more: as an exact copy, and resized::

    python examples/find_duplicates.py --images ~/photos
    python examples/find_duplicates.py --images ~/photos --threshold 0.9
    python examples/find_duplicates.py --local /models/clip-vit-l14     # demo images, local mode
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from _shared import IMAGE_SUFFIXES, add_local_argument, list_images, open_client
from PIL import Image

from clip_client import ClipClient, ClipClientError, ModelLoadError, find_duplicates


def write_demo_images(folder: Path) -> None:
    """Four different noisy gradients, and two copies of the first: ``photo-0-copy.png`` (the same
    file) and ``photo-0-small.png`` (resized to 224x224, the size CLIP sees)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:448, 0:448] / 447.0
    for i in range(4):
        weights = rng.uniform(0, 255, size=(3, 2))
        planes = [w[0] * x + w[1] * y for w in weights]
        pixels = np.stack(planes, axis=-1) / 2 + rng.normal(0, 20, size=(448, 448, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"photo-{i}.png")
    shutil.copyfile(folder / "photo-0.png", folder / "photo-0-copy.png")
    with Image.open(folder / "photo-0.png") as img:
        img.resize((224, 224), Image.Resampling.BICUBIC).save(folder / "photo-0-small.png")


def dedupe(local: str | None, folder: Path, threshold: float) -> int:
    paths = list_images(folder)
    if not paths:
        print(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}", file=sys.stderr)
        return 1
    with open_client(ClipClient, local) as client:
        print(client)
        # "mark": a file that does not decode is reported instead of stopping the run; its NaN row
        # never joins a group.
        embedded = client.embed_images(paths, on_error="mark")
    for failure in embedded.failures:
        print(f"skipped {paths[failure.index]}: {failure.error}", file=sys.stderr)

    groups = find_duplicates(embedded.embeddings, threshold=threshold)
    print(f"{len(paths)} images in {folder}: {len(groups)} group(s) at cosine >= {threshold}")
    for number, group in enumerate(groups, start=1):
        print(f"\ngroup {number} ({len(group.indices)} images)")
        for index, similarity in zip(group.indices, group.similarities, strict=True):
            print(f"  {similarity:6.3f}  {paths[int(index)]}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_local_argument(parser)
    parser.add_argument(
        "--images", type=Path, metavar="DIR", help="the folder to scan (default: demo images)"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.95, help="cosine similarity, in [-1, 1], that joins two images"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clip-duplicates-") as tmp:
        if args.images is None:
            folder = Path(tmp)
            write_demo_images(folder)
        else:
            folder = args.images.expanduser()
            if not folder.is_dir():
                parser.error(f"--images {str(folder)!r} is not a folder")
        try:
            return dedupe(args.local, folder, args.threshold)
        except ModelLoadError as exc:
            print(f"error: {exc} (with this script: --local FOLDER)", file=sys.stderr)
            return 1
        except (ClipClientError, ValueError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
