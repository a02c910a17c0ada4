"""What every benchmark records about the machine, and which corpus it reads."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


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
