"""Embed a few texts and two generated images with CLIP, then zero-shot classify them.

Through your workspace's CLIP endpoints when one is configured, else in local mode: the same model
in-process, on CUDA or CPU (needs the ``local`` extra, and the weights, fetched from the Hugging Face
hub into its cache on first use). ``--local [MODEL_OR_FOLDER]`` forces local mode, with a hub id or
a checkpoint folder (``config.json``, weights, tokenizer files) for a machine with no hub access.

Run it with any credentials databricks-sdk understands, for example::

    DATABRICKS_HOST=https://<workspace>.cloud.databricks.com DATABRICKS_TOKEN=<token> \\
        python examples/quickstart.py

or ``DATABRICKS_CONFIG_PROFILE=<profile>`` for a ``~/.databrickscfg`` profile, or
``DATABRICKS_CLIENT_ID``/``DATABRICKS_CLIENT_SECRET`` for OAuth M2M. The endpoints default to
``clip-text-embedding`` and ``clip-image-embedding``; this script reads ``CLIP_TEXT_ENDPOINT`` and
``CLIP_IMAGE_ENDPOINT`` to point it at others. Without a workspace::

    python examples/quickstart.py                                # local mode, openai/clip-vit-large-patch14
    python examples/quickstart.py --local /models/clip-vit-l14   # local mode, a checkpoint folder
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from _shared import add_local_argument, open_client
from PIL import Image, ImageDraw

from clip_client import ClipClient, ClipClientError, ModelLoadError

LABELS = ["a red circle", "a blue square", "a photo of a dog"]


def make_images() -> list[object]:
    """Two images made here, so the example needs no files: a PIL image and a uint8 array."""
    circle = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(circle).ellipse((80, 40, 240, 200), fill=(220, 20, 30))
    square = np.full((256, 256, 3), 255, dtype=np.uint8)
    square[48:208, 48:208] = (30, 60, 220)
    return [circle, square]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_local_argument(parser)
    args = parser.parse_args()
    try:
        with open_client(ClipClient, args.local, normalize=True) as client:
            print(client)
            text_vecs = client.embed_texts(LABELS)
            image_vecs = client.embed_images(make_images())
    except ModelLoadError as exc:
        print(f"error: {exc} (with this script: --local FOLDER)", file=sys.stderr)
        return 1
    except (ClipClientError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"texts:  {text_vecs.shape} {text_vecs.dtype}")
    print(f"images: {image_vecs.shape} {image_vecs.dtype}")
    # Rows are L2-normalised (normalize=True), so a dot product is the cosine similarity.
    similarity = image_vecs @ text_vecs.T
    for name, row in zip(["circle image", "square image"], similarity, strict=True):
        scores = ", ".join(f"{label!r}: {score:.3f}" for label, score in zip(LABELS, row, strict=True))
        print(f"{name}: {scores} -> best {LABELS[int(row.argmax())]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
