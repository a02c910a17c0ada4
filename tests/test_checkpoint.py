"""Checkpoint reliability: atomic writes under kill -9 and injected faults, hostile and damaged files, retention.

Follows the reliability test plan: W1-W6 and W8 (writing), S1-S5 (loading and security).
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import select
import signal
import socket
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from charrnn.checkpoint import files as ck
from charrnn.checkpoint.files import load_checkpoint, save_checkpoint, verify_checkpoint
from charrnn.checkpoint.rundir import RunDir, find_latest_run
from charrnn.checkpoint.state import FORMAT_NAME, FORMAT_VERSION
from charrnn.errors import CheckpointError, CheckpointWriteError
from charrnn.model import CharRNN, ModelConfig

REPO = Path(__file__).resolve().parents[1]
HEADER = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}  # what ModelBundle.to_dict() writes first


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _state(step: int = 0, n: int = 1000) -> dict:
    """The smallest state load_checkpoint accepts; the weights encode the step so files can be told apart."""
    return {
        **HEADER,
        "model": {"w": torch.full((n,), float(step))},
        "model_config": {"vocab_size": 2, "model": "lstm", "hidden_size": 4, "num_layers": 1},
        "vocab": ["a", "b"],
        "step": step,
    }


def _temps(directory: Path) -> list[Path]:
    return sorted(directory.glob(".ckpt-*.tmp"))


def _assert_holds(path: Path, step: int) -> None:
    state = load_checkpoint(path)
    assert state["step"] == step
    assert torch.equal(state["model"]["w"], torch.full_like(state["model"]["w"], float(step)))


def _tensor_record_offset(path: Path) -> tuple[int, int]:
    """(byte offset, size) of the first tensor's raw data inside a torch zip checkpoint."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and not i.filename.endswith("_id"))
    with path.open("rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


# ---------------------------------------------------------------- round trip (W8, S2)


def test_full_training_state_round_trips_under_weights_only(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=5, hidden_size=8, num_layers=2)
    model = CharRNN(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3)
    x = torch.randint(0, 5, (2, 6))  # (B, T)
    logits, _ = model(x, model.init_state(2))  # (B, T, V)
    logits.sum().backward()
    optimizer.step()
    scheduler.step()
    state = {
        **HEADER,
        "model": model.state_dict(),
        "model_config": config.to_dict(),
        "vocab": list("abcde"),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "python": random.getstate(),
            "torch": torch.get_rng_state(),
            "numpy": np.random.default_rng(1).bit_generator.state,
        },
        "step": 1,
    }
    path = tmp_path / "ckpt.pt"
    save_checkpoint(state, path)

    verify_checkpoint(path)
    assert _temps(tmp_path) == []
    plain = torch.load(path, weights_only=True)  # no allowlist needed
    assert plain["rng"]["python"] == state["rng"]["python"]
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT_NAME and loaded["format_version"] == FORMAT_VERSION
    assert loaded["rng"]["numpy"] == state["rng"]["numpy"]
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    for key, tensor in state["model"].items():
        assert torch.equal(loaded["model"][key], tensor)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]


@pytest.mark.parametrize(
    "bad, where",
    [({"out": Path("x")}, "['out']"), ({"rng": {"numpy": np.random.get_state()}}, "['rng']['numpy'][1]")],
)
def test_save_refuses_values_weights_only_would_refuse(tmp_path, bad, where):
    path = tmp_path / "ckpt.pt"
    with pytest.raises(CheckpointWriteError, match="weights_only") as info:
        save_checkpoint({**_state(), **bad}, path)
    assert where in str(info.value) and str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- kill -9 (W1)

