"""Issue 9's ablation: start from the plain loop's recipe and move one knob at a time toward charrnn's defaults.

Every row is a `bench/quality.py` run with the same seed, corpus, budget and scoring rule (best.pt, the last
10 % scored as one carried stream); the first row is the plain 50-line loop itself. Rows run one after another,
never in parallel. Prints quality.py's JSON lines, each tagged with its row name.

    .venv/bin/python bench/ablation.py --max-time 3m [--rows plain,same_knobs,clip5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# charrnn given the plain loop's knobs (model, batch, sequence length, learning rate, dropout) and, pinned so the
# rows mean the same whatever the defaults become, the schedule charrnn had before issue 9: warm-up 20, then a
# cosine over the whole budget to 2 %, weight decay 0.1, clip 1.
SAME_KNOBS = [
    "--hidden-size", "512", "--num-layers", "2", "--batch-size", "50", "--seq-len", "50", "--lr", "2e-3",
    "--dropout", "0.2", "--warmup-steps", "20", "--decay-frac", "1", "--min-lr-frac", "0.02",
    "--weight-decay", "0.1", "--grad-clip", "1",
]  # fmt: skip
NO_DROPOUT = [*SAME_KNOBS[:-12], "--dropout", "0", "--warmup-steps", "20", "--weight-decay", "0.1", "--grad-clip", "1"]
ROWS = {
    # the first session of issue 9 (one knob at a time from the plain loop's recipe)
    "same_knobs": SAME_KNOBS,
    "clip5": [*SAME_KNOBS, "--grad-clip", "5"],
    "no_weight_decay": [*SAME_KNOBS, "--weight-decay", "0"],
    "constant_lr": [*SAME_KNOBS, "--min-lr-frac", "1", "--warmup-steps", "0"],
    "no_mid_run_eval": [*SAME_KNOBS, "--eval-every", "1000000"],
    "plain_recipe": [
        *SAME_KNOBS,
        "--grad-clip",
        "5",
        "--weight-decay",
        "0",
        "--min-lr-frac",
        "1",
        "--warmup-steps",
        "0",
    ],
    "decay_last_20pct": [*SAME_KNOBS, "--decay-frac", "0.2"],  # warm-up, stable, then cosine over the last 20 %
    "decay_last_40pct": [*SAME_KNOBS, "--decay-frac", "0.4"],
    # the second session: no dropout (few passes), then schedule, rate, batch and size
    "d0_constant": [*NO_DROPOUT, "--min-lr-frac", "1"],
    "d0_decay_last_20pct_to_10pct": [*NO_DROPOUT, "--decay-frac", "0.2", "--min-lr-frac", "0.1"],
    "d0_constant_lr3e-3": [*NO_DROPOUT, "--min-lr-frac", "1", "--lr", "3e-3"],
    "d0_constant_b32t64": [*NO_DROPOUT, "--min-lr-frac", "1", "--batch-size", "32", "--seq-len", "64"],
    "d0_constant_2x384": [*NO_DROPOUT, "--min-lr-frac", "1", "--hidden-size", "384"],
    # today's defaults, nothing given
    "defaults": [],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-time", default="10m")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rows", default="plain," + ",".join(ROWS))
    args = ap.parse_args()
    for row in args.rows.split(","):
        cmd = [sys.executable, str(HERE / "quality.py"), "--max-time", args.max_time, "--seed", str(args.seed)]
        if row == "plain":
            cmd += ["--plain-only"]
        else:
            cmd += ["--", *ROWS[row]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(json.dumps({"row": row, "error": proc.stderr[-2000:]}), flush=True)
            continue
        for line in proc.stdout.splitlines():
            print(json.dumps({"row": row, **json.loads(line)}), flush=True)


if __name__ == "__main__":
    main()
