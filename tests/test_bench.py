"""The benchmark scripts that the CPU suite can afford to run end to end, at toy sizes (their figures are not
checked: a timed test proves nothing; the scripts must run and say what they measured)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_step_breakdown_accounts_for_every_part_of_a_step():
    cmd = [sys.executable, str(ROOT / "bench" / "bench_breakdown.py"), "--hidden-size", "16", "--length", "8"]
    out = subprocess.run([*cmd, "--repeats", "1", "--num-samples", "4", "--precisions", "fp32"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["precision"], r["num_samples"]) for r in rows] == [("fp32", 1), ("fp32", 4)]
    for r in rows:
        assert r["bench"] == "step_breakdown" and r["chars_per_sec"] > 0
        assert min(r["generate_us"], r["step_us"], r["products_us"], r["head_us"], r["sample_us"]) > 0
        assert r["step_us"] <= r["generate_us"]
        shares = sum(r[f"{k}_share"] for k in ("products", "cell", "head", "sample", "loop"))
        assert abs(shares - 1.0) < 0.01  # the parts add up to the whole per-character time


def test_threads_bench_times_every_place_torch_runs():
    cmd = [sys.executable, str(ROOT / "bench" / "bench_threads.py"), "--hidden-size", "16", "--length", "8"]
    out = subprocess.run([*cmd, "--repeats", "1", "--streams", "1,4"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["streams"] for r in rows] == [1, 4]
    for r in rows:
        places = ("main", "thread", "main_beside_idle_torch_thread", "main_after_it_ended")
        assert r["bench"] == "threads" and min(r[f"{p}_chars_per_s"] for p in places) > 0
        assert abs(r["thread_ratio"] - r["thread_chars_per_s"] / r["main_chars_per_s"]) < 0.01
        assert abs(r["beside_ratio"] - r["main_beside_idle_torch_thread_chars_per_s"] / r["main_chars_per_s"]) < 0.01
