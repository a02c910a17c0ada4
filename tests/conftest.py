"""Shared fixtures: every test gets its own encoded-corpus cache, and a tiny trained run is built once."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

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


TINY_TRAIN = [
    "--hidden-size",
    "32",
    "--num-layers",
    "1",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--eval-every",
    "10",
    "--log-every",
    "5",
    "--max-steps",
    "20",
    "--seed",
    "7",
    "--device",
    "cpu",
]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny run trained once through the real CLI in a subprocess; returns its directory."""
    import subprocess

    work = tmp_path_factory.mktemp("trained")
    corpus = work / "words.txt"
    corpus.write_text(word_text(), encoding="utf-8")
    env = dict(os.environ, CHARRNN_CACHE_DIR=str(work / "cache"))
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "--run-dir", str(work / "run"), *TINY_TRAIN],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return work / "run"
