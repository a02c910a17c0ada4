"""Errors and signals for every command: one sentence and an exit code for a CharRNNError, SIGTERM and SIGHUP
stopping a command as Ctrl-C does, and training's StopFlag (a first signal saves and stops, a second exits at
once)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

import typer
from rich.markup import escape

from charrnn.cli.console import err, say
from charrnn.display import printable
from charrnn.errors import CharRNNError

# SIGHUP: the terminal or SSH session closed (Windows has none).
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """One sentence on stderr and the error's exit code, no traceback, for anything the user can fix; SIGTERM and
    SIGHUP stop the command as Ctrl-C does, so every writer's cleanup (its temp files) runs on the way out."""
    try:
        with _signals_interrupt():
            yield
    except CharRNNError as e:
        # Escaped once more here, newlines too: whatever text an error carries (a server's, a file's), the
        # terminal gets one line and no raw control character.
        err.print(f"[red]Error:[/red] {escape(printable(str(e), keep=''))}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:  # Ctrl-C outside the training loop
        signum = getattr(e, "signum", signal.SIGINT)
        say(f"{signal.Signals(signum).name}: stopped; checkpoints already written are intact")
        raise typer.Exit(128 + signum) from None


def _interrupt(signum: int, frame) -> None:
    interrupt = KeyboardInterrupt()
    interrupt.signum = signum  # type: ignore[attr-defined]  # user_errors exits with 128 + signum
    raise interrupt


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as SIGINT does: by default they end the process at once, and a
    half-written temp file stays behind. (Training's StopFlag installs its own handlers inside this.)"""
    if threading.current_thread() is not threading.main_thread():  # signal.signal works in the main thread only
        yield
        return
    others = [s for s in STOP_SIGNALS if s != signal.SIGINT]
    previous = {s: signal.signal(s, _interrupt) for s in others}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class StopFlag:
    """SIGINT, SIGTERM or SIGHUP asks the training loop (which polls this once per step) to save and stop;
    a second one exits at once, within milliseconds, even in the middle of a long step.

    Python runs signal handlers only between bytecodes, so a handler cannot interrupt a 10-second LSTM
    backward, and two signals that arrive during one are merged. The C-level handler does write every
    signal's number to the wakeup fd at once, so a watcher thread counts them there and, at the second,
    leaves with os._exit: checkpoint writes are atomic (temp file + rename), so no file is ever half-written.

    Until the loop first polls the flag (reading and encoding the corpus, setting up) there is nothing to save,
    so a first signal stops at once instead: it raises KeyboardInterrupt in the main thread, even from a read
    of a stdin that never ends, and the encoder's temporaries are removed on the way out.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._count = 0
        self._armed = False  # the loop has polled: from then on a first signal saves a checkpoint
        self._on_abort: Callable[[], None] = lambda: None

    def on_abort(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` before an abrupt exit (e.g. remove the temp file of a checkpoint write cut short)."""
        self._on_abort = cleanup

    def __call__(self) -> int | None:
        self._armed = True
        return self.signum

    def _handler(self, signum: int, frame) -> None:
        """The Python-level handler (main thread): before the loop, stop where we are."""
        if not self._armed:
            _interrupt(signum, frame)

    def _watch(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return  # uninstalled: the write end was closed
            for signum in data:
                if signum in STOP_SIGNALS:
                    self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count == 1:
            self.signum = signum
            if self._armed:  # before that the main thread's handler stops the command and says so
                say(f"\n{name}: finishing this step and saving a checkpoint ({AGAIN})")
            return
        try:
            self._on_abort()
        finally:
            _last_words(f"\n{name} again: stopped at once; checkpoints already written are intact\n")
            os._exit(128 + signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals are delivered to the main thread only
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        watcher = threading.Thread(target=self._watch, args=(read_fd,), name="charrnn-signals", daemon=True)
        watcher.start()
        # The wakeup fd before the handlers and after them on the way out: no signal falls in a gap unseen.
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        previous_handlers = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(previous_fd)
            os.close(write_fd)
            watcher.join(timeout=1.0)
            os.close(read_fd)


AGAIN = "signal again to stop at once without saving"


def _last_words(text: str) -> None:
    """A message on the way out through os._exit: a raw, non-blocking write, so a stderr that is stuck (a full
    pipe, a terminal paused with Ctrl-S) cannot keep the process from leaving; in a terminal it also shows the
    cursor again, which the progress bar had hidden and os._exit leaves no chance to restore."""
    try:
        fd = (sys.__stderr__ or sys.stderr).fileno()
        os.set_blocking(fd, False)
        os.write(fd, ((b"\x1b[?25h" if os.isatty(fd) else b"") + text.encode("utf-8", "replace")))
    except (OSError, ValueError, AttributeError):
        pass
