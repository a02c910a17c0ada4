"""Data parallelism under torchrun on CPU (gloo): rank 0 alone writes, ranks train disjoint streams, and a
signal to any one rank stops every rank at the same step with a checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charrnn.checkpoint import load_checkpoint
from tests.conftest import cli, flags, spawn, wait_for_line, word_text

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")


def torchrun(corpus: Path, run_dir: Path, *extra: str) -> list[str]:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "charrnn"]
    size = flags(hidden_size=48, num_layers=2, dropout=0.1, batch_size=4, seq_len=16)
    rest = flags(seed=3, device="cpu", log_every=1)
    return [*launch, "train", str(corpus), "--run-dir", str(run_dir), *size, *rest, *extra]


@pytest.fixture
def setup(tmp_path):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(300, seed=5))
    env = dict(os.environ, CHARRNN_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    return corpus, env


def test_two_ranks_train_and_only_rank_0_writes(setup, tmp_path):
    corpus, env = setup
    proc = subprocess.run(
        torchrun(corpus, tmp_path / "run", "--max-steps", "12", "--eval-every", "6"),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [str(tmp_path / "run" / "best.pt")]  # one path, from rank 0 only
    said = proc.stderr.splitlines()
    for start in ("corpus ", "training ", "best val loss "):  # rank 1 says nothing of its own
        assert sum(line.startswith(start) for line in said) == 1, (start, proc.stderr[-3000:])
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["step"] == 12 and ck["world_size"] == 2
    assert len(ck["rng_ranks"]) == 2 and len(ck["hidden_ranks"]) == 2
    # the ranks carried different streams, so their hidden states differ
    assert not torch.equal(ck["hidden_ranks"][0][0], ck["hidden_ranks"][1][0])
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2  # evaluations at steps 6 and 12, written once

    # resuming the two-rank run in one process re-shards the streams, says so, and carries on
    single = cli(
        ["train", corpus, "--run-dir", tmp_path / "run", "--resume", "--max-steps", "16", "--device", "cpu"],
        tmp_path,
        env,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert "re-sharded" in single.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 16


def _worker_pids(agent_pid: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (read from their environment)."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != agent_pid:
                continue
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e for e in env if e.startswith(b"RANK=")]
        if ranks:
            found[int(ranks[0][5:])] = int(pid)
    return found


def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(setup, tmp_path):
    corpus, env = setup
    proc = spawn(torchrun(corpus, tmp_path / "run", "--max-steps", "100000", "--eval-every", "1000"), env)
    # wait until training is under way (rank 0 logs steps)
    lines = wait_for_line(
        proc, lambda line: bool(re.match(r"step\s+(\d+)\s+epoch", line)) and int(line.split()[1]) >= 5
    )
    workers = _worker_pids(proc.pid)
    assert set(workers) == {0, 1}
    os.kill(workers[1], signal.SIGTERM)  # only rank 1 is told to stop
    _, err = proc.communicate(timeout=120)
    stops = dict(re.findall(r"rank (\d): stopped by SIGTERM at step (\d+)", "".join(lines) + err))
    assert set(stops) == {"0", "1"}, err[-3000:]
    assert stops["0"] == stops["1"]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == int(stops["0"])
