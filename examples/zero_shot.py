"""Zero-shot classification of a folder's images: which of your labels fits each image best.

``client.classify(images, labels)`` writes each label into the CLIP authors' 7 ImageNet prompt
templates ("itap of a {}.", "a photo of the small {}."...), averages the prompts' embeddings per
label, and gives each image ``softmax(logit_scale * cosine)`` over the labels. No training, no
labelled examples: the labels are plain text. A table is printed: one row per image, the probability
of each label (each row sums to 1), and the most probable label.

Through your workspace's CLIP endpoints when databricks-sdk finds one (``DATABRICKS_HOST`` +
``DATABRICKS_TOKEN``, a profile, OAuth M2M...), else in local mode; ``--local [MODEL_OR_FOLDER]``
forces local mode, with a hub id or a checkpoint folder. Without ``--images``, a few demo images are
drawn into a temporary folder and classified against demo labels::

    python examples/zero_shot.py --images ~/photos --label cat --label dog --label "a sports car"
    python examples/zero_shot.py --images ~/photos --label cat --label dog --template "a photo of a {}."
    python examples/zero_shot.py --local /models/clip-vit-l14         # demo images, local mode
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _shared import IMAGE_SUFFIXES, add_local_argument, list_images, open_client
from PIL import Image, ImageDraw

from clip_client import ClipClient, ClipClientError, ModelLoadError

DEMO_LABELS = ["red circle", "blue square", "green triangle"]


def write_demo_images(folder: Path) -> None:
    """A red circle, a blue square and a green triangle on white."""
    for name, colour in (("circle", (220, 30, 30)), ("square", (30, 60, 220)), ("triangle", (30, 160, 60))):
        img = Image.new("RGB", (320, 240), "white")
        draw = ImageDraw.Draw(img)
        if name == "circle":
            draw.ellipse((80, 40, 240, 200), fill=colour)
        elif name == "square":
            draw.rectangle((80, 40, 240, 200), fill=colour)
        else:
            draw.polygon([(160, 30), (60, 210), (260, 210)], fill=colour)
        img.save(folder / f"{name}.png")


def classify(local: str | None, folder: Path, labels: list[str], templates: list[str] | None) -> int:
    paths = list_images(folder)
    if not paths:
        print(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}", file=sys.stderr)
        return 1
    with open_client(ClipClient, local) as client:
        print(client)
        # "mark": an image that does not decode gets a row of NaN and is reported, not fatal.
        result = client.classify(paths, labels, templates=templates, on_error="mark")
    for failure in result.failures:
        print(f"skipped {paths[failure.index]}: {failure.error}", file=sys.stderr)

    width = max(8, *(len(label) for label in result.labels))
    name_width = max(len(p.name) for p in paths)
    print(
        f"\n{'image':<{name_width}}  " + "  ".join(f"{label:>{width}}" for label in result.labels) + "  best"
    )
    for path, row, best in zip(paths, result.probabilities, result.predictions, strict=True):
        cells = "  ".join(f"{p:>{width}.3f}" for p in row)
        print(f"{path.name:<{name_width}}  {cells}  {best if best is not None else '(failed)'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_local_argument(parser)
    parser.add_argument(
        "--images", type=Path, metavar="DIR", help="the folder to classify (default: demo images)"
    )
    parser.add_argument("--label", action="append", default=[], help="a class, in plain words (repeatable)")
    parser.add_argument(
        "--template",
        action="append",
        default=None,
        help='a prompt template with one {} for the label, e.g. "a photo of a {}." (repeatable; '
        "default: the CLIP authors' 7 ImageNet templates)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="clip-zero-shot-") as tmp:
        if args.images is None:
            folder = Path(tmp)
            write_demo_images(folder)
            labels = args.label or DEMO_LABELS
        else:
            folder = args.images.expanduser()
            if not folder.is_dir():
                parser.error(f"--images {str(folder)!r} is not a folder")
            if len(args.label) < 2:
                parser.error("give at least two labels: --label cat --label dog")
            labels = args.label
        try:
            return classify(args.local, folder, labels, args.template)
        except ModelLoadError as exc:
            print(f"error: {exc} (with this script: --local FOLDER)", file=sys.stderr)
            return 1
        except (ClipClientError, ValueError, TypeError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    raise SystemExit(main())
