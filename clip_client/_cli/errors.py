"""How the command reports an error: one line on stderr (the details with `--verbose`), the exit status."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import typer

from .. import _constants as C
from .._core.secrets import RedactingFilter, redact
from ..errors import ClipClientError, SettingValue, python_spelling
from .app import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED

# --------------------------------------------------------------------------------------------------
# Errors: one line, or the details with --verbose

F = TypeVar("F", bound=Callable[..., Any])


# --------------------------------------------------------------------------------------------------
# Advice in the command's words: errors name the client setting to change (`ClipClientError.setting`,
# and the settings their advice names); this table says which option sets each.

FLAGS: dict[str, str] = {
    "batch_size": "--batch-size",
    "cache": "--cache",
    "device": "--device",
    "host": "--host",
    "image_endpoint": "--image-endpoint",
    "image_preparation": "--image-preparation",
    "max_concurrency": "--max-concurrency",
    "max_image_pixels": "--max-image-pixels",
    "model": "--model",
    "profile": "--profile",
    "text_endpoint": "--text-endpoint",
}
"""Each client setting that an option of this command sets, and that option."""


NO_FLAG = "(no command-line option; set it in Python)"
"""What follows a setting that no option of this command sets, in advice."""


def flag_spelling(setting: str, value: SettingValue | None = None, *, keyword: bool = False) -> str:
    """A setting as this command takes it: `--max-image-pixels`, `--device cpu`, a value as it is
    typed (`--max-image-pixels 1000`). A setting that no option sets keeps its Python name, and
    says so: `image_format='jpeg' (no command-line option; set it in Python)`."""
    flag = FLAGS.get(setting)
    if flag is None:
        return f"{python_spelling(setting, value, keyword=keyword)} {NO_FLAG}"
    return flag if value is None else f"{flag} {value}"


def in_cli_words(exc: BaseException, text: str | None = None) -> str:
    """`text` (by default `str(exc)`), with the advice of a `ClipClientError` naming options."""
    if isinstance(exc, ClipClientError):
        return exc.render(flag_spelling, text)
    return str(exc) if text is None else text


def say_error(text: str) -> None:
    typer.echo(redact(text), err=True)


def _quiet_broken_pipe() -> None:
    """stdout's reader is gone (`| head`): point stdout at /dev/null, so that the interpreter's
    last flush at exit finds nothing to complain about."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def one_line(exc: BaseException) -> str:
    text = " ".join(in_cli_words(exc).split()) or type(exc).__name__
    if not isinstance(exc, (ClipClientError, OSError)):
        text = f"{type(exc).__name__}: {text}"
    return text


@contextlib.contextmanager
def _logging_for_the_command(verbose: bool) -> Iterator[None]:
    """`_configure_logging` for one command, then the loggers as they were: a command run
    in-process (`app([...])` from a notebook or a test) leaves the process's logging untouched."""
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
    `--verbose` everything clip_client and databricks-sdk log. Without it, databricks-sdk's own
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
    too with `--verbose`) and exits 1; Ctrl-C exits 130; a closed stdout (`| head`) exits 141
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
