"""The one-command GPU check:  .venv/bin/python -m bench --gpu  [--smoke] [--corpus PATH] [--train-seconds 90]

Measures every CUDA path charrnn has, in under 5 minutes on one GPU, and prints one JSON object per measurement
(never asserts a time). The whole check keeps to a 290 s budget counted from the script's start (an estimated
185-200 s on one GPU with the default 90 s training run, not yet measured): each part first checks the time it
needs against the time left and prints `"skipped": "out of time: ..."` instead of overrunning. In order:

  gpu_batch_search       the plain cuDNN loop's chars/s at B = 50, 100, 200, ... (doubling) until a doubling gains
                         less than 10 %; the saturating batch is the smallest within 10 % of the fastest. B never
                         passes charrnn's logits limit (B*T*V <= train.MAX_LOGITS). An error after the first point
                         ends the search with what it measured; with no point measured, the training below falls
                         back to B=50.
  gpu_train_throughput   at B=50 and at the saturating batch: charrnn's real train() path against the plain cuDNN
                         loop of the same shape, interleaved (plain, charrnn, plain; the better plain kept). The
                         run at the saturating batch lasts --train-seconds (90) and writes the checkpoint below;
                         the B=50 run's checkpoint is kept as the fallback when that run fails or is skipped.
  gpu_train_reference    both charrnn figures as multiples of torch-rnn's published 2x512 figure.
  gpu_sample             generate() at 1 and 64 streams with and without the CUDA graph, on the trained model,
                         with whether the graph captured and the capture's seconds.
  gpu_checkpoint_on_cpu  the GPU-trained checkpoint loads and samples on the CPU; its validation loss scored there
                         (train.evaluate) against the GPU's in fp32 with TF32 off, `agrees` when within 1e-3.
  gpu_torchrun           `charrnn train` under torchrun with 2 ranks (NCCL) when there are 2+ GPUs; else skipped.
                         Its timeout is bounded by the budget's time left (20 s at least); past it the whole
                         process group is stopped.

Without CUDA it prints one `skipped` line and exits 0; with CUDA but without the corpus it says so in one sentence
and exits 2. --smoke runs every part at toy sizes in seconds (on the CPU when there is no CUDA; the graph and
torchrun parts then say they were skipped), so the CPU test suite can run the whole script
(tests/test_bench_gpu.py). A part that fails prints an `error` line; the others still run, and the exit status is
then 1. A part skipped for time does not change the exit status.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path

SCRIPT_STARTED = time.perf_counter()  # the budget counts from here, so torch's import (seconds) counts too

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.bench_distributed import per_process_rate  # noqa: E402
from bench.common import SHAKESPEARE, drain_seconds, machine  # noqa: E402
from charrnn import runtime  # noqa: E402
from charrnn.checkpoint.files import load_checkpoint, load_model  # noqa: E402
from charrnn.config.train import TrainConfig  # noqa: E402
from charrnn.errors import CharRNNError  # noqa: E402
from charrnn.generation.sample import SampleConfig, _Loop, generate  # noqa: E402
from charrnn.generation.stepper import Stepper  # noqa: E402
from charrnn.model import ModelConfig  # noqa: E402
from charrnn.text.corpus import Corpus, load_corpus  # noqa: E402
from charrnn.text.data import split  # noqa: E402
from charrnn.training.evaluation import evaluate  # noqa: E402
from charrnn.training.job import train  # noqa: E402
from charrnn.training.progress import Reporter  # noqa: E402
from charrnn.training.setup import MAX_LOGITS, TrainResult  # noqa: E402

# torch-rnn's published 2x512 LSTM training speed on a 2015 GTX Titan X, as issue 13 quotes it; the issue aims
# for 10x that.
TORCH_RNN_CHARS_PER_SEC = 32_000
TARGET_MULTIPLE = 10
SATURATION_GAIN = 1.10  # a doubling of the batch that gains less than this has saturated the GPU
SCORE_TOLERANCE = 1e-3  # nats/char between the CPU's and the GPU's validation loss
SAMPLE_STREAMS = (1, 64)
BUDGET_SECONDS = 290.0  # the whole check, from the script's start: under 5 minutes with a margin
TORCHRUN_MIN_SECONDS = 20.0  # torchrun's timeout is the budget's time left, but never less than this
STOP_GRACE_SECONDS = 5.0  # after SIGTERM, torchrun's process group gets this long before SIGKILL


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one check; SMOKE is the same script at toy sizes."""

    hidden_size: int = 512
    num_layers: int = 2
    seq_len: int = 50
    batch_size: int = 50  # torch-rnn's and charrnn's default batch
    max_batch: int = 8192  # the search stops here, or where the corpus has fewer than 4 batches or at MAX_LOGITS
    probe_seconds: float = 1.5  # each point of the batch search
    search_seconds: float = 40.0  # the batch search stops doubling after this long (expected: under 20 s)
    plain_seconds: float = 8.0  # each of the plain loop's two windows per batch size
    short_seconds: float = 15.0  # charrnn's run at B=50 (--max-time)
    train_seconds: float = 90.0  # charrnn's run at the saturating batch: the checkpoint that is checked
    train_steps: int | None = None  # a step limit instead of the two times above (smoke: runs are never cut short)
    # A charrnn run's seconds beyond its --max-time, for the time-left checks: process set-up, the corpus split,
    # pinned buffers (its final evaluation and checkpoint fall inside --max-time). Smoke runs are step-limited,
    # but their checks still count the times above, so `--smoke --train-seconds 400` skips the saturating run.
    run_overhead_seconds: float = 10.0
    log_every: int = 20  # charrnn's default: its one host sync per window
    # The plain loop's untimed first steps: the first calls load the kernels, create the cuBLAS and cuDNN handles
    # and fill the caching allocator. (cudnn.benchmark autotunes convolutions only; the LSTM's kernels are not
    # benchmarked.)
    warmup_steps: int = 5
    sample_length: int = 5000  # characters per stream in each timed generate(): set-up and capture amortised
    sample_repeats: int = 3  # interleaved, the best kept; fewer when the budget runs short
    sample_min_seconds: float = 15.0  # the sampling part's warm-up, captures and one round, for its time check
    cpu_sample_length: int = 200
    cpu_check_seconds: float = 20.0  # the CPU part: the validation text scored on the GPU and the CPU, a sample
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
    search_seconds=20.0,
    plain_seconds=0.3,
    train_steps=60,
    log_every=10,
    warmup_steps=2,
    sample_length=40,
    sample_repeats=1,
    sample_min_seconds=5.0,
    cpu_sample_length=40,
    cpu_check_seconds=5.0,
    torchrun_steps=40,
    torchrun_log_every=10,
    # Toy sizes gain nothing from a second thread, and on a loaded machine OpenMP's waiting threads slowed their
    # first steps 100x (seconds a step): one thread keeps the smoke run at seconds wherever it runs.
    threads=1,
)


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
        runtime.synchronize(device)
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            loop.step()
            steps += 1
        runtime.synchronize(device)
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


