"""Benchmark oneDNN's prepacked fp32 weights across batch sizes: a product at batch B with the weight packed for B,
against the same weight packed for other batch sizes. Equal speed and bit-identical results are why the server's
Steppers of one model share one packing (generation/stepper.py, _Product._shared).

    .venv/bin/python bench/bench_packing.py [--hidden-size 512 --repeats 200]

For a 2-layer LSTM's three products (h0 @ W_hh0: H x 4H; [h0|h1] @ W_1: 2H x 4H; the head: H x 65), each batch
size B runs with every packing; prints one JSON object per (product, B): microseconds per product with its own
packing and with the slowest other one, and whether every packing gave the same bits. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import machine  # noqa: E402
from charrnn.generation import kernels  # noqa: E402

PACKED_FOR = (2, 8, 32, 64, 256)
BATCHES = (2, 4, 8, 16, 32, 64, 128, 256)


def us(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor, repeats: int) -> float:
    """Microseconds per product x @ packed^T + bias, after one untimed call (it makes the shape's primitive)."""
    kernels.onednn_linear(x, packed, bias)
    return 1e6 * timeit.timeit(lambda: kernels.onednn_linear(x, packed, bias), number=repeats) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    if not kernels.onednn_linear_available():
        raise SystemExit("this torch build has no oneDNN linear: nothing to measure")
    H = args.hidden_size
    torch.manual_seed(0)
    for name, (K, N) in {"hidden0": (H, 4 * H), "stacked1": (2 * H, 4 * H), "head": (H, 65)}.items():
        w, b = torch.randn(N, K), torch.randn(N)
        packs = {p: kernels.pack_linear_weight(w, p) for p in PACKED_FOR}
        for batch in BATCHES:
            x = torch.randn(batch, K)
            own = packs[batch] if batch in packs else kernels.pack_linear_weight(w, batch)
            expected = kernels.onednn_linear(x, own, b)
            identical = all(torch.equal(kernels.onednn_linear(x, p, b), expected) for p in packs.values())

            mine = us(x, own, b, args.repeats)
            others = [us(x, p, b, args.repeats) for p_batch, p in packs.items() if p_batch != batch]
            print(json.dumps({"bench": "packing", "product": name, "k": K, "n": N, "batch": batch,
                              "own_us": round(mine, 1), "slowest_other_us": round(max(others), 1),
                              "identical": identical, "machine": machine()}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
