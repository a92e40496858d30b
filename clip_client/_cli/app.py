"""The `clip-client` typer app: its exit statuses, the top-level callback and `main`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .._version import __version__

__all__ = ["EXIT_FAILED_INPUTS", "EXIT_INTERRUPTED", "app", "main"]

# Exit statuses (also in `--help` and docs/cli.md). 2 is click's, for a usage error.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FAILED_INPUTS = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""stdout closed by its reader (`clip-client ... | head`): 128 + SIGPIPE, what a shell reports for a
program that SIGPIPE ended; nothing is printed.
"""

IMAGE_GLOBS = ("*.jpg", "*.jpeg", "*.png", "*.gif", "*.bmp", "*.tif", "*.tiff", "*.webp")
"""What `images DIR` picks up when no `--glob` is given (case-insensitive)."""

_EPILOG = (
    "Exit status: 0 done; 1 error (one line on stderr; --verbose shows the details); 2 usage error; "
    "3 finished, but some inputs failed (listed on stderr); 130 interrupted before the output was "
    "complete (rerun to resume); "
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


def flag(*names: str, **options: Any) -> Any:
    """`typer.Option` for an on/off flag: its help shows no `<bool>` value placeholder."""
    return typer.Option(*names, metavar="", **options)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clip-client {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        flag(
            "--version", callback=_version, is_eager=True, help="Print the version of clip_client and exit."
        ),
    ] = False,
) -> None:
    """CLIP ViT-L/14 embeddings from the command line (the app's help= is what --help shows)."""


def main() -> None:
    """The `clip-client` console script."""
    from .errors import say_error
    from .interrupts import until_exit

    with until_exit() as windows:
        try:
            app(prog_name="clip-client")
        finally:
            if any(w.interrupted and not w.said for w in windows):
                say_error("clip-client: interrupted after the output was complete; nothing to rerun")
