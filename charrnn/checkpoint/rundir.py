"""Run directories: what a run writes there (RunDir), which directory a run writes to, the lock that makes it that
run's alone, and finding a run's checkpoint (checkpoint_in, find_latest_run).

RunDir keeps numbered checkpoints ckpt-NNNNNNNNN.pt with last.pt and best.pt as hard links to them (an atomic copy
where links fail), prunes all but the `keep` newest, and on --resume falls back from a damaged last.pt to the
newest checkpoint that loads. Every file goes through files.py's atomic, durable, verified write.

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
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from charrnn.checkpoint.files import (
    NO_LINK_ERRNOS,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    atomic_write,
    describe,
    free_bytes,
    fsync_dir,
    load_checkpoint,
    out_of_space,
    save_checkpoint,
    write_error,
)
from charrnn.checkpoint.state import MODEL_KEYS
from charrnn.errors import CharRNNError, CheckpointError, CheckpointWriteError, UsageError
from charrnn.text.sources import MARKER_NAME  # a directory-corpus walk skips a directory holding it

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
METRICS_NAME, SAMPLES_NAME = "metrics.jsonl", "samples.jsonl"  # a run's evaluations and previews, one JSON a line
MAX_SUFFIX = 10_000  # checkpoints/<name>-2 ... -10000: past that something is wrong, not busy
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)
_NUMBERED = re.compile(r"^ckpt-(\d+)\.pt$")


class RunBusyError(CharRNNError):
    """Another live process holds the run directory's lock."""


# ---------------------------------------------------------------- what a run writes


