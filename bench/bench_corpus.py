"""Benchmark corpus encoding: throughput, peak memory, and the cached second load.

    .venv/bin/python bench/bench_corpus.py [--size-mb 1024] [--dir DIR]

Generates a deterministic mixed UTF-8 corpus (ASCII words with Cyrillic, CJK and emoji mixed in), written
in blocks so it is never held in memory, then measures load_corpus in a child process so that its RSS is
clean: the baseline is the peak RSS after `import torch` (charrnn imports it anyway) and before encoding.
As a same-process reference, the child first reads + sha256-hashes the file (the floor of pass 1's I/O).
Prints one JSON object per line; never asserts. Timings on a shared machine are a lower bound.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SEED = 1234
BLOCK_WORDS = 200_000  # ~1.2 MB of text per block


def _lexicon(rng: np.random.Generator) -> tuple[list[bytes], np.ndarray]:
    """Words of four scripts with sampling weights: ~90% ASCII, then Cyrillic, CJK and emoji."""
    ascii_letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    cyrillic = np.array([chr(c) for c in range(0x0430, 0x0450)])
    cjk = np.array([chr(c) for c in range(0x4E00, 0x4E00 + 3000)])  # common ideographs: vocab > 256 -> uint16
    emoji = np.array([chr(c) for c in range(0x1F600, 0x1F640)])
    words, weights = [], []
    for alphabet, count, length, weight in ((ascii_letters, 4000, 7, 0.90), (cyrillic, 800, 8, 0.06),
                                            (cjk, 800, 3, 0.03), (emoji, 64, 1, 0.01)):  # fmt: skip
        for _ in range(count):
            words.append("".join(rng.choice(alphabet, rng.integers(1, length + 1))))
            weights.append(weight / count)
    for punct in (".", ",", "\n", "!", "?", ";", "\n\n", "—", "«", "»"):
        words.append(punct)
        weights.append(0.02)
    p = np.array(weights)
    return [w.encode("utf-8") for w in words], p / p.sum()


def generate(path: Path, size_mb: int) -> int:
    rng = np.random.default_rng(SEED)
    words, p = _lexicon(rng)
    pool = np.array([w + b" " for w in words], dtype=object)
    target, written = size_mb << 20, 0
    with open(path, "wb") as f:
        while written < target:
            block = b"".join(pool[rng.choice(len(pool), BLOCK_WORDS, p=p)])[: target - written]
            block = block.decode("utf-8", "ignore").encode("utf-8")  # the last cut may split a character
            f.write(block)
            written += len(block)
    return written


CHILD = r"""
import json, os, resource, sys, time, hashlib
from pathlib import Path
import torch
def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
from charrnn.text.corpus import load_corpus
path, cache = Path(sys.argv[1]), Path(sys.argv[2])
size = path.stat().st_size
t0 = time.perf_counter()
h = hashlib.sha256()
with open(path, "rb") as f:
    while chunk := f.read(8 << 20):
        h.update(chunk)
read_s = time.perf_counter() - t0
baseline = rss_mb()
t0 = time.perf_counter()
corpus = load_corpus([str(path)], cache_dir=cache)
encode_s = time.perf_counter() - t0
peak = rss_mb()
t0 = time.perf_counter()
again = load_corpus([str(path)], cache_dir=cache)
cached_s = time.perf_counter() - t0
machine = {"cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
print(json.dumps({"bench": "encode", "size_mb": round(size / 2**20, 1), "mb_per_s": round(size / 2**20 / encode_s, 1),
                  "seconds": round(encode_s, 2), "peak_rss_mb_above_baseline": round(max(0.0, peak - baseline), 1),
                  "baseline_rss_mb": round(baseline, 1), "read_sha256_mb_per_s": round(size / 2**20 / read_s, 1),
                  "num_chars": len(corpus.ids), "vocab_size": len(corpus.vocab), "dtype": corpus.ids.dtype.name,
                  "machine": machine}), flush=True)
print(json.dumps({"bench": "encode_cached", "seconds": round(cached_s, 4),
                  "same_sha256": again.sha256 == corpus.sha256}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="corpus size to generate (default 1024)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the corpus and cache (default: $TMPDIR)")
    args = parser.parse_args()
    parent = args.dir or Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(parent).free >> 20
    needed_mb = args.size_mb * 4  # the corpus plus up to 2 bytes of ids per character, with room to spare
    if free_mb < needed_mb:
        print(json.dumps({"bench": "encode", "skipped": f"{free_mb} MB free in {parent}, {needed_mb} MB needed"}))
        return
    work = Path(tempfile.mkdtemp(prefix="bench_corpus-", dir=parent))
    try:
        corpus_path = work / "mixed.txt"
        generate(corpus_path, args.size_mb)
        repo = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": str(repo) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        result = subprocess.run([sys.executable, "-c", CHILD, str(corpus_path), str(work / "cache")], env=env,
                                capture_output=True, text=True)  # fmt: skip
        sys.stdout.write(result.stdout)
        if result.returncode != 0:
            print(json.dumps({"bench": "encode", "error": result.stderr.strip().splitlines()[-1:]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
