"""The options every embedding command shares, declared once, and the client settings built from them."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .. import _constants as C
from ..errors import ClipClientError
from .app import flag
from .errors import cli_advice

if TYPE_CHECKING:
    from .._client import ClipClient


# --------------------------------------------------------------------------------------------------
# Options every command that embeds takes

_MODEL = "Model (local mode)"
_WORKSPACE = "Workspace (remote mode, the default)"
_TUNING = "Tuning"

LocalOpt = Annotated[
    bool,
    flag(
        "--local",
        help="Run CLIP in this process (needs the 'local' extra: torch, transformers) instead of "
        "calling the serving endpoints.",
        rich_help_panel=_MODEL,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="With --local: a Hugging Face hub id or a checkpoint folder "
        f"(default: {C.DEFAULT_LOCAL_MODEL}).",
        rich_help_panel=_MODEL,
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help='With --local: "cuda", "cuda:1", "cpu"... (default: CUDA when available, else CPU).',
        rich_help_panel=_MODEL,
        show_default=False,
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="The ~/.databrickscfg profile to use (default: databricks-sdk's chain: DATABRICKS_* "
        "variables, then DEFAULT).",
        rich_help_panel=_WORKSPACE,
        show_default=False,
    ),
]
HostOpt = Annotated[
    str | None,
    typer.Option(
        "--host",
        help="Workspace URL, `https://WORKSPACE.cloud.databricks.com` (default: DATABRICKS_HOST or "
        "the profile's).",
        rich_help_panel=_WORKSPACE,
        show_default=False,
    ),
]
TextEndpointOpt = Annotated[
    str,
    typer.Option("--text-endpoint", help="Serving endpoint for texts.", rich_help_panel=_WORKSPACE),
]
ImageEndpointOpt = Annotated[
    str,
    typer.Option("--image-endpoint", help="Serving endpoint for images.", rich_help_panel=_WORKSPACE),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help=f"Inputs per request (or forward pass) (default: {C.DEFAULT_BATCH_SIZE}; a local model's own).",
        rich_help_panel=_TUNING,
        show_default=False,
    ),
]
ConcurrencyOpt = Annotated[
    str | None,
    typer.Option(
        "--max-concurrency",
        help=f'Requests in flight: a number, or "auto" (what the endpoint serves at once) '
        f"(default: {C.DEFAULT_MAX_CONCURRENCY}; 2 with --local).",
        rich_help_panel=_TUNING,
        show_default=False,
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        help="SQLite file of cached embeddings, shared by runs (default: clip-client/embeddings.sqlite "
        "in the user cache folder: $XDG_CACHE_HOME or ~/.cache).",
        rich_help_panel=_TUNING,
        show_default=False,
        dir_okay=False,
    ),
]
ImagePreparationOpt = Annotated[
    str | None,
    typer.Option(
        "--image-preparation",
        help='Who prepares images: "client" (here, then sent as pixels) or "server" (the endpoint, '
        "from the file's bytes) (default: the client's).",
        rich_help_panel=_TUNING,
        show_default=False,
    ),
]
MaxImagePixelsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-image-pixels",
        help="Images with more pixels are refused before decoding, a decompression-bomb guard "
        "(default: the client's).",
        rich_help_panel=_TUNING,
        show_default=False,
    ),
]
NoCacheOpt = Annotated[bool, flag("--no-cache", help="Use no embedding cache.", rich_help_panel=_TUNING)]
VerboseOpt = Annotated[
    bool,
    flag("--verbose", "-v", help="On an error, show the traceback; log what the client does."),
]
NormalizeOpt = Annotated[
    bool,
    flag("--normalize/--no-normalize", help="L2-normalise every embedding (stored in the file's settings)."),
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Output file; the format follows its extension: .npy, .parquet or .jsonl "
        "(default: JSON Lines on stdout).",
        show_default=False,
        dir_okay=False,
    ),
]
JsonOpt = Annotated[bool, flag("--json", help="JSON Lines instead of a table.")]


@dataclass(frozen=True)
class Common:
    """The options that choose and tune the client."""

    local: bool = False
    model: str | None = None
    device: str | None = None
    profile: str | None = None
    host: str | None = None
    text_endpoint: str = C.DEFAULT_TEXT_ENDPOINT
    image_endpoint: str = C.DEFAULT_IMAGE_ENDPOINT
    batch_size: int | None = None
    max_concurrency: str | None = None
    cache: Path | None = None
    no_cache: bool = False
    image_preparation: str | None = None
    max_image_pixels: int | None = None

    def cache_path(self) -> Path | None:
        if self.no_cache:
            if self.cache is not None:
                raise typer.BadParameter("pass either --cache or --no-cache", param_hint="--no-cache")
            return None
        return self.cache if self.cache is not None else default_cache_path()

    def client(self, *, normalize: bool | None = None) -> ClipClient:
        """The client these options describe (remote unless ``--local``)."""
        from pydantic import ValidationError

        from .._client import ClipClient

        options: dict[str, Any] = {
            "batch_size": self.batch_size,
            "max_concurrency": _concurrency(self.max_concurrency),
            "normalize": normalize,
            "cache": self.cache_path(),
            "image_preparation": self.image_preparation,
            "max_image_pixels": self.max_image_pixels,
        }
        options = {k: v for k, v in options.items() if v is not None}
        if self.max_image_pixels is not None:
            _raise_pillow_limit(self.max_image_pixels)
        if self.local:
            if self.profile or self.host:
                raise typer.BadParameter("--local runs the model in this process; drop --profile/--host")
        elif self.model or self.device:
            raise typer.BadParameter("--model and --device choose a local model: add --local")
        try:
            if self.local:
                return ClipClient.local(self.model or C.DEFAULT_LOCAL_MODEL, device=self.device, **options)
            return ClipClient(
                host=self.host,
                profile=self.profile,
                text_endpoint=self.text_endpoint,
                image_endpoint=self.image_endpoint,
                **options,
            )
        except ValidationError as exc:
            # A client setting out of range: the option that gave it, as click reports a usage error.
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first.get("loc") else ""
            raise typer.BadParameter(
                f"{first['msg']} (got {first.get('input')!r})",
                param_hint=f"--{field.replace('_', '-')}" if field else None,
            ) from None
        except ValueError as exc:
            if str(exc).startswith("device="):
                # A device torch does not know, or one this machine lacks: the option's mistake.
                reason = cli_advice(str(exc)).removeprefix("--device ")
                raise typer.BadParameter(reason, param_hint="--device") from None
            if not str(exc).startswith("could not resolve a Databricks workspace"):
                raise
            reason = str(exc.__cause__ or exc).rstrip(".")
            raise ClipClientError(
                f"could not resolve a Databricks workspace ({reason}): set DATABRICKS_HOST and "
                "DATABRICKS_TOKEN, pass --host (with a token in DATABRICKS_TOKEN) or --profile NAME, "
                "or add --local to run the model in this process"
            ) from exc


def _raise_pillow_limit(pixels: int) -> None:
    """Raise Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, for this
    process) to ``pixels``, so that ``--max-image-pixels`` alone decides; never lower it (Pillow
    refuses at twice its limit, warns above it; the client refuses above ``--max-image-pixels``)."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = pixels


def _concurrency(value: str | None) -> int | str | None:
    if value is None or value.strip().lower() == "auto":
        return None if value is None else "auto"
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(
            f'{value!r} is neither a number nor "auto"', param_hint="--max-concurrency"
        ) from None


def default_cache_path() -> Path:
    """``clip-client/embeddings.sqlite`` in the user cache folder: ``$XDG_CACHE_HOME`` (or
    ``~/.cache``) on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        if sys.platform == "win32":
            base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        elif sys.platform == "darwin":
            base = str(Path.home() / "Library" / "Caches")
        else:
            base = str(Path.home() / ".cache")
    return Path(base) / "clip-client" / "embeddings.sqlite"


def show_progress() -> bool:
    """A progress bar (items/s, ETA) only where someone watches: stderr is a terminal."""
    return sys.stderr.isatty()
