"""Quality per minute: train on tiny-shakespeare for a fixed wall-clock budget, then score best.pt on the
validation split (last 10 %) as ONE stream with the hidden state carried through the whole split, every
character counted once (the rule the reference figures use).

    .venv/bin/python bench/quality.py --max-time 10m                 # default settings (auto-sized model)
    .venv/bin/python bench/quality.py --max-time 3m -- --lr 3e-3     # anything after -- goes to `charrnn train`

Prints one JSON object. Run it on an idle machine: throughput, and so quality, falls sharply under contention.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import bench_corpus_path, machine  # noqa: E402
from charrnn.corpus import load_corpus  # noqa: E402
from charrnn.data import split  # noqa: E402
from charrnn.model import load_model  # noqa: E402
from charrnn.train import evaluate  # noqa: E402


def score_one_stream(ckpt: Path, corpus_path: str, val_frac: float = 0.1) -> float:
    model, vocab, _ = load_model(ckpt, "cpu")
    corpus = load_corpus([corpus_path])
    assert corpus.vocab.chars == vocab.chars, "the checkpoint was trained on another corpus"
    _, val = split(corpus.ids, val_frac)
    return evaluate(model, val, num_streams=1, seq_len=1024, device=torch.device("cpu"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-time", default="10m")
    ap.add_argument("--keep-run", type=Path, help="train into this run directory and keep it")
    ap.add_argument("train_args", nargs="*", help="extra `charrnn train` flags (after --)")
    args = ap.parse_args()
    corpus_path = bench_corpus_path()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep_run or Path(tmp) / "run"
        cmd = [sys.executable, "-m", "charrnn", "train", corpus_path, "--max-time", args.max_time,
               "--run-dir", str(run_dir), "--seed", "1", "--log-every", "100", *args.train_args]
        load_before = os.getloadavg()[0]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"training failed:\n{proc.stderr[-3000:]}")
        chosen = [ln for ln in proc.stderr.splitlines() if ln.startswith("auto-sized")]
        metrics = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
        best = min((m for m in metrics if math.isfinite(m["val_loss"])), key=lambda m: m["val_loss"])
        ckpt = torch.load(run_dir / "best.pt", weights_only=True)
        val = score_one_stream(run_dir / "best.pt", corpus_path)
    print(json.dumps({
        "bench": "quality_per_time", "corpus": Path(corpus_path).stem, "max_time": args.max_time,
        "train_args": args.train_args, "auto_size": chosen[0] if chosen else None,
        "model": ckpt["model_config"], "steps": ckpt["step"], "epochs": round(ckpt["epoch"], 2),
        "val_loss_one_stream": round(val, 4), "val_bpc_one_stream": round(val / math.log(2), 4),
        "val_loss_during_training": round(best["val_loss"], 4), "train_loss_at_best": round(best["train_loss"], 4), "train_chars_per_sec": metrics[-1]["chars_per_sec"],
        "wall_s": round(wall, 1), "load_avg_1m_before": load_before, "machine": machine(),
    }), flush=True)


if __name__ == "__main__":
    main()
