"""Which directory a run writes to, and the lock that makes it that run's alone.

A directory that already holds a run (a checkpoint or metrics.jsonl) is never reused silently: a new run under
the default name moves on to `<name>-2`, `<name>-3`, ...; an explicit --run-dir is refused unless the user says
--resume (continue it) or --overwrite (replace it). Two processes never share a run directory: the run holds an
exclusive `fcntl.flock` on `<run>/.lock` for its whole life. The kernel drops the lock when the process dies,
however it dies, so a killed run never leaves a stale lock behind; the PID written into the file only names
the holder in the message.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from charrnn.errors import CharRNNError, CheckpointWriteError, UsageError

LOCK_NAME = ".lock"
MARKER_NAME = ".charrnn-run"  # tells a directory-corpus walk (corpus.py) that this directory is a run, not text
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl")  # besides ckpt-*.pt, what marks a directory as a run
MAX_SUFFIX = 10_000  # checkpoints/<name>-2 ... -10000: past that something is wrong, not busy


class RunBusyError(CharRNNError):
    """Another live process holds the run directory's lock."""


def holds_run(path: Path) -> bool:
    """True when `path` is a directory with a checkpoint or metrics from an earlier run."""
    path = Path(path)
    if not path.is_dir():
        return False
    metrics = path / "metrics.jsonl"  # created empty before the first step: a run that wrote nothing is no run
    if metrics.is_file() and metrics.stat().st_size > 0:
        return True
    return any((path / name).exists() for name in ("last.pt", "best.pt")) or any(path.glob("ckpt-*.pt"))


def run_files(path: Path) -> list[Path]:
    """The files a run writes (what --overwrite removes); never anything else a user keeps there."""
    path = Path(path)
    return [p for p in [path / n for n in RUN_FILES] + sorted(path.glob("ckpt-*.pt")) if p.exists()]


class RunLock:
    """An exclusive, non-blocking flock on <run>/.lock; released on close() or when the process ends."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointWriteError(f"cannot create the run directory {self.path} ({exc.strerror}); "
                                       "choose another --run-dir.") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise CheckpointWriteError(f"cannot lock the run directory {self.path} ({exc.strerror}); "
                                           "choose another --run-dir.") from exc
            who = f"another charrnn process (PID {holder})" if holder else "another charrnn process"
            raise RunBusyError(f"{who} is using the run directory {self.path}; wait for it to finish, or give "
                               "this run another --run-dir.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        try:
            (self.path / MARKER_NAME).touch()
        except OSError:
            pass  # only a hint for corpus walks; the checkpoints themselves do not depend on it

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def claim_run_dir(path: Path, *, explicit: bool, resume: bool, overwrite: bool) -> tuple[RunLock, Path, str | None]:
    """Lock the directory this run will write to and return (lock, path, note for the user or None).

    resume: `path` itself, which must hold a run. overwrite: `path` itself, its old run files removed.
    Otherwise a directory holding a run is refused when the user named it (`explicit`), and skipped for the
    next free `<path>-N` when it is the default.
    """
    path = Path(path)
    if resume or overwrite or explicit:
        lock = RunLock(path)
        if not resume and not overwrite and holds_run(path):
            raise UsageError(f"{path} already holds a run; continue it with --resume, replace it with --overwrite, "
                             "or give this run another --run-dir.")
        lock.acquire()
        if overwrite:
            _remove_run_files(lock, path)
        return lock, path, None
    for n in range(1, MAX_SUFFIX + 1):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        if holds_run(candidate):
            continue
        lock = RunLock(candidate)
        try:
            lock.acquire()
        except RunBusyError:
            continue  # a run started there a moment ago: take the next name
        if holds_run(candidate):  # written between the check and the lock
            lock.close()
            continue
        note = None
        if n > 1:
            note = (f"{path} holds an earlier run, so this run goes to {candidate} (--resume continues that run; "
                    "--overwrite replaces it)")
        return lock, candidate, note
    raise UsageError(f"{path}-2 … {path}-{MAX_SUFFIX} all hold runs; give this run a --run-dir.")


def _remove_run_files(lock: RunLock, path: Path) -> None:
    for p in run_files(path):
        try:
            p.unlink()
        except OSError as exc:
            lock.close()
            raise CheckpointWriteError(f"--overwrite could not remove {p} ({exc.strerror}); "
                                       "check the directory's permissions.") from exc


def remove_temps(path: Path) -> None:
    """Remove the temp files of writes cut short in a run directory this process holds the lock of."""
    from charrnn.checkpoint import TEMP_PREFIX, TEMP_SUFFIX

    for tmp in Path(path).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            tmp.unlink()
        except OSError:
            pass  # the next run's prepare() removes what is left
