"""Training throughput on a CPU shared with another busy process: which thread setting degrades gracefully.

Each case is a real `charrnn train` run in a fresh process (OpenMP reads its environment once, at start-up),
timed from its own progress lines: the median seconds per step after the first `--skip` steps, so start-up,
corpus encoding and the final evaluation are not counted. A competing process is a pure-Python busy loop
pinned to nothing, like a second job a user starts on a laptop.

    python bench/bench_load.py [--steps 20] [--hidden-size 256] [--cases default,passive,threads1,auto]

Prints one JSON object per (case, load) pair, then a summary with the ratios loaded / idle.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.common import bench_corpus_path, machine  # noqa: E402

ALL = str(os.cpu_count() or 1)
CASES = {  # an explicit --threads turns charrnn's thread governor off
    "default": ({}, ["--threads", ALL]),  # torch's default: one OpenMP thread per core, GOMP spin-waits
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", ALL]),
    "threads1": ({}, ["--threads", "1"]),
    "auto": ({}, []),  # charrnn's default: the thread governor fits threads to the free cores
}


def run_case(name: str, loaded: bool, args, work: Path, text: str) -> dict:
    env_extra, flags = CASES[name]
    env = {**os.environ, **env_extra, "CHARRNN_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(REPO)}
    run_dir = work / f"run-{name}-{int(loaded)}"
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        text,
        "--run-dir",
        str(run_dir),
        "--overwrite",
        "--hidden-size",
        str(args.hidden_size),
        "--num-layers",
        "2",
        "--batch-size",
        "64",
        "--seq-len",
        "100",
        "--max-steps",
        str(args.steps),
        "--log-every",
        "1",
        "--eval-every",
        "100000",
        "--seed",
        "1",
        "--device",
        "cpu",
        *flags,
    ]
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stamps = []
        for line in proc.stderr:
            if line.startswith("step"):
                stamps.append(time.perf_counter())
        proc.wait(timeout=3600)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    per_step = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][args.skip :]
    return {
        "case": name,
        "loaded": loaded,
        "steps_timed": len(per_step),
        "median_s_per_step": round(statistics.median(per_step), 4) if per_step else None,
        "returncode": proc.returncode,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", type=int, default=3, help="first per-step times not counted (warm-up)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--cases", default="default,passive,threads1,auto")
    args = parser.parse_args()
    print(json.dumps({"machine": machine()}), flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        text = bench_corpus_path()
        for name in args.cases.split(","):
            for loaded in (False, True):
                r = run_case(name, loaded, args, work, text)
                results.append(r)
                print(json.dumps(r), flush=True)
    summary = {}
    for name in args.cases.split(","):
        idle = next(r for r in results if r["case"] == name and not r["loaded"])["median_s_per_step"]
        busy = next(r for r in results if r["case"] == name and r["loaded"])["median_s_per_step"]
        summary[name] = {
            "idle_s_per_step": idle,
            "loaded_s_per_step": busy,
            "slowdown": round(busy / idle, 2) if idle and busy else None,
        }
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
