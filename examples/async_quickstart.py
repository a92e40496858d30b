"""The async client: embed texts and images concurrently from one event loop.

Like ``examples/quickstart.py``: through your workspace's CLIP endpoints when one is configured,
else in local mode (the same model in-process, on CUDA or CPU; needs the ``local`` extra, and the
weights, fetched from the Hugging Face hub into its cache on first use)::

    DATABRICKS_HOST=https://<workspace>.cloud.databricks.com DATABRICKS_TOKEN=<token> \\
        python examples/async_quickstart.py
    python examples/async_quickstart.py                          # no workspace: local mode
    python examples/async_quickstart.py --local /models/clip     # local mode, a checkpoint folder

``max_concurrency`` caps the requests in flight across every task that shares the client.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import numpy as np
from _shared import add_local_argument, open_client

from clip_client import AsyncClipClient, ClipClientError, ModelLoadError

QUERIES = ["a sunset over the sea", "a city street at night", "a bowl of fruit"]


def make_images() -> list[np.ndarray]:
    """A few synthetic RGB images as uint8 arrays (any size: the client resizes and crops them)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(240 + 16 * i, 320, 3), dtype=np.uint8) for i in range(4)]


async def main(local: str | None) -> int:
    try:
        async with open_client(AsyncClipClient, local, normalize=True) as client:
            # Both calls share the client's concurrency cap (and, remotely, its connection pool).
            text_vecs, image_vecs = await asyncio.gather(
                client.embed_texts(QUERIES),
                client.embed_images(make_images()),
            )
            one = await client.embed_text("a single query")
    except ModelLoadError as exc:
        print(f"error: {exc} (with this script: --local FOLDER)", file=sys.stderr)
        return 1
    except (ClipClientError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"texts:  {text_vecs.shape}, images: {image_vecs.shape}, one text: {one.shape}")
    similarity = text_vecs @ image_vecs.T  # cosine similarity: rows are L2-normalised
    for query, row in zip(QUERIES, similarity, strict=True):
        print(f"{query!r}: nearest image {int(row.argmax())} (cosine {row.max():.3f})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_local_argument(parser)
    raise SystemExit(asyncio.run(main(parser.parse_args().local)))