# One interpreter imports torch once and forks a writer per trial, so 8+ kills cost seconds, not minutes.
# Each writer is a separate process that loops over saves of an 8 MB state and reports after each one.
ZYGOTE = r"""
import os, signal, sys
import torch
from charrnn.checkpoint.files import save_checkpoint
from charrnn.checkpoint.state import FORMAT_NAME, FORMAT_VERSION

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed writers are reaped by the kernel

def write_forever(mode, path):
    torch.manual_seed(0)
    state = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": {"w": torch.randn(2_000_000)},
             "model_config": {}, "vocab": ["a", "b"], "step": 0}
    step = 0
    while True:
        step += 1
        state["step"] = step
        state["model"]["marker"] = torch.tensor([step])
        if mode == "atomic":
            save_checkpoint(state, path)
        else:
            torch.save(state, path)
        os.write(1, f"{os.getpid()} {step}\n".encode())

while line := sys.stdin.readline():
    mode, path = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            write_forever(mode, path)
        finally:
            os._exit(1)
    os.write(1, f"fork {pid}\n".encode())
"""


class Zygote:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=_env()
        )
        self.buffer = b""

    def line(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(remaining, 0))
            chunk = os.read(self.proc.stdout.fileno(), 4096) if ready else b""
            if not chunk:
                raise AssertionError("the checkpoint writer process stopped reporting")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def kill_mid_loop(self, mode: str, path: Path, delay: float) -> None:
        """Start a writer, wait for its first completed save, let it run `delay` s more, then SIGKILL it."""
        self.proc.stdin.write(f"{mode} {path}\n".encode())
        pid = next(int(line.split()[1]) for line in iter(self.line, None) if line.startswith("fork "))
        next(line for line in iter(self.line, None) if line.startswith(f"{pid} "))
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        self._wait_dead(pid)

    def _wait_dead(self, pid: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)
        raise AssertionError(f"writer {pid} did not die")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def test_kill_9_during_save_always_leaves_a_loadable_checkpoint(tmp_path, zygote):
    rng = random.Random(20240601)
    for trial in range(8):
        path = tmp_path / f"trial{trial}" / "last.pt"
        path.parent.mkdir()
        zygote.kill_mid_loop("atomic", path, rng.uniform(0.0, 0.4))
        state = load_checkpoint(path)
        assert state["step"] >= 1 and state["model"]["marker"].item() == state["step"]  # one save, not a mix
        RunDir(path.parent).prepare()  # a killed writer may leave its temp file; prepare clears it
        assert _temps(path.parent) == []


def test_control_plain_torch_save_is_corrupted_by_kill_9(tmp_path, zygote):
    """Shows why the atomic protocol exists: the same kill against torch.save on the final path breaks the file."""
    rng = random.Random(7)
    trials = 8
    for trial in range(trials):
        path = tmp_path / f"plain{trial}.pt"
        zygote.kill_mid_loop("plain", path, rng.uniform(0.0, 0.4))
        try:
            load_checkpoint(path)
        except CheckpointError:
            return  # corrupted, as expected
    pytest.skip(f"control: plain torch.save survived all {trials} kills on this machine (timing never hit a write)")


# ---------------------------------------------------------------- fault injection at each stage (W2)


def _fail_mid_write(exc: BaseException):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(1000)
        f.truncate()  # some bytes reached the temp file, then the writer died
        raise exc

    return save


