"""Where the corpus cache lives, and how anything is written into it: atomically, and with one sentence whose
advice fits the errno when it cannot be. corpus.py (the encoded ids) and corpora.py (downloads, built-in text)
both write through here.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from charrnn.errors import CorpusError


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
