"""Where a sampling step's time goes: products, cell arithmetic, output layer, sampling, Python and the rest.

    .venv/bin/python bench/bench_breakdown.py [--hidden-size 512 --num-layers 2 --precisions fp32,int8]

For each precision and batch size (1 and --num-samples), times over --steps steps, best of --repeats:
- `generate`: the whole per-character loop of charrnn.generation.sample.generate (step, sampling, uniforms, yield);
- `step`: Stepper.step alone (every layer, then the output layer);
- `products`: the cell's recurrent products alone, called on the buffers they read in a step;
- `head`: the output layer's product alone;
- `sample`: turning logits into ids (temperature 0.8, no filter) alone.
`cell` = step - products - head (the gate arithmetic and the layer-0 gather); `loop` = generate - step - sample
(uniforms, the per-character Python and the yield). An LSTM with random weights: speed does not depend on them.
Prints one JSON object per (precision, batch); never asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_model_args, drain_seconds, model_fields, untrained_model  # noqa: E402
from charrnn.generation.sample import SampleConfig, _Sampler, generate  # noqa: E402
from charrnn.generation.stepper import Stepper, _Product  # noqa: E402
from charrnn.model import CharRNN  # noqa: E402

VOCAB_SIZE = 65


def per_step(fn: Callable[[], object], steps: int, repeats: int) -> float:
    """Best-of-`repeats` seconds per call of fn over `steps` calls."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def product_calls(stepper: Stepper) -> list[Callable[[], None]]:
    """Each recurrent product of the cell as a call on the input it reads and a scratch output."""
    cell = stepper.cell
    calls = []
    for name, value in vars(cell).items():
        products = value if isinstance(value, list) else [value]
        for k, product in enumerate(products):
            if not isinstance(product, _Product):
                continue
            x = cell.h[0] if name == "hidden_product_0" else _input_of(cell, name, k)
            out = torch.zeros(stepper.batch_size, cell.gates.shape[1])
            calls.append(lambda p=product, x=x, out=out: p(x, out))
    return calls


def _input_of(cell, name: str, k: int) -> torch.Tensor:
    if name == "stacked_products":
        return cell.stacked_inputs[k]
    if name == "input_products":
        return cell.inputs[k]
    return cell.h[k + 1]  # a GRU's hidden products read their own layer's state


def breakdown(model: CharRNN, precision: str, batch: int, steps: int, repeats: int) -> dict:
    stepper = Stepper(model, batch, torch.device("cpu"), precision=precision)
    tokens = torch.zeros(batch, dtype=torch.int64)  # (B,)
    calls = product_calls(stepper)
    sampler = _Sampler(SampleConfig(temperature=0.8), batch, VOCAB_SIZE, torch.device("cpu"))
    u, ids = torch.full((batch, 1), 0.5), torch.zeros(batch, 1, dtype=torch.int64)
    w_head, b_head, h_top = stepper._w_head, stepper._b_head, stepper._h_top
    cfg = SampleConfig(temperature=0.8, length=steps, num_samples=batch, seed=0, precision=precision)
    with torch.inference_mode():
        t = {
            "step": per_step(lambda: stepper.step(tokens), steps, repeats),
            "products": per_step(lambda: [c() for c in calls], steps, repeats),
            "head": per_step(lambda: torch.addmm(b_head, h_top, w_head, out=stepper.logits), steps, repeats),
            "sample": per_step(lambda: sampler(stepper.logits, u, ids), steps, repeats),
        }
    generate_s = min(drain_seconds(generate(model, [0], cfg, torch.device("cpu"))) for _ in range(repeats)) / steps
    t["cell"] = t["step"] - t["products"] - t["head"]
    t["loop"] = generate_s - t["step"] - t["sample"]
    return {
        "bench": "step_breakdown",
        "precision": precision,
        "num_samples": batch,
        "chars_per_sec": round(batch / generate_s, 1),
        "generate_us": round(generate_s * 1e6, 1),
        **{f"{k}_us": round(v * 1e6, 1) for k, v in t.items()},
        **{f"{k}_share": round(t[k] / generate_s, 3) for k in ("products", "cell", "head", "sample", "loop")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, length=300)
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="fp32", help="comma-separated sampler precisions")
    args = parser.parse_args()
    model = untrained_model(args, VOCAB_SIZE)
    common = model_fields(args, VOCAB_SIZE, args.length)
    for precision in args.precisions.split(","):
        for batch in (1, args.num_samples):
            row = breakdown(model, precision, batch, args.length, args.repeats)
            print(json.dumps({**row, **common}), flush=True)


if __name__ == "__main__":
    main()
