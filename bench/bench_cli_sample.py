"""Benchmark `charrnn sample --num-samples N` through the CLI against Model.generate(num_samples=N) in the same run.

    .venv/bin/python bench/bench_cli_sample.py [--hidden-size 512 --num-layers 2 --length 2000 --num-samples 64]

A seeded, untrained model (speed does not depend on the weights) is exported to a temporary .safetensors. Each
repeat runs the CLI in a subprocess with stdout on a pipe read here, then generate() in this process, one after
the other. Prints one JSON object: the CLI's chars/s end to end (process start to exit, torch's import
included, stdout to a file), its chars/s once sampling streams (the same run less the start-up), its start-up
(the wall time of the same command with --length 1), generate()'s chars/s, and both ratios. Best of
--repeats; never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_serve import CHARS, export_model  # noqa: E402
from bench.common import add_model_args, model_fields  # noqa: E402

PRIME = "\n"


def cli_seconds(path: Path, args, length: int, out: Path) -> float:
    """Seconds from the CLI's start to its exit, sampling `length` characters a stream into the file `out`
    (a file, not a pipe: a reader woken at every flushed step would take CPU from the sampler)."""
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "charrnn", "sample", str(path), "--num-samples", str(args.num_samples),
           "--length", str(length), "--seed", "0", "--temperature", "0.8", "--prime", PRIME,
           "--device", "cpu"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(repo))
    with out.open("wb") as f:
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start


def generate_rate(model, args) -> float:
    start = time.perf_counter()
    texts = model.generate(PRIME, length=args.length, temperature=0.8, num_samples=args.num_samples, seed=0)
    return sum(map(len, texts)) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, length=2000)
    parser.add_argument("--num-samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import charrnn

    with tempfile.TemporaryDirectory() as tmp:
        path = export_model(args, Path(tmp))
        model = charrnn.load(path, device="cpu")
        chars = args.num_samples * args.length
        whole, streaming, startup, base = 0.0, 0.0, float("inf"), 0.0
        out = Path(tmp) / "out.txt"
        for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
            start = cli_seconds(path, args, 1, out)  # start-up: import, load, prime, one step
            seconds = cli_seconds(path, args, args.length, out)
            assert out.stat().st_size >= chars, "the CLI wrote less text than asked for"
            whole = max(whole, chars / seconds)
            streaming = max(streaming, chars / max(seconds - start, 1e-9))
            startup = min(startup, start)
            base = max(base, generate_rate(model, args))
        line = {
            "bench": "cli_sample",
            "num_samples": args.num_samples,
            "cli_chars_per_s": round(whole),
            "cli_streaming_chars_per_s": round(streaming),
            "cli_startup_s": round(startup, 3),
            "generate_chars_per_s": round(base),
            "ratio": round(whole / base, 3),
            "streaming_ratio": round(streaming / base, 3),
            **model_fields(args, len(CHARS), args.length),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
