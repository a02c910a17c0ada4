"""Benchmark `charrnn score`: characters per second of the whole-text path (8 streams per block, as training's
evaluation), of --per-line in context (one stream) and of --per-line --independent (lines batched).

    .venv/bin/python bench/bench_score.py [--hidden-size 512 --num-layers 2 --max-chars 200000 --line-chars 50000]

Reads tiny-shakespeare (../shared/corpora/tinyshakespeare.txt, or --corpus) and scores its first --max-chars
characters with the whole-text path and its first --line-chars per line (one stream at batch 1 is the slow path
on a CPU). The model is a fresh, untrained 2x512 LSTM: speed does not depend on the weights. Prints one JSON
object, the best of --repeats for each path; never asserts. Without the corpus it prints {"skipped": why}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import SHAKESPEARE, machine  # noqa: E402
from charrnn.generation.lines import score_lines  # noqa: E402
from charrnn.generation.score import ScoreConfig  # noqa: E402
from charrnn.generation.whole import score_text  # noqa: E402
from charrnn.model import CharRNN, ModelConfig  # noqa: E402
from charrnn.text.vocab import Vocab  # noqa: E402


def timed_whole(model: CharRNN, vocab: Vocab, text: str, device: torch.device) -> float:
    start = time.perf_counter()
    score_text(model, vocab, [text], device)
    return time.perf_counter() - start


def timed_lines(model: CharRNN, vocab: Vocab, text: str, device: torch.device, independent: bool) -> float:
    start = time.perf_counter()
    for _ in score_lines(model, vocab, [text], device, ScoreConfig(independent=independent)):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--model", default="lstm", choices=["lstm", "gru", "rnn"])
    parser.add_argument("--max-chars", type=int, default=200_000, help="characters for the whole-text path")
    parser.add_argument("--line-chars", type=int, default=50_000, help="characters for the per-line paths")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    if not args.corpus.exists():
        print(json.dumps({"bench": "score", "skipped": f"{args.corpus} not found; it is the text scored"}))
        return
    text = args.corpus.read_text(encoding="utf-8")
    vocab = Vocab(text)  # the corpus's own characters, as a model trained on it would have
    whole, lines = text[: args.max_chars], text[: args.line_chars]
    device = torch.device(args.device)
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=len(vocab), model=args.model, hidden_size=args.hidden_size, num_layers=args.num_layers
    )
    model = CharRNN(config).to(device).eval()

    # Warm-up: the first calls pay one-off allocation and oneDNN kernel creation.
    timed_whole(model, vocab, text[:5000], device)
    timed_lines(model, vocab, text[:2000], device, independent=False)
    timed_lines(model, vocab, text[:2000], device, independent=True)

    best = {"whole_text": float("inf"), "per_line": float("inf"), "per_line_independent": float("inf")}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every path alike
        best["whole_text"] = min(best["whole_text"], timed_whole(model, vocab, whole, device))
        best["per_line"] = min(best["per_line"], timed_lines(model, vocab, lines, device, independent=False))
        best["per_line_independent"] = min(
            best["per_line_independent"], timed_lines(model, vocab, lines, device, independent=True)
        )

    chars = {"whole_text": len(whole), "per_line": len(lines), "per_line_independent": len(lines)}
    print(
        json.dumps(
            {
                "bench": "score",
                **{
                    name: {"chars": chars[name], "seconds": round(t, 3), "chars_per_sec": round(chars[name] / t, 1)}
                    for name, t in best.items()
                },
                "model": args.model,
                "hidden_size": args.hidden_size,
                "num_layers": args.num_layers,
                "vocab_size": len(vocab),
                "device": str(device),
                "repeats": args.repeats,
                "machine": machine(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
