"""Training throughput: charrnn's real train() path against the plain PyTorch loop a careful user would write.

    .venv/bin/python bench/bench_train.py [--sizes 2x512,2x128] [--steps 12] [--reps 3]

Prints one JSON object per line; never asserts a time. Both sides use the same B x T, an nn.Embedding ->
nn.LSTM -> nn.Linear model, AdamW and gradient clipping, and run interleaved (plain, charrnn, plain, ...) so
drift on a shared machine hits both alike. The ratio is charrnn / plain, best repetition of each.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import bench_corpus_path, machine  # noqa: E402
from charrnn.config.train import TrainConfig  # noqa: E402
from charrnn.model import ModelConfig  # noqa: E402
from charrnn.text.corpus import load_corpus  # noqa: E402
from charrnn.training.job import train  # noqa: E402
from charrnn.training.progress import Reporter  # noqa: E402


def plain_loop(
    ids: torch.Tensor, vocab: int, hidden: int, layers: int, B: int, T: int, steps: int, warmup: int = 2
) -> float:
    """The baseline: embedding -> nn.LSTM -> linear, carried detached state, AdamW, clip; chars/s."""
    torch.manual_seed(0)
    emb, lstm, head = (
        nn.Embedding(vocab, hidden),
        nn.LSTM(hidden, hidden, layers, batch_first=True),
        nn.Linear(hidden, vocab),
    )
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3)
    streams = ids[: (len(ids) // B) * B].view(B, -1)  # (B, N/B) contiguous streams
    state = None
    t0 = None
    for j in range(warmup + steps):
        if j == warmup:
            t0 = time.perf_counter()
        chunk = streams[:, j * T : j * T + T + 1]
        x, y = chunk[:, :-1], chunk[:, 1:]
        out, state = lstm(emb(x), state)
        loss = F.cross_entropy(head(out).reshape(-1, vocab), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state = tuple(s.detach() for s in state)
    loss.item()
    return steps * B * T / (time.perf_counter() - t0)


def charrnn_train(corpus, hidden: int, layers: int, B: int, T: int, steps: int, warmup: int = 2) -> float:
    """The real train() with its data pipeline, divergence guard, logging and progress; chars/s from its log
    windows after the warm-up window (the final evaluation and checkpoint are outside the timed windows)."""
    windows = []
    reporter = Reporter(console=Console(file=io.StringIO(), width=200))  # plain log lines, as under a pipe

    def report(event, info):
        reporter(event, info)
        if event == "log":
            windows.append(info)

    cfg = TrainConfig(
        batch_size=B,
        seq_len=T,
        max_steps=warmup + steps,
        log_every=warmup,
        eval_every=10**9,
        seed=0,
        device="cpu",
        eval_chars=T * 4,
        warmup_steps=1,
    )
    model_cfg = ModelConfig(vocab_size=len(corpus.vocab), hidden_size=hidden, num_layers=layers, dropout=0.0)
    with tempfile.TemporaryDirectory() as d:
        # log_every=warmup: window 1 is the warm-up; later windows cover `warmup` steps each.
        train(corpus, model_cfg, cfg, Path(d) / "run", report=report)
    timed = list(zip(windows[1:], windows, strict=False))  # (window, previous window)
    chars = sum((w["step"] - p["step"]) * B * T for w, p in timed)
    seconds = sum((w["step"] - p["step"]) * B * T / w["chars_per_sec"] for w, p in timed)
    return chars / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="2x512,2x128")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--reps", type=int, default=4)
    args = ap.parse_args()
    corpus = load_corpus([bench_corpus_path()])
    ids = torch.from_numpy(corpus.ids[:].astype("int64"))
    B, T = args.batch_size, args.seq_len
    for size in args.sizes.split(","):
        layers, hidden = (int(v) for v in size.split("x"))
        steps = args.steps if hidden >= 384 else args.steps * 8
        plain, ours = [], []
        for _ in range(args.reps):
            plain.append(plain_loop(ids, len(corpus.vocab), hidden, layers, B, T, steps))
            ours.append(charrnn_train(corpus, hidden, layers, B, T, steps))
        print(
            json.dumps(
                {
                    "bench": "train_throughput",
                    "model": f"LSTM {layers}x{hidden}",
                    "batch_size": B,
                    "seq_len": T,
                    "steps_timed": steps,
                    "plain_chars_per_sec": round(max(plain)),
                    "charrnn_chars_per_sec": round(max(ours)),
                    "ratio_vs_plain": round(max(ours) / max(plain), 3),
                    # each rep pairs a plain run with the charrnn run right after it; the median resists one lucky run
                    "median_paired_ratio": round(statistics.median(o / p for o, p in zip(ours, plain, strict=True)), 3),
                    "all_plain": [round(v) for v in plain],
                    "all_charrnn": [round(v) for v in ours],
                    "corpus": corpus.name,
                    "machine": machine(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
