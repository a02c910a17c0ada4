"""Quality per minute: train on tiny-shakespeare for a fixed wall-clock budget, then score best.pt on the
validation split (last 10 %) as ONE stream with the hidden state carried through the whole split, every
character counted once (the rule the reference figures use).

    .venv/bin/python bench/quality.py --max-time 10m                 # default settings (auto-sized model)
    .venv/bin/python bench/quality.py --max-time 3m -- --lr 3e-3     # anything after -- goes to `charrnn train`
    .venv/bin/python bench/quality.py --max-time 10m --plain         # also the plain 50-line loop, same rule

Prints one JSON object per run. Run it on an idle machine: throughput, and so quality, falls sharply under
contention. `--plain` first trains the obvious loop a char-rnn user would write (issue 9's recipe: Embedding ->
LSTM(dropout) -> Dropout -> Linear, Adam at a constant 2e-3, clip 5, B=50, T=50, carried state over contiguous
streams) for the same wall-clock budget, and scores its final weights by the same one-stream rule.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import bench_corpus_path, machine  # noqa: E402
from charrnn.checkpoint.files import load_model  # noqa: E402
from charrnn.text.corpus import load_corpus  # noqa: E402
from charrnn.text.data import split  # noqa: E402
from charrnn.training.evaluation import evaluate  # noqa: E402


def train_command(corpus_path: str, max_time: str, run_dir: Path, seed: int, *extra: str) -> list[str]:
    """`charrnn train` on corpus_path for a wall-clock budget (`--max-time`), into run_dir, logging every 100 steps."""
    options = ["--max-time", max_time, "--run-dir", str(run_dir), "--seed", str(seed), "--log-every", "100"]
    return [sys.executable, "-m", "charrnn", "train", corpus_path, *options, *extra]


def run_training(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a `charrnn train` command to its end; exit with the tail of its stderr if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"training failed:\n{proc.stderr[-3000:]}")
    return proc


def score_one_stream(ckpt: Path, corpus_path: str, val_frac: float = 0.1) -> float:
    model, bundle = load_model(ckpt, "cpu")
    vocab = bundle.vocab
    corpus = load_corpus([corpus_path])
    assert corpus.vocab.chars == vocab.chars, "the checkpoint was trained on another corpus"
    _, val = split(corpus.ids, val_frac)
    return evaluate(model, val, num_streams=1, seq_len=1024, device=torch.device("cpu"))


class PlainCharRNN(nn.Module):
    """The model of the plain loop, written here on purpose: the baseline must not share charrnn's code."""

    def __init__(self, vocab_size: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden)
        self.lstm = nn.LSTM(hidden, hidden, layers, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x, state=None):
        out, state = self.lstm(self.embed(x), state)  # (B, T, H)
        return self.head(self.drop(out)), state  # (B, T, V)


def plain_loop(
    corpus_path: str,
    seconds: float,
    seed: int,
    hidden: int = 512,
    layers: int = 2,
    dropout: float = 0.2,
    lr: float = 2e-3,
    clip: float = 5.0,
    batch: int = 50,
    seq_len: int = 50,
) -> dict:
    """The obvious loop, trained for `seconds` of wall clock, then scored on the validation split."""
    torch.manual_seed(seed)
    corpus = load_corpus([corpus_path])
    train_ids, val_ids = split(corpus.ids, 0.1)
    V = len(corpus.vocab)
    n = (len(train_ids) - 1) // batch
    data = torch.from_numpy(np.asarray(train_ids[: batch * n + 1]).astype(np.int64))
    x_all, y_all = data[:-1].view(batch, n), data[1:].view(batch, n)  # (B, n): one contiguous stream per row
    model = PlainCharRNN(V, hidden, layers, dropout)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    state, steps, start = None, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        j = (steps * seq_len) % (n - seq_len)
        if j < seq_len:
            state = None  # a new pass: every stream restarts at its beginning
        x, y = x_all[:, j : j + seq_len], y_all[:, j : j + seq_len]
        logits, state = model(x, state)
        state = tuple(s.detach() for s in state)
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        steps += 1
    wall = time.perf_counter() - start
    model.eval()
    val = score_plain(model, val_ids, V)
    return {
        "bench": "quality_per_time",
        "run": "plain_loop",
        "corpus": Path(corpus_path).stem,
        "max_time_s": seconds,
        "seed": seed,
        "model": {"hidden_size": hidden, "num_layers": layers, "dropout": dropout},
        "lr": lr,
        "clip": clip,
        "batch_size": batch,
        "seq_len": seq_len,
        "steps": steps,
        "epochs": round(steps * seq_len / (n - 1), 2),
        "val_loss_one_stream": round(val, 4),
        "val_bpc_one_stream": round(val / math.log(2), 4),
        "wall_s": round(wall, 1),
    }


