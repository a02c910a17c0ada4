"""What `charrnn sample --precision bf16|int8` costs in accuracy and buys in speed, on a trained model.

    .venv/bin/python bench/bench_precision.py --checkpoint checkpoints/tinyshakespeare/best.pt
    .venv/bin/python bench/bench_precision.py --max-time 3m     # no checkpoint: train one first (seed 1)

Accuracy, two ways, each precision against fp32 under the same rule:
- one stream: the sampler's own step (charrnn.generation.stepper.Stepper) scores the validation split (last 10 %)
  teacher-forced as ONE stream, hidden state carried through, every character counted once;
- 64 streams: the split cut into 64 equal contiguous pieces scored side by side from a zero state, so the
  batched cell (one sigmoid) and int8's per-call input range over 64 streams are what is measured.
The larger difference in bits/char is the precision's cost. Speed: generate() at 1 and --num-samples streams
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
from charrnn.checkpoint.files import load_model  # noqa: E402
from charrnn.generation.kernels import bf16_is_native, int8_engine  # noqa: E402
from charrnn.generation.stepper import Stepper  # noqa: E402
from charrnn.model import CharRNN  # noqa: E402
from charrnn.text.corpus import load_corpus  # noqa: E402
from charrnn.text.data import split  # noqa: E402

PRECISIONS = ("fp32", "bf16", "int8")


def score_with_stepper(model: CharRNN, ids: torch.Tensor, precision: str, streams: int = 1) -> float:
    """Mean nats/char of each piece's ids[1:] given everything before it in the piece, through the sampler's
    step at batch `streams`: ids cut into `streams` equal contiguous pieces (the tail that does not divide is
    left out), each from a zero state."""
    n = len(ids) // streams
    pieces = ids[: n * streams].view(streams, n)  # (S, n)
    stepper = Stepper(model, streams, torch.device("cpu"), precision=precision)
    logits = torch.empty(n - 1, streams, model.config.vocab_size)  # (n-1, S, V)
    with torch.inference_mode():
        for t in range(n - 1):
            logits[t] = stepper.step(pieces[:, t])
        targets = pieces[:, 1:].t()  # (n-1, S)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()).item()


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
    ap.add_argument("--skip-quality", action="store_true", help="speed only (the cost does not depend on the ISA)")
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
        "int8_engine": int8_engine(),
        "machine": machine(),
    }

    precisions = [p for p in PRECISIONS if p != "int8" or int8_engine() is not None]
    if not args.skip_quality:
        for streams in (1, args.num_samples):
            loss = {p: score_with_stepper(model, val, p, streams) for p in precisions}
            print(json.dumps(_cost_line(loss, streams, len(val), common)), flush=True)

    runs = [(p, b) for p in precisions for b in (1, args.num_samples)]
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
                    "ratio_vs_fp32_same_batch": round(cps[(p, b)] / cps[("fp32", b)], 2),
                    "length": args.length,
                    **common,
                }
            ),
            flush=True,
        )


def _cost_line(loss: dict[str, float], streams: int, val_chars: int, common: dict) -> dict:
    """One JSON object: each precision's val loss and its cost against fp32, in nats and bits per char."""
    cost = {p: loss[p] - loss["fp32"] for p in loss if p != "fp32"}
    return {
        "bench": "precision_quality_cost",
        "streams": streams,
        "val_chars": val_chars,
        **{f"val_loss_{p}": round(v, 5) for p, v in loss.items()},
        **{f"cost_bpc_{p}": round(c / math.log(2), 5) for p, c in cost.items()},
        **common,
    }


if __name__ == "__main__":
    main()
