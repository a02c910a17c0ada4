"""The server's log lines, written by a thread of their own, so that a stderr nobody reads never stops serving.

A pipe holds 64 KB. Behind `charrnn serve 2>&1 | less` paused, or a supervisor that stopped reading, a direct
write blocks once it fills, and it blocked the event loop with it: every request hung (10,000 requests write about
600 KB of log). Here the HTTP side only queues a line; past MAX_PENDING queued lines it drops them and counts,
and the writer says how many it dropped once it can write again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

MAX_PENDING = 10_000  # queued lines at most (about 1 MB); past it, new lines are dropped and counted
CLOSE_WAIT_S = 2.0  # at exit, how long the writer gets to write what is queued


class LogLines:
    """Callable like `write`; lines reach `write` in order, on the writer thread."""

    def __init__(self, write: Callable[[str], None], max_pending: int = MAX_PENDING) -> None:
        self.write = write
        self.lines: queue.Queue[str | None] = queue.Queue(max_pending)
        self.dropped = 0  # counted on the caller's side, reported by the writer
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="charrnn-log", daemon=True)
        self.thread.start()

    def __call__(self, line: str) -> None:
        try:
            self.lines.put_nowait(line)
        except queue.Full:
            with self.lock:
                self.dropped += 1

    def close(self, timeout: float = CLOSE_WAIT_S) -> None:
        """Write what is queued (waiting at most `timeout`: stderr may be blocked for good), then stop."""
        try:
            self.lines.put(None, timeout=timeout)
        except queue.Full:
            return
        self.thread.join(timeout)

    def _run(self) -> None:
        while (line := self.lines.get()) is not None:
            with self.lock:
                dropped, self.dropped = self.dropped, 0
            try:
                if dropped:
                    self.write(f"log: {dropped} line(s) dropped while stderr was not being read")
                self.write(line)
            except Exception:  # noqa: BLE001 - stderr is gone (closed pipe): serving goes on without a log
                pass