def _fail_on_directory_fsync(monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if _is_dir_fd(fd):
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _is_dir_fd(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def _fail_on_file_fsync(monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):
        if not _is_dir_fd(fd):
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _corrupt_while_writing(monkeypatch):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        start = f.tell()
        real_save(obj, f, *args, **kwargs)
        f.seek(start + (f.tell() - start) // 2)  # the middle is tensor data, which only the CRC protects
        f.write(b"\x00" * 8)  # a bad sector / bit rot between write and rename: the CRC check must catch it
        f.seek(0, os.SEEK_END)

    monkeypatch.setattr(torch, "save", save)


STAGES = {
    "torch.save dies mid-write (disk full)": lambda mp: mp.setattr(
        torch, "save", _fail_mid_write(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1000"))
    ),
    "torch.save raises OSError": lambda mp: mp.setattr(torch, "save", _fail_mid_write(OSError(errno.EIO, "I/O error"))),
    "fsync of the file": _fail_on_file_fsync,
    "written bytes fail the CRC check": _corrupt_while_writing,
    "os.replace": lambda mp: mp.setattr(os, "replace", _raise(OSError(errno.EXDEV, "Invalid cross-device link"))),
    "mkstemp": lambda mp: mp.setattr(ck.tempfile, "mkstemp", _raise(OSError(errno.EACCES, "Permission denied"))),
}


@pytest.mark.parametrize("stage", STAGES)
def test_failure_at_any_write_stage_keeps_the_old_checkpoint(tmp_path, monkeypatch, stage):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1, n=50_000), path)
    STAGES[stage](monkeypatch)
    with pytest.raises(CheckpointWriteError) as info:
        save_checkpoint(_state(2, n=50_000), path)
    monkeypatch.undo()
    assert str(path) in str(info.value) and "left untouched" in str(info.value)
    _assert_holds(path, 1)
    assert _temps(tmp_path) == []


def test_disk_full_message_gives_free_bytes(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    monkeypatch.setattr(torch, "save", _fail_mid_write(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(CheckpointWriteError, match="No space left on device; [0-9,]+ bytes free"):
        save_checkpoint(_state(1), path)
    assert not path.exists() and _temps(tmp_path) == []


def test_failed_directory_fsync_is_reported_and_the_file_is_complete(tmp_path, monkeypatch):
    # After os.replace the old name already points at the new, fsynced file: it must load, and the caller is
    # told that the rename itself may not be durable.
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1), path)
    _fail_on_directory_fsync(monkeypatch)
    with pytest.raises(CheckpointWriteError, match="directory could not be synced") as info:
        save_checkpoint(_state(2), path)
    monkeypatch.undo()
    assert str(path) in str(info.value)
    _assert_holds(path, 2)
    assert _temps(tmp_path) == []


def test_keyboard_interrupt_mid_write_cleans_up_and_propagates(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1), path)
    monkeypatch.setattr(torch, "save", _fail_mid_write(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(2), path)
    monkeypatch.undo()
    _assert_holds(path, 1)
    assert _temps(tmp_path) == []


class _Interrupted(KeyboardInterrupt):
    """What the CLI's signal handler raises on a second signal: a KeyboardInterrupt carrying the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum


def _interrupted_inside_torch(interrupt: KeyboardInterrupt, how: str):
    # torch's stream writer catches the exception its write callback raised and reports a RuntimeError that looks
    # exactly like disk full, with the interrupt only somewhere in the chain.
    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 a partial record")
        if how == "cause":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2") from interrupt
        try:
            raise interrupt
        except KeyboardInterrupt:
            raise RuntimeError("unexpected pos 8540352 vs 8540304")  # noqa: B904 (the chain torch leaves)

    return save


@pytest.mark.parametrize("how", ["cause", "context"])
def test_an_interrupt_inside_the_writer_is_re_raised_not_reported_as_disk_full(tmp_path, monkeypatch, how):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1), path)
    interrupt = _Interrupted(signal.SIGTERM)
    monkeypatch.setattr(torch, "save", _interrupted_inside_torch(interrupt, how))
    with pytest.raises(KeyboardInterrupt) as info:
        save_checkpoint(_state(2), path)
    monkeypatch.undo()
    assert info.value is interrupt and info.value.signum == signal.SIGTERM
    _assert_holds(path, 1)
    assert _temps(tmp_path) == []


def test_failing_hard_link_keeps_last_pt_on_the_previous_checkpoint(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run", keep=3)
    run.prepare()
    run.save(_state(1), step=1, is_best=True)
    monkeypatch.setattr(os, "link", _raise(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(CheckpointWriteError) as info:
        run.save(_state(2), step=2, is_best=True)
    monkeypatch.undo()
    assert str(run.last_path) in str(info.value)
    _assert_holds(run.last_path, 1)
    _assert_holds(run.best_path, 1)
    assert _temps(run.path) == []


def test_failing_link_replace_keeps_last_pt(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run", keep=3)
    run.prepare()
    run.save(_state(1), step=1, is_best=False)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "last.pt":
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointWriteError, match="last.pt"):
        run.save(_state(2), step=2, is_best=False)
    monkeypatch.undo()
    _assert_holds(run.last_path, 1)
    assert _temps(run.path) == []


def test_without_hard_links_last_and_best_are_atomic_copies(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "link", _raise(OSError(errno.EPERM, "Operation not permitted")))
    run = RunDir(tmp_path / "run", keep=1)
    run.prepare()
    run.save(_state(1), step=1, is_best=True)
    numbered = run.save(_state(2), step=2, is_best=False)
    _assert_holds(run.last_path, 2)
    _assert_holds(run.best_path, 1)
    assert not run.last_path.samefile(numbered)
    assert [s for s, _ in run.numbered()] == [2]
    assert _temps(run.path) == []


# ---------------------------------------------------------------- disk full in a real process (W3)

DISK_FULL = r"""
import resource, signal, sys
from pathlib import Path
import torch
from charrnn.checkpoint.files import save_checkpoint
from charrnn.errors import CheckpointWriteError

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
state = {"model": {"w": torch.zeros(1_000_000)}, "model_config": {}, "vocab": ["a", "b"], "step": 2}
try:
    save_checkpoint(state, Path(sys.argv[1]))
except CheckpointWriteError as exc:
    print(exc)
    sys.exit(3)
"""


def test_disk_full_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1, n=1000), path)  # small enough to fit under the limit
    result = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(path)], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert result.returncode == 3, result.stderr
    message = result.stdout.strip()
    assert str(path) in message and "File too large" in message and "bytes free" in message
    _assert_holds(path, 1)
    assert _temps(tmp_path) == []


# ---------------------------------------------------------------- hostile files (S1)


class Payload:
    """Unpickling this calls os.mkdir(target): proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _payload_top_level(path: Path, target: Path) -> None:
    torch.save({**_state(), "format": FORMAT_NAME, "format_version": 1, "extra": Payload(target)}, path)


def _payload_nested(path: Path, target: Path) -> None:
    optimizer = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": Payload(target)}}, "param_groups": []}
    torch.save({**_state(), "format": FORMAT_NAME, "format_version": 1, "optimizer": optimizer}, path)


def _payload_raw_pickle(path: Path, target: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"model": Payload(target)}, f)


def _payload_legacy_torch(path: Path, target: Path) -> None:
    torch.save({"model": Payload(target)}, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("write", [_payload_top_level, _payload_nested, _payload_raw_pickle, _payload_legacy_torch])
def test_malicious_pickle_is_refused_without_running(tmp_path, write):
    path, target = tmp_path / "best.pt", tmp_path / "pwned"
    write(path, target)
    with pytest.raises(CheckpointError, match="could run code; refusing to load it") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not target.exists()
    run = RunDir(tmp_path)
    with pytest.raises(CheckpointError):
        run.load_latest()  # resume refuses it too
    assert not target.exists()


def test_the_payload_is_live(tmp_path):
    # Teeth for the test above: an unsafe load of the same file does run the code.
    path, target = tmp_path / "best.pt", tmp_path / "pwned"
    _payload_top_level(path, target)
    torch.load(path, weights_only=False)
    assert target.is_dir()


# ---------------------------------------------------------------- damaged files (S3, S4)


@pytest.mark.parametrize("keep", ["0", "1", "10%", "50%", "99%", "size-1"])
def test_truncated_checkpoint_is_refused(tmp_path, keep):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1, n=100_000), path)
    size = path.stat().st_size
    fixed = {"0": 0, "1": 1, "size-1": size - 1}
    new_size = fixed[keep] if keep in fixed else size * int(keep[:-1]) // 100
    os.truncate(path, new_size)
    expected = "is empty" if new_size == 0 else "is corrupt"
    with pytest.raises(CheckpointError, match=expected) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "older checkpoint" in str(info.value)


def test_bit_flip_in_a_tensor_is_detected_although_torch_load_accepts_it(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1, n=100_000), path)
    offset, size = _tensor_record_offset(path)
    _flip_byte(path, offset + size // 2)

    silently_wrong = torch.load(path, weights_only=True)  # plain torch.load does not check the CRC32s
    assert not torch.equal(silently_wrong["model"]["w"], torch.full((100_000,), 1.0))
    with pytest.raises(CheckpointError, match=r"is corrupt \(CRC mismatch in record .*data/0\)") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def _foreign(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "model.pt"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.touch()
    elif kind == "text":
        path.write_text("hello, I am not a checkpoint\n")
    elif kind == "other program":
        torch.save({"weight": torch.zeros(3)}, path)
    elif kind == "bare state_dict":
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    elif kind == "other format":
        torch.save({**_state(), "format": "nanogpt", "format_version": 1}, path)
    elif kind == "a list":
        torch.save([torch.zeros(3)], path)
    elif kind == "newer version":
        torch.save({**_state(), "format": FORMAT_NAME, "format_version": 999}, path)
    elif kind == "older version":
        torch.save({**_state(), "format": FORMAT_NAME, "format_version": 0}, path)
    elif kind == "missing keys":
        torch.save({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "model": {}}, path)
    elif kind == "random zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "not torch")
    return path


FOREIGN = {
    "missing": "does not exist",
    "directory": "is a directory, not a checkpoint file",
    "empty": "is empty",
    "text": r"is not a checkpoint \(not a zip archive\)",
    "other program": "was not written by charrnn",
    "bare state_dict": "was not written by charrnn",
    "other format": r"was not written by charrnn \(its format is 'nanogpt'\)",
    "a list": "was not written by charrnn",
    "newer version": r"has format_version 999, newer than this charrnn reads \(1\); upgrade charrnn",
    "older version": r"has format_version 0, older than this charrnn reads \(1\)",
    "missing keys": "lacks model_config, vocab",
    "random zip": r"is a zip archive but not a torch checkpoint \(file in archive is not in a subdirectory",
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_each_unusable_file_gets_its_own_message(tmp_path, kind):
    path = _foreign(tmp_path, kind)
    with pytest.raises(CheckpointError, match=FOREIGN[kind]) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"checkpoint {path} ") and message.endswith(".") and message.count(". ") == 0


@pytest.mark.parametrize("kind", ["character device", "socket"])
def test_a_file_that_is_not_regular_is_refused_before_it_is_opened(tmp_path, kind):
    if kind == "character device":
        path = Path(os.devnull)  # reads as 0 bytes: once called "empty, probably from an interrupted write"
    else:
        path = tmp_path / "s.pt"
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"checkpoint {path} is a {kind}, not a checkpoint file; save the checkpoint to a file and pass its path."
    )


def test_torch_save_stores_records_uncompressed(tmp_path):
    # The zip-bomb limit rests on this: a real checkpoint's records add up to less than the file itself.
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1, n=100_000), path)
    with zipfile.ZipFile(path) as archive:
        records = archive.infolist()
    assert all(r.compress_type == zipfile.ZIP_STORED for r in records)
    assert sum(r.file_size for r in records) <= path.stat().st_size


