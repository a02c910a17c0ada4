"""The cost of previews during training: `charrnn train` with the default previews (200 characters at every
evaluation) against the same run with `--sample-length 0`, in one invocation, on the benchmark corpus.

    .venv/bin/python bench/bench_preview.py [--hidden-size 512] [--max-steps 400]

Prints one JSON object: the previews' own time (each one is timed and kept in samples.jsonl) as a share of the
run, and the wall-clock ratio of the two runs (noisier: it includes everything else that varies).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_corpus_path, machine  # noqa: E402


def train(corpus: str, run_dir: Path, args, sample_length: int) -> float:
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--run-dir", str(run_dir), "--quiet", "--seed", "1"]
    cmd += ["--hidden-size", str(args.hidden_size), "--num-layers", "2", "--max-steps", str(args.max_steps)]
    cmd += ["--sample-length", str(sample_length), "--device", "cpu"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden-size", type=int, default=512)
    ap.add_argument("--max-steps", type=int, default=400)  # two evaluations at the default --eval-every 200
    args = ap.parse_args()
    corpus = bench_corpus_path()
    with tempfile.TemporaryDirectory() as d:
        off = train(corpus, Path(d) / "off", args, 0)
        on = train(corpus, Path(d) / "on", args, 200)
        previews = [json.loads(line) for line in (Path(d) / "on" / "samples.jsonl").read_text().splitlines()]
    preview_s = sum(p["seconds"] for p in previews)
    result = {
        "bench": "preview_cost",
        "model": f"LSTM 2x{args.hidden_size}",
        "max_steps": args.max_steps,
        "previews": len(previews),
        "preview_seconds": round(preview_s, 3),
        "run_seconds_with_previews": round(on, 2),
        "run_seconds_without": round(off, 2),
        "preview_share": round(preview_s / on, 5),
        "wall_ratio": round(on / off, 4),
        "corpus": Path(corpus).stem,
        "machine": machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
