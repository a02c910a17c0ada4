"""Where the corpus cache lives, how anything is written into it (atomically, and with one sentence whose advice
fits the errno when it cannot be), and its lock. encoder.py and entries.py (the encoded ids), corpora.py (built-in
text) and download.py (downloads) all write through here.

Every corpus load holds <cache_dir>/.lock shared while it may write temporaries (cache_lock); a load that first
gets it exclusively knows that no writer is alive, so it deletes the temporaries that killed ones left behind.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from charrnn.errors import CorpusError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so stale temporaries are never provably dead and stay
    fcntl = None  # type: ignore[assignment]

# Temporaries that a killed writer leaves behind: (subdirectory of the cache, glob)
_TEMPORARIES = (("encoded", ".*.tmp"), ("tmp", ".spool-*"), ("corpora", ".*.tmp"))


def default_cache_dir() -> Path:
    if os.environ.get("CHARRNN_CACHE_DIR"):
        return Path(os.environ["CHARRNN_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "charrnn"
    return Path.home() / ".cache" / "charrnn"


def cache_error(where: Path, err: OSError) -> CorpusError:
    """One sentence whose advice fits the errno: the cache is full, read-only, or not a directory."""
    problem = f"cannot write the corpus cache in {where}: {err.strerror or err}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some disk space or set CHARRNN_CACHE_DIR to a directory on a disk with room"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "set CHARRNN_CACHE_DIR to a writable directory"
    elif err.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (where, *where.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            problem = f"cannot write the corpus cache in {where}: {blocker} is a file, not a directory"
        advice = "set CHARRNN_CACHE_DIR to a directory"
    else:
        advice = "check the disk or set CHARRNN_CACHE_DIR to another directory"
    return CorpusError(f"{problem}; {advice}.")


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def cache_lock(cache_dir: Path) -> Iterator[None]:
    """Hold <cache_dir>/.lock shared while this load may leave temporaries in the cache.

    Whoever gets it exclusively knows that no writer is alive, so every temporary there is a killed writer's.
    Without a usable lock (no flock, a read-only cache) nothing is cleaned; writes still say what is wrong.
    """
    fd = _open_lock(cache_dir)
    if fd is None:
        yield
        return
    try:
        if _flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            _remove_temporaries(cache_dir)
        _flock(fd, fcntl.LOCK_SH)  # not atomic after LOCK_EX, which is fine: nothing of ours exists yet
        yield
    finally:
        os.close(fd)


def _open_lock(cache_dir: Path) -> int | None:
    if fcntl is None:
        return None
    with suppress(OSError):
        cache_dir.mkdir(parents=True, exist_ok=True)
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):  # a shared read-only cache can still be locked
        with suppress(OSError):
            return os.open(cache_dir / ".lock", flags, 0o666)
    return None


def _flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation)
    except OSError:  # held elsewhere (BlockingIOError), or a filesystem without locks
        return False
    return True


def _remove_temporaries(cache_dir: Path) -> None:
    for subdir, pattern in _TEMPORARIES:
        with suppress(OSError):
            for path in (cache_dir / subdir).glob(pattern):
                with suppress(OSError):
                    path.unlink()
