"""What every example does the same way: choose the workspace's endpoints or local mode, and list a
folder's images. Not an example itself; the scripts beside it import it (``python examples/X.py``
puts this folder first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

from clip_client import AsyncClipClient, ClipClient

MODEL = "openai/clip-vit-large-patch14"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

Client = TypeVar("Client", ClipClient, AsyncClipClient)


def add_local_argument(parser: argparse.ArgumentParser) -> None:
    """``--local [MODEL_OR_FOLDER]``: force local mode, with a hub id or a checkpoint folder."""
    parser.add_argument(
        "--local",
        nargs="?",
        const=MODEL,
        default=None,
        metavar="MODEL_OR_FOLDER",
        help=f"run the model in-process: a hub id (default {MODEL}) or a checkpoint folder",
    )


def open_client(
    cls: type[Client],
    local: str | None,
    *,
    local_options: dict[str, Any] | None = None,
    **options: Any,
) -> Client:
    """A ``cls`` client of the workspace's endpoints when one resolves (and ``local`` is None), else
    of the model in this process (``local``, or :data:`MODEL`).

    The workspace comes from the databricks-sdk config chain (no host/token arguments);
    ``CLIP_TEXT_ENDPOINT``/``CLIP_IMAGE_ENDPOINT`` name other endpoints. ``options`` go to either
    client; ``local_options`` (``device``, ``dtype``) to local mode only.
    """
    if local is None:
        endpoints = {
            key: value
            for key, value in {
                "text_endpoint": os.environ.get("CLIP_TEXT_ENDPOINT"),
                "image_endpoint": os.environ.get("CLIP_IMAGE_ENDPOINT"),
            }.items()
            if value
        }
        try:
            return cls(**options, **endpoints)
        except ValueError as exc:  # no workspace: say why only if one seemed meant
            meant = any(os.environ.get(v) for v in ("DATABRICKS_HOST", "DATABRICKS_CONFIG_PROFILE"))
            why = str(exc) if meant else "set DATABRICKS_HOST + DATABRICKS_TOKEN, or a profile, for one"
            print(f"no Databricks workspace ({why}); running {MODEL} in this process", file=sys.stderr)
    # device=None picks CUDA when available, else CPU; dtype=None picks float16 on CUDA, float32 on CPU.
    return cls.local(local or MODEL, **(local_options or {}), **options)


def list_images(folder: Path) -> list[Path]:
    """The folder's image files (by suffix), sorted by name; not recursive."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
