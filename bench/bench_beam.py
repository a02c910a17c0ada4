"""Benchmark beam search against greedy sampling: characters of output per second, on the CPU.

    .venv/bin/python bench/bench_beam.py [--hidden-size 512 --num-layers 2 --length 500 --beam 5]

Prints one JSON object: beam search (`charrnn sample --beam N`: N beams stepped as one batch, one result
streamed) and greedy generate() (`--temp 0`, one stream), each in characters of the returned text per second,
prime and setup included, on a fresh (untrained) model. The stepping cost does not depend on the weights; how soon
the beams agree (which sets the history copied each step) does, and a fresh model's flat distributions let them
disagree longer than a trained model's would.
Repetitions are interleaved (greedy, beam, greedy, beam, ...) and the best of --repeats is kept, since the machine
may be shared. Never asserts; numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import add_model_args, drain_seconds, model_fields  # noqa: E402
from charrnn.generation.beam import BeamConfig, beam_search  # noqa: E402
from charrnn.generation.sample import SampleConfig, generate  # noqa: E402
from charrnn.model import CharRNN, ModelConfig  # noqa: E402

VOCAB_SIZE = 65  # tiny-shakespeare's character set
CPU = torch.device("cpu")


def greedy(model: CharRNN, length: int) -> float:
    """Seconds for generate() at temperature 0 to write `length` chars in one stream."""
    cfg = SampleConfig(temperature=0.0, length=length, num_samples=1, seed=0)
    start = time.perf_counter()
    for _ in generate(model, [0], cfg, CPU):
        pass
    return time.perf_counter() - start


def beam(model: CharRNN, length: int, beam_size: int) -> float:
    """Seconds for beam_search() to return the best `length`-char continuation, streamed as it settles."""
    return drain_seconds(beam_search(model, [0], BeamConfig(beam_size=beam_size, length=length), CPU))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, length=500)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=VOCAB_SIZE, model=args.model, hidden_size=args.hidden_size, num_layers=args.num_layers
    )
    model = CharRNN(config).eval()
    n = args.length
    greedy(model, 20)  # warm-up: first calls pay one-off allocation and thread start-up
    beam(model, 20, args.beam)

    best_greedy = best_beam = float("inf")
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        best_greedy = min(best_greedy, greedy(model, n))
        best_beam = min(best_beam, beam(model, n, args.beam))

    greedy_cps, beam_cps = n / best_greedy, n / best_beam
    row = {
        "bench": "beam_search",
        "beam": args.beam,
        "beam_chars_per_sec": round(beam_cps, 1),
        "greedy_chars_per_sec": round(greedy_cps, 1),
        "ratio_vs_greedy": round(beam_cps / greedy_cps, 3),
        **model_fields(args, VOCAB_SIZE, n),
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
