"""The whole harness, one command:  .venv/bin/python -m bench  [--quick]

Runs, one after another (never in parallel: they would slow each other down):
  1. training throughput, charrnn train() vs the plain loop, 2x512 and 2x128 LSTM at B=50, T=50
  2. sampling, 2x512 and 2x256 LSTM: the plain nn.LSTM-per-char sampler vs ours at batch 1, and 64 streams
  3. the streaming corpus encoder on a generated 1 GB corpus (MB/s, peak RSS, cached second run)
Each prints JSON lines; this runner forwards them to stdout unchanged. Run it on an idle machine.
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, for checking the harness runs")
    args = ap.parse_args()
    py = sys.executable
    if args.quick:
        jobs = [[py, HERE / "bench_train.py", "--sizes", "2x64", "--steps", "2", "--reps", "1"],
                [py, HERE / "bench_sample.py", "--hidden-size", "64", "--length", "50", "--repeats", "1"],
                [py, HERE / "bench_corpus.py", "--size-mb", "8"]]
    else:
        jobs = [[py, HERE / "bench_train.py", "--sizes", "2x512,2x128"],
                [py, HERE / "bench_sample.py", "--hidden-size", "512"],
                [py, HERE / "bench_sample.py", "--hidden-size", "256"],
                [py, HERE / "bench_corpus.py", "--size-mb", "1024"]]
    for job in jobs:
        subprocess.run([str(a) for a in job], check=True)


if __name__ == "__main__":
    main()