class RunDir:
    """One run's checkpoints: ckpt-NNNNNNNNN.pt files, last.pt and best.pt (hard links to them), metrics.jsonl,
    samples.jsonl (the previews written during training)."""

    def __init__(self, path: Path, keep: int = 3, *, durable: bool = True, overwrite: bool = False) -> None:
        if keep < 0:
            raise UsageError(f"the number of checkpoints to keep must be 0 or more, not {keep}.")
        self.path = Path(path)
        self.keep = keep
        self.durable = durable
        self.overwrite = overwrite  # prepare() removes an earlier run's files: only once the new run is ready
        self.last_path = self.path / "last.pt"
        self.best_path = self.path / "best.pt"
        self.metrics_path = self.path / METRICS_NAME
        self.samples_path = self.path / SAMPLES_NAME

    def prepare(self) -> None:
        """Fail now, not after an hour of training, if checkpoints cannot be written here; remove stale temps."""
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointWriteError(
                f"cannot use {self.path} as a checkpoint directory because it is a file; "
                "choose another output directory."
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot create checkpoint directory {self.path} ({describe(exc)}); choose another output directory."
            ) from exc
        for stale in self.path.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)  # left by a writer that was killed; never a complete checkpoint
        self._probe()
        if self.overwrite:
            self._remove_earlier_run()

    def run_files(self) -> list[Path]:
        """What a run writes here (what --overwrite removes); never anything else a user keeps in the folder."""
        names = [self.last_path, self.best_path, self.metrics_path, self.samples_path] + [p for _, p in self.numbered()]
        return [p for p in names if p.exists()]

    def _remove_earlier_run(self) -> None:
        # Called last in prepare(), after every check that could still refuse the new run, so a refused
        # --overwrite never costs the user the model it was about to replace.
        for p in self.run_files():
            try:
                p.unlink()
            except OSError as exc:
                raise CheckpointWriteError(
                    f"--overwrite could not remove {p} ({describe(exc)}); check the directory's permissions."
                ) from exc
        self.overwrite = False

    def _probe(self) -> None:
        try:
            fd, name = tempfile.mkstemp(dir=self.path, prefix=f"{TEMP_PREFIX}probe-", suffix=TEMP_SUFFIX)
            try:
                os.write(fd, b"charrnn write probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as exc:
            cause = describe(exc)
            if out_of_space(exc):
                cause += f"; {free_bytes(self.path)} bytes free"
            raise CheckpointWriteError(
                f"cannot write checkpoints to {self.path} ({cause}); choose another output directory."
            ) from exc

    def save(self, state: dict, step: int, is_best: bool) -> Path:
        """Write a numbered checkpoint, point last.pt (and best.pt) at it, then prune old numbered files."""
        if self.keep == 0:
            save_checkpoint(state, self.last_path, durable=self.durable)
            if is_best:
                self._point(self.best_path, self.last_path)
            return self.last_path
        target = self.path / f"ckpt-{step:09d}.pt"
        save_checkpoint(state, target, durable=self.durable)
        self._point(self.last_path, target)
        if is_best:
            self._point(self.best_path, target)
        self._prune(step)
        return target

    def _point(self, name: Path, target: Path) -> None:
        """Make `name` a hard link to `target` atomically (temp link + os.replace), or an atomic copy if links fail."""
        tmp = self.path / f"{TEMP_PREFIX}link-{secrets.token_hex(6)}{TEMP_SUFFIX}"
        try:
            os.link(target, tmp)
        except OSError as exc:
            if exc.errno not in NO_LINK_ERRNOS:
                raise write_error(name, exc) from exc
            self._copy(name, target)
            return
        try:
            os.replace(tmp, name)
            if self.durable:
                fsync_dir(self.path)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise write_error(name, exc) from exc
            raise

    def _copy(self, name: Path, target: Path) -> None:
        def write(f) -> None:
            with target.open("rb") as src:
                shutil.copyfileobj(src, f, length=1 << 20)

        atomic_write(name, write, durable=self.durable)

    def _prune(self, step: int) -> None:
        """Keep the file just written and the keep-1 newest before it; never touch files numbered after `step`.

        Files numbered after `step` come from an earlier run that went further (a resume from an older
        checkpoint); deleting them would be guessing. last.pt and best.pt are hard links, so removing a
        numbered name never removes the data they point at.
        """
        older = [p for s, p in self.numbered() if s < step]
        doomed = older[: max(0, len(older) - (self.keep - 1))]
        for p in doomed:
            try:
                p.unlink(missing_ok=True)
            except OSError as exc:
                raise CheckpointWriteError(
                    f"could not remove old checkpoint {p} ({describe(exc)}); the new checkpoint is saved."
                ) from exc
        if doomed and self.durable:
            fsync_dir(self.path)

    def numbered(self) -> list[tuple[int, Path]]:
        """(step, path) of every ckpt-NNNNNNNNN.pt, sorted by step number (not by name)."""
        found = []
        for p in self.path.glob("ckpt-*.pt"):
            match = _NUMBERED.match(p.name)
            if match:
                found.append((int(match.group(1)), p))
        return sorted(found)

    def load_latest(self, require: tuple[str, ...] = MODEL_KEYS) -> tuple[dict, Path, list[str]]:
        """Load the newest usable checkpoint: last.pt, then numbered ones newest first, then best.pt.

        Returns (state, path, warnings); each warning says which file was skipped and why.
        """
        candidates = [self.last_path] + [p for _, p in reversed(self.numbered())] + [self.best_path]
        failures: list[tuple[Path, str]] = []
        tried: set[tuple[int, int]] = set()
        for candidate in candidates:
            inode = _inode(candidate)
            if inode is None or inode in tried:
                continue  # absent, or a hard link to a file already tried
            tried.add(inode)
            try:
                state = load_checkpoint(candidate, require=require)
            except CheckpointError as exc:
                failures.append((candidate, exc.problem))
                continue
            warnings = [f"{p.name} {problem}; trying the next checkpoint" for p, problem in failures]
            if warnings:
                warnings[-1] = f"{failures[-1][0].name} {failures[-1][1]}; resuming from {candidate.name}"
            return state, candidate, warnings
        if not failures:
            raise CheckpointError(f"no checkpoint found in {self.path}; train without --resume to start a new run.")
        reasons = "; ".join(f"{p.name} {problem}" for p, problem in failures)
        raise CheckpointError(f"no usable checkpoint in {self.path} ({reasons}); start a new run without --resume.")


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def checkpoint_in(path: Path) -> Path:
    """A checkpoint file as it is, or a run directory's best.pt (else last.pt): what sample, score, export and
    --init-from take."""
    path = Path(path)
    if path.is_dir() and not path.suffix == ".pt":
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CharRNNError(
            f"{path} is a directory with no best.pt or last.pt; pass a checkpoint file or a run directory."
        )
    return path


def find_latest_run(root: Path = Path("checkpoints")) -> Path:
    """best.pt (else last.pt) of the run under `root` whose best.pt or last.pt was written most recently."""
    root = Path(root)
    newest: tuple[int, str, Path] | None = None
    runs = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    for run in runs:
        files = [p for p in (run / "best.pt", run / "last.pt") if p.is_file()]
        if not files:
            continue
        mtime = max(p.stat().st_mtime_ns for p in files)
        key = (mtime, run.name, files[0])  # files[0] is best.pt when the run has one
        if newest is None or key[:2] > newest[:2]:
            newest = key
    if newest is None:
        raise CheckpointError(
            f"no checkpoint found under {root.as_posix().rstrip('/')}/; "
            "train one with `charrnn train CORPUS` or pass a checkpoint path."
        )
    return newest[2]


# ---------------------------------------------------------------- choosing one, and its lock


def holds_run(path: Path) -> bool:
    """True when `path` is a directory with a checkpoint or metrics from an earlier run."""
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
    for tmp in Path(path).glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            tmp.unlink()
        except OSError:
            pass  # the next run's prepare() removes what is left
