"""Files the user names for charrnn to write (`score --html`, `plot -o`, `export -o`): one rule for all of them.

    check_output(path, inputs, force)   before any work: refuse a path that would destroy something
    replace_atomically(path, write)     temp file beside the target, then os.replace: never through its inode

The rule, in the order it is checked (docs/checkpoints-and-reliability.md, "Files charrnn writes"):
  - its directory must exist;
  - never a checkpoint (a .pt file, or any file torch.save wrote), even with --force;
  - never inside a run directory (a run owns what is in it: hard-linked checkpoints, metrics, its lock);
  - never a file the command reads (the same inode: a hard link or a symbolic link to an input counts);
  - never anything but a regular file (a directory, a FIFO that would block, a device);
  - an existing regular file is replaced only with --force.
A symbolic link at the target is replaced itself, never the file it points to.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from charrnn.display import printable
from charrnn.errors import CharRNNError, UsageError

CHECKPOINT_SUFFIXES = (".pt", ".pth")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6


def check_output(path: Path, option: str, *, inputs: Sequence[Path] = (), force: bool = False) -> None:
    """UsageError (exit 2) in one sentence when writing `path` (given as `option`, e.g. "--html") would destroy
    something the rule above protects. `inputs`: every file or run directory the command reads."""
    path = Path(path)
    shown = f"{option} {_shown(path)}"
    if not path.parent.is_dir():
        raise UsageError(
            f"{shown}: the directory {_shown(path.parent)} does not exist; create it or choose another path."
        )
    if _is_checkpoint(path):
        raise UsageError(
            f"{shown} is a checkpoint, which charrnn never writes over from {option}; choose another path."
        )
    run = _run_dir_holding(path)
    if run is not None:
        raise UsageError(
            f"{shown} is inside the run directory {_shown(run)}, which belongs to its run; write it elsewhere."
        )
    if any(_same_file(path, p) for p in _files_of(inputs)):
        raise UsageError(f"{shown} is a file this command reads; write the output to another path.")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return  # a new file (or a dangling link, which is replaced, not followed)
    except OSError as e:
        raise UsageError(f"{shown}: cannot inspect it ({e.strerror or e}); choose another path.") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{shown} exists and is not a regular file ({_kind(st.st_mode)}); choose another path.")
    if not force:
        raise UsageError(f"{shown} already exists; pass --force to replace it, or choose another path.")


def replace_atomically(path: Path, write: Callable[[BinaryIO], object], *, mode: int = 0o666) -> None:
    """write(f) into a temp file beside `path`, then os.replace it over `path`: readers see the old file or the whole
    new one, a hard link to the old file keeps its content, and any exit (a signal included: the CLI turns SIGTERM
    and SIGHUP into KeyboardInterrupt) removes the temp. No fsync: such a file is cheap to write again."""
    path = Path(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, mode & ~_umask())  # mkstemp makes it private; an output gets the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def write_error(path: Path, e: OSError) -> CharRNNError:
    return CharRNNError(
        f"could not write {_shown(path)} ({e.strerror or e}); free some disk space or fix the directory's permissions."
    )


def _is_checkpoint(path: Path) -> bool:
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    try:
        with open(path, "rb", opener=_nonblocking) as f:  # a FIFO must not block the check
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return False
            return f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC and _holds_pickle(path)
    except OSError:
        return False


def _holds_pickle(path: Path) -> bool:
    """A zip with a torch pickle inside (data.pkl): a checkpoint saved under another name, not any zip file."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("data.pkl") for name in z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def _nonblocking(file: str, flags: int) -> int:
    return os.open(file, flags | getattr(os, "O_NONBLOCK", 0))


def _run_dir_holding(path: Path) -> Path | None:
    """The run directory that `path` (resolved, so a link into a run counts) would land in, if any."""
    from charrnn.checkpoint.rundir import MARKER_NAME, holds_run  # lazily, for start-up: rundir loads torch

    for directory in {path.parent.resolve(), path.resolve().parent}:
        if (directory / MARKER_NAME).exists() or holds_run(directory):
            return directory
    return None


def _files_of(inputs: Sequence[Path]) -> list[Path]:
    """Each input, and what a run directory among them holds (the command reads its checkpoint and metrics)."""
    files: list[Path] = []
    for p in map(Path, inputs):
        files.append(p)
        if p.is_dir():
            files.extend(q for q in p.iterdir() if q.is_file())
    return files


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is missing or unreadable: not the same existing file
        return False


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def _shown(path: Path) -> str:
    return printable(str(path), keep="")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