def charrnn_run(
    corpus: Corpus, plan: Plan, batch: int, seconds: float, device: torch.device, run_dir: Path
) -> tuple[TrainResult, list[dict]]:
    """charrnn's train() (pinned double-buffered batches, fp16 autocast + GradScaler on CUDA, the on-device guard,
    its logging): its result and its log windows, which window_rate() times after the first `log_every` steps
    (the first calls' kernel loading and allocation). No evaluation or preview runs before the final one, which
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
    return train(corpus, model, cfg, run_dir, report=report), windows


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


class OutOfTime(Exception):
    """A part that would overrun the budget: it prints `"skipped": "out of time: ..."` instead of running."""


class GpuCheck:
    """Runs the parts in order; each prints its JSON lines, and the later parts read what the earlier left."""

    def __init__(
        self,
        corpus: Corpus,
        source: str,
        plan: Plan,
        device: torch.device,
        smoke: bool,
        work: Path,
        budget: float = BUDGET_SECONDS,
    ):
        self.corpus, self.source, self.plan = corpus, source, plan
        self.device, self.smoke, self.work, self.budget = device, smoke, work, budget
        train_ids, _ = split(corpus.ids, TrainConfig().val_frac)  # what charrnn trains on, for the plain loop too
        # The whole training text on the device once (int64, as nn.Embedding wants): 8 MB for tiny-shakespeare.
        self.ids = torch.from_numpy(np.asarray(train_ids, dtype=np.int64)).to(device)
        self.vocab = len(corpus.vocab)
        self.failed = 0
        self.out_of_time: list[str] = []  # the parts skipped for time
        self.part_started = time.perf_counter()
        self.saturating: int | None = None
        self.rates: dict[str, float] = {}  # charrnn's chars/s by role: "default" (B=50), "saturating"
        # The checkpoint the later parts read: the B=50 run's, replaced by the saturating run's when that finishes.
        self.trained: TrainResult | None = None
        self.trained_role: str | None = None

    def emit(self, row: dict) -> None:
        common = {"device": str(self.device), "gpus": torch.cuda.device_count(), "smoke": self.smoke}
        # Seconds since the part and the whole check began: where the 5-minute budget went.
        clock = {"part_s": round(time.perf_counter() - self.part_started, 1), "check_s": self.check_seconds()}
        print(json.dumps({**row, **common, **clock, "machine": machine()}), flush=True)

    def check_seconds(self) -> float:
        return round(self.elapsed(), 1)

    def elapsed(self) -> float:
        """Seconds since the script started."""
        return time.perf_counter() - SCRIPT_STARTED

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.budget - self.elapsed()

    def need(self, seconds: float, what: str) -> None:
        """Raise OutOfTime when `what`, expected to take `seconds`, would end past the budget."""
        left = self.left()
        if seconds > left:
            raise OutOfTime(
                f"out of time: {what} needs about {seconds:.0f} s and {max(0.0, left):.0f} s are left of the "
                f"{self.budget:g} s budget"
            )

    def part(self, name: str, run: Callable[[], None]) -> None:
        """One part; its failure is printed as an `error` line and the next part still runs."""
        self.part_started = time.perf_counter()
        try:
            run()
        except OutOfTime as exc:
            self.out_of_time.append(name)
            self.emit({"bench": name, "skipped": str(exc)})
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
        self.need(plan.probe_seconds + 5.0, "the batch search")
        started = time.perf_counter()
        batch, largest = plan.batch_size, self.max_batch()
        while batch <= largest:
            if points and time.perf_counter() - started > plan.search_seconds:
                stopped_by = "out_of_time"  # its own allowance spent: the training runs after it need the budget
                break
            try:
                rate = plain_rate(self.ids, self.vocab, plan, batch, plan.probe_seconds, self.device)
            except torch.cuda.OutOfMemoryError:
                stopped_by = "out_of_memory"  # its memory is freed below, once the exception no longer holds it
                break
            except RuntimeError as exc:  # a cuDNN or CUDA error at a large batch ends the search, not the check
                if not points:
                    raise
                traceback.print_exc()
                stopped_by = f"error: {exc}"[:200]
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
                "max_batch_size": largest,
                "saturating_batch_size": self.saturating,
            }
        )

    def max_batch(self) -> int:
        """The largest batch that still gives every stream 4 batches of the training text and whose (B, T, V)
        logits charrnn's train() accepts (B*T*V <= MAX_LOGITS)."""
        plan = self.plan
        by_text = (len(self.ids) - 1) // (4 * plan.seq_len + 1)
        return min(plan.max_batch, by_text, MAX_LOGITS // (plan.seq_len * self.vocab))

    # -- 2. charrnn against the plain loop -----------------------------------------------------------
    def throughput(self, role: str) -> None:
        plan, fallback = self.plan, None
        if role == "default":
            batch, seconds = plan.batch_size, plan.short_seconds
        elif self.saturating is not None:
            batch, seconds = self.saturating, plan.train_seconds
        else:
            batch, seconds = plan.batch_size, plan.train_seconds
            fallback = f"the batch search found no saturating batch, so this run trains at B={batch}"
        self.need(2 * plan.plain_seconds + seconds + plan.run_overhead_seconds, f"the {role} batch's run")
        plain = [plain_rate(self.ids, self.vocab, plan, batch, plan.plain_seconds, self.device)]
        result, windows = charrnn_run(self.corpus, plan, batch, seconds, self.device, self.work / f"run-{role}")
        # The B=50 run's checkpoint stays as the later parts' fallback until the saturating run replaces it.
        self.trained, self.trained_role = result, role
        release(self.device)
        rate, timed_steps = window_rate(windows, batch * plan.seq_len, after_step=plan.log_every)
        self.rates[role] = rate
        plain.append(plain_rate(self.ids, self.vocab, plan, batch, plan.plain_seconds, self.device))
        row = {
            "bench": "gpu_train_throughput",
            "batch_role": role,
            "model": self.model_name,
            "batch_size": batch,
            "seq_len": plan.seq_len,
            "amp": self.device.type == "cuda",
            "tf32": torch.backends.cuda.matmul.allow_tf32,
            "plain_chars_per_sec": round(max(plain)),
            "all_plain": [round(v) for v in plain],
            "charrnn_chars_per_sec": round(rate),
            "ratio_vs_plain": round(rate / max(plain), 3),
            "charrnn_steps": result.step,
            "charrnn_timed_steps": timed_steps,
            "charrnn_limit": f"{plan.train_steps} steps" if plan.train_steps else f"{seconds:g} s",
        }
        if fallback:
            row["batch_fallback"] = fallback
        self.emit(row)

    # -- 3. against torch-rnn's published figure -----------------------------------------------------
    def reference(self) -> None:
        if not self.rates:
            if "gpu_train_throughput" in self.out_of_time:
                raise OutOfTime("out of time: no charrnn training throughput was measured")
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
        plan = self.plan
        self.need(plan.sample_min_seconds, "sampling")
        path, trained_role = self.checkpoint()
        model, _ = load_model(path, self.device)
        cuda = self.device.type == "cuda"
        modes = (True, False) if cuda else (False,)
        runs = [(streams, graph) for streams in SAMPLE_STREAMS for graph in modes]
        for streams, graph in runs:  # warm-up: kernels load, cuBLAS makes its handle, the allocator fills
            generate_seconds(model, self.device, streams, 32, graph)
        captures = {streams: capture(model, self.device, streams) for streams in SAMPLE_STREAMS} if cuda else {}
        best = dict.fromkeys(runs, math.inf)
        repeats = 0
        while repeats < plan.sample_repeats:  # interleaved, so drift hits every row alike
            round_started = time.perf_counter()
            for streams, graph in runs:
                seconds = generate_seconds(model, self.device, streams, plan.sample_length, graph)
                best[streams, graph] = min(best[streams, graph], seconds)
            repeats += 1
            # Another round only while it would leave the CPU part its time.
            if self.left() < time.perf_counter() - round_started + plan.cpu_check_seconds:
                break
        for streams in SAMPLE_STREAMS:
            chars = streams * plan.sample_length
            row: dict = {
                "bench": "gpu_sample",
                "model": self.model_name,
                "checkpoint_run": trained_role,
                "num_samples": streams,
                "length": plan.sample_length,
                "precision": "fp32",
                "repeats": repeats,
                "eager_chars_per_sec": round(chars / best[(streams, False)], 1),
            }
            if cuda:
                captured, capture_s = captures[streams]
                row["graph_chars_per_sec"] = round(chars / best[(streams, True)], 1)
                row["ratio_graph_vs_eager"] = round(best[(streams, False)] / best[(streams, True)], 2)
                # generate() steps eagerly, silently, when the capture fails: then the graph figure is eager too.
                row["graph_captured"] = captured
                row["capture_s"] = round(capture_s, 4)
                row["tf32"] = torch.backends.cuda.matmul.allow_tf32  # the sampler's fp32 products
            else:
                row["cuda_graph"] = "skipped: no CUDA device, so there is no graph to time"
            self.emit(row)

    def checkpoint(self) -> tuple[Path, str]:
        """The checkpoint the later parts read, and which run wrote it ("saturating", else the "default" B=50)."""
        if self.trained is None or self.trained_role is None:
            if "gpu_train_throughput" in self.out_of_time:
                raise OutOfTime("out of time: no training run finished, so there is no checkpoint")
            raise RuntimeError("no training run finished, so there is no checkpoint")
        return self.trained.best_path, self.trained_role

    # -- 5. the GPU-trained checkpoint on the CPU ----------------------------------------------------
    def on_cpu(self) -> None:
        self.need(self.plan.cpu_check_seconds, "the CPU check")
        (path, trained_role), cpu = self.checkpoint(), torch.device("cpu")
        ckpt = load_checkpoint(path)
        cfg = TrainConfig.from_dict(ckpt["train_config"])
        _, val_ids = split(self.corpus.ids, cfg.val_frac)

        def score(device: torch.device) -> float:
            """train.evaluate exactly as the run's own evaluation called it, in fp32."""
            model, _ = load_model(path, device)
            return evaluate(model, val_ids, cfg.eval_streams, max(cfg.seq_len, 256), device, False, cfg.eval_chars)

        with tf32_off():  # fp32 against fp32: TF32 would round the GPU's products to a 10-bit mantissa
            on_device = score(self.device)
            scored_tf32 = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
        on_cpu = score(cpu)
        text = cpu_sample(path, self.plan.cpu_sample_length)
        recorded = float(ckpt["val_loss"])  # the run's final evaluation: fp16 autocast on CUDA
        diff = abs(on_cpu - on_device)
        self.emit(
            {
                "bench": "gpu_checkpoint_on_cpu",
                "model": self.model_name,
                "checkpoint_run": trained_role,
                "checkpoint_device": ckpt["device"],
                "checkpoint_step": ckpt["step"],
                "val_chars": min(len(val_ids) - 1, cfg.eval_chars or len(val_ids)),
                "val_loss_training": round(recorded, 6),
                "val_loss_device_fp32": round(on_device, 6),
                "val_loss_cpu": round(on_cpu, 6),
                "abs_diff_cpu_vs_device": round(diff, 7),
                # TF32 while the device scored: off (train() turns it on for matmuls, cuDNN has it by default)
                "device_tf32": scored_tf32,
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
        reserved_mb = self.free_device_memory()
        left = max(TORCHRUN_MIN_SECONDS, self.budget - self.elapsed())
        env = {**os.environ, "PYTHONPATH": str(REPO), "NCCL_DEBUG": "WARN"}
        cmd = torchrun_command(self.source, plan, self.work / "run-torchrun")
        returncode, stderr = run_group(cmd, env, min(plan.torchrun_timeout, left))
        if returncode != 0:
            raise RuntimeError(f"torchrun exited {returncode}:\n{stderr[-3000:]}")
        try:
            rate = per_process_rate(stderr, plan.torchrun_log_every)
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
                "rank_sync_per_step": (
                    "charrnn agrees on stopping across ranks every step (runtime.agree_to_stop: an all-reduce the "
                    "host reads back), one host sync a step that the one-GPU run does not have; "
                    "speedup_vs_one_gpu includes it"
                ),
                "check_gpu_memory_reserved_mb": reserved_mb,  # this process's, on GPU 0, while the ranks ran
            }
        )

    def free_device_memory(self) -> int:
        """Give the GPU back to torchrun's ranks (rank 0 shares GPU 0 with this process): the plain loops, charrnn's
        models and optimizers and the sampling model are gone with their parts; drop the training text, collect
        what is left and empty the allocator's cache. Returns the MB this process still reserves."""
        self.ids = torch.empty(0, dtype=torch.int64)  # nothing after torchrun reads it
        release(self.device)
        return torch.cuda.memory_reserved(self.device) >> 20 if self.device.type == "cuda" else 0


@contextmanager
def tf32_off() -> Iterator[None]:
    """TF32 off for CUDA matmuls and cuDNN, restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def generate_seconds(model, device: torch.device, streams: int, length: int, graph: bool) -> float:
    """Seconds for generate() to write `length` ids per stream, set-up and graph capture included (what a user
    waits for). Each block it yields is already on the host, so the last one waited for the device."""
    cfg = SampleConfig(temperature=0.8, length=length, num_samples=streams, seed=0)
    runtime.synchronize(device)
    return drain_seconds(generate(model, [0], cfg, device, cuda_graph=graph))


def capture(model, device: torch.device, streams: int) -> tuple[bool, float]:
    """Whether generate()'s CUDA graph captures at `streams` streams, and the capture's seconds (its eager warm-up
    steps and the capture). generate() falls back to eager stepping without a word when the capture fails, so
    this runs the sampler's own capture, _Loop._capture, from outside, in inference mode as generate() does."""
    loop = _Loop(Stepper(model, streams, device), SampleConfig(num_samples=streams), device, True)
    runtime.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        graph = loop._capture()  # ends with a torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    captured = graph is not None
    del graph, loop
    release(device)
    return captured, seconds


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


def run_group(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run `cmd` in its own session and process group; (exit status, stderr). Past `timeout` the whole group (torchrun
    and its ranks) gets SIGTERM, STOP_GRACE_SECONDS to exit, then SIGKILL, and RuntimeError carries the end of its
    stderr."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stderr = stop_group(proc)
        raise RuntimeError(
            f"{Path(cmd[0]).name} {' '.join(cmd[1:3])} ... ran past its {timeout:.0f} s and was stopped; the end of "
            f"its stderr:\n{stderr[-3000:]}"
        ) from None
    except BaseException:  # Ctrl-C reaches this process only: in its own session torchrun's ranks would run on
        stop_group(proc)
        raise
    return proc.returncode, stderr


def stop_group(proc: subprocess.Popen) -> str:
    """SIGTERM to `proc`'s process group, STOP_GRACE_SECONDS, then SIGKILL to what is left of it; its stderr."""
    signal_group(proc.pid, signal.SIGTERM)
    stderr = ""
    try:
        _, stderr = proc.communicate(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc.pid, signal.SIGKILL)  # also any rank that outlived torchrun itself
    try:
        _, rest = proc.communicate(timeout=STOP_GRACE_SECONDS)
        stderr = rest or stderr
    except subprocess.TimeoutExpired:  # a process outside the group holds the pipe: give up on the rest
        proc.kill()
    return stderr or ""


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the group has already exited
        pass


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
    ap.add_argument(
        "--train-seconds",
        type=float,
        default=Plan.train_seconds,
        help=f"charrnn's run at the saturating batch (default {Plan.train_seconds:g}; the whole check keeps to a "
        f"{BUDGET_SECONDS:g} s budget, an estimated 185-200 s with the default, and a part that would overrun it "
        "is skipped)",
    )
    args = ap.parse_args(argv)
    if not args.train_seconds > 0:
        ap.error(f"--train-seconds must be above 0, not {args.train_seconds:g}")
    device = pick_device(args.smoke)
    if device is None:
        return skip(
            f"no CUDA GPU is present (torch {torch.__version__}, built with CUDA {torch.version.cuda})",
            "Run it on a machine with one; `python -m bench --gpu --smoke` runs it on the CPU at toy sizes.",
        )
    source = args.corpus or str(SHAKESPEARE)
    if args.corpus is None and not SHAKESPEARE.exists():
        if device.type == "cuda":  # a GPU lent for this check and nothing measured on it: a failure, not a skip
            print(
                f"gpu check: the corpus {SHAKESPEARE} is absent, so nothing was measured on the GPU; pass --corpus "
                "PATH (or a named corpus such as pydocs).",
                file=sys.stderr,
            )
            return 2
        return skip(f"the corpus {SHAKESPEARE} is absent", "Pass --corpus PATH (or a named corpus such as pydocs).")
    try:
        corpus = load_corpus([source])
    except CharRNNError as exc:
        print(f"gpu check: cannot read the corpus: {exc}", file=sys.stderr)
        return 2
    plan = replace(SMOKE if args.smoke else Plan(), train_seconds=args.train_seconds)
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
