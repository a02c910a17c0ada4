"""What `charrnn sample --precision bf16` costs in accuracy and buys in speed, on a trained model.

    .venv/bin/python bench/bench_precision.py --checkpoint checkpoints/tinyshakespeare/best.pt
    .venv/bin/python bench/bench_precision.py --max-time 3m     # no checkpoint: train one first (seed 1)

Accuracy: the sampler's own step (charrnn.sample.Stepper) scores the validation split (last 10 %) teacher-forced
as ONE stream, hidden state carried through, every character counted once (the target-5 rule), in fp32 and in
bf16. The difference in nats/char is the quality cost of bf16. Speed: generate() at 1 and --num-samples streams
in each precision, repetitions interleaved, best kept. Prints one JSON object per measurement; never asserts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_sample import ours  # noqa: E402
from bench.common import bench_corpus_path, machine  # noqa: E402
from bench.quality import run_training, train_command  # noqa: E402
from charrnn.checkpoint import load_model  # noqa: E402
from charrnn.corpus import load_corpus  # noqa: E402
from charrnn.data import split  # noqa: E402
from charrnn.kernels import bf16_is_native  # noqa: E402
from charrnn.model import CharRNN  # noqa: E402
from charrnn.sample import Stepper  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def score_with_stepper(model: CharRNN, ids: torch.Tensor, precision: str, sigmoid_only: bool = False) -> float:
    """Mean nats/char of ids[1:] given everything before, through the sampler's step at batch 1.
    sigmoid_only=True scores with the cell formulation that 64 streams use."""
    stepper = Stepper(model, 1, torch.device("cpu"), precision=precision, sigmoid_only=sigmoid_only)
    n = len(ids) - 1
    logits = torch.empty(n, model.config.vocab_size)  # (N, V)
    with torch.inference_mode():
        for t in range(n):
            logits[t] = stepper.step(ids[t : t + 1])[0]
        return torch.nn.functional.cross_entropy(logits, ids[1:]).item()


def train_checkpoint(corpus_path: str, max_time: str, out_dir: Path) -> Path:
    run_training(train_command(corpus_path, max_time, out_dir, seed=1))
    return out_dir / "best.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, help="a checkpoint trained on the benchmark corpus")
    ap.add_argument("--max-time", default="3m", help="training budget when no --checkpoint is given")
    ap.add_argument("--length", type=int, default=400, help="chars per stream in the speed runs")
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--val-chars", type=int, default=0, help="score only the first N val chars (0: all)")
    args = ap.parse_args()
    corpus_path = bench_corpus_path()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or train_checkpoint(corpus_path, args.max_time, Path(tmp) / "run")
        model, bundle = load_model(ckpt, "cpu")
        vocab = bundle.vocab
        corpus = load_corpus([corpus_path])
    if corpus.vocab.chars != vocab.chars:
        sys.exit(f"{ckpt} was not trained on {corpus_path}; pass a checkpoint trained on it.")
    _, val = split(corpus.ids, 0.1)
    val = torch.from_numpy(val[: args.val_chars or len(val)].astype("int64"))
    c = model.config
    common = {
        "model": f"{c.num_layers}x{c.hidden_size} {c.model}",
        "checkpoint": str(ckpt),
        "bf16_native": bf16_is_native(torch.device("cpu")),
        "machine": machine(),
    }

    # bf16 at one stream (tanh cell) and as 64 streams run it (one-sigmoid cell): both against fp32.
    loss = {
        "fp32": score_with_stepper(model, val, "fp32"),
        "bf16": score_with_stepper(model, val, "bf16"),
        "bf16_batched_cell": score_with_stepper(model, val, "bf16", sigmoid_only=True),
    }
    worst = max(loss["bf16"], loss["bf16_batched_cell"]) - loss["fp32"]
    print(
        json.dumps(
            {
                "bench": "bf16_quality_cost",
                "val_chars": len(val) - 1,
                **{f"val_loss_{k}": round(v, 5) for k, v in loss.items()},
                "delta_nats": round(worst, 5),
                "delta_bpc": round(worst / math.log(2), 5),
                **common,
            }
        ),
        flush=True,
    )

    runs = [(p, b) for p in PRECISIONS for b in (1, args.num_samples)]
    for p, b in runs:  # warm-up: one-off allocations and thread start-up
        ours(model, 20, b, p)
    best = {r: math.inf for r in runs}
    for _ in range(args.repeats):
        for r in runs:
            best[r] = min(best[r], ours(model, args.length, r[1], r[0]))
    cps = {(p, b): b * args.length / best[(p, b)] for p, b in runs}
    for p, b in runs:
        print(
            json.dumps(
                {
                    "bench": "sample_precision",
                    "precision": p,
                    "num_samples": b,
                    "chars_per_sec": round(cps[(p, b)], 1),
                    "ratio_vs_same_precision_batch1": round(cps[(p, b)] / cps[(p, 1)], 2),
                    "ratio_vs_fp32_batch1": round(cps[(p, b)] / cps[("fp32", 1)], 2),
                    "length": args.length,
                    **common,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
