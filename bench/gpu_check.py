"""The one-command GPU check:  .venv/bin/python -m bench --gpu  [--smoke] [--corpus PATH] [--train-seconds 90]

Measures every CUDA path charrnn has, in under 5 minutes on one GPU, and prints one JSON object per measurement
(never asserts a time). In order:

  gpu_batch_search       the plain cuDNN loop's chars/s at B = 50, 100, 200, ... (doubling) until a doubling gains
                         less than 10 %; the saturating batch is the smallest within 10 % of the fastest.
  gpu_train_throughput   at B=50 and at the saturating batch: charrnn's real train() path against the plain cuDNN
                         loop of the same shape, interleaved (plain, charrnn, plain; the better plain kept). The
                         run at the saturating batch lasts --train-seconds (90) and writes the checkpoint below.
  gpu_train_reference    both charrnn figures as multiples of torch-rnn's published 2x512 figure.
  gpu_sample             generate() at 1 and 64 streams with and without the CUDA graph, on the trained model.
  gpu_checkpoint_on_cpu  the GPU-trained checkpoint loads and samples on the CPU; its validation loss scored there
                         (train.evaluate) against the GPU's, `agrees` when within 1e-3.
  gpu_torchrun           `charrnn train` under torchrun with 2 ranks (NCCL) when there are 2+ GPUs; else skipped.

Without CUDA it prints one `skipped` line and exits 0. --smoke runs every part at toy sizes in seconds (on the
CPU when there is no CUDA; the graph and torchrun parts then say they were skipped), so the CPU test suite can run
the whole script (tests/test_bench_gpu.py). A part that fails prints an `error` line; the others still run, and
the exit status is then 1.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.bench_distributed import per_process_rate  # noqa: E402
from bench.common import SHAKESPEARE, machine  # noqa: E402
from charrnn import runtime  # noqa: E402
from charrnn.checkpoint import load_checkpoint, load_model  # noqa: E402
from charrnn.corpus import Corpus, load_corpus  # noqa: E402
from charrnn.data import split  # noqa: E402
from charrnn.errors import CharRNNError  # noqa: E402
from charrnn.job import train  # noqa: E402
from charrnn.model import ModelConfig  # noqa: E402
from charrnn.report import Reporter  # noqa: E402
from charrnn.sample import SampleConfig, generate  # noqa: E402
from charrnn.train import TrainConfig, TrainResult, evaluate  # noqa: E402

# torch-rnn's published 2x512 LSTM training speed on a 2015 GTX Titan X, as issue 13 quotes it; the issue aims
# for 10x that.
TORCH_RNN_CHARS_PER_SEC = 32_000
TARGET_MULTIPLE = 10
SATURATION_GAIN = 1.10  # a doubling of the batch that gains less than this has saturated the GPU
SCORE_TOLERANCE = 1e-3  # nats/char between the CPU's and the GPU's validation loss
SAMPLE_STREAMS = (1, 64)


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one check; SMOKE is the same script at toy sizes."""

    hidden_size: int = 512
    num_layers: int = 2
    seq_len: int = 50
    batch_size: int = 50  # torch-rnn's and charrnn's default batch
    max_batch: int = 8192  # the doubling search stops here (and where the corpus has fewer than 4 batches)
    probe_seconds: float = 1.5  # each point of the batch search
    plain_seconds: float = 8.0  # each of the plain loop's two windows per batch size
    short_seconds: float = 15.0  # charrnn's run at B=50 (--max-time)
    train_seconds: float = 90.0  # charrnn's run at the saturating batch: the checkpoint that is checked
    train_steps: int | None = None  # a step limit instead of the two times above (smoke: runs are never cut short)
    log_every: int = 20  # charrnn's default: its one host sync per window
    warmup_steps: int = 5  # the plain loop's untimed first steps: cudnn.benchmark picks kernels on the first calls
    sample_length: int = 5000  # characters per stream in each timed generate(): set-up and capture amortised
    sample_repeats: int = 3  # interleaved, the best kept
    cpu_sample_length: int = 200
    torchrun_steps: int = 400
    torchrun_log_every: int = 20
    torchrun_timeout: float = 240.0
    threads: int | None = None  # CPU threads (None: torch's default)


