"""The whole harness, one command:  .venv/bin/python -m bench  [--quick]
The GPU check instead:             .venv/bin/python -m bench --gpu  [--smoke] [--corpus PATH] [--train-seconds S]

Runs, one after another (never in parallel: they would slow each other down):
  1. training throughput, charrnn train() vs the plain loop, 2x512 and 2x128 LSTM at B=50, T=50
  2. sampling, 2x512 and 2x256 LSTM: the plain nn.LSTM-per-char sampler vs ours at batch 1, and 64 streams,
     in fp32, int8 and bf16; then where a 2x512 step's time goes (products, cell, sampling, loop)
  3. the streaming corpus encoder on a generated 1 GB corpus (MB/s, peak RSS, cached second run)
  4. bf16 and int8 sampling on a model trained for 3 minutes: their validation-loss cost and their speed
  5. charrnn serve's clients, churn, the CLI's --num-samples 64, and where torch's thread runs (serve, cli, threads)
Each prints JSON lines; this runner forwards them to stdout unchanged. Run it on an idle machine.

--gpu runs bench/gpu_check.py alone (under 5 minutes on one GPU; see its docstring and bench/README.md's GPU
section), passing it --smoke and any further options, and exits with its status.
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, for checking the harness runs")
    ap.add_argument("--gpu", action="store_true", help="the one-command GPU check (bench/gpu_check.py) instead")
    ap.add_argument("--smoke", action="store_true", help="with --gpu: toy sizes, on the CPU when there is no CUDA")
    args, rest = ap.parse_known_args()
    py = sys.executable
    if args.gpu:
        smoke = ["--smoke"] if args.smoke or args.quick else []
        sys.exit(subprocess.run([py, str(HERE / "gpu_check.py"), *smoke, *rest]).returncode)
    if rest or args.smoke:
        ap.error(f"{' '.join(rest) or '--smoke'} only goes with --gpu")
    if args.quick:
        jobs = [
            [py, HERE / "bench_train.py", "--sizes", "2x64", "--steps", "2", "--reps", "1"],
            [py, HERE / "bench_sample.py", "--hidden-size", "64", "--length", "50", "--repeats", "1"],
            [py, HERE / "bench_breakdown.py", "--hidden-size", "64", "--length", "20", "--repeats", "1"],
            [py, HERE / "bench_corpus.py", "--size-mb", "8"],
            [
                py,
                HERE / "bench_precision.py",
                "--max-time",
                "10s",
                "--val-chars",
                "300",
                "--length",
                "30",
                "--repeats",
                "1",
            ],
            [py, HERE / "bench_serve.py", "--quick", "--churn", "200"],
            [py, HERE / "bench_cli_sample.py", "--hidden-size", "64", "--length", "50", "--repeats", "1"],
            [py, HERE / "bench_threads.py", "--hidden-size", "64", "--length", "50", "--repeats", "1"],
        ]
    else:
        jobs = [
            [py, HERE / "bench_train.py", "--sizes", "2x512,2x128"],
            [py, HERE / "bench_sample.py", "--hidden-size", "512", "--precisions", "fp32,int8,bf16"],
            [py, HERE / "bench_sample.py", "--hidden-size", "256", "--precisions", "fp32,int8,bf16"],
            [py, HERE / "bench_breakdown.py", "--hidden-size", "512", "--precisions", "fp32,int8"],
            [py, HERE / "bench_corpus.py", "--size-mb", "1024"],
            [py, HERE / "bench_precision.py", "--max-time", "3m"],
            [py, HERE / "bench_serve.py", "--clients", "1,8,64", "--length", "1000"],
            [py, HERE / "bench_serve.py", "--clients", "1", "--length", "200", "--repeats", "1", "--churn", "10000"],
            [py, HERE / "bench_cli_sample.py"],
            [py, HERE / "bench_threads.py", "--length", "1000"],
        ]
    for job in jobs:
        subprocess.run([str(a) for a in job], check=True)


if __name__ == "__main__":
    main()
