"""Shared fixtures: every test gets its own encoded-corpus cache, and a tiny trained run is built once."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from charrnn.config.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "corpora" / "tinyshakespeare.txt"


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: without it they skip, with the reason, instead of failing."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def wait_for_line(proc, match, timeout: float = 120.0) -> list[str]:
    """Lines of `proc`'s stderr up to and including the first one for which match(line) is true. A process that
    hangs without printing fails the test after `timeout` s: select() on the pipe, never a blocking readline."""
    import select
    import time

    fd, buf, lines = proc.stderr.fileno(), b"", []
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            lines.append(raw.decode("utf-8", "replace") + "\n")
            if match(lines[-1]):
                return lines
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            proc.kill()
            raise AssertionError(f"no awaited line in {timeout:.0f} s; stderr so far:\n{''.join(lines)}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the process ended before the awaited line; stderr:\n{''.join(lines)}")
            buf += chunk


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def word_text(n_lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while every cat sat on its mat".split()
    return "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(n_lines)) + "\n"


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(word_text(), encoding="utf-8")
    return path


def flags(**options) -> list[str]:
    """Command-line flags from keywords, in their order: flags(max_steps=20, device="cpu") is
    ["--max-steps", "20", "--device", "cpu"]."""
    return [arg for name, value in options.items() for arg in (f"--{name.replace('_', '-')}", str(value))]


TINY_TRAIN = flags(
    hidden_size=32,
    num_layers=1,
    batch_size=4,
    seq_len=16,
    eval_every=10,
    log_every=5,
    max_steps=20,
    seed=7,
    device="cpu",
)


def tiny_train_config(**kw) -> TrainConfig:
    """A TrainConfig for a tiny run on the CPU (4 streams of 16 characters, 5 warm-up steps); kw sets the rest."""
    from charrnn.config.train import TrainConfig

    return TrainConfig(**{"seq_len": 16, "batch_size": 4, "warmup_steps": 5, "device": "cpu", "eval_streams": 2, **kw})


def charrnn_cmd(*args) -> list[str]:
    """The command line that runs `charrnn ARGS` in a subprocess."""
    return [sys.executable, "-m", "charrnn", *map(str, args)]


def cli_env(work: Path) -> dict:
    """The environment of a charrnn subprocess working in `work`: its own corpus cache, this checkout importable."""
    return dict(os.environ, CHARRNN_CACHE_DIR=str(Path(work) / "cache"), PYTHONPATH=str(REPO))


def cli(args, cwd, env=None, **kw) -> subprocess.CompletedProcess:
    """`charrnn ARGS` run to its end in a subprocess, both streams captured as text."""
    return subprocess.run(
        charrnn_cmd(*args),
        cwd=cwd,
        env=env or cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=kw.pop("timeout", 120),
        **kw,
    )


def spawn(cmd: list[str], env: dict, cwd=None) -> subprocess.Popen:
    """`cmd` started with stdout and stderr piped as text, for a test that signals it or reads it with
    wait_for_line while it runs."""
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli_start(args, cwd, env=None) -> subprocess.Popen:
    """`charrnn ARGS` started in a subprocess, as cli() runs it, without waiting for it."""
    return spawn(charrnn_cmd(*args), env or cli_env(cwd), cwd)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny run trained once through the real CLI in a subprocess; returns its directory."""
    work = tmp_path_factory.mktemp("trained")
    corpus = work / "words.txt"
    corpus.write_text(word_text(), encoding="utf-8")
    proc = cli(["train", corpus, "--run-dir", work / "run", *TINY_TRAIN], cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work / "run"
