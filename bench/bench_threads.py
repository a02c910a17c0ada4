"""Benchmark where torch runs: generate()'s chars/s on the main thread, on a thread of its own, on the main thread
beside an idle thread that has once run torch, and on the main thread again once that thread has ended.

    .venv/bin/python bench/bench_threads.py [--hidden-size 512 --num-layers 2 --length 2000 --streams 1,64]

Why `charrnn serve` steps every model on the main thread and loads a reloaded checkpoint on a thread that then
ends (serve/scheduler.py, serve/watch.py). Each thread that runs torch gets an OpenMP pool; with more OpenMP
threads than cores, libgomp stops spin-waiting at barriers, and every thread's steps slow down. One process, the
four cases interleaved, best of --repeats; one JSON object per stream count; never asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_serve import CHARS  # noqa: E402
from bench.common import add_model_args, model_fields  # noqa: E402


def rate(model, n: int, length: int) -> float:
    start = time.perf_counter()
    model.generate("\n", length=length, temperature=0.8, num_samples=n, seed=0)
    return n * length / (time.perf_counter() - start)


def on_thread(fn: Callable[[], float]) -> float:
    out: list[float] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


def beside_idle_torch_thread(fn: Callable[[], float]) -> float:
    """fn() on this thread while another one, which has run one torch product, waits."""
    import torch

    ran, done = threading.Event(), threading.Event()

    def idle() -> None:
        a = torch.randn(512, 512)
        _ = a @ a  # a parallel region: this thread now has an OpenMP pool
        ran.set()
        done.wait()

    thread = threading.Thread(target=idle)
    thread.start()
    ran.wait()
    try:
        return fn()
    finally:
        done.set()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser, length=2000)
    parser.add_argument("--streams", default="1,64", help="comma-separated num_samples")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import tempfile

    import charrnn
    from bench.bench_serve import export_model

    with tempfile.TemporaryDirectory() as tmp:
        model = charrnn.load(export_model(args, Path(tmp)), device="cpu")
    for n in (int(s) for s in args.streams.split(",")):

        def fn(n: int = n) -> float:
            return rate(model, n, args.length)

        fn()  # warm-up: the first call lays out weights and JITs oneDNN's kernels
        best = {"main": 0.0, "thread": 0.0, "main_beside_idle_torch_thread": 0.0, "main_after_it_ended": 0.0}
        for _ in range(args.repeats):
            best["main"] = max(best["main"], fn())
            best["thread"] = max(best["thread"], on_thread(fn))
            best["main_beside_idle_torch_thread"] = max(best["main_beside_idle_torch_thread"],
                                                        beside_idle_torch_thread(fn))  # fmt: skip
            best["main_after_it_ended"] = max(best["main_after_it_ended"], fn())
        line = {"bench": "threads", "streams": n, **{f"{k}_chars_per_s": round(v) for k, v in best.items()}}
        line["thread_ratio"] = round(best["thread"] / best["main"], 3)
        line["beside_ratio"] = round(best["main_beside_idle_torch_thread"] / best["main"], 3)
        print(json.dumps({**line, **model_fields(args, len(CHARS), args.length)}), flush=True)


if __name__ == "__main__":
    main()
