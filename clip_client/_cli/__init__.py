"""The ``clip-client`` command: a thin shell over :class:`~clip_client.ClipClient`.

Parsing and printing live here; the files it writes and reads, and how an ``images`` run resumes,
live in :mod:`clip_client._cli.outputs`. One function per command on one typer app, so more verbs can be
added the same way. Documented in docs/cli.md.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from .. import _constants as C
from .._core.secrets import RedactingFilter, redact
from .._version import __version__
from ..errors import ClipClientError, InvalidInputError
from .outputs import (
    DEFAULT_PART_ROWS,
    OutputError,
    OutputMeta,
    ResumableOutput,
    Rows,
    file_stamp,
    jsonl_line,
    output_format,
    read_rows,
    write_jsonl,
    write_rows,
)

if TYPE_CHECKING:
    from .._client import ClipClient
    from ..types import EmbeddingFailure

__all__ = ["EXIT_FAILED_INPUTS", "EXIT_INTERRUPTED", "app", "main"]

#: Exit statuses (also in ``--help`` and docs/cli.md). 2 is click's, for a usage error.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FAILED_INPUTS = 3
EXIT_INTERRUPTED = 130
#: stdout closed by its reader (``clip-client ... | head``): 128 + SIGPIPE, what a shell reports for a
#: program that SIGPIPE ended; nothing is printed.
EXIT_BROKEN_PIPE = 141

#: What ``images DIR`` picks up when no ``--glob`` is given (case-insensitive).
IMAGE_GLOBS = ("*.jpg", "*.jpeg", "*.png", "*.gif", "*.bmp", "*.tif", "*.tiff", "*.webp")

_EPILOG = (
    "Exit status: 0 done; 1 error (one line on stderr; --verbose shows the details); 2 usage error; "
    "3 finished, but some inputs failed (listed on stderr); 130 interrupted (rerun to resume); "
    "141 stdout closed early (| head), quietly. "
    "Credentials come from DATABRICKS_HOST/DATABRICKS_TOKEN (or OAuth variables) or a "
    "~/.databrickscfg profile, never from a flag. Docs: docs/cli.md."
)

app = typer.Typer(
    name="clip-client",
    help="CLIP ViT-L/14 embeddings from the command line: from your workspace's Databricks serving "
    "endpoints (clip-text-embedding, clip-image-embedding), or in-process with --local.",
    epilog=_EPILOG,
    no_args_is_help=True,
    add_completion=False,
    # Paragraphs are separated by blank lines; a docstring's line breaks inside one do not show.
    rich_markup_mode="markdown",
    # Tracebacks are ours to print (redacted, with --verbose only); typer's would show locals.
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _flag(*names: str, **options: Any) -> Any:
    """``typer.Option`` for an on/off flag: its help shows no ``<bool>`` value placeholder."""
    return typer.Option(*names, metavar="", **options)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clip-client {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        _flag(
            "--version", callback=_version, is_eager=True, help="Print the version of clip_client and exit."
        ),
    ] = False,
) -> None:
    """CLIP ViT-L/14 embeddings from the command line (the app's help= is what --help shows)."""


# --------------------------------------------------------------------------------------------------
# Options every command that embeds takes

_MODEL = "Model (local mode)"
_WORKSPACE = "Workspace (remote mode, the default)"
_TUNING = "Tuning"

LocalOpt = Annotated[
    bool,
    _flag(
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
NoCacheOpt = Annotated[bool, _flag("--no-cache", help="Use no embedding cache.", rich_help_panel=_TUNING)]
VerboseOpt = Annotated[
    bool,
    _flag("--verbose", "-v", help="On an error, show the traceback; log what the client does."),
]
NormalizeOpt = Annotated[
    bool,
    _flag("--normalize/--no-normalize", help="L2-normalise every embedding (stored in the file's settings)."),
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
JsonOpt = Annotated[bool, _flag("--json", help="JSON Lines instead of a table.")]


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


# --------------------------------------------------------------------------------------------------
# Errors: one line, or the details with --verbose

F = TypeVar("F", bound=Callable[..., Any])


#: How the library's advice, written for Python callers, reads on the command line.
_CLI_SPELLING = (
    ("image_preparation='server'", "--image-preparation server"),
    ('image_preparation="server"', "--image-preparation server"),
    # --max-image-pixels raises Pillow's limit too (see _raise_pillow_limit).
    ("raise max_image_pixels and PIL.Image.MAX_IMAGE_PIXELS", "raise --max-image-pixels"),
    ("raise max_image_pixels", "raise --max-image-pixels"),
    ("max_image_pixels=", "--max-image-pixels "),
    ("device='cpu'", "--device cpu"),
    ('device="cpu"', "--device cpu"),
    ("device=", "--device "),
    ("text_endpoint= / image_endpoint=", "--text-endpoint / --image-endpoint"),
    ("text_endpoint=", "--text-endpoint "),
    ("image_endpoint=", "--image-endpoint "),
)


def cli_advice(text: str) -> str:
    """``text`` with the client's keyword arguments named as this command's options."""
    for python, option in _CLI_SPELLING:
        text = text.replace(python, option)
    return text


def _err(text: str) -> None:
    typer.echo(redact(cli_advice(text)), err=True)


def _quiet_broken_pipe() -> None:
    """stdout's reader is gone (``| head``): point stdout at /dev/null, so that the interpreter's
    last flush at exit finds nothing to complain about."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (ClipClientError, OSError)):
        text = f"{type(exc).__name__}: {text}"
    return text


@contextlib.contextmanager
def _logging_for_the_command(verbose: bool) -> Iterator[None]:
    """:func:`_configure_logging` for one command, then the loggers as they were: a command run
    in-process (``app([...])`` from a notebook or a test) leaves the process's logging untouched."""
    saved = [
        (logger, logger.level, list(logger.handlers))
        for logger in (logging.getLogger(name) for name in (C.LOGGER_NAME, "databricks.sdk"))
    ]
    _configure_logging(verbose)
    try:
        yield
    finally:
        for logger, level, handlers in saved:
            logger.setLevel(level)
            logger.handlers[:] = handlers


def _configure_logging(verbose: bool) -> None:
    """Log lines on stderr, redacted: clip_client's warnings (a cache it cannot use...), and with
    ``--verbose`` everything clip_client and databricks-sdk log. Without it, databricks-sdk's own
    warnings (a workspace without host metadata) stay quiet: they are not the user's to act on."""
    for name, level in ((C.LOGGER_NAME, logging.WARNING), ("databricks.sdk", logging.ERROR)):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if verbose else level)
        if not any(getattr(h, "_clip_client_cli", False) for h in logger.handlers):
            handler = logging.StreamHandler()  # sys.stderr, looked up when a line is written
            handler.setFormatter(logging.Formatter("clip-client: %(levelname)s %(name)s: %(message)s"))
            handler.addFilter(RedactingFilter())
            handler._clip_client_cli = True  # type: ignore[attr-defined]
            logger.addHandler(handler)


def _handled(fn: F) -> F:
    """Run a command: its return value is the exit status; an error prints one line (the traceback
    too with ``--verbose``) and exits 1; Ctrl-C exits 130; a closed stdout (``| head``) exits 141
    without a word."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        verbose = bool(kwargs.get("verbose"))
        with _logging_for_the_command(verbose):
            _run(verbose, *args, **kwargs)

    def _run(verbose: bool, /, *args: Any, **kwargs: Any) -> None:
        try:
            status = fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise
        except KeyboardInterrupt:
            _err("clip-client: interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except Exception as exc:
            _fail(exc, verbose)
        if status:
            raise typer.Exit(status)

    def _fail(exc: Exception, verbose: bool) -> NoReturn:
        if verbose:
            _err("".join(traceback.format_exception(exc)).rstrip())
        hint = "" if verbose else " (--verbose shows the details)"
        _err(f"clip-client: error: {_one_line(exc)}{hint}")
        raise typer.Exit(EXIT_ERROR) from None

    return run  # type: ignore[return-value]


def _progress() -> bool:
    """A progress bar (items/s, ETA) only where someone watches: stderr is a terminal."""
    return sys.stderr.isatty()


# --------------------------------------------------------------------------------------------------
# texts


def _read_texts(source: Path, column: str | None) -> tuple[list[int], list[str]]:
    """(ids, texts) from a .txt file (one text per line; blank lines skipped, ids are 0-based line
    numbers), a .csv file (``column``; ids are 0-based data rows) or ``-`` (stdin, as .txt)."""
    if str(source) == "-":
        lines = sys.stdin.read().splitlines()
        return _lines(lines)
    suffix = source.suffix.lower()
    try:
        if suffix == ".csv":
            import csv

            with open(source, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                if column is None:
                    if len(fields) != 1:
                        raise typer.BadParameter(
                            f"{source} has columns {fields}: name the one to embed with --column",
                            param_hint="--column",
                        )
                    column = fields[0]
                if column not in fields:
                    raise typer.BadParameter(
                        f"{source} has no column {column!r}; its columns are {fields}", param_hint="--column"
                    )
                texts = [row[column] or "" for row in reader]
            return list(range(len(texts))), texts
        if column is not None:
            raise typer.BadParameter("--column is for .csv files", param_hint="--column")
        return _lines(source.read_text(encoding="utf-8").splitlines())
    except UnicodeDecodeError as exc:
        raise OutputError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise OutputError(f"--from {source}: {exc.strerror or exc}") from None


def _lines(lines: Sequence[str]) -> tuple[list[int], list[str]]:
    ids = [i for i, line in enumerate(lines) if line.strip()]
    skipped = len(lines) - len(ids)
    if skipped:
        _err(f"clip-client: {skipped} blank line(s) skipped (ids are line numbers, from 0)")
    return ids, [lines[i] for i in ids]


@app.command()
@_handled
def texts(
    text: Annotated[list[str] | None, typer.Argument(help="Texts to embed.", show_default=False)] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Read texts from a file: .txt (one per line), .csv (with --column), or - for stdin.",
            show_default=False,
        ),
    ] = None,
    column: Annotated[
        str | None, typer.Option("--column", help="The .csv column holding the texts.", show_default=False)
    ] = None,
    out: OutOpt = None,
    normalize: NormalizeOpt = False,
    local: LocalOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    profile: ProfileOpt = None,
    host: HostOpt = None,
    text_endpoint: TextEndpointOpt = C.DEFAULT_TEXT_ENDPOINT,
    image_endpoint: ImageEndpointOpt = C.DEFAULT_IMAGE_ENDPOINT,
    batch_size: BatchSizeOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """Embed texts: given as arguments, or --from a .txt/.csv file.

    Rows keep the input order, each with its id (its position; for --from, its line or CSV row
    number from 0) and its text. Texts over CLIP's 77 tokens are truncated by the model.

    Example: clip-client texts "a red car" "a dog" --out captions.parquet
    """
    common = Common(
        local, model, device, profile, host, text_endpoint, image_endpoint,
        batch_size, max_concurrency, cache, no_cache,
    )  # fmt: skip
    if text and source is not None:
        raise typer.BadParameter("give texts as arguments or --from FILE, not both", param_hint="--from")
    if not text and source is None:
        raise typer.BadParameter("give texts to embed, or --from FILE", param_hint="TEXT...")
    if source is not None:
        ids, items = _read_texts(source, column)
    else:
        if column is not None:
            raise typer.BadParameter("--column goes with --from FILE.csv", param_hint="--column")
        items = list(text or [])
        ids = list(range(len(items)))
    if out is not None:
        output_format(out)  # a wrong extension fails before any request
    with common.client(normalize=normalize) as client:
        meta = OutputMeta.of(client, "text", normalize=normalize)
        vectors = client.embed_texts(items, progress=_progress())
    rows = Rows(ids, vectors, items, meta)
    _write(out, rows)
    return EXIT_OK


def _write(out: Path | None, rows: Rows) -> None:
    if out is None:
        write_jsonl(sys.stdout, rows)
        sys.stdout.flush()
        return
    write_rows(out, rows)
    dim = rows.embeddings.shape[1] if rows.embeddings.ndim == 2 else 0
    _err(f"clip-client: wrote {len(rows)} rows ({dim}-d float32) to {out}")


# --------------------------------------------------------------------------------------------------
# images


def gather_images(paths: Sequence[Path], *, recursive: bool, globs: Sequence[str]) -> list[str]:
    """The image paths of the arguments, each once: a file as given (in the order given); a folder's
    entries that match ``globs`` (default :data:`IMAGE_GLOBS`, case-insensitive), sorted, from its
    subfolders too with ``recursive``. Paths are normalised (``os.path.normpath``: ``photos/`` and
    ``photos`` agree) but not made absolute. A path that does not exist, and a folder entry that is
    not a readable file (a dangling symlink...), is kept: it fails (and is reported) like any
    unreadable image.

    Raises:
        OutputError: a folder argument holds nothing that matches ``globs``.
    """
    patterns = [g.lower() for g in (globs or IMAGE_GLOBS)]
    found: list[str] = []
    for given in paths:
        arg = os.path.normpath(str(given))
        if not os.path.isdir(arg):
            found.append(arg)
            continue
        names: list[str] = []
        if recursive:
            for root, dirs, files in os.walk(arg):
                dirs.sort()
                rel = os.path.relpath(root, arg)
                names += [f if rel == "." else os.path.join(rel, f) for f in files]
        else:
            # Every entry but a folder, as os.walk lists them: a dangling symlink is not dropped.
            names = [e.name for e in os.scandir(arg) if not e.is_dir()]
        matched = [n for n in names if any(fnmatch.fnmatch(os.path.basename(n).lower(), p) for p in patterns)]
        if not matched:
            raise OutputError(
                f"no images found in {given} (patterns: {', '.join(globs or IMAGE_GLOBS)}"
                f"{'' if recursive else '; --recursive for subfolders'})"
            )
        found += [os.path.join(arg, n) for n in sorted(matched)]
    unique = list(dict.fromkeys(found))
    if len(unique) < len(found):
        _err(f"clip-client: {len(found) - len(unique)} path(s) given more than once; each is embedded once")
    return unique


def _reason(failure: EmbeddingFailure) -> str:
    exc = failure.error
    if isinstance(exc, InvalidInputError):
        return " ".join(exc.reason.split())
    return _one_line(exc)


def _report_failures(failed: Sequence[tuple[str, str]], total: int) -> None:
    _err(f"clip-client: {len(failed)} of {total} image(s) could not be embedded:")
    for path, reason in failed:
        _err(f"  {path}: {reason}")


@app.command()
@_handled
def images(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False)],
    out: OutOpt = None,
    recursive: Annotated[bool, _flag("--recursive", "-r", help="Descend into subfolders.")] = False,
    glob: Annotated[
        list[str] | None,
        typer.Option(
            "--glob",
            help="File name pattern for folders (repeatable) (default: common image extensions).",
            show_default=False,
        ),
    ] = None,
    strict: Annotated[
        bool, _flag("--strict", help="Stop at the first image that cannot be embedded.")
    ] = False,
    overwrite: Annotated[
        bool,
        _flag("--overwrite", help="Start again: ignore what an earlier run left in --out."),
    ] = False,
    part_rows: Annotated[
        int,
        typer.Option("--part-rows", min=1, help="Rows per part file while a run is in progress."),
    ] = DEFAULT_PART_ROWS,
    normalize: NormalizeOpt = False,
    local: LocalOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    profile: ProfileOpt = None,
    host: HostOpt = None,
    text_endpoint: TextEndpointOpt = C.DEFAULT_TEXT_ENDPOINT,
    image_endpoint: ImageEndpointOpt = C.DEFAULT_IMAGE_ENDPOINT,
    batch_size: BatchSizeOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    image_preparation: ImagePreparationOpt = None,
    max_image_pixels: MaxImagePixelsOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Embed images: files, or the images in folders (sorted; --recursive for subfolders).

    Resumable: with --out, finished rows are kept in OUT.parts/ as the run goes; rerun the same
    command after an interruption and only the missing images are embedded, and those whose file
    changed (size or modification time) since. The output is written whole at the end (never half a
    file).

    Images that cannot be read are listed at the end with their reasons (exit status 3) and left out
    of the output; --strict stops at the first.

    Example: clip-client images photos/ --recursive --out photos.parquet
    """
    common = Common(
        local, model, device, profile, host, text_endpoint, image_endpoint,
        batch_size, max_concurrency, cache, no_cache, image_preparation, max_image_pixels,
    )  # fmt: skip
    if out is not None:
        output_format(out)  # a wrong extension fails before anything else
    inputs = gather_images(paths, recursive=recursive, globs=glob or ())
    if not inputs:
        raise OutputError(
            f"no images found in {', '.join(map(str, paths))} (patterns: {', '.join(glob or IMAGE_GLOBS)})"
        )
    with common.client(normalize=normalize) as client:
        meta = OutputMeta.of(client, "image", normalize=normalize)
        if out is None:
            return _images_to_stdout(client, inputs, strict=strict)
        store = ResumableOutput(out, meta, part_rows=part_rows)
        store.open(overwrite=overwrite)
        # Each file's size and mtime before it is read: a file edited after this is re-embedded next time.
        stamps = [file_stamp(p) for p in inputs]
        todo_at, changed = store.plan(inputs, stamps)
        todo = [inputs[i] for i in todo_at]
        if store.resumed:
            again = f"; {changed} changed since (size or mtime) and embedded again" if changed else ""
            _err(
                f"clip-client: resuming: {len(inputs) - len(todo)} of {len(inputs)} image(s) already "
                f"done{again}"
            )
        failed: list[tuple[str, str]] = []
        try:
            with client.iter_embed_images(todo, on_error="mark", progress=_progress()) as stream:
                for index, vector in stream:
                    if len(stream.failures) > len(failed):
                        failed.append((todo[index], _reason(stream.failures[-1])))
                        if strict:
                            raise InvalidInputError(failed[-1][1], path=todo[index])
                        continue
                    store.add(todo[index], vector, stamps[todo_at[index]])
        except BaseException:
            store.flush()  # what is finished is kept, whatever stopped the run
            if store.parts.is_dir():
                _err(f"clip-client: {len(store.done)} finished row(s) kept in {store.parts}; rerun to resume")
            raise
        from_cache = client.stats.cache_hits
    stale = [p for p in todo if p in store.done and p in dict(failed)]
    for path in stale:  # a changed file that now fails keeps no stale row
        del store.done[path]
    left = len(set(store.done) - set(inputs))
    try:
        rows = store.finish(inputs)
    except BaseException:
        if failed:  # the failures are said whatever stops the output
            _report_failures(failed, len(inputs))
        raise
    if left:
        _err(f"clip-client: {left} row(s) of the earlier output are not among this run's inputs: left out")
    _err(
        f"clip-client: wrote {len(rows)} rows to {out} ({len(todo) - len(failed)} embedded, "
        f"{from_cache} of them from the cache)"
    )
    if failed:
        _report_failures(failed, len(inputs))
        return EXIT_FAILED_INPUTS
    return EXIT_OK


def _images_to_stdout(client: ClipClient, inputs: list[str], *, strict: bool) -> int:
    failed: list[tuple[str, str]] = []
    with client.iter_embed_images(inputs, on_error="mark", progress=_progress()) as stream:
        for index, vector in stream:
            if len(stream.failures) > len(failed):
                failed.append((inputs[index], _reason(stream.failures[-1])))
                if strict:
                    raise InvalidInputError(failed[-1][1], path=inputs[index])
                continue
            sys.stdout.write(jsonl_line("path", inputs[index], None, vector))
    sys.stdout.flush()
    if failed:
        _report_failures(failed, len(inputs))
        return EXIT_FAILED_INPUTS
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# search, dedupe


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
    """A plain table on stdout: columns padded to their widest cell, the last never cut."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(widths[i]) if i in right else (c if i == len(cells) - 1 else c.ljust(widths[i]))
            for i, c in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    typer.echo(line(header))
    for r in rows:
        typer.echo(line(r))


def _label(rows: Rows, i: int) -> str:
    if rows.texts is not None:
        return " ".join(str(rows.texts[i]).split())
    return str(rows.keys[i])


def _clamp(similarity: float) -> float:
    """A cosine similarity as printed: float32 rounding can take it just past 1 (or -1)."""
    return min(1.0, max(-1.0, similarity))


def _same_model(index: Path, rows: Rows, client: ClipClient) -> None:
    """Refuse a query the index's model did not compute: scores across two models mean nothing.

    Raises:
        OutputError: the index's settings name another model (or endpoint) than ``client`` would use
            for rows of the index's kind. A file without clip-client settings is not checked.
    """
    found = rows.meta
    if found is None or found.model == "unknown":
        return
    mine = OutputMeta.of(client, "image" if found.kind == "image" else "text", normalize=False).model
    if mine != found.model:
        how = (
            "--local --model MODEL (and --device) as when it was written"
            if found.model.startswith("local ")
            else "the --host/--profile and --text-endpoint/--image-endpoint it was written with"
        )
        raise OutputError(
            f"{index} was computed by {found.model!r}, but this query would be embedded by {mine!r}: "
            f"scores across two models mean nothing; query with {how}"
        )


@app.command()
@_handled
def search(
    index: Annotated[
        Path, typer.Argument(help="An output of `images` or `texts` (.parquet, .npy or .jsonl).")
    ],
    query: Annotated[str | None, typer.Argument(help="The query text.", show_default=False)] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", help="Query with this image instead of a text.", show_default=False),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="How many results.")] = 10,
    json_lines: JsonOpt = False,
    local: LocalOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    profile: ProfileOpt = None,
    host: HostOpt = None,
    text_endpoint: TextEndpointOpt = C.DEFAULT_TEXT_ENDPOINT,
    image_endpoint: ImageEndpointOpt = C.DEFAULT_IMAGE_ENDPOINT,
    batch_size: BatchSizeOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    image_preparation: ImagePreparationOpt = None,
    max_image_pixels: MaxImagePixelsOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """The rows of INDEX nearest to a text (or --image) by cosine similarity, best first.

    Exact search over every row. The query is embedded with the model these options choose, which
    must be the one that computed INDEX (its settings name it: an endpoint URL, or local MODEL
    DTYPE); another is refused.

    Example: clip-client search photos.parquet "a red car" -k 5
    """
    from ..search import cosine_topk

    common = Common(
        local, model, device, profile, host, text_endpoint, image_endpoint,
        batch_size, max_concurrency, cache, no_cache, image_preparation, max_image_pixels,
    )  # fmt: skip
    if (query is None) == (image is None):
        raise typer.BadParameter("give a query text or --image FILE (one of them)", param_hint="QUERY")
    rows = read_rows(index, role="INDEX", foreign=True)
    if not len(rows):
        raise OutputError(f"{index} has no rows to search")
    with common.client() as client:
        _same_model(index, rows, client)
        vector = client.embed_image(str(image)) if image is not None else client.embed_text(query or "")
    width = rows.embeddings.shape[1]
    if vector.shape[-1] != width:
        made_by = rows.meta.model if rows.meta is not None else "unknown"
        raise OutputError(
            f"{index} holds {width}-d rows (model: {made_by}), but the query is {vector.shape[-1]}-d: "
            "embed it with the model that computed the index"
        )
    top = cosine_topk(vector, rows.embeddings, k)
    hits = list(zip(top.indices[0].tolist(), top.scores[0].tolist(), strict=True))
    key = rows.key_name
    if json_lines:
        for rank, (i, score) in enumerate(hits, 1):
            obj: dict[str, Any] = {"rank": rank, "score": round(_clamp(score), 6), key: rows.keys[i]}
            if rows.texts is not None:
                obj["text"] = rows.texts[i]
            typer.echo(json.dumps(obj, ensure_ascii=False))
        return EXIT_OK
    header = ["rank", "score", key] + (["text"] if rows.texts is not None else [])
    table = [
        [str(rank), f"{_clamp(score):.4f}", str(rows.keys[i])]
        + ([_label(rows, i)] if rows.texts is not None else [])
        for rank, (i, score) in enumerate(hits, 1)
    ]
    _print_table(header, table, right=(0, 1))
    return EXIT_OK


@app.command()
@_handled
def dedupe(
    index: Annotated[
        Path, typer.Argument(help="An output of `images` or `texts` (.parquet, .npy or .jsonl).")
    ],
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            "-t",
            min=-1.0,
            max=1.0,
            help="Cosine similarity at and above which two rows match.",
        ),
    ] = 0.95,
    json_lines: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> int:
    """Groups of near-duplicates in INDEX: rows joined by cosine >= --threshold (through chains).

    Each group lists its members, the first (in file order) with 1.0 and the others with their
    similarity to it. Needs no model: it reads the embeddings only.

    Example: clip-client dedupe photos.parquet --threshold 0.97
    """
    from ..search import find_duplicates

    rows = read_rows(index, role="INDEX", foreign=True)
    groups = find_duplicates(rows.embeddings, threshold) if len(rows) else []
    key = rows.key_name
    if json_lines:
        for g, group in enumerate(groups, 1):
            members = [
                {key: rows.keys[i], "similarity": round(_clamp(s), 6)}
                for i, s in zip(group.indices.tolist(), group.similarities.tolist(), strict=True)
            ]
            typer.echo(json.dumps({"group": g, "members": members}, ensure_ascii=False))
        return EXIT_OK
    if not groups:
        typer.echo(f"no near-duplicates at threshold {threshold} among {len(rows)} rows")
        return EXIT_OK
    in_groups = sum(len(g.indices) for g in groups)
    typer.echo(f"{len(groups)} group(s), {in_groups} of {len(rows)} rows, threshold {threshold}")
    for g, group in enumerate(groups, 1):
        typer.echo(f"\ngroup {g} ({len(group.indices)} members)")
        for i, s in zip(group.indices.tolist(), group.similarities.tolist(), strict=True):
            typer.echo(f"  {_clamp(s):.4f}  {_label(rows, i)}")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# classify, status


def _labels(labels: str | None, labels_file: Path | None) -> list[str]:
    """The labels of ``--labels`` (comma-separated) or ``--labels-file`` (one per line; blank lines
    skipped, and said), checked by the rules of :meth:`ClipClient.classify`: at least one, none
    empty, each once.

    Raises:
        typer.BadParameter: neither or both given; an empty label (its position, from 1), or one
            given twice.
    """
    from .._core.zeroshot import check_labels

    if (labels is None) == (labels_file is None):
        raise typer.BadParameter(
            'give --labels "cat,dog,car" or --labels-file FILE (one of them)', param_hint="--labels"
        )
    if labels_file is not None:
        hint = "--labels-file"
        try:
            raw = labels_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise OutputError(f"--labels-file {labels_file}: {exc.strerror or exc}") from None
        out = [x.strip() for x in raw if x.strip()]
        if len(out) < len(raw):
            _err(f"clip-client: {len(raw) - len(out)} blank line(s) of {labels_file} skipped")
    else:
        hint = "--labels"
        out = [x.strip() for x in (labels or "").split(",")]
        empty = [n for n, x in enumerate(out, 1) if not x]
        if len(out) == 1 and empty:
            raise typer.BadParameter('no label given: --labels "cat,dog,car"', param_hint=hint)
        if empty:
            raise typer.BadParameter(
                f"label {empty[0]} of {len(out)} in {labels!r} is empty: remove the extra comma",
                param_hint=hint,
            )
    try:
        check_labels(out)
    except InvalidInputError as exc:
        raise typer.BadParameter(_input_problem(exc), param_hint=hint) from None
    return out


def _input_problem(exc: InvalidInputError) -> str:
    """The reason of a label or template refused by the client's checks, in one line."""
    return " ".join((exc.reason or str(exc)).split())


@app.command()
@_handled
def classify(
    paths: Annotated[list[Path], typer.Argument(help="Image files and/or folders.", show_default=False)],
    labels: Annotated[
        str | None,
        typer.Option("--labels", help='Comma-separated labels: "cat,dog,car".', show_default=False),
    ] = None,
    labels_file: Annotated[
        Path | None, typer.Option("--labels-file", help="A file of labels, one per line.", show_default=False)
    ] = None,
    template: Annotated[
        list[str] | None,
        typer.Option(
            "--template",
            help='Prompt template with {} for the label, e.g. "a photo of a {}." (repeatable; '
            "averaged) (default: the client's).",
            show_default=False,
        ),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Labels shown per image, most likely first.")] = 1,
    recursive: Annotated[bool, _flag("--recursive", "-r", help="Descend into subfolders.")] = False,
    glob: Annotated[
        list[str] | None,
        typer.Option("--glob", help="File name pattern for folders (repeatable).", show_default=False),
    ] = None,
    strict: Annotated[
        bool, _flag("--strict", help="Stop at the first image that cannot be embedded.")
    ] = False,
    json_lines: JsonOpt = False,
    local: LocalOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    profile: ProfileOpt = None,
    host: HostOpt = None,
    text_endpoint: TextEndpointOpt = C.DEFAULT_TEXT_ENDPOINT,
    image_endpoint: ImageEndpointOpt = C.DEFAULT_IMAGE_ENDPOINT,
    batch_size: BatchSizeOpt = None,
    max_concurrency: ConcurrencyOpt = None,
    cache: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    image_preparation: ImagePreparationOpt = None,
    max_image_pixels: MaxImagePixelsOpt = None,
    verbose: VerboseOpt = False,
) -> int:
    """Zero-shot labels for images, with probabilities (softmax over the labels).

    Example: clip-client classify photos/ --labels "cat,dog,car" --top 2
    """
    from .._core.zeroshot import check_templates

    common = Common(
        local, model, device, profile, host, text_endpoint, image_endpoint,
        batch_size, max_concurrency, cache, no_cache, image_preparation, max_image_pixels,
    )  # fmt: skip
    names = _labels(labels, labels_file)
    try:
        check_templates(template or None)
    except InvalidInputError as exc:
        raise typer.BadParameter(_input_problem(exc), param_hint="--template") from None
    inputs = gather_images(paths, recursive=recursive, globs=glob or ())
    if not inputs:
        raise OutputError(f"no images found in {', '.join(map(str, paths))}")
    with common.client() as client:
        result = client.classify(
            inputs, names, templates=template or None, on_error="raise" if strict else "mark",
            progress=_progress(),
        )  # fmt: skip
    failed = {f.index: _reason(f) for f in result.failures}
    tops = result.top(min(top, len(names)))
    if json_lines:
        for i, path in enumerate(inputs):
            if i in failed:
                continue
            typer.echo(
                json.dumps(
                    {
                        "path": path,
                        "labels": [{"label": lab, "probability": round(p, 6)} for lab, p in tops[i]],
                    },
                    ensure_ascii=False,
                )
            )
    else:
        table = [
            [path, ", ".join(f"{lab} {p:.3f}" for lab, p in tops[i])]
            for i, path in enumerate(inputs)
            if i not in failed
        ]
        _print_table(["path", "label probability" if top == 1 else f"top {top} labels"], table)
    if failed:
        _report_failures([(inputs[i], r) for i, r in sorted(failed.items())], len(inputs))
        return EXIT_FAILED_INPUTS
    return EXIT_OK


@app.command()
@_handled
def status(
    local: LocalOpt = False,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    profile: ProfileOpt = None,
    host: HostOpt = None,
    text_endpoint: TextEndpointOpt = C.DEFAULT_TEXT_ENDPOINT,
    image_endpoint: ImageEndpointOpt = C.DEFAULT_IMAGE_ENDPOINT,
    verbose: VerboseOpt = False,
) -> int:
    """What the two endpoints are and do: state, width, pixel parity, long-text handling, advice.

    Sends about 4 requests (2 state reads, 2 probes). With --local, probes the local model.
    """
    common = Common(local, model, device, profile, host, text_endpoint, image_endpoint, no_cache=True)
    with common.client() as client:
        report = client.check_endpoint()
    typer.echo(cli_advice(str(report)))
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# deploy, export-model: the endpoints themselves (clip_client.deploy, the `mlflow` extra)

_DEPLOY = "Deployment"


@app.command()
@_handled
def deploy(
    catalog: Annotated[
        str, typer.Option("--catalog", help="Unity Catalog catalog the models are registered in.")
    ],
    schema: Annotated[str, typer.Option("--schema", help="Schema in that catalog.")],
    model: Annotated[
        str,
        typer.Option("--model", help="The CLIP checkpoint to serve: a Hugging Face hub id or a folder."),
    ] = C.DEFAULT_LOCAL_MODEL,
    gpu: Annotated[
        bool, _flag("--gpu", help="Serve on GPU_SMALL (default: CPU).", rich_help_panel=_DEPLOY)
    ] = False,
    workload_size: Annotated[
        str,
        typer.Option(
            "--workload-size",
            help="Small, Medium or Large: requests served at once.",
            rich_help_panel=_DEPLOY,
        ),
    ] = "Small",
    scale_to_zero: Annotated[
        bool,
        _flag(
            "--scale-to-zero/--no-scale-to-zero",
            help="Let an idle endpoint scale to zero (the first request after waits for it).",
            rich_help_panel=_DEPLOY,
        ),
    ] = True,
    route_optimized: Annotated[
        bool,
        _flag("--route-optimized", help="Create route-optimized endpoints.", rich_help_panel=_DEPLOY),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=1,
            help="Seconds to wait for both endpoints to be ready.",
            rich_help_panel=_DEPLOY,
        ),
    ] = 3600.0,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            min=0,
            help="Seconds between two reads of the endpoints' state.",
            rich_help_panel=_DEPLOY,
        ),
    ] = 15.0,
    check: Annotated[
        bool,
        _flag(
            "--check/--no-check",
            help="Finish with check_endpoint() on the deployed endpoints.",
            rich_help_panel=_DEPLOY,
        ),
    ] = True,
    registry_uri: Annotated[
        str | None,
        typer.Option(
            "--registry-uri",
            help="Another MLflow model registry (default: Unity Catalog).",
            show_default=False,
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="The MLflow tracking server for the runs.", show_default=False),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            help="The MLflow experiment to log the runs to, e.g. /Users/me@example.com/clip "
            "(outside a notebook, the workspace needs one).",
            show_default=False,
        ),
    ] = None,
    profile: ProfileOpt = None,
    host: HostOpt = None,
    text_endpoint: TextEndpointOpt = C.DEFAULT_TEXT_ENDPOINT,
    image_endpoint: ImageEndpointOpt = C.DEFAULT_IMAGE_ENDPOINT,
    verbose: VerboseOpt = False,
) -> int:
    """Register both MLflow models in Unity Catalog and serve them (needs the 'mlflow' extra).

    Logs the text and image pyfunc models, registers them, creates or updates the two serving
    endpoints, waits until they are ready, then checks them.

    Registers CATALOG.SCHEMA.clip_text_embedding and CATALOG.SCHEMA.clip_image_embedding, then
    serves them on --text-endpoint and --image-endpoint. Progress goes to stderr; the final
    check_endpoint() report to stdout. Docs: docs/deploy.md.

    Example: clip-client deploy --catalog main --schema ml --gpu
    """
    from ..deploy import deploy as deploy_models

    workspace = None
    if host is not None:
        from databricks.sdk import WorkspaceClient

        workspace = WorkspaceClient(host=host, profile=profile)
    done = deploy_models(
        catalog=catalog,
        schema=schema,
        model=model,
        gpu=gpu,
        workspace=workspace,
        profile=profile if workspace is None else None,
        registry_uri=registry_uri,
        tracking_uri=tracking_uri,
        experiment=experiment,
        progress=lambda line: _err(f"clip-client: {line}"),
        text_endpoint=text_endpoint,
        image_endpoint=image_endpoint,
        workload_size=workload_size,
        scale_to_zero=scale_to_zero,
        route_optimized=route_optimized,
        timeout=timeout,
        poll_interval=poll_interval,
        check=check,
    )
    if done.check is not None:
        typer.echo(str(done.check))
    else:
        typer.echo(f"ready: {done.endpoints['text']}, {done.endpoints['image']}")
    return EXIT_OK


