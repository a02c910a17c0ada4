"""The schedule: how much of the budget a run has used, the learning rate at a step, and when it stops.

Deterministic under --max-steps/--max-epochs (so resume is exact); under --max-time alone the wall clock is the
budget."""

from __future__ import annotations

import math

from charrnn.config.train import TrainConfig


def budget_progress(step: int, elapsed: float, cfg: TrainConfig, batches_per_epoch: int) -> float:
    """Fraction of the training budget used, in [0, 1]: of steps or epochs (the larger) when either bounds the
    run, so the schedule is deterministic and resume exact; of wall-clock time under --max-time alone."""
    fracs = []
    if cfg.max_steps:
        fracs.append(step / cfg.max_steps)
    if cfg.max_epochs:
        fracs.append(step / (cfg.max_epochs * batches_per_epoch))
    if not fracs and cfg.max_time:
        fracs.append(elapsed / cfg.max_time)
    return min(1.0, max(fracs)) if fracs else 0.0


def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, times a cosine from 1 to `min_lr_frac` over the budget.

    The budget is steps or epochs when those bound the run (deterministic, so resume is exact; a --max-time
    given as well may then stop the run before the decay ends); under --max-time alone it is the wall-clock
    fraction used, so the decay ends when the time does.
    """
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    stable = 1.0 - cfg.decay_frac  # warm-up, stable, decay: the cosine runs over the last decay_frac only
    t = (progress - stable) / cfg.decay_frac if progress > stable and cfg.decay_frac > 0 else 0.0
    decay = cfg.min_lr_frac + (1.0 - cfg.min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * t))
    return cfg.lr * warm * decay


def stop_reason(step: int, epoch_float: float, elapsed: float, cfg: TrainConfig) -> str | None:
    if cfg.max_steps and step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_epochs and epoch_float >= cfg.max_epochs:
        return "max_epochs"
    if cfg.max_time and elapsed >= cfg.max_time:
        return "max_time"
    return None


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int | None:
    """The steps the run will take when steps or epochs bound it; None under --max-time alone."""
    bounds = []
    if cfg.max_steps:
        bounds.append(cfg.max_steps)
    if cfg.max_epochs:
        bounds.append(math.ceil(cfg.max_epochs * batches_per_epoch))
    return min(bounds) if bounds else None
