"""`charrnn serve --watch`: each model's checkpoint file polled, and the model reloaded when it changes (a
training run writing a new best.pt), so a page can watch a run learn.

    every POLL_S:  stat the file ─▶ changed? ─▶ load it on a thread of its own, which then ends
                   ─▶ same vocabulary? ─▶ Scheduler.swap ─▶ state.models / state.created (what /v1/models says)

The load runs neither on the scheduler's thread (it keeps stepping meanwhile) nor on the watcher's, which lives as
long as the server: a live thread that has run torch keeps an OpenMP pool, and the scheduler would step at half
its speed for the rest of the server's life (scheduler.py, bench/bench_threads.py). A thread's pool goes when
the thread ends.

Training replaces best.pt atomically (a new hard link moved over it), so a change is a whole file; a file
copied in place can still be caught half written, and any file may be damaged. A load that fails is one log line,
the old model keeps serving, and that version of the file is not tried again: the next change is. Streams in
flight finish on the weights they started with (the scheduler keeps their batch until they end).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from charrnn.api import Model

if TYPE_CHECKING:
    from charrnn.serve.app import ServerState

POLL_S = 1.0  # how often each file is looked at: a stat, nothing more
SWAP_TIMEOUT_S = 30.0  # the scheduler switches at its next step; past this it is stuck or stopping

Signature = tuple[int, int, int] | None  # (inode, size, mtime in ns) of a file, None while it is missing


def signature(path: Path) -> Signature:
    """What changes when the file is replaced or rewritten: training links a new file over it (a new inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class Watcher:
    """A daemon thread polling every served model's checkpoint until `state.stopping`."""

    def __init__(self, state: ServerState, log: Callable[[str], None], poll_s: float = POLL_S) -> None:
        self.state, self.log, self.poll_s = state, log, poll_s
        self.seen = {name: signature(model.path) for name, model in state.models.items()}
        self.wake = threading.Event()  # set to stop the thread now
        self.thread = threading.Thread(target=self.run, name="charrnn-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.wake.set()

    def run(self) -> None:
        """Poll until the server stops; no file, however broken, ends the thread."""
        while not self.state.stopping and not self.wake.wait(self.poll_s):
            for name in list(self.seen):
                try:
                    self.check(name)
                except Exception as e:  # noqa: BLE001 - a reload that fails must never stop the server
                    self.log(f"--watch: {name}: {type(e).__name__}: {e}")

    def check(self, name: str) -> bool:
        """Reload `name` when its file has changed since it was last seen; True when the new model serves."""
        path = self.state.models[name].path
        now = signature(path)
        if now is None or now == self.seen[name]:
            return False  # a missing file is a checkpoint being replaced by hand: wait for the new one
        self.seen[name] = now  # this version is tried once, whether or not it loads
        old = self.state.models[name]
        try:
            new = load_apart(path, old.device, old.precision)
        except Exception as e:  # noqa: BLE001 - a damaged pickle or zip raises anything: the old model stays
            self.log(f"--watch: {name}: {path} did not load ({_first_line(e)}); still serving step {_step(old)}")
            return False
        if new.vocab != old.vocab:
            self.log(
                f"--watch: {name}: {path} has another vocabulary ({len(new.vocab)} characters, not "
                f"{len(old.vocab)}); still serving step {_step(old)}: restart the server to serve it"
            )
            return False
        self.state.schedulers[name].swap(new).result(SWAP_TIMEOUT_S)
        self.state.models[name] = new  # requests are checked against this one's vocabulary, the same as before
        self.state.created[name] = now[2] // 1_000_000_000
        self.log(f"--watch: {name}: reloaded {path} (step {_step(new)}, val {_val(new)})")
        return True


def load_apart(path: Path, device, precision: str) -> Model:
    """Model.from_file on a thread that has ended by the time this returns (see the module's docstring); its
    exception, if it raises one, is raised here."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="charrnn-load") as pool:  # leaving it joins the thread
        return pool.submit(Model.from_file, path, device, precision).result()


def _step(model: Model) -> str:
    step = model.info.get("step")
    return "?" if step is None else str(step)


def _val(model: Model) -> str:
    val = model.info.get("val_loss")
    return "not evaluated" if val is None else f"{val:.4f} nats/char"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
