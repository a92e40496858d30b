"""Semantic image search over a folder: find its images by describing them, or by showing one.

Every image of the folder is embedded once (with an SQLite embedding cache, so a second run sends
nothing for images it has seen), then each query, a text or an image, is embedded and the folder's
images are ranked by cosine similarity with ``clip_client.search.cosine_topk``. A ranked table is
printed per query: rank, cosine similarity, file.

Through your workspace's CLIP endpoints when databricks-sdk finds one (``DATABRICKS_HOST`` +
``DATABRICKS_TOKEN``, a profile, OAuth M2M...), else in local mode; ``--local [MODEL_OR_FOLDER]``
forces local mode, with a hub id or a checkpoint folder. Without ``--images``, a few demo images are
drawn into a temporary folder and searched::

    python examples/image_search.py --images ~/photos --query "a dog on a beach" --query "a red car"
    python examples/image_search.py --images ~/photos --image ~/photos/IMG_0042.jpg -k 3
    python examples/image_search.py --local /models/clip-vit-l14      # demo images, local mode

``--cache FILE`` picks the SQLite file (default: ``~/.cache/clip_client/image-search.sqlite``, or
inside the temporary folder for the demo images).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _shared import IMAGE_SUFFIXES, add_local_argument, list_images, open_client
from PIL import Image, ImageDraw

from clip_client import ClipClient, ClipClientError, EmbeddingArray, ModelLoadError, cosine_topk

DEMO_QUERIES = ["a red circle", "a blue square", "a green triangle"]


def write_demo_images(folder: Path) -> None:
    """A few simple drawings, so the example runs with no folder of its own."""
    shapes = {
        "red-circle.png": ("ellipse", (220, 30, 30)),
        "blue-square.png": ("rectangle", (30, 60, 220)),
        "green-triangle.png": ("polygon", (30, 160, 60)),
        "orange-circle.png": ("ellipse", (240, 140, 20)),
    }
    for name, (shape, colour) in shapes.items():
        img = Image.new("RGB", (320, 240), "white")
        draw = ImageDraw.Draw(img)
        if shape == "polygon":
            draw.polygon([(160, 30), (60, 210), (260, 210)], fill=colour)
        else:
            getattr(draw, shape)((80, 40, 240, 200), fill=colour)
        img.save(folder / name)


def search(args: argparse.Namespace, folder: Path, cache: Path) -> int:
    paths = list_images(folder)
    if not paths:
        print(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}", file=sys.stderr)
        return 1
    with open_client(ClipClient, args.local, cache=cache) as client:
        print(client)
        # "mark": a file that does not decode is reported below instead of stopping the run.
        embedded = client.embed_images(paths, on_error="mark")
        stats = client.stats
        print(
            f"{len(paths)} images in {folder}: {stats.cache_hits} from the cache, "
            f"{stats.cache_misses} embedded ({cache})"
        )
        for failure in embedded.failures:
            print(f"skipped {paths[failure.index]}: {failure.error}", file=sys.stderr)
        ok = [i for i, good in enumerate(embedded.ok) if good]
        if not ok:
            print("error: no image could be embedded", file=sys.stderr)
            return 1
        matrix = embedded.embeddings[ok]
        queries: list[tuple[str, EmbeddingArray]] = [
            (f"text {q!r}", client.embed_text(q)) for q in args.query
        ]
        queries += [(f"image {str(p)!r}", client.embed_image(p)) for p in args.image]

    for label, vector in queries:
        best = cosine_topk(vector, matrix, k=args.k)
        print(f"\nquery: {label}")
        print(f"{'rank':>4}  {'cosine':>6}  file")
        for rank, (row, score) in enumerate(zip(best.indices[0], best.scores[0], strict=True), start=1):
            print(f"{rank:>4}  {score:6.3f}  {paths[ok[int(row)]]}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_local_argument(parser)
    parser.add_argument(
        "--images", type=Path, metavar="DIR", help="the folder to search (default: demo images)"
    )
    parser.add_argument(
        "--query", action="append", default=[], metavar="TEXT", help="a text query (repeatable)"
    )
    parser.add_argument(
        "--image", action="append", type=Path, default=[], metavar="FILE", help="an image query"
    )
    parser.add_argument("-k", type=int, default=5, help="results per query (default 5)")
    parser.add_argument("--cache", type=Path, metavar="FILE", help="the SQLite embedding cache")
    args = parser.parse_args()
    if args.k < 1:
        parser.error("-k must be >= 1")

    with tempfile.TemporaryDirectory(prefix="clip-image-search-") as tmp:
        if args.images is None:
            folder = Path(tmp)
            write_demo_images(folder)
            cache = args.cache or folder / "cache.sqlite"
            if not args.query and not args.image:
                args.query = DEMO_QUERIES
                args.image = [folder / "red-circle.png"]  # an image query: itself first, cosine 1.000
        else:
            folder = args.images.expanduser()
            if not folder.is_dir():
                parser.error(f"--images {str(folder)!r} is not a folder")
            cache = args.cache or Path("~/.cache/clip_client/image-search.sqlite").expanduser()
            cache.parent.mkdir(parents=True, exist_ok=True)
            if not args.query and not args.image:
                parser.error("give at least one --query TEXT or --image FILE")
        try:
            return search(args, folder, cache)
        except ModelLoadError as exc:
            print(f"error: {exc} (with this script: --local FOLDER)", file=sys.stderr)
            return 1
        except (ClipClientError, ValueError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
