"""Which directory a run writes to, and the lock that makes it that run's alone.

A directory that already holds a run (a checkpoint or metrics.jsonl) is never reused silently: a new run under
the default name moves on to `<name>-2`, `<name>-3`, ...; an explicit --run-dir is refused unless the user says
--resume (continue it) or --overwrite (replace it). Two processes never share a run directory: the run holds an
exclusive `fcntl.flock` on `<run>/.lock` for its whole life. The kernel drops the lock when the process dies,
however it dies, so a killed run never leaves a stale lock behind; the PID written into the file only names
the holder in the message. Where there is no flock (Windows, some network filesystems) the run goes on unlocked
and says so.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from charrnn.errors import CharRNNError, CheckpointError, CheckpointWriteError, UsageError
from charrnn.text.sources import MARKER_NAME  # a directory-corpus walk skips a directory holding it

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
MAX_SUFFIX = 10_000  # checkpoints/<name>-2 ... -10000: past that something is wrong, not busy
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)


class RunBusyError(CharRNNError):
    """Another live process holds the run directory's lock."""


def holds_run(path: Path) -> bool:
    """True when `path` is a directory with a checkpoint or metrics from an earlier run."""
    from charrnn.checkpoint.files import RunDir  # the one owner of what a run writes; lazily, as it loads torch

    run = RunDir(path)
    if not run.path.is_dir():
        return False
    # metrics.jsonl and samples.jsonl are created empty before the first step: a run that wrote nothing yet is
    # no run.
    logs = (run.metrics_path, run.samples_path)
    return any(p not in logs or (p.is_file() and p.stat().st_size > 0) for p in run.run_files())


class RunLock:
    """An exclusive, non-blocking flock on <run>/.lock; released on close() or when the process ends."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock (creating the directory); a note for the user when this system cannot lock it."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot use the run directory {self.path} ({exc.strerror}); choose another --run-dir."
            ) from exc
        note = None
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no flock on this system")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _HELD:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"another charrnn process (PID {holder})" if holder else "another charrnn process"
                raise RunBusyError(
                    f"{who} is using the run directory {self.path}; wait for it to finish, or give "
                    "this run another --run-dir."
                ) from None
            if exc.errno not in _NO_FLOCK:
                os.close(fd)
                raise CheckpointWriteError(
                    f"cannot lock the run directory {self.path} ({exc.strerror}); choose another --run-dir."
                ) from exc
            note = (
                f"this filesystem cannot lock {self.path} ({exc.strerror}); make sure no other charrnn process "
                "trains in it at the same time"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        try:
            (self.path / MARKER_NAME).touch()
        except OSError:
            pass  # only a hint for corpus walks; the checkpoints themselves do not depend on it
        return note

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def check_run_dir(path: Path, *, resume: bool, overwrite: bool) -> None:
    """What can be said of an explicit --run-dir before the corpus is read (nothing is created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--run-dir {path} is a file, not a directory; choose another --run-dir.")
    if resume and not holds_run(path):
        raise CheckpointError(
            f"no run to resume in {path} (no checkpoint there); check the path, or train "
            "without --resume to start a new run."
        )
    if not resume and not overwrite and holds_run(path):
        raise UsageError(
            f"{path} already holds a run; continue it with --resume, replace it with --overwrite, "
            "or give this run another --run-dir."
        )


def claim_run_dir(path: Path, *, explicit: bool, resume: bool, overwrite: bool) -> tuple[RunLock, Path, str | None]:
    """Lock the directory this run will write to and return (lock, path, note for the user or None).

    resume: `path` itself, which must hold a run. overwrite: `path` itself (RunDir(overwrite=True) removes the
    old run's files once the new run has passed every check). Otherwise a directory holding a run is refused
    when the user named it (`explicit`), and skipped for the next free `<path>-N` when it is the default.
    """
    path = Path(path)
    if resume or overwrite or explicit:
        check_run_dir(path, resume=resume, overwrite=overwrite)
        lock = RunLock(path)
        note = lock.acquire()
        return lock, path, note
    for n in range(1, MAX_SUFFIX + 1):
        candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
        if holds_run(candidate) or (candidate.exists() and not candidate.is_dir()):
            continue
        lock = RunLock(candidate)
        try:
            note = lock.acquire()
        except RunBusyError:
            continue  # a run started there a moment ago: take the next name
        if holds_run(candidate):  # written between the check and the lock
            lock.close()
            continue
        if n > 1:
            moved = (
                f"{path} holds an earlier run, so this run goes to {candidate} (--resume continues that run; "
                "--overwrite replaces it)"
            )
            note = moved if note is None else f"{moved}; {note}"
        return lock, candidate, note
    raise UsageError(f"{path}-2 … {path}-{MAX_SUFFIX} all hold runs; give this run a --run-dir.")


def remove_temps(path: Path) -> None:
    """Remove the temp files of writes cut short in a run directory this process holds the lock of."""
    from charrnn.checkpoint.files import TEMP_PREFIX, TEMP_SUFFIX  # lazily: checkpoint.files loads torch

    for tmp in Path(path).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            tmp.unlink()
        except OSError:
            pass  # the next run's prepare() removes what is left