def test_records_declaring_more_than_the_file_can_hold_are_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1, n=100_000), path)
    size = path.stat().st_size
    monkeypatch.setattr(ck, "EXPANSION_SLACK", 0)
    monkeypatch.setattr(ck, "MAX_EXPANSION", 1)
    verify_checkpoint(path)  # records as torch.save stores them fit in the file: accepted at 1x
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/zeros", bytes(size))  # ~1 KB on disk, `size` bytes once inflated
    size = path.stat().st_size
    read = []
    monkeypatch.setattr(zipfile.ZipFile, "testzip", lambda self: read.append(1))
    with pytest.raises(CheckpointError, match=rf"declares [0-9,]+ bytes of records in a file of {size:,} bytes"):
        verify_checkpoint(path)
    assert read == []  # refused from the zip directory alone, before anything was inflated


def test_require_can_ask_for_resume_keys(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(3), path)
    assert load_checkpoint(path, require=("model", "step"))["step"] == 3
    with pytest.raises(CheckpointError, match="lacks optimizer, rng"):
        load_checkpoint(path, require=("model", "optimizer", "rng"))


# ---------------------------------------------------------------- retention (W6)


def test_retention_keeps_best_last_and_the_newest_three(tmp_path):
    run = RunDir(tmp_path / "run", keep=3)
    run.prepare()
    for step in range(1, 13):
        returned = run.save(_state(step), step=step, is_best=(step == 2))
        assert returned == run.path / f"ckpt-{step:09d}.pt"
    names = sorted(p.name for p in run.path.iterdir())
    assert names == ["best.pt", "ckpt-000000010.pt", "ckpt-000000011.pt", "ckpt-000000012.pt", "last.pt"]
    _assert_holds(run.best_path, 2)
    _assert_holds(run.last_path, 12)
    assert [s for s, _ in run.numbered()] == [10, 11, 12]


