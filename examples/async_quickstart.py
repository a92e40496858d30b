"""The async client: embed texts and images concurrently from one event loop.

Run it like ``examples/quickstart.py``::

    DATABRICKS_HOST=https://<workspace>.cloud.databricks.com DATABRICKS_TOKEN=<token> \\
        python examples/async_quickstart.py

``max_concurrency`` caps the requests in flight across every task that shares the client.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np

from clip_client import AsyncClipClient, ClipClientError

QUERIES = ["a sunset over the sea", "a city street at night", "a bowl of fruit"]


def make_images() -> list[np.ndarray]:
    """A few synthetic RGB images as uint8 arrays (any size: the client resizes and crops them)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(240 + 16 * i, 320, 3), dtype=np.uint8) for i in range(4)]


async def main() -> int:
    endpoints = {
        key: value
        for key, value in {
            "text_endpoint": os.environ.get("CLIP_TEXT_ENDPOINT"),
            "image_endpoint": os.environ.get("CLIP_IMAGE_ENDPOINT"),
        }.items()
        if value
    }
    try:
        async with AsyncClipClient(normalize=True, **endpoints) as client:
            # Both calls share the client's connection pool and concurrency cap.
            text_vecs, image_vecs = await asyncio.gather(
                client.embed_texts(QUERIES),
                client.embed_images(make_images()),
            )
            one = await client.embed_text("a single query")
    except (ClipClientError, ValueError) as exc:
        print(f"error: {exc}")
        return 1

    print(f"texts:  {text_vecs.shape}, images: {image_vecs.shape}, one text: {one.shape}")
    similarity = text_vecs @ image_vecs.T  # cosine similarity: rows are L2-normalised
    for query, row in zip(QUERIES, similarity, strict=True):
        print(f"{query!r}: nearest image {int(row.argmax())} (cosine {row.max():.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
