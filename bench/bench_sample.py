"""Benchmark step-by-step sampling: the plain nn.LSTM-per-character baseline vs charrnn.generation.sample.generate.

    .venv/bin/python bench/bench_sample.py [--hidden-size 512 --num-layers 2 --length 300]

Prints one JSON object per line: the baseline (nn.LSTM called one character at a time with carried state,
softmax + multinomial, batch 1), then generate() at batch 1 and at --num-samples streams (total chars/s) in
each of --precisions (fp32 is the default sampler; bf16 is `charrnn sample --precision bf16`).
Repetitions are interleaved (baseline, ours, baseline, ours, ...) and the best of --repeats is
kept, since the machine may be shared. Never asserts; numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_model_args, drain_seconds, model_fields, untrained_model  # noqa: E402
from charrnn.generation.sample import SampleConfig, generate  # noqa: E402
from charrnn.model import CharRNN  # noqa: E402

VOCAB_SIZE = 65  # tiny-shakespeare's character set


def baseline(model: CharRNN, length: int, temperature: float = 0.8) -> float:
    """Seconds to sample `length` chars at batch 1 with the model's own nn.LSTM, one char per call."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        tok = torch.zeros(1, 1, dtype=torch.int64)  # (B, T)
        state = None
        start = time.perf_counter()
        for _ in range(length):
            logits, state = model(tok, state)  # (1, 1, V)
            probs = torch.softmax(logits[:, -1] / temperature, dim=-1)
            tok = torch.multinomial(probs, 1, generator=gen)
        return time.perf_counter() - start


def ours(model: CharRNN, length: int, num_samples: int, precision: str = "fp32", temperature: float = 0.8) -> float:
    """Seconds for generate() to produce `length` chars per stream (prime and setup included)."""
    cfg = SampleConfig(temperature=temperature, length=length, num_samples=num_samples, seed=0, precision=precision)
    return drain_seconds(generate(model, [0], cfg, torch.device("cpu")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, length=300)
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated sampler precisions")
    args = parser.parse_args()
    model = untrained_model(args, VOCAB_SIZE)
    n, precisions = args.length, args.precisions.split(",")
    runs = [(p, b) for p in precisions for b in (1, args.num_samples)]
    baseline(model, 20)  # warm-up: first calls pay one-off allocation and thread start-up
    for p, b in runs:
        ours(model, 20, b, p)

    base, best = float("inf"), {r: float("inf") for r in runs}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every row alike
        for r in runs:
            base = min(base, baseline(model, n))
            best[r] = min(best[r], ours(model, n, r[1], r[0]))

    base_cps = n / base
    cps = {(p, b): b * n / best[(p, b)] for p, b in runs}
    common = model_fields(args, VOCAB_SIZE, n)
    print(
        json.dumps(
            {
                "bench": "baseline_nn_lstm_step",
                "num_samples": 1,
                "chars_per_sec": round(base_cps, 1),
                "ratio_vs_baseline": 1.0,
                **common,
            }
        ),
        flush=True,
    )
    for p, b in runs:
        row = {
            "bench": "generate",
            "precision": p,
            "num_samples": b,
            "chars_per_sec": round(cps[(p, b)], 1),
            "ratio_vs_baseline": round(cps[(p, b)] / base_cps, 2),
        }
        if b > 1:
            row["ratio_vs_generate_batch1"] = round(cps[(p, b)] / cps[(p, 1)], 2)  # same precision
        if p != "fp32" and ("fp32", 1) in cps:
            row["ratio_vs_fp32_generate_batch1"] = round(cps[(p, b)] / cps[("fp32", 1)], 2)
        print(json.dumps({**row, **common}), flush=True)


if __name__ == "__main__":
    main()
