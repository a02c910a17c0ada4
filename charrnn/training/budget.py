"""--max-time's bookkeeping: the run's elapsed time (across resumes), what evaluating has cost, and the expected
cost of the final evaluation and save, kept back so that the whole command, not only the loop, ends in time."""

from __future__ import annotations

import time

import numpy as np
import torch

from charrnn.config.train import TrainConfig
from charrnn.model import CharRNN
from charrnn.training.evaluation import evaluate

# Under --max-time (with --eval-every left at its default) evaluations during the run may take at most this share
# of the time so far; a scheduled one beyond it only saves a checkpoint. Evaluating 111 k characters every 200
# steps of 2x512 took ~6 % of a 10-minute budget on 2 cores (bench/README.md, Quality per
# minute), steps the model never got.
EVAL_SHARE = 0.04
CLOSING_MARGIN = 1.0  # seconds kept back beyond the final evaluation and save's expected cost


class TimeBudget:
    def __init__(self, cfg: TrainConfig, started: float, *, may_thin: bool) -> None:
        """started: time.perf_counter() at the command's start; may_thin: whether evaluations may be thinned to
        EVAL_SHARE (under --max-time with the default --eval-every, in one process: ranks would have to agree)."""
        self.cfg, self.started, self.may_thin = cfg, started, may_thin and cfg.max_time is not None
        self.elapsed_prior = 0.0  # a resumed run's time before this command
        self.eval_s, self.closing_s, self.thinned = 0.0, 0.0, False

    @property
    def elapsed(self) -> float:
        return self.elapsed_prior + (time.perf_counter() - self.started)

    @property
    def budget_elapsed(self) -> float:
        """The elapsed time at which the command would end if the loop stopped now: the final evaluation and
        save still to come are counted in, so --max-time ends the whole command, not only the loop."""
        return self.elapsed + (self.closing_s if self.cfg.max_time else 0.0)

    def estimate_closing(self, model: CharRNN, val_ids: np.ndarray, device: torch.device, amp: bool) -> None:
        """Seconds for the final evaluation and save, before a whole one has been timed: score a slice of the
        validation text (a warm-up call first, as oneDNN builds its kernels on the first), scale it to the
        whole, and add writing the weights and Adam's moments at a slow disk's 100 MB/s."""
        cfg = self.cfg
        val_chars = min(len(val_ids) - 1, cfg.eval_chars or len(val_ids))
        seq_len = max(cfg.seq_len, 256)
        sample = min(val_chars, 2 * cfg.eval_streams * seq_len)
        ids = val_ids[: sample + 1]
        evaluate(model, ids[: min(len(ids), cfg.eval_streams + 1)], cfg.eval_streams, seq_len, device, amp)
        t = time.perf_counter()
        evaluate(model, ids, cfg.eval_streams, seq_len, device, amp)
        scoring = (time.perf_counter() - t) * val_chars / max(1, sample)
        self.closing_s = scoring + 12 * model.num_params() / 100e6 + CLOSING_MARGIN

    def evaluation_affordable(self) -> bool:
        """Whether a scheduled evaluation fits in EVAL_SHARE of the time so far (always, unless may_thin)."""
        if not self.may_thin:
            return True
        return self.eval_s + self.closing_s - CLOSING_MARGIN <= EVAL_SHARE * (time.perf_counter() - self.started)

    def spent_evaluating(self, seconds: float) -> None:
        """An evaluation and save took `seconds`: the final one will cost what this one did, so the budget
        reserves exactly that."""
        self.eval_s += seconds
        self.closing_s = seconds + CLOSING_MARGIN
