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