def test_numbered_sorts_by_step_not_by_name(tmp_path):
    run = RunDir(tmp_path, keep=2)
    for name in ("ckpt-10000.pt", "ckpt-9000.pt", "ckpt-000000500.pt", "ckpt-x.pt", "last.pt"):
        (tmp_path / name).touch()
    assert [s for s, _ in run.numbered()] == [500, 9000, 10000]
    # Past nine digits the padding no longer keeps names in order: pruning must still remove the oldest.
    for step in (999_999_998, 999_999_999, 1_000_000_000):
        run.save(_state(step % 7), step=step, is_best=False)
    assert [s for s, _ in run.numbered()] == [999_999_999, 1_000_000_000]
    _assert_holds(run.last_path, 1_000_000_000 % 7)


def test_retention_never_deletes_the_new_file_or_later_ones(tmp_path):
    run = RunDir(tmp_path, keep=2)
    for step in (10, 20, 30):
        run.save(_state(step), step=step, is_best=False)
    run.save(_state(15), step=15, is_best=False)  # resumed from an older checkpoint
    assert [s for s, _ in run.numbered()] == [15, 20, 30]
    _assert_holds(run.last_path, 15)


def test_keep_1_keeps_only_the_new_file(tmp_path):
    run = RunDir(tmp_path, keep=1)
    for step in (1, 2, 3):
        run.save(_state(step), step=step, is_best=False)
    assert [s for s, _ in run.numbered()] == [3]
    _assert_holds(run.last_path, 3)


