"""How the command reports an error: one line on stderr (the details with `--verbose`), the exit status."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer

from .. import _constants as C
from .._core.secrets import RedactingFilter, redact
from ..errors import ClipClientError
from .app import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED

if TYPE_CHECKING:
    pass


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


def say_error(text: str) -> None:
    typer.echo(redact(cli_advice(text)), err=True)


def _quiet_broken_pipe() -> None:
    """stdout's reader is gone (``| head``): point stdout at /dev/null, so that the interpreter's
    last flush at exit finds nothing to complain about."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def one_line(exc: BaseException) -> str:
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


def handled(fn: F) -> F:
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
            say_error("clip-client: interrupted")
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
            say_error("".join(traceback.format_exception(exc)).rstrip())
        hint = "" if verbose else " (--verbose shows the details)"
        say_error(f"clip-client: error: {one_line(exc)}{hint}")
        raise typer.Exit(EXIT_ERROR) from None

    return run  # type: ignore[return-value]