@app.command("export-model")
@_handled
def export_model(
    kind: Annotated[str, typer.Option("--kind", help='"text" or "image": which of the two models to write.')],
    model: Annotated[str, typer.Option("--model", help="A Hugging Face hub id or a checkpoint folder.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="The MLflow model folder to write (new, or empty).", file_okay=False
        ),
    ],
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help='Where the served model runs: "cuda", "cpu"... (default: CUDA when the serving '
            "machine has it, else CPU).",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="float32, float16 or bfloat16 (default: float16 on CUDA, float32 on CPU).",
            show_default=False,
        ),
    ] = None,
    verbose: VerboseOpt = False,
) -> int:
    """Write one pyfunc model as an MLflow model folder, weights included (needs the 'mlflow' extra).

    Serve it anywhere MLflow serves, with no hub access, and query it with
    ClipClient(text_url=..., image_url=...):

        mlflow models serve -m OUT --env-manager local -p 5000

    Example: clip-client export-model --kind image --model /models/clip --out clip-image-model
    """
    from ..deploy import export_model as export

    if kind not in ("text", "image"):
        raise typer.BadParameter(f'{kind!r}: use "text" or "image"', param_hint="--kind")
    written = export("text" if kind == "text" else "image", model, out, device=device, dtype=dtype)
    typer.echo(str(written))
    return EXIT_OK


def main() -> None:
    """The ``clip-client`` console script."""
    app(prog_name="clip-client")