def test_keep_0_writes_only_last_and_best(tmp_path):
    run = RunDir(tmp_path / "run", keep=0)
    run.prepare()
    for step in (1, 2, 3):
        assert run.save(_state(step), step=step, is_best=(step == 2)) == run.last_path
    assert sorted(p.name for p in run.path.iterdir()) == ["best.pt", "last.pt"]
    _assert_holds(run.best_path, 2)
    _assert_holds(run.last_path, 3)


# ---------------------------------------------------------------- resume fallback (S3)


def test_load_latest_prefers_last(tmp_path):
    run = RunDir(tmp_path, keep=3)
    for step in (1, 2):
        run.save(_state(step), step=step, is_best=step == 1)
    state, path, warnings = run.load_latest()
    assert (state["step"], path, warnings) == (2, run.last_path, [])


def test_load_latest_falls_back_past_a_bit_flipped_last_pt(tmp_path):
    run = RunDir(tmp_path, keep=3)
    for step in (1, 2, 3, 4):
        run.save(_state(step, n=10_000), step=step, is_best=False)
    # last.pt is a hard link to ckpt-000000004.pt, so rot in one is rot in both.
    offset, size = _tensor_record_offset(run.last_path)
    _flip_byte(run.last_path, offset + size // 2)
    state, path, warnings = run.load_latest()
    assert state["step"] == 3 and path.name == "ckpt-000000003.pt"
    assert len(warnings) == 1
    assert warnings[0].startswith("last.pt is corrupt (CRC mismatch")
    assert warnings[0].endswith("; resuming from ckpt-000000003.pt")


def test_load_latest_falls_back_past_a_truncated_last_pt(tmp_path):
    run = RunDir(tmp_path, keep=3)
    for step in (1, 2):
        run.save(_state(step), step=step, is_best=False)
    run.last_path.unlink()
    run.last_path.write_bytes(b"PK\x03\x04 cut short")
    state, path, warnings = run.load_latest()
    assert state["step"] == 2 and path.name == "ckpt-000000002.pt"
    assert warnings == [
        "last.pt is corrupt (truncated: the zip directory at its end is missing); resuming from ckpt-000000002.pt"
    ]


def test_load_latest_uses_best_when_nothing_else_loads(tmp_path):
    save_checkpoint(_state(5), tmp_path / "best.pt")
    (tmp_path / "last.pt").write_text("garbage")
    (tmp_path / "ckpt-000000009.pt").touch()
    state, path, warnings = RunDir(tmp_path).load_latest()
    assert state["step"] == 5 and path.name == "best.pt"
    assert warnings[0] == "last.pt is not a checkpoint (not a zip archive); trying the next checkpoint"
    assert warnings[1].startswith("ckpt-000000009.pt is empty") and warnings[1].endswith("resuming from best.pt")


def test_load_latest_errors_when_nothing_is_usable(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found in"):
        RunDir(tmp_path).load_latest()
    (tmp_path / "last.pt").touch()
    with pytest.raises(CheckpointError, match=r"no usable checkpoint in .*\(last.pt is empty"):
        RunDir(tmp_path).load_latest()


# ---------------------------------------------------------------- prepare (W4, W5)


def test_prepare_fails_fast_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")
    run = RunDir(tmp_path / "file" / "run")
    with pytest.raises(CheckpointWriteError, match="cannot create checkpoint directory .*file/run"):
        run.prepare()


def test_prepare_fails_fast_when_the_path_is_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(CheckpointWriteError, match="because it is a file"):
        RunDir(tmp_path / "run").prepare()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_prepare_fails_fast_in_a_read_only_directory(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.path.chmod(0o555)
    try:
        with pytest.raises(CheckpointWriteError, match="cannot write checkpoints to"):
            run.prepare()
    finally:
        run.path.chmod(0o755)


def test_prepare_removes_stale_temp_files_only(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    save_checkpoint(_state(1), run.last_path)
    (run.path / ".ckpt-abc123.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    (run.path / "notes.tmp").write_text("not ours")
    run.prepare()
    assert sorted(p.name for p in run.path.iterdir()) == ["last.pt", "notes.tmp"]
    assert run.load_latest()[0]["step"] == 1


# ---------------------------------------------------------------- find_latest_run


def test_find_latest_run_picks_the_most_recently_updated_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        run.mkdir()
    save_checkpoint(_state(1), a / "best.pt")
    save_checkpoint(_state(2), a / "last.pt")
    save_checkpoint(_state(3), b / "last.pt")  # b has no best.pt
    (tmp_path / "c").mkdir()  # an empty run directory is ignored
    os.utime(a / "best.pt", (1_000, 1_000))
    os.utime(a / "last.pt", (2_000, 2_000))
    os.utime(b / "last.pt", (3_000, 3_000))
    assert find_latest_run(tmp_path) == b / "last.pt"
    os.utime(a / "last.pt", (4_000, 4_000))  # a was trained further: its best.pt is the one to sample from
    assert find_latest_run(tmp_path) == a / "best.pt"


def test_find_latest_run_errors_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = "no checkpoint found under checkpoints/; train one with `charrnn train CORPUS` or pass a checkpoint path."
    with pytest.raises(CheckpointError) as info:
        find_latest_run()
    assert str(info.value) == message
    (tmp_path / "checkpoints" / "run").mkdir(parents=True)
    with pytest.raises(CheckpointError) as info:
        find_latest_run()
    assert str(info.value) == message
