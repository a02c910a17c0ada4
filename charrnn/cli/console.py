"""stdout and stderr for every command. stdout carries data only (generated text; `train` prints the best
checkpoint's path; `info` the description); everything else goes to stderr. A stderr that cannot be written
(a closed pipe, a full disk) goes quiet rather than stopping the work; a stdout that cannot be written is one
sentence and exit 1, except a reader that went away (`| head`), which ends the command quietly with exit 0.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.markup import escape

from charrnn.display import printable
from charrnn.errors import CharRNNError


class QuietStream:
    """stderr that turns itself off when a write fails, so progress output can never stop training.

    It looks up sys.__stderr__-or-current lazily, so test runners that swap sys.stderr still capture it."""

    def __init__(self, get_stream) -> None:
        self._get = get_stream
        self.broken = False

    def write(self, text: str) -> int:
        stream = self._get()
        if not self.broken and stream is not None:
            try:
                stream.write(text)
            except (OSError, ValueError):  # EPIPE, ENOSPC, EIO, or a closed file object
                self.broken = True
        return len(text)

    def flush(self) -> None:
        stream = self._get()
        if not self.broken and stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                self.broken = True

    def isatty(self) -> bool:
        stream = self._get()
        try:
            return not self.broken and stream is not None and stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        stream = self._get()
        if stream is None:
            raise OSError("stderr is closed")
        return stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._get(), "encoding", None) or "utf-8"


def _current_stderr():
    """The stream under sys.stderr: a test runner's capture, or the process's own stderr. Never a QuietStream or
    a progress display's proxy (Rich's FileProxy writes back into the console, which writes here: a loop)."""
    stream = sys.stderr
    for _ in range(8):  # proxies nest at most a few deep; a cycle must not spin
        if isinstance(stream, QuietStream):
            return sys.__stderr__
        proxied = getattr(stream, "rich_proxied_file", None)
        if proxied is None:
            return stream
        stream = proxied
    return sys.__stderr__


_stderr = QuietStream(_current_stderr)
err = Console(file=_stderr, highlight=False, soft_wrap=True)  # type: ignore[arg-type]  # a file-like stream  # log lines never wrap mid-line in files


def shown(text: str) -> str:
    """A name or path from a file, on one line and safe to print: every control character as an escape."""
    return printable(text, keep="")


def rendered(renderable, *, end: str = "\n", width: int | None = None) -> str:
    """Rich output as text for write_out (so a closed or full stdout is one sentence, not a silent exit 0 or a
    traceback): coloured only when stdout is a terminal and NO_COLOR is unset."""
    terminal = sys.stdout is not None and sys.stdout.isatty()
    console = Console(file=io.StringIO(), force_terminal=terminal, highlight=False, soft_wrap=True, width=width)
    console.print(renderable, end=end)
    return console.file.getvalue()  # type: ignore[attr-defined]


def say(message: str) -> None:
    """A plain line on stderr (never Rich markup: paths and user text pass through as they are)."""
    err.print(escape(message))


class OutputError(CharRNNError):
    """stdout cannot be written (closed, or its disk is full)."""


FLUSH_EVERY_S = 0.02  # paced writes reach stdout at least this often: live to the eye, few wake-ups for a pipe


def write_out(text: str, flush: bool = True) -> None:
    """Data to stdout, flushed unless told otherwise; a failure other than a closed pipe becomes OutputError
    (exit 1)."""
    out = sys.stdout
    if out is None:
        raise OutputError(
            "standard output is closed, so there is nowhere to write; run the command with stdout "
            "open (redirect it to a file if you do not want to see it)."
        )
    try:
        out.write(text)
        if flush:
            out.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:
        _silence_stdout()  # or the interpreter's final flush fails again, with a traceback
        reason = getattr(e, "strerror", None) or str(e)
        raise OutputError(
            f"cannot write to standard output ({reason}); free some space or redirect it elsewhere."
        ) from None


class PacedOut:
    """write_out for a stream of small pieces (a character a step): flushed once FLUSH_EVERY_S has passed since
    the last flush, and at the end, so text still appears live while a reading pipe is woken ~50 times a second
    rather than at every step (which took ~5 % of a 64-stream sampler's time on 2 cores)."""

    def __init__(self) -> None:
        self.due = time.monotonic() + FLUSH_EVERY_S

    def write(self, text: str) -> None:
        now = time.monotonic()
        write_out(text, flush=now >= self.due)
        if now >= self.due:
            self.due = now + FLUSH_EVERY_S

    def flush(self) -> None:
        write_out("")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so what is still buffered goes nowhere instead of failing at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """The reader went away (`| head`): that ends the command quietly with exit 0, like any Unix filter."""
    try:
        yield
    except BrokenPipeError:
        _silence_stdout()