@torch.no_grad()
def score_plain(model: nn.Module, ids, V: int, chunk: int = 1024) -> float:
    """The same rule as score_one_stream: one stream, state carried, every character after the first scored."""
    data = torch.from_numpy(np.asarray(ids).astype(np.int64))
    total, state = 0.0, None
    for a in range(0, len(data) - 1, chunk):
        x, y = data[a : a + chunk][None], data[a + 1 : a + chunk + 1][None]
        x = x[:, : y.shape[1]]
        logits, state = model(x, state)
        total += F.cross_entropy(logits.reshape(-1, V), y.reshape(-1), reduction="sum").item()
    return total / (len(data) - 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-time", default="10m")
    ap.add_argument("--plain", action="store_true", help="also run the plain 50-line loop (first), same budget")
    ap.add_argument("--plain-only", action="store_true", help="run only the plain loop")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep-run", type=Path, help="train into this run directory and keep it")
    ap.add_argument("--corpus", help="a file (default: tiny-shakespeare from ../shared, else pydocs)")
    ap.add_argument("train_args", nargs="*", help="extra `charrnn train` flags (after --)")
    args = ap.parse_args()
    corpus_path = args.corpus or bench_corpus_path()
    if args.plain or args.plain_only:
        from charrnn.cli.options import parse_duration

        print(
            json.dumps({**plain_loop(corpus_path, parse_duration(args.max_time), args.seed), "machine": machine()}),
            flush=True,
        )
        if args.plain_only:
            return
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep_run or Path(tmp) / "run"
        cmd = train_command(corpus_path, args.max_time, run_dir, args.seed, "--overwrite", *args.train_args)
        load_before = os.getloadavg()[0]
        t = time.perf_counter()
        proc = run_training(cmd)
        wall = time.perf_counter() - t
        chosen = [ln for ln in proc.stderr.splitlines() if ln.startswith("auto-sized")]
        metrics = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
        best = min((m for m in metrics if math.isfinite(m["val_loss"])), key=lambda m: m["val_loss"])
        ckpt = torch.load(run_dir / "best.pt", weights_only=True)
        last = torch.load(run_dir / "last.pt", weights_only=True)
        val = score_one_stream(run_dir / "best.pt", corpus_path)
    print(
        json.dumps(
            {
                "bench": "quality_per_time",
                "run": "charrnn",
                "seed": args.seed,
                "corpus": Path(corpus_path).stem,
                "max_time": args.max_time,
                "train_args": args.train_args,
                "auto_size": chosen[0] if chosen else None,
                "model": ckpt["model_config"],
                "steps": last["step"],
                "epochs": round(last["epoch"], 2),
                "best_step": ckpt["step"],
                "evaluations": len(metrics),
                "val_loss_one_stream": round(val, 4),
                "val_bpc_one_stream": round(val / math.log(2), 4),
                "val_loss_during_training": round(best["val_loss"], 4),
                "train_loss_at_best": round(best["train_loss"], 4),
                "train_chars_per_sec": metrics[-1]["chars_per_sec"],
                "wall_s": round(wall, 1),
                "load_avg_1m_before": load_before,
                "machine": machine(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