SMOKE = Plan(
    hidden_size=32,
    seq_len=16,
    batch_size=4,
    max_batch=16,
    probe_seconds=0.2,
    plain_seconds=0.3,
    train_steps=60,
    log_every=10,
    warmup_steps=2,
    sample_length=40,
    sample_repeats=1,
    cpu_sample_length=40,
    torchrun_steps=40,
    torchrun_log_every=10,
    # Toy sizes gain nothing from a second thread, and on a loaded machine OpenMP's waiting threads slowed their
    # first steps 100x (seconds a step): one thread keeps the smoke run at seconds wherever it runs.
    threads=1,
)


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels, so a clock read after it counts work done, not work queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------
# the plain cuDNN loop


class PlainLoop:
    """The baseline a careful user writes: nn.Embedding -> nn.LSTM -> nn.Linear over B contiguous streams with the
    state carried and detached, AdamW, gradient clipping, fp16 autocast and a GradScaler on CUDA.

    Two choices keep it fast, so the ratio is not flattered: the whole training text lives on the device (no
    per-step copy at all), and AdamW is fused, which takes the GradScaler's found_inf on the device; the default
    foreach AdamW makes GradScaler.step read found_inf on the host, one sync a step."""

    def __init__(self, ids: torch.Tensor, vocab: int, plan: Plan, batch: int, device: torch.device) -> None:
        torch.manual_seed(0)
        H, T = plan.hidden_size, plan.seq_len
        self.emb = nn.Embedding(vocab, H).to(device)
        self.lstm = nn.LSTM(H, H, plan.num_layers, batch_first=True).to(device)
        self.head = nn.Linear(H, vocab).to(device)
        self.params = [*self.emb.parameters(), *self.lstm.parameters(), *self.head.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=2e-3, fused=True)
        self.amp = device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.device, self.vocab, self.T = device, vocab, T
        per_stream = (len(ids) - 1) // batch
        self.streams = ids[: batch * per_stream].view(batch, per_stream)  # (B, N/B) on the device
        self.batches = (per_stream - 1) // T  # batch j reads columns j*T .. j*T+T
        if self.batches < 1:
            raise ValueError(f"the text is too short for one batch of {batch} x {T}")
        self.state: tuple[torch.Tensor, ...] | None = None
        self.j = 0

    def step(self) -> None:
        T = self.T
        chunk = self.streams[:, self.j * T : self.j * T + T + 1]  # (B, T+1)
        self.j = (self.j + 1) % self.batches
        x, y = chunk[:, :-1], chunk[:, 1:]  # (B, T) each
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out, state = self.lstm(self.emb(x), self.state)  # (B, T, H)
            logits = self.head(out)  # (B, T, V)
        loss = F.cross_entropy(logits.float().reshape(-1, self.vocab), y.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(self.params, 1.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.state = tuple(s.detach() for s in state)


def plain_rate(ids: torch.Tensor, vocab: int, plan: Plan, batch: int, seconds: float, device: torch.device) -> float:
    """The plain loop's chars/s over `seconds` after its warm-up steps. The host checks the clock without waiting
    for the device (it may run a few steps ahead); the final sync makes the elapsed time cover every step."""
    loop = PlainLoop(ids, vocab, plan, batch, device)
    try:
        for _ in range(plan.warmup_steps):
            loop.step()
        sync(device)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            loop.step()
            steps += 1
        sync(device)
        return steps * batch * plan.seq_len / (time.perf_counter() - start)
    finally:
        del loop
        release(device)


def release(device: torch.device) -> None:
    """Free one measurement's memory before the next, so a large batch does not crowd out what follows."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------
# charrnn's training path


@dataclass
class CharrnnRun:
    chars_per_sec: float
    timed_steps: int
    result: TrainResult


def charrnn_run(
    corpus: Corpus, plan: Plan, batch: int, seconds: float, device: torch.device, run_dir: Path
) -> CharrnnRun:
    """charrnn's train() (pinned double-buffered batches, fp16 autocast + GradScaler on CUDA, the on-device guard,
    its logging): chars/s over its log windows after the first `log_every` steps (cudnn.benchmark's first calls),
    each window ended by the step's one host sync. No evaluation or preview runs before the final one, which
    falls outside the windows."""
    windows: list[dict] = []
    reporter = Reporter(console=Console(file=io.StringIO(), width=200))  # progress lines formatted, as under a pipe

    def report(event: str, info: dict) -> None:
        reporter(event, info)
        if event == "log":
            windows.append(info)

    cfg = TrainConfig(
        batch_size=batch,
        seq_len=plan.seq_len,
        max_time=None if plan.train_steps else seconds,
        max_steps=plan.train_steps,
        log_every=plan.log_every,
        eval_every=10**9,
        sample_length=0,
        seed=0,
        device=str(device),
        threads=plan.threads,
        amp=True,
    )
    model = ModelConfig(
        vocab_size=len(corpus.vocab), hidden_size=plan.hidden_size, num_layers=plan.num_layers, dropout=0.0
    )
    result = train(corpus, model, cfg, run_dir, report=report)
    rate, steps = window_rate(windows, batch * plan.seq_len, after_step=plan.log_every)
    return CharrnnRun(rate, steps, result)


def window_rate(windows: list[dict], chars_per_step: int, after_step: int) -> tuple[float, int]:
    """(chars/s, steps) over the log windows that start at or after `after_step`: their characters over their
    seconds, each window's seconds recovered from its own chars/s."""
    timed = [(w["step"] - p["step"], w["chars_per_sec"]) for p, w in pairwise(windows) if p["step"] >= after_step]
    timed = [(n, rate) for n, rate in timed if n > 0 and rate > 0]
    if not timed:
        raise RuntimeError(f"no log window after step {after_step} to time: the run was too short")
    steps = sum(n for n, _ in timed)
    return steps * chars_per_step / sum(n * chars_per_step / rate for n, rate in timed), steps


# ---------------------------------------------------------------------------------------------------
# the check, part by part


class GpuCheck:
    """Runs the parts in order; each prints its JSON lines, and the later parts read what the earlier left."""

    def __init__(self, corpus: Corpus, source: str, plan: Plan, device: torch.device, smoke: bool, work: Path):
        self.corpus, self.source, self.plan = corpus, source, plan
        self.device, self.smoke, self.work = device, smoke, work
        train_ids, _ = split(corpus.ids, TrainConfig().val_frac)  # what charrnn trains on, for the plain loop too
        # The whole training text on the device once (int64, as nn.Embedding wants): 8 MB for tiny-shakespeare.
        self.ids = torch.from_numpy(np.asarray(train_ids, dtype=np.int64)).to(device)
        self.vocab = len(corpus.vocab)
        self.failed = 0
        self.started = self.part_started = time.perf_counter()
        self.saturating: int | None = None
        self.rates: dict[str, float] = {}  # charrnn's chars/s by role: "default" (B=50), "saturating"
        self.trained: TrainResult | None = None

    def emit(self, row: dict) -> None:
        common = {"device": str(self.device), "gpus": torch.cuda.device_count(), "smoke": self.smoke}
        # Seconds since the part and the whole check began: where the 5-minute budget went.
        clock = {"part_s": round(time.perf_counter() - self.part_started, 1), "check_s": self.check_seconds()}
        print(json.dumps({**row, **common, **clock, "machine": machine()}), flush=True)

    def check_seconds(self) -> float:
        return round(time.perf_counter() - self.started, 1)

    def part(self, name: str, run: Callable[[], None]) -> None:
        """One part; its failure is printed as an `error` line and the next part still runs."""
        self.part_started = time.perf_counter()
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - one part's failure must not hide the other parts' figures
            traceback.print_exc()
            self.emit({"bench": name, "error": f"{type(exc).__name__}: {exc}"})
            self.failed += 1

    @property
    def model_name(self) -> str:
        return f"LSTM {self.plan.num_layers}x{self.plan.hidden_size}"

    # -- 1. the batch that saturates the GPU ---------------------------------------------------------
    def batch_search(self) -> None:
        plan, points, stopped_by = self.plan, [], "max_batch"
        batch = plan.batch_size
        while batch <= self.max_batch():
            try:
                rate = plain_rate(self.ids, self.vocab, plan, batch, plan.probe_seconds, self.device)
            except torch.cuda.OutOfMemoryError:
                stopped_by = "out_of_memory"  # its memory is freed below, once the exception no longer holds it
                break
            points.append({"batch_size": batch, "chars_per_sec": round(rate)})
            if len(points) > 1 and rate < SATURATION_GAIN * points[-2]["chars_per_sec"]:
                stopped_by = "gain_below_10pct"
                break
            batch *= 2
        release(self.device)
        if not points:
            raise RuntimeError(f"no batch from {plan.batch_size} up could be measured ({stopped_by})")
        fastest = max(p["chars_per_sec"] for p in points)
        self.saturating = min(p["batch_size"] for p in points if p["chars_per_sec"] * SATURATION_GAIN >= fastest)
        self.emit(
            {
                "bench": "gpu_batch_search",
                "model": self.model_name,
                "seq_len": plan.seq_len,
                "loop": "plain",
                "points": points,
                "stopped_by": stopped_by,
                "saturating_batch_size": self.saturating,
            }
        )

    def max_batch(self) -> int:
        """The largest batch that still gives every stream 4 batches of the training text."""
        return min(self.plan.max_batch, (len(self.ids) - 1) // (4 * self.plan.seq_len + 1))

    # -- 2. charrnn against the plain loop -----------------------------------------------------------
    def throughput(self, role: str) -> None:
        plan = self.plan
        if role == "default":
            batch, seconds = plan.batch_size, plan.short_seconds
        else:
            if self.saturating is None:
                raise RuntimeError("the batch search did not finish, so there is no saturating batch to train at")
            batch, seconds = self.saturating, plan.train_seconds
        plain = [plain_rate(self.ids, self.vocab, plan, batch, plan.plain_seconds, self.device)]
        ours = charrnn_run(self.corpus, plan, batch, seconds, self.device, self.work / f"run-{role}")
        release(self.device)
        plain.append(plain_rate(self.ids, self.vocab, plan, batch, plan.plain_seconds, self.device))
        self.rates[role] = ours.chars_per_sec
        if role == "saturating":
            self.trained = ours.result
        self.emit(
            {
                "bench": "gpu_train_throughput",
                "batch_role": role,
                "model": self.model_name,
                "batch_size": batch,
                "seq_len": plan.seq_len,
                "amp": self.device.type == "cuda",
                "tf32": torch.backends.cuda.matmul.allow_tf32,
                "plain_chars_per_sec": round(max(plain)),
                "all_plain": [round(v) for v in plain],
                "charrnn_chars_per_sec": round(ours.chars_per_sec),
                "ratio_vs_plain": round(ours.chars_per_sec / max(plain), 3),
                "charrnn_steps": ours.result.step,
                "charrnn_timed_steps": ours.timed_steps,
                "charrnn_limit": f"{plan.train_steps} steps" if plan.train_steps else f"{seconds:g} s",
            }
        )

    # -- 3. against torch-rnn's published figure -----------------------------------------------------
    def reference(self) -> None:
        if not self.rates:
            raise RuntimeError("no charrnn training throughput was measured")
        row: dict = {
            "bench": "gpu_train_reference",
            "reference": "torch-rnn, 2x512 LSTM, 2015 GTX Titan X (published; issue 13's figure)",
            "reference_chars_per_sec": TORCH_RNN_CHARS_PER_SEC,
            "target_multiple": TARGET_MULTIPLE,
            "model": self.model_name,
        }
        for role, rate in self.rates.items():
            row[f"charrnn_chars_per_sec_{role}"] = round(rate)
            row[f"multiple_{role}"] = round(rate / TORCH_RNN_CHARS_PER_SEC, 2)
        self.emit(row)

    # -- 4. sampling with and without the CUDA graph -------------------------------------------------
    def sampling(self) -> None:
        model, _ = load_model(self.checkpoint(), self.device)
        modes = (True, False) if self.device.type == "cuda" else (False,)
        runs = [(streams, graph) for streams in SAMPLE_STREAMS for graph in modes]
        for streams, graph in runs:  # warm-up: kernels load, cuBLAS makes its handle, the allocator fills
            generate_seconds(model, self.device, streams, 32, graph)
        best = dict.fromkeys(runs, math.inf)
        for _ in range(self.plan.sample_repeats):  # interleaved, so drift hits every row alike
            for streams, graph in runs:
                seconds = generate_seconds(model, self.device, streams, self.plan.sample_length, graph)
                best[streams, graph] = min(best[streams, graph], seconds)
        for streams in SAMPLE_STREAMS:
            chars = streams * self.plan.sample_length
            row: dict = {
                "bench": "gpu_sample",
                "model": self.model_name,
                "num_samples": streams,
                "length": self.plan.sample_length,
                "precision": "fp32",
                "eager_chars_per_sec": round(chars / best[(streams, False)], 1),
            }
            if self.device.type == "cuda":
                row["graph_chars_per_sec"] = round(chars / best[(streams, True)], 1)
                row["ratio_graph_vs_eager"] = round(best[(streams, False)] / best[(streams, True)], 2)
            else:
                row["cuda_graph"] = "skipped: no CUDA device, so there is no graph to time"
            self.emit(row)

    def checkpoint(self) -> Path:
        if self.trained is None:
            raise RuntimeError("the training at the saturating batch did not finish, so there is no checkpoint")
        return self.trained.best_path

    # -- 5. the GPU-trained checkpoint on the CPU ----------------------------------------------------
    def on_cpu(self) -> None:
        path, cpu = self.checkpoint(), torch.device("cpu")
        ckpt = load_checkpoint(path)
        cfg = TrainConfig.from_dict(ckpt["train_config"])
        _, val_ids = split(self.corpus.ids, cfg.val_frac)

        def score(device: torch.device) -> float:
            """train.evaluate exactly as the run's own evaluation called it, in fp32."""
            model, _ = load_model(path, device)
            return evaluate(model, val_ids, cfg.eval_streams, max(cfg.seq_len, 256), device, False, cfg.eval_chars)

        on_device, on_cpu = score(self.device), score(cpu)
        text = cpu_sample(path, self.plan.cpu_sample_length)
        recorded = float(ckpt["val_loss"])  # the run's final evaluation: fp16 autocast on CUDA
        diff = abs(on_cpu - on_device)
        self.emit(
            {
                "bench": "gpu_checkpoint_on_cpu",
                "model": self.model_name,
                "checkpoint_device": ckpt["device"],
                "checkpoint_step": ckpt["step"],
                "val_chars": min(len(val_ids) - 1, cfg.eval_chars or len(val_ids)),
                "val_loss_training": round(recorded, 6),
                "val_loss_device_fp32": round(on_device, 6),
                "val_loss_cpu": round(on_cpu, 6),
                "abs_diff_cpu_vs_device": round(diff, 7),
                # TF32 rounds the GPU's fp32 products (train() turns it on for matmuls, cuDNN has it by default)
                "device_tf32": {
                    "matmul": torch.backends.cuda.matmul.allow_tf32,
                    "cudnn": torch.backends.cudnn.allow_tf32,
                },
                "abs_diff_cpu_vs_training": round(abs(on_cpu - recorded), 7),
                "tolerance": SCORE_TOLERANCE,
                "agrees": diff <= SCORE_TOLERANCE,
                "agrees_with_training": abs(on_cpu - recorded) <= SCORE_TOLERANCE,
                "cpu_sample_chars": len(text),
                "cpu_sample_head": text[:80],
            }
        )

    # -- 6. two ranks under torchrun ------------------------------------------------------------------
    def torchrun(self) -> None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus < 2:
            self.emit({"bench": "gpu_torchrun", "skipped": f"{gpus} CUDA GPU(s): torchrun with 2 ranks needs 2"})
            return
        plan = self.plan
        done = subprocess.run(
            torchrun_command(self.source, plan, self.work / "run-torchrun"),
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=plan.torchrun_timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"torchrun exited {done.returncode}:\n{done.stderr[-3000:]}")
        try:
            rate = per_process_rate(done.stderr, plan.torchrun_log_every)
        except SystemExit as exc:  # its way of saying the log had no window to time
            raise RuntimeError(str(exc)) from None
        single = self.rates.get("default")
        self.emit(
            {
                "bench": "gpu_torchrun",
                "model": self.model_name,
                "processes": 2,
                "backend": "nccl",
                "batch_size_per_process": plan.batch_size,
                "seq_len": plan.seq_len,
                "steps": plan.torchrun_steps,
                "chars_per_sec_per_process": round(rate),
                "chars_per_sec_total": round(2 * rate),
                # against one GPU at the same per-process batch, measured above through train()
                "speedup_vs_one_gpu": round(2 * rate / single, 3) if single else None,
            }
        )


def generate_seconds(model, device: torch.device, streams: int, length: int, graph: bool) -> float:
    """Seconds for generate() to write `length` ids per stream, set-up and graph capture included (what a user
    waits for). Each block it yields is already on the host, so the last one waited for the device."""
    cfg = SampleConfig(temperature=0.8, length=length, num_samples=streams, seed=0)
    sync(device)
    start = time.perf_counter()
    for _ in generate(model, [0], cfg, device, cuda_graph=graph):
        pass
    return time.perf_counter() - start


def cpu_sample(path: Path, length: int) -> str:
    """`length` characters sampled on the CPU from the checkpoint, as `charrnn sample --device cpu` would."""
    model, bundle = load_model(path, "cpu")
    vocab = bundle.vocab
    prime = [int(i) for i in vocab.encode(vocab.start())]
    cfg = SampleConfig(length=length, seed=0)
    return "".join(vocab.decode(block[0].tolist()) for block in generate(model, prime, cfg, torch.device("cpu")))


def torchrun_command(source: str, plan: Plan, run_dir: Path) -> list[str]:
    """`charrnn train` on 2 GPUs: torchrun gives each rank its GPU (cuda:LOCAL_RANK) and charrnn joins NCCL."""
    options = {
        "run-dir": run_dir,
        "hidden-size": plan.hidden_size,
        "num-layers": plan.num_layers,
        "dropout": 0,
        "batch-size": plan.batch_size,
        "seq-len": plan.seq_len,
        "max-steps": plan.torchrun_steps,
        "log-every": plan.torchrun_log_every,
        "eval-every": 10**9,
        "sample-length": 0,
        "seed": 0,
        "device": "cuda",
    }
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "charrnn"]
    return [*launch, "train", source, *[a for k, v in options.items() for a in (f"--{k}", str(v))]]


# ---------------------------------------------------------------------------------------------------
# the command


def skip(reason: str, advice: str = "") -> int:
    """One JSON line and one sentence on stderr saying why nothing was measured; exit status 0."""
    print(json.dumps({"bench": "gpu_check", "skipped": reason, "machine": machine()}), flush=True)
    print(f"gpu check skipped: {reason}.{' ' + advice if advice else ''}", file=sys.stderr)
    return 0


def pick_device(smoke: bool) -> torch.device | None:
    """CUDA when present; without it the CPU in smoke mode, else None (nothing to check)."""
    if torch.cuda.is_available():
        return runtime.select_device("cuda")
    return torch.device("cpu") if smoke else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="toy sizes, a few seconds a part, the CPU without CUDA")
    ap.add_argument("--corpus", help=f"a text file or a named corpus (default: {SHAKESPEARE})")
    ap.add_argument("--train-seconds", type=float, help="charrnn's run at the saturating batch (default 90)")
    args = ap.parse_args(argv)
    device = pick_device(args.smoke)
    if device is None:
        return skip(
            f"no CUDA GPU is present (torch {torch.__version__}, built with CUDA {torch.version.cuda})",
            "Run it on a machine with one; `python -m bench --gpu --smoke` runs it on the CPU at toy sizes.",
        )
    source = args.corpus or str(SHAKESPEARE)
    if args.corpus is None and not SHAKESPEARE.exists():
        return skip(f"the corpus {SHAKESPEARE} is absent", "Pass --corpus PATH (or a named corpus such as pydocs).")
    try:
        corpus = load_corpus([source])
    except CharRNNError as exc:
        print(f"gpu check: cannot read the corpus: {exc}", file=sys.stderr)
        return 2
    plan = SMOKE if args.smoke else Plan()
    if args.train_seconds is not None:
        plan = replace(plan, train_seconds=args.train_seconds)
    runtime.configure_backends(device)  # TF32 and cudnn.benchmark for the plain loop too, as train() sets them
    runtime.set_threads(plan.threads)
    with tempfile.TemporaryDirectory(prefix="charrnn-gpu-check-") as work:
        check = GpuCheck(corpus, source, plan, device, args.smoke, Path(work))
        check.part("gpu_batch_search", check.batch_search)
        check.part("gpu_train_throughput", lambda: check.throughput("default"))
        check.part("gpu_train_throughput", lambda: check.throughput("saturating"))
        check.part("gpu_train_reference", check.reference)
        check.part("gpu_sample", check.sampling)
        check.part("gpu_checkpoint_on_cpu", check.on_cpu)
        check.part("gpu_torchrun", check.torchrun)
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
