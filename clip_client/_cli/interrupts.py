"""What Ctrl-C does once a command's output is written: nothing is left to stop.

The rule (docs/cli.md, "Errors and exit status"): from the moment a command starts writing its final
output (the output file, renamed into place whole; or, without `--out`, the rows on stdout once
they are all there) until it ends, a first Ctrl-C does not interrupt it. The command finishes (its
summary, the list of the inputs that failed), says that the output is complete, and exits with the
status the run earned: 0, or 3 when some inputs failed. A second Ctrl-C stops it at once (130).
Before that moment, Ctrl-C interrupts as usual (130; an `images` run keeps its finished rows).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["Finishing", "finishing", "until_exit"]


class Finishing:
    """The window of `finishing`: whether Ctrl-C was pressed in it (`interrupted`), and whether the
    command has said so (`said`)."""

    def __init__(self) -> None:
        self.interrupted = False
        self.said = False

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted:  # the second press: stop now
            raise KeyboardInterrupt
        self.interrupted = True


@contextlib.contextmanager
def finishing() -> Iterator[Finishing]:
    """A block in which a first Ctrl-C is noted (`.interrupted`) rather than raised; Python's own
    handler is back afterwards. Only where Python's default handler is in place, in the main thread
    (a notebook's or an application's own handler is left alone, and the block is a plain one)."""
    window = Finishing()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield window
        return
    signal.signal(signal.SIGINT, window._on_sigint)
    try:
        yield window
    finally:
        if _console.until_exit:
            # The console script ends with the command: the window lasts until the process exits
            # (closing the client, joining its threads and Python's own shutdown take a second).
            _console.windows.append(window)
        else:
            signal.signal(signal.SIGINT, signal.default_int_handler)


class _Console:
    """Whether `until_exit` is in force (the console script), and the windows opened under it."""

    until_exit = False
    windows: list[Finishing] = []  # noqa: RUF012  (one process, one list)


_console = _Console()


@contextlib.contextmanager
def until_exit() -> Iterator[list[Finishing]]:
    """For the console script only (`main`), whose process ends with its command: a `finishing`
    window, once opened, stays open until the process exits instead of closing with its block, so
    that a Ctrl-C after the output is written but before the process is gone (the client's close,
    Python's shutdown) is noted, not raised. Yields the windows opened, for `main` to say a Ctrl-C
    the command did not."""
    _console.until_exit = True
    try:
        yield _console.windows
    finally:
        _console.until_exit = False
