"""Checkpoint files: atomic durable writes, verification before unpickling, safe loading, `load_model`.

A checkpoint is one zip file written by torch.save holding a plain dict (tensors and primitives only), so it
always loads with torch.load(weights_only=True). Why each step of the write protocol exists
(measured on PyTorch 2.13 for the project's reliability survey):
- temp file in the SAME directory, then os.replace: a kill -9 mid-write never leaves a half-written file under
  the final name, and the rename never crosses filesystems (Lightning #20270);
- fsync of the file and then of the directory: the rename survives a power loss with the data behind it;
- zipfile CRC check before the rename, and again before every load: torch.load does not check the CRC32s that
  torch.save writes, so a flipped bit would otherwise load silently with wrong weights;
- disk full surfaces from torch as RuntimeError("unexpected pos …") with the OSError only in __context__, so
  both are caught and the errno is looked up along the exception chain; a Ctrl-C inside torch's writer surfaces
  the same way, so a KeyboardInterrupt anywhere in that chain wins over both;
- before anything is decompressed, the records' declared sizes are bounded by the file's own size: torch.save
  stores records uncompressed, so only a crafted file (a zip bomb) declares much more than it holds.

A model exported for sharing (`charrnn export`) is a .safetensors file instead: weights, config and vocabulary,
no pickle and no optimizer state (safetensors.py is its codec). It is written with the same protocol, and
load_bundle, hence sample, score, info and --init-from, reads it wherever a .pt is accepted; resuming needs a .pt.
A run directory's files (numbered checkpoints, last.pt and best.pt, retention, the resume fallback) are rundir.py's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from charrnn.checkpoint import safetensors as export
from charrnn.checkpoint.state import MODEL_KEYS, ModelBundle, check_format
from charrnn.errors import CheckpointError, CheckpointWriteError


def torch_is_safe(version: str) -> bool:
    # torch.load(weights_only=True) could be bypassed before 2.6 (CVE-2025-32434), and we load
    # every checkpoint through it, so older torch is refused outright rather than trusted.
    major, minor = (int(part) for part in version.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 6)


if not torch_is_safe(torch.__version__):
    raise ImportError(
        f"charrnn needs torch >= 2.6 (found {torch.__version__}): older torch.load(weights_only=True) "
        "can run code from a malicious checkpoint (CVE-2025-32434); upgrade torch."
    )


TEMP_PREFIX = ".ckpt-"
TEMP_SUFFIX = ".tmp"
_TORCH_ENFORCE = re.compile(r"^\[enforce fail at [^\]]*\]\s*\.?\s*")  # c10 noise before the real message
_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# os.link failures that mean "this filesystem has no hard links here", not "the disk is broken".
NO_LINK_ERRNOS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}
# Leaf types torch.load(weights_only=True) accepts without an allowlist.
_PLAIN_LEAVES = (torch.Tensor, str, bytes, bool, int, float, complex, type(None), torch.Size, torch.dtype, torch.device)
# torch.save stores every record uncompressed, so the records of a real checkpoint add up to less than the file;
# the slack only tolerates a checkpoint someone re-zipped, and bounds what a zip bomb can make us inflate.
MAX_EXPANSION = 4
EXPANSION_SLACK = 1 << 20
_FILE_KINDS = (
    (stat.S_ISFIFO, "a pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


# ---------------------------------------------------------------- writing


def save_checkpoint(state: dict, path: Path, *, durable: bool = True) -> None:
    """Write `state` to `path` atomically; on any failure the old file is untouched and no temp file remains.

    Raises CheckpointWriteError; a KeyboardInterrupt is re-raised after the temp file is removed.
    """
    path = Path(path)
    _check_plain(state, path)
    atomic_write(path, lambda f: torch.save(state, f), durable=durable)


def export_bundle(bundle: ModelBundle, path: Path | str, dtype: str = "fp32") -> Path:
    """Write `bundle` as a safetensors model file: the weights in `dtype` (fp32, fp16 or bf16), the config,
    vocabulary, facts and provenance as metadata; atomically and durably, and read back in full before it
    takes the name. UsageError for another dtype or a name not ending in .safetensors."""
    path = Path(path)
    export.check_options(path, dtype)
    data = export.encode(bundle, dtype)
    atomic_write(path, lambda f: f.write(data), durable=True, verify=_load_safetensors)
    return path


def atomic_write(path: Path, write, *, durable: bool, verify: Callable[[Path], object] | None = None) -> None:
    """mkstemp beside `path` -> write(f) -> flush -> fsync -> verify -> os.replace -> fsync the directory.

    verify(temp path) raises if the written file does not read back; verify_checkpoint by default."""
    directory = path.parent
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise write_error(path, exc) from exc
    tmp = Path(tmp_name)
    replaced = False
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        (verify or verify_checkpoint)(tmp)
        os.replace(tmp, path)
        replaced = True
        if durable:
            fsync_dir(directory)
    except BaseException as exc:
        _remove_quietly(tmp, replaced)
        interrupt = _interrupt_in(exc)
        if interrupt is not None and interrupt is not exc:
            # torch's writer turns a Ctrl-C raised inside it into RuntimeError("unexpected pos …"): the user
            # asked to stop, so stop, instead of reporting a disk problem that never happened.
            raise interrupt from None
        if isinstance(exc, Exception):
            raise write_error(path, exc, replaced=replaced) from exc
        raise  # KeyboardInterrupt / SystemExit: cleaned up, now let them through


def _interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    return next((e for e in _exception_chain(exc) if isinstance(e, KeyboardInterrupt)), None)


def _remove_quietly(tmp: Path, replaced: bool) -> None:
    if not replaced:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass  # the original error is the one worth reporting; prepare() removes strays next run


def fsync_dir(directory: Path) -> None:
    # A rename is only durable once the directory entry itself reaches the disk.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_error(path: Path, exc: BaseException, *, replaced: bool = False) -> CheckpointWriteError:
    cause = describe(exc)
    if out_of_space(exc):
        cause += f"; {free_bytes(path.parent)} bytes free on that disk"
    if replaced:
        return CheckpointWriteError(
            f"checkpoint {path} was written but its directory could not be synced ({cause}), "
            "so it may not survive a power loss; check the disk."
        )
    return CheckpointWriteError(
        f"could not write checkpoint {path} ({cause}); the previous checkpoint is left untouched."
    )


def _exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def out_of_space(exc: BaseException) -> bool:
    # torch's stream writer reports a short write as "unexpected pos" / "file write failed", with or without
    # the OSError behind it in __context__ (when it writes to a path itself, the errno is lost).
    for e in _exception_chain(exc):
        if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
            return True
        if isinstance(e, RuntimeError) and ("unexpected pos" in str(e) or "file write failed" in str(e)):
            return True
    return False


def describe(exc: BaseException) -> str:
    # Prefer the OSError hiding behind torch's RuntimeError: "File too large" beats "unexpected pos 704 vs 598".
    for e in _exception_chain(exc):
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
    text = _TORCH_ENFORCE.sub("", str(exc).strip())
    return text.splitlines()[0][:200] if text else type(exc).__name__


def free_bytes(directory: Path) -> str:
    try:
        return f"{shutil.disk_usage(directory).free:,}"
    except OSError:
        return "unknown"


def _check_plain(state: dict, path: Path) -> None:
    """Refuse, before touching the disk, anything torch.load(weights_only=True) would refuse to read back."""
    for where, value in _walk(state, "state"):
        if not isinstance(value, _PLAIN_LEAVES):
            raise CheckpointWriteError(
                f"cannot write checkpoint {path}: {where} is a {type(value).__module__}.{type(value).__qualname__}, "
                "which torch.load(weights_only=True) would refuse; store tensors and plain Python types only."
            )


def _walk(value, where: str) -> Iterator[tuple[str, object]]:
    if type(value) in (dict, OrderedDict):  # defaultdict & co. need their class to unpickle
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool, type(None))):
                yield f"a key of {where}", key
            yield from _walk(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple, set)) and not isinstance(value, torch.Size):
        if type(value) not in (list, tuple, set):  # namedtuples and list subclasses need their class to unpickle
            yield where, value
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")
    else:
        yield where, value


# ---------------------------------------------------------------- reading


def verify_checkpoint(path: Path) -> None:
    """Check that `path` is a complete zip archive whose every record matches its CRC32, or a charrnn safetensors
    model file with a sound header; unpickles nothing and reads no weights of the latter."""
    _verify(Path(path))


def _verify(path: Path) -> bool:
    """verify_checkpoint; True when `path` is a safetensors model file."""
    size, head = _check_file(path)
    if export.is_safetensors(path, head):
        _verify_safetensors(path)
        return True
    _verify_zip(path, size, head)
    return False


def _check_file(path: Path) -> tuple[int, bytes]:
    """A readable, non-empty regular file: its size and first 9 bytes."""
    if not path.exists():
        raise CheckpointError.about(path, "does not exist", "check the path or train one with `charrnn train CORPUS`")
    if path.is_dir():
        raise CheckpointError.about(
            path, "is a directory, not a checkpoint file", "pass the last.pt or best.pt inside it"
        )
    try:
        st = path.stat()
        _check_regular(path, st.st_mode)  # before open(): opening a FIFO blocks until a writer comes
        size = st.st_size
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError.about(path, f"cannot be read ({describe(exc)})", "check its permissions") from exc
    if size == 0:
        raise CheckpointError.about(
            path, "is empty (0 bytes), probably from an interrupted write", "use an older checkpoint"
        )
    return size, head


def _verify_zip(path: Path, size: int, head: bytes) -> None:
    if not zipfile.is_zipfile(path):
        if b"PK\x03\x04".startswith(head[:4]):  # starts like a zip but has no end: cut short
            problem = "is corrupt (truncated: the zip directory at its end is missing)"
            raise CheckpointError.about(path, problem, "use an older checkpoint")
        if head[:1] == b"\x80":
            # A raw pickle or torch's legacy format: unpickling is the only way to read it, and that can run code.
            problem = "is a raw Python pickle, not a charrnn checkpoint, and pickles can contain Python objects"
            raise CheckpointError.about(path, f"{problem} that could run code", "refusing to load it")
        raise CheckpointError.about(
            path, "is not a checkpoint (not a zip archive)", "pass a .pt file written by `charrnn train`"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            _check_expansion(path, archive.infolist(), size)
            bad = archive.testzip()
    except CheckpointError:
        raise
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, …: all mean the archive is damaged
        raise CheckpointError.about(path, f"is corrupt ({describe(exc)})", "use an older checkpoint") from exc
    if bad is not None:
        raise CheckpointError.about(path, f"is corrupt (CRC mismatch in record {bad})", "use an older checkpoint")


def _check_regular(path: Path, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
    raise CheckpointError.about(
        path, f"is {kind}, not a checkpoint file", "save the checkpoint to a file and pass its path"
    )


def _check_expansion(path: Path, records: list[zipfile.ZipInfo], size: int) -> None:
    """Refuse, from the sizes the zip directory declares, an archive that would inflate far past its own size."""
    total = sum(r.file_size for r in records)  # overlapping records (one payload, many names) count each time
    limit = MAX_EXPANSION * size + EXPANSION_SLACK
    if total > limit:
        problem = (
            f"declares {total:,} bytes of records in a file of {size:,} bytes, more than the {limit:,} "
            f"({MAX_EXPANSION} times its size plus {EXPANSION_SLACK:,}) a checkpoint can hold, "
            "which torch.save never writes"
        )
        raise CheckpointError.about(path, problem, "it was crafted or damaged, so refusing to load it")


def load_checkpoint(path: Path | str, *, map_location="cpu", require: tuple[str, ...] = MODEL_KEYS) -> dict:
    """Verify, then torch.load(weights_only=True), then check that it is a charrnn checkpoint this version reads."""
    path = Path(path)
    if _verify(path):
        raise CheckpointError.about(
            path,
            "is an exported model file (weights, config and vocabulary only), so it cannot be resumed",
            "resume from the run's last.pt, or start a new run from it with --init-from",
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError.about(
                path, "contains Python objects that could run code", "refusing to load it"
            ) from exc
        # The CRCs matched, so the archive is intact: it is simply not something torch.save wrote.
        problem = f"is a zip archive but not a torch checkpoint ({describe(exc)})"
        raise CheckpointError.about(path, problem, "pass a checkpoint from `charrnn train`") from exc
    check_format(path, state)
    missing = [key for key in require if key not in state]
    if missing:
        raise CheckpointError.about(path, f"lacks {', '.join(missing)}", "it is incomplete, so use another checkpoint")
    return state


def load_bundle(path: Path | str) -> ModelBundle:
    """A checkpoint's model as data (config, vocabulary, weights, facts), every field checked; a .pt checkpoint
    or a .safetensors model file (told apart by name or content), whose weights come back float32."""
    path = Path(path)
    _, head = _check_file(path)
    if export.is_safetensors(path, head):
        return _load_safetensors(path)
    return ModelBundle.from_dict(load_checkpoint(path), path)


def _verify_safetensors(path: Path) -> None:
    """The header and the marker only: a foreign file's weights are never read."""
    with _reading(path) as f:
        _checked_header(f, path)


def _load_safetensors(path: Path) -> ModelBundle:
    """The whole file, read through the handle its header was checked from."""
    with _reading(path) as f:
        header, size = _checked_header(f, path)
        f.seek(0)
        blob = f.read(size + 1)
    if len(blob) != size or not blob.startswith(header.raw):
        raise CheckpointError.about(path, "changed while it was being read", "try again once it is written")
    return export.decode(header, blob, path)


def _checked_header(f: BinaryIO, path: Path) -> tuple[export.Header, int]:
    size = os.fstat(f.fileno()).st_size
    header = export.read_header(f, size, path)
    export.check_header(header, path)
    return header, size


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[BinaryIO]:
    try:
        with path.open("rb") as f:
            yield f
    except OSError as exc:
        raise CheckpointError.about(path, f"cannot be read ({describe(exc)})", "check its permissions") from exc


def load_model(path: Path | str, device: torch.device | str = "cpu"):
    """A checkpoint -> (model in eval mode on `device`, its ModelBundle). GPU-trained checkpoints load on
    CPU-only machines: everything is read to CPU first."""
    bundle = load_bundle(path)
    return bundle.build_model(device), bundle
