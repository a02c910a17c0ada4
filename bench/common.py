"""What every benchmark records about the machine, and which corpus it reads."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def drain_seconds(events) -> float:
    """Seconds to run a generator (a sampler's or beam search's output) to its end."""
    start = time.perf_counter()
    for _ in events:
        pass
    return time.perf_counter() - start


def add_model_args(parser, *, length: int) -> None:
    """The model and length flags every sampling benchmark takes."""
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--model", default="lstm", choices=["lstm", "gru", "rnn"])
    parser.add_argument("--length", type=int, default=length)


def model_fields(args, vocab_size: int, length: int) -> dict:
    """What a sampling benchmark's JSON line says about the model it timed, and the machine."""
    return {
        "model": args.model,
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "vocab_size": vocab_size,
        "length": length,
        "repeats": args.repeats,
        "machine": machine(),
    }


def untrained_model(args, vocab_size: int):
    """The seeded, untrained CharRNN a sampling benchmark times from its model flags: speed does not depend on
    the weights."""
    from charrnn.model import CharRNN, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=vocab_size, model=args.model, hidden_size=args.hidden_size, num_layers=args.num_layers
    )
    return CharRNN(config).eval()


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1m": os.getloadavg()[0],  # > cores means another process shared the machine
        # ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 approximate an AVX2-only CPU
        "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
        "cpu_flags": _isa_flags(),
    }


def _isa_flags() -> str:
    """The widest vector extensions this CPU has (the ISA setting above may forbid using them)."""
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags)


def bench_corpus_path() -> str:
    """tiny-shakespeare from ../shared when present, else the built-in pydocs corpus."""
    return str(SHAKESPEARE) if SHAKESPEARE.exists() else "pydocs"
