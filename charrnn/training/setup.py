"""What a training run starts from and ends with, as typed objects: the Setup job.py decides once (the corpus,
where the model starts, the config, the run directory, the processes and the device) and the Trainer takes; the
TrainResult it returns; and the corpus-size check both make.

    TrainJob (job.py) -> Setup -> Trainer (loop.py) -> TrainResult
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charrnn import runtime
from charrnn.checkpoint.rundir import RunDir
from charrnn.checkpoint.state import ModelBundle, TrainState
from charrnn.config.model import ModelConfig
from charrnn.config.train import TrainConfig
from charrnn.errors import CorpusError
from charrnn.text.corpus import Corpus
from charrnn.text.data import min_corpus_chars
from charrnn.text.vocab import Vocab

MAX_LOGITS = 1 << 28  # B * T * V values per step; fp32 logits, their softmax and gradient are 3 GiB at the limit


@dataclass
class Resumed:
    """The checkpoint a resume starts from, read once: its model part, its training part, where it was."""

    checkpoint: dict
    bundle: ModelBundle
    state: TrainState
    path: Path


@dataclass
class Start:
    """What the model starts from: the corpus in the model's vocabulary, and a resumed run or fine-tuning's
    weights (`init`) when there is one."""

    ids: np.ndarray  # (N,) the corpus in `vocab`'s ids
    vocab: Vocab
    model_config: ModelConfig | None = None
    resumed: Resumed | None = None
    init: ModelBundle | None = None
    init_path: Path | None = None


@dataclass
class Setup:
    """Everything Trainer needs, each decided once."""

    corpus: Corpus
    start: Start
    cfg: TrainConfig
    run_dir: RunDir
    dist: runtime.Dist
    device: torch.device
    given: set[str] | None = None  # the options typed on the command line (None: a library caller)
    started: float = 0.0  # time.perf_counter() at the command's start


@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path
    last_path: Path
    step: int
    best_val_loss: float
    stop_reason: str  # "max_steps" | "max_epochs" | "max_time" | "signal"
    signal: int | None = None
    rank: int = 0  # this process's under torchrun: only rank 0 reports the result
    world_size: int = 1


def check_corpus_size(n: int, cfg: TrainConfig, vocab_size: int | None = None) -> None:
    """Refuse, before anything is allocated or written, a corpus too short for one batch, or a vocabulary whose
    (B, T, V) logits would not fit in memory."""
    need = min_corpus_chars(cfg.batch_size, cfg.seq_len, cfg.val_frac)
    if n < need:
        raise CorpusError(
            f"the corpus has {n:,} characters but --batch-size {cfg.batch_size}, --seq-len {cfg.seq_len} and "
            f"--val-frac {cfg.val_frac} need at least {need:,}; use more text or smaller --batch-size/--seq-len."
        )
    if vocab_size is not None and cfg.batch_size * cfg.seq_len * vocab_size > MAX_LOGITS:
        raise CorpusError(
            f"the corpus has {vocab_size:,} distinct characters, so one step's logits (--batch-size {cfg.batch_size} x "
            f"--seq-len {cfg.seq_len} x {vocab_size:,}) exceed the limit of {MAX_LOGITS:,} values (about "
            f"{MAX_LOGITS * 4 >> 30} GiB, and training keeps several such tensors); use a smaller --batch-size or "
            "--seq-len, or a corpus with fewer distinct characters."
        )


def rank_view(
    saved: TrainState, dist: runtime.Dist, batches_per_epoch: int, batch_index: int, report: Callable[[str, dict], None]
) -> tuple[list, dict, int]:
    """A resumed run's carried state, RNG and batch position as this process sees them: its own rank's under
    the same world size; under another, no carried state, streams re-sharded at the same fraction of the epoch."""
    world = dist.world_size
    if saved.world_size == world:
        if dist.enabled and saved.hidden_ranks is not None and saved.rng_ranks is not None:
            return saved.hidden_ranks[dist.rank], saved.rng_ranks[dist.rank], batch_index
        return saved.hidden, saved.rng, batch_index
    text = (
        f"the run was saved with {saved.world_size} process(es) and resumes with {world}: streams are "
        "re-sharded, so this resume is not bit-exact"
    )
    report("warning", {"text": text})
    saved_per_epoch = saved.batches_per_epoch or batches_per_epoch  # per epoch scales with 1 / world size
    batch_index = min(batch_index * batches_per_epoch // max(saved_per_epoch, 1), batches_per_epoch - 1)
    return [], dict(saved.rng, cuda=[]), batch_index
