"""Data-parallel training throughput on the CPU: one process against `--procs` processes under torchrun (gloo).

    .venv/bin/python bench/bench_distributed.py [--steps 60] [--procs 2] [--batch-size 50] [--hidden-size 256]

Both runs are real `charrnn train` commands on tiny-shakespeare with the same per-process batch (B x T), a 2-layer
LSTM without dropout and a fixed number of steps. Each process's chars/s is read from rank 0's progress lines
(`... N char/s ...` on stderr), after the first window, so start-up, oneDNN's first-step set-up and the final
evaluation are not counted. Ranks step in lockstep (one gradient all-reduce a step), so the total is the
per-process rate times the processes. Threads are each launch's default unless --threads is given: one process
uses every core, torchrun gives each worker one thread (OMP_NUM_THREADS=1). Prints one JSON object; never asserts
a time. Skipped, with a JSON reason, when ../shared/corpora/tinyshakespeare.txt is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import SHAKESPEARE, machine  # noqa: E402

LOG_LINE = re.compile(r"^step\s+(\d+)\s+epoch.*?([\d,]+) char/s", re.MULTILINE)


def train_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """`charrnn train ...` arguments shared by both runs. --val-frac 0.01 keeps the final evaluation (untimed,
    but part of the bench's wall time) short; it does not change the step."""
    options = {
        "run-dir": run_dir,
        "hidden-size": args.hidden_size,
        "num-layers": 2,
        "dropout": 0,
        "batch-size": args.batch_size,
        "seq-len": args.seq_len,
        "max-steps": args.steps,
        "log-every": args.log_every,
        "eval-every": 10**9,
        "val-frac": 0.01,
        "sample-length": 0,
        "seed": 0,
        "device": "cpu",
    }
    if args.threads is not None:
        options["threads"] = args.threads
    return ["train", str(SHAKESPEARE), *[a for k, v in options.items() for a in (f"--{k}", str(v))]]


def launch(procs: int) -> list[str]:
    """The command that starts charrnn: itself for one process, torchrun on this machine for several."""
    if procs == 1:
        return [sys.executable, "-m", "charrnn"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}", "-m", "charrnn"]


def per_process_rate(stderr: str, log_every: int) -> float:
    """chars/s of one process over the windows after step log_every (step 1 is reported alone, and the window
    after it still holds warm-up): the windows' characters over their seconds."""
    lines = [(int(step), float(rate.replace(",", ""))) for step, rate in LOG_LINE.findall(stderr)]
    windows = [(step - prev, rate) for (prev, _), (step, rate) in pairwise(lines) if prev >= log_every]
    if not windows:
        raise SystemExit(f"no progress windows after step {log_every}; stderr:\n{stderr[-3000:]}")
    return sum(n for n, _ in windows) / sum(n / rate for n, rate in windows)  # each window's chars are n x B x T


def run(procs: int, args: argparse.Namespace, work: Path) -> dict:
    env = {**os.environ, "CHARRNN_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(REPO)}
    cmd = [*launch(procs), *train_command(args, work / f"run-{procs}")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rate = per_process_rate(done.stderr, args.log_every)
    return {"processes": procs, "chars_per_sec_per_process": round(rate), "chars_per_sec_total": round(rate * procs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=50, help="per process")
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="per process; default: each launch's own")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    args = ap.parse_args()
    if not SHAKESPEARE.exists():
        print(json.dumps({"bench": "train_distributed", "skipped": f"{SHAKESPEARE} is absent"}), flush=True)
        return
    if args.steps < 2 * args.log_every:
        raise SystemExit("--steps must be at least 2 x --log-every: the windows up to --log-every are not timed")
    with tempfile.TemporaryDirectory() as d:
        runs = [run(procs, args, Path(d)) for procs in (1, args.procs)]
    single, multi = runs
    result = {
        "bench": "train_distributed",
        "model": f"LSTM 2x{args.hidden_size}",
        "batch_size_per_process": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "threads_per_process": args.threads or "default",
        "backend": "gloo (CPU)",
        "runs": runs,
        "speedup_total": round(multi["chars_per_sec_total"] / single["chars_per_sec_total"], 3),
        "corpus": SHAKESPEARE.name,
        "machine": machine(),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
