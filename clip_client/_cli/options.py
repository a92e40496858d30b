"""The options every embedding command shares, declared once, and the client settings built from them."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast

import typer

from .. import _constants as C
from ..errors import ClipClientError, ConfigurationError
from .app import flag
from .errors import FLAGS, flag_spelling

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


def _out_path(value: str) -> Path:
    """`--out`'s file: an empty name, or a folder, is a usage error (status 2)."""
    if not value:
        raise typer.BadParameter("the file name is empty: name a file (.npy, .parquet or .jsonl)")
    if os.path.isdir(value):
        raise typer.BadParameter(f"{value!r} is a directory: name a file (.npy, .parquet or .jsonl)")
    return Path(value)


def _output_format(value: Path | None) -> Path | None:
    """`--out`'s extension names a format, or the command line is wrong (a usage error, status 2)."""
    if value is not None:
        from .outputs import OutputError, output_format

        try:
            output_format(value)
        except OutputError as exc:
            raise typer.BadParameter(str(exc).removeprefix("--out ")) from None
    return value


OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Output file; the format follows its extension: .npy, .parquet or .jsonl "
        "(default: JSON Lines on stdout).",
        show_default=False,
        parser=_out_path,
        callback=_output_format,
    ),
]
JsonOpt = Annotated[bool, flag("--json", help="JSON Lines instead of a table.")]
OverwriteOpt = Annotated[
    bool, flag("--overwrite", help="Start again: ignore what an earlier run left in --out.")
]
PartRowsOpt = Annotated[
    int, typer.Option("--part-rows", min=1, help="Rows per part file while a run is in progress.")
]


# The options that several commands share, by group, each declared once above: a command takes
# the groups it needs (`shared_options`). A default is the `Common` field's.
_SHARED: dict[str, dict[str, Any]] = {
    "model": {"local": LocalOpt, "model": ModelOpt, "device": DeviceOpt},
    "workspace": {
        "profile": ProfileOpt,
        "host": HostOpt,
        "text_endpoint": TextEndpointOpt,
        "image_endpoint": ImageEndpointOpt,
    },
    # The workspace options but --host: `app`, whose --host is the address it listens on.
    "endpoints": {
        "profile": ProfileOpt,
        "text_endpoint": TextEndpointOpt,
        "image_endpoint": ImageEndpointOpt,
    },
    "tuning": {
        "batch_size": BatchSizeOpt,
        "max_concurrency": ConcurrencyOpt,
        "cache": CacheOpt,
        "no_cache": NoCacheOpt,
    },
    "images": {"image_preparation": ImagePreparationOpt, "max_image_pixels": MaxImagePixelsOpt},
}
Group = Literal["model", "workspace", "endpoints", "tuning", "images"]
Command = TypeVar("Command", bound=Callable[..., Any])


def shared_options(*groups: Group) -> Callable[[Command], Command]:
    """Give a command the shared options of `groups` (after its own, in the order of `_SHARED`),
    and `--verbose`; the command receives them as one `common: Common`, built by keyword (when
    it has a `common` parameter). `--verbose` is read by `handled`, which goes above this.

    ```python
    @app.command()
    @handled
    @shared_options("model", "workspace")
    def status(common: Common) -> int: ...
    ```
    """
    names = {name: alias for group in groups for name, alias in _SHARED[group].items()}
    defaults = {f.name: f.default for f in dataclasses.fields(Common)}

    def add(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        wants_common = "common" in signature.parameters
        own = [p for p in signature.parameters.values() if p.name != "common"]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=alias, default=defaults[name])
            for name, alias in names.items()
        ]
        added.append(
            inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, annotation=VerboseOpt, default=False)
        )
        # typer hands the click context to a parameter of this type: which options were given.
        added.append(inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            kwargs.pop("verbose", None)
            ctx: typer.Context = kwargs.pop(_CONTEXT)
            values = {name: kwargs.pop(name) for name in names}
            if wants_common:
                kwargs["common"] = Common(**values, given=_given(ctx, names))
            return command(**kwargs)

        parameters = [*own, *added]
        # What typer reads: the command's own parameters, then the shared ones (evaluated annotations).
        cast(Any, run).__signature__ = signature.replace(parameters=parameters)
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return cast(Command, run)

    return add


_CONTEXT = "_clip_client_context"
_SET_BY_USER = frozenset({"COMMANDLINE", "ENVIRONMENT", "PROMPT"})
"""How an option got its value when the user set it (click's ParameterSource names), not a default."""


def _given(ctx: typer.Context, names: Iterable[str]) -> frozenset[str]:
    """Which of `names` the command line (or an environment variable) set, rather than a default."""
    return frozenset(
        name for name in names if getattr(ctx.get_parameter_source(name), "name", None) in _SET_BY_USER
    )


@dataclass(frozen=True)
class Common:
    """The options that choose and tune the client.

    `given` names the options the command line set (the others hold their defaults): a command that
    reads an embeddings file fills the model choices none of them made from the file
    (`options_for_rows`). `dtype` is never an option: it is the one a file's local model ran in.
    """

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
    dtype: str | None = None
    given: frozenset[str] = frozenset()

    def cache_path(self) -> Path | None:
        if self.no_cache:
            if self.cache is not None:
                raise typer.BadParameter("pass either --cache or --no-cache", param_hint="--no-cache")
            return None
        return self.cache if self.cache is not None else default_cache_path()

    def workspace(self) -> dict[str, str | None]:
        """Where Unity Catalog volumes are read off a cluster (`--host`, `--profile`; else
        databricks-sdk's default chain), as `iter_images`' `storage_options`."""
        return {"host": self.host, "profile": self.profile}

    def client(self, *, normalize: bool | None = None) -> ClipClient:
        """The client these options describe (remote unless `--local`)."""
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
        if self.local:
            if self.profile or self.host:
                raise typer.BadParameter("--local runs the model in this process; drop --profile/--host")
        elif self.model or self.device:
            raise typer.BadParameter("--model and --device choose a local model: add --local")
        try:
            if self.local:
                return ClipClient.local(
                    self.model or C.DEFAULT_LOCAL_MODEL, device=self.device, dtype=self.dtype, **options
                )
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
        except ConfigurationError as exc:
            raise _configuration_problem(exc) from exc


def _configuration_problem(exc: ConfigurationError) -> Exception:
    """A client setting the library refused, as this command reports it: no workspace to resolve
    (an error, exit 1, saying how to name one or to add --local); a value of an option (a usage
    error naming that option, as click reports one)."""
    if exc.setting == "profile" and exc.reason.startswith("profile "):
        return exc  # the profile asked for is not there: the library's error names it (in_cli_words)
    if exc.setting in ("host", "profile"):
        return ClipClientError(
            f"could not resolve a Databricks workspace ({exc.reason.rstrip('.')}): set DATABRICKS_HOST "
            "and DATABRICKS_TOKEN, pass --host (with a token in DATABRICKS_TOKEN) or --profile NAME, "
            "or add --local to run the model in this process"
        )
    flag = FLAGS.get(exc.setting or "")
    if flag is None:
        return exc
    advice = exc.advice(flag_spelling)
    return typer.BadParameter(f"{exc.reason}; {advice}" if advice else exc.reason, param_hint=flag)


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
    """`clip-client/embeddings.sqlite` in the user cache folder: `$XDG_CACHE_HOME` (or
    `~/.cache`) on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on Windows."""
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
