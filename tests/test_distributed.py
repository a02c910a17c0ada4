"""Data parallelism under torchrun on CPU (gloo): rank 0 alone writes, ranks train disjoint streams, a signal
to any one rank stops every rank at the same step with a checkpoint, two "nodes" (two torchrun launchers meeting
at a c10d rendezvous) train as one process with the same global batch would, and auto-sizing runs on rank 0
alone, its choice sent to every rank."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from subprocess import PIPE
from types import SimpleNamespace

import pytest
import torch

from charrnn import runtime
from charrnn.checkpoint.files import load_checkpoint
from charrnn.config.train import TrainConfig
from charrnn.model import CharRNN, ModelConfig
from tests.conftest import charrnn_cmd, cli, flags, spawn, wait_for_line, word_text

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


# ---------------------------------------------------------------------------------------------------
# two nodes on one machine: two torchrun launchers, one process each, meeting at a c10d rendezvous

LAUNCH_TIMEOUT = 120.0  # a rendezvous that never completes fails the test instead of hanging CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_launch(port: int, rdzv_id: str) -> list[str]:
    """One node's torchrun, as a user would start it on each machine. c10d assigns the ranks by rendezvous (it
    ignores --node-rank), and --local-addr keeps the workers' process group on the loopback interface."""
    return [
        *[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"],
        *["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", rdzv_id],
        *["--local-addr", "127.0.0.1", "-m", "charrnn"],
    ]


def _run_nodes(commands: list[list[str]], env: dict) -> list[subprocess.CompletedProcess]:
    """Start every node at once and wait for all; each launcher is in its own session, so that a timeout kills
    its workers with it (by process group) and no rank is left waiting at the rendezvous."""
    procs = [
        subprocess.Popen(cmd, env=env, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True) for cmd in commands
    ]
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    try:
        return [_finish(proc, deadline) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _finish(proc: subprocess.Popen, deadline: float) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"a node ran past {LAUNCH_TIMEOUT:.0f} s; stderr:\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _train_args(corpus: Path, run_dir: Path, batch_size: int) -> list[str]:
    """A tiny deterministic run: no dropout (ranks draw their masks apart), a fixed step schedule."""
    size = flags(hidden_size=32, num_layers=1, dropout=0, batch_size=batch_size, seq_len=16)
    schedule = flags(lr=0.01, warmup_steps=1, max_steps=6, eval_every=100, sample_length=0)
    return ["train", str(corpus), "--run-dir", str(run_dir), *size, *schedule, *flags(seed=3, device="cpu")]


def test_two_nodes_train_as_one_process_with_the_same_global_batch(setup, tmp_path):
    corpus, env = setup
    port, rdzv_id = _free_port(), f"charrnn-{uuid.uuid4().hex[:12]}"
    nodes = _run_nodes([[*_node_launch(port, rdzv_id), *_train_args(corpus, tmp_path / "two", 2)]] * 2, env)
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    best = tmp_path / "two" / "best.pt"
    assert [line for node in nodes for line in node.stdout.splitlines()] == [str(best)]  # rank 0 alone writes
    assert sum(line.startswith("training ") for node in nodes for line in node.stderr.splitlines()) == 1

    # One process with the global batch (4 streams) sees the same text: the 2 nodes' streams are rows 0-1 and
    # 2-3 of the same 4-stream layout (data.StreamBatcher), and DDP averages their gradients, which is the
    # gradient of the mean loss over all 4. Both start from the seed's weights, so they differ only by the
    # order of float sums: measured, the same validation loss and weights 7e-7 apart after 6 steps (Adam divides
    # by the root of the squared gradient, which magnifies a tiny gradient's rounding), against 0.06 moved.
    one = cli(_train_args(corpus, tmp_path / "one", 4), tmp_path, env)
    assert one.returncode == 0, one.stderr[-3000:]
    two_ck, one_ck = load_checkpoint(tmp_path / "two" / "last.pt"), load_checkpoint(tmp_path / "one" / "last.pt")
    assert two_ck["world_size"] == 2 and two_ck["step"] == one_ck["step"] == 6
    assert two_ck["val_loss"] == pytest.approx(one_ck["val_loss"], abs=1e-5)
    for name, weight in one_ck["model"].items():
        assert torch.allclose(two_ck["model"][name], weight, atol=1e-4, rtol=0), name
    moved = max((one_ck["model"][n] - w).abs().max().item() for n, w in _initial_weights(one_ck).items())
    assert moved > 1e-3  # the tolerance is far below what training changed

    # rank 0's checkpoint is an ordinary one: it samples in a single process
    sampled = subprocess.run(
        charrnn_cmd("sample", best, "-n", "20", "--seed", "1"), env=env, capture_output=True, text=True, timeout=120
    )
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert len(sampled.stdout) >= 20


def _initial_weights(ck: dict) -> dict:
    """The weights a run with this checkpoint's model config and seed starts from (Trainer._build_model)."""
    with torch.random.fork_rng():  # leaves this test process's RNG as it was
        torch.manual_seed(ck["train_config"]["seed"])
        return CharRNN(ModelConfig(**ck["model_config"])).state_dict()


# ---------------------------------------------------------------------------------------------------
# auto-sizing under torchrun: rank 0 times, every rank trains its choice


def test_two_ranks_auto_size_under_a_time_budget(setup, tmp_path):
    corpus, env = setup
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "charrnn"]
    args = ["train", str(corpus), "--run-dir", str(tmp_path / "run"), "--max-time", "5s", "--sample-length", "0"]
    proc = subprocess.run(
        [*launch, *args, *flags(batch_size=4, seq_len=16, seed=3, device="cpu")],
        env=env,
        capture_output=True,
        text=True,
        timeout=LAUNCH_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]  # it would hang or fail in DDP if the ranks' sizes differed
    assert "auto-sizing is off" not in proc.stderr
    chose = re.findall(r"auto-sized for .*: (\d+)x(\d+) LSTM, dropout ([\d.]+) .*over 2 processes", proc.stderr)
    assert len(chose) == 1, proc.stderr[-3000:]  # said once, by rank 0
    layers, hidden, dropout = chose[0]
    c = load_checkpoint(tmp_path / "run" / "best.pt")["model_config"]
    assert (c["num_layers"], c["hidden_size"], c["dropout"]) == (int(layers), int(hidden), float(dropout))


def _size_on_rank(rank: int, port: int, out: str) -> None:
    """One rank of a two-process group sizing a model, with the timing replaced by a stub that records its call
    and answers with the rank's own size: a rank that timed would then train a size of its own."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["WORLD_SIZE"] = "2"
    from charrnn.training import job

    timed = []

    def choose(*args, **kwargs) -> dict:
        timed.append(kwargs["world_size"])
        time.sleep(0.5)  # the other rank reaches the broadcast first and must wait there
        return {"hidden_size": 24 + rank, "num_layers": 1, "dropout": 0.0}

    job.choose_model_size = choose  # this process is the test's own, so nothing needs restoring
    dist = runtime.dist_from_env()
    device = runtime.init_distributed(dist, torch.device("cpu"))
    corpus = SimpleNamespace(ids=[0] * 10_000, vocab="abc")
    config = job._new_model_config(job.TrainJob(), corpus, TrainConfig(max_time=30.0), dist, device, job._silent)
    Path(out, f"{rank}.json").write_text(json.dumps({"timed": timed, "hidden_size": config.hidden_size}))
    runtime.close_distributed()


def test_only_rank_0_times_the_candidates_and_every_rank_takes_its_choice(tmp_path):
    port, ctx = _free_port(), multiprocessing.get_context("spawn")
    ranks = [ctx.Process(target=_size_on_rank, args=(r, port, str(tmp_path))) for r in (0, 1)]
    for p in ranks:
        p.start()
    try:
        for p in ranks:
            p.join(LAUNCH_TIMEOUT)
            assert p.exitcode == 0, f"rank exit code {p.exitcode}"
    finally:
        for p in ranks:
            if p.is_alive():
                p.kill()
    said = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert said[0] == {"timed": [2], "hidden_size": 24}  # rank 0 timed, for a job of 2 processes
    assert said[1] == {"timed": [], "hidden_size": 24}  # rank 1 did not, and took rank 0's choice


class _FakeCuda:
    """torch.cuda as a 2-GPU machine would answer, recording set_device; set_device refuses an index-less
    device as the real one does (ValueError: "Expected a torch.device with a specified index")."""

    def __init__(self, current: int = 0) -> None:
        self.current, self.set_to = current, []

    def set_device(self, device) -> None:
        if not isinstance(device, int) and torch.device(device).index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        self.set_to.append(device if isinstance(device, int) else torch.device(device).index)
        self.current = self.set_to[-1]


@pytest.mark.parametrize(("name", "expected"), [("cuda", 1), ("cuda:0", 0), ("CUDA:1", 1)])
def test_device_cuda_selects_an_indexed_current_device(name, expected, monkeypatch):
    fake = _FakeCuda(current=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: fake.current)
    monkeypatch.setattr(torch.cuda, "set_device", fake.set_device)
    assert runtime.select_device(name) == torch.device("cuda", expected)
    assert fake.set_to == [expected]
    with pytest.raises(runtime.UsageError, match="only 2 CUDA device"):
        runtime.select_device("cuda:2")
