"""Start-up: whole-process wall time of `charrnn --help`, `charrnn sample --help`, `charrnn info` and
`charrnn sample -n 1` (to its first character), best of N, against `python -c "import torch"` in the same run.

    .venv/bin/python bench/bench_startup.py [--repeats 10]

Prints one JSON object. A tiny checkpoint is trained first (a few seconds) for `info` and `sample`.
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

from bench.common import machine  # noqa: E402


def best_seconds(cmd: list[str], repeats: int, cwd: Path, until_output: bool = False) -> float:
    """Fastest of `repeats` runs: to the process's end, or (until_output) to its first byte on stdout."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        if until_output:
            proc.stdout.read(1)
            elapsed = time.perf_counter() - t
            proc.stdout.read()
        proc.wait()
        if not until_output:
            elapsed = time.perf_counter() - t
        best = min(best, elapsed)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    charrnn = [sys.executable, "-m", "charrnn"]
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "t.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 200)
        train = [*charrnn, "train", "t.txt", "--hidden-size", "32", "--num-layers", "1", "--max-steps", "5"]
        subprocess.run([*train, "--run-dir", "r", "-q", "--device", "cpu"], cwd=work, check=True, capture_output=True)
        r = args.repeats
        times = {
            "python_import_torch": best_seconds([sys.executable, "-c", "import torch"], r, work),
            "charrnn_help": best_seconds([*charrnn, "--help"], r, work),
            "charrnn_sample_help": best_seconds([*charrnn, "sample", "--help"], r, work),
            "charrnn_info": best_seconds([*charrnn, "info", "r"], r, work, until_output=True),
            "charrnn_sample_first_char": best_seconds(
                [*charrnn, "sample", "r", "-n", "1", "--seed", "1", "-q"], r, work, until_output=True
            ),
        }
    out = {"bench": "startup", "repeats": r, **{k: round(v, 3) for k, v in times.items()}}
    out["machine"] = machine()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
