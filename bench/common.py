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
    }


def bench_corpus_path() -> str:
    """tiny-shakespeare from ../shared when present, else the built-in pydocs corpus."""
    return str(SHAKESPEARE) if SHAKESPEARE.exists() else "pydocs"
