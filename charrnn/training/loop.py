"""The training loop: fetch a batch, step, maybe evaluate, maybe save, maybe stop. Trainer.run() reads top to
bottom in one place.

The Trainer takes a ready Setup (setup.py; job.py decides everything once). The step and its on-device
divergence guard are step.py's TrainStep, the learning rate and the stopping rule schedule.py's, the time budget
budget.py's, the validation loss and previews evaluation.py's. Host syncs (.item()) happen only every
`log_every` steps and at evaluations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from charrnn import runtime
from charrnn.checkpoint.rules import check_resume_state
from charrnn.checkpoint.state import CorpusInfo, ModelBundle, TrainState, checkpoint_dict
from charrnn.errors import DivergedError
from charrnn.fields import RESUME_ADVICE
from charrnn.model import CharRNN, State, copy_weights, load_weights
from charrnn.text.data import DeviceFeeder, split
from charrnn.training.budget import EVAL_SHARE, TimeBudget
from charrnn.training.evaluation import evaluate, preview_record
from charrnn.training.progress import append_metrics, chars_per_sec, check_metrics_writable, eta_seconds, plan_line
from charrnn.training.schedule import budget_progress, lr_at, stop_reason, total_steps
from charrnn.training.setup import Resumed, Setup, TrainResult, rank_view
from charrnn.training.step import TrainStep, data_parallel, make_optimizer

Reporter = Callable[[str, dict], None]


class Trainer:
    """One training run on a ready Setup; `run()` is the loop."""

    def __init__(self, setup: Setup, report: Reporter, should_stop: Callable[[], int | None]):
        self.setup, self.report, self.should_stop = setup, report, should_stop
        self.cfg, self.run_dir, self.dist, self.device = setup.cfg, setup.run_dir, setup.dist, setup.device
        cfg, self.vocab = self.cfg, setup.start.vocab
        self.train_ids, self.val_ids = split(setup.start.ids, cfg.val_frac)
        # Under torchrun each rank trains its own batch_size streams out of batch_size * world_size.
        self.feeder = DeviceFeeder(
            self.train_ids, cfg.batch_size, cfg.seq_len, self.device, self.dist.rank, self.dist.world_size
        )
        self.amp = cfg.amp and self.device.type == "cuda"
        self.model = self._build_model()
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.train_step = TrainStep(
            self.model, self.optimizer, self.device, cfg.grad_clip, amp=self.amp,
            net=data_parallel(self.model, self.dist, self.device, cfg.seed),
            distributed=self.dist.enabled,
        )  # fmt: skip
        self.governor = runtime.ThreadGovernor(enabled=cfg.threads is None and self.device.type == "cpu")
        eval_every_given = setup.given is not None and "eval_every" in setup.given
        self.budget = TimeBudget(cfg, setup.started, may_thin=not self.dist.enabled and not eval_every_given)
        # Position and counters: a resume overwrites them from the checkpoint.
        self.step, self.epoch, self.batch_index, self.first_step = 0, 0, 0, 0
        self.lr, self.chars_per_sec = cfg.lr, 0.0
        self.best_val, self.best_step, self.last_val, self.skipped, self.evaluated_step = math.inf, -1, math.nan, 0, -1
        self.state: State = self.model.init_state(cfg.batch_size, self.device)
        if setup.start.resumed is not None:
            self._restore(setup.start.resumed)
        if self.dist.is_main:
            self.run_dir.prepare()
            check_metrics_writable(self.run_dir.metrics_path)
            if self.cfg.sample_length:
                check_metrics_writable(self.run_dir.samples_path)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, per_epoch = self.cfg, self.feeder.batches_per_epoch
        if cfg.max_time and self.dist.is_main:
            self.budget.estimate_closing(self.model, self.val_ids, self.device, self.amp)
        self.first_step = self.step
        self._report_start()
        window = LogWindow(time.perf_counter())
        train_loss, reason, signum = math.nan, None, None
        while True:
            asked = self.should_stop()
            elapsed, signum = runtime.agree_to_stop(self.dist, self.device, self.budget.budget_elapsed, asked)
            reason = stop_reason(self.step, self.epoch_float, elapsed, cfg) or ("signal" if signum else None)
            if reason:
                break
            self.lr = lr_at(self.step, budget_progress(self.step, elapsed, cfg, per_epoch), cfg)
            self._step(self.lr)
            window.steps += 1
            if window.steps in (2, 4) and self.step < cfg.log_every:
                self._fit_threads()  # early, so a loaded machine is not slow for a whole first window
            # The first step is reported at once: the user sees the speed and ETA within seconds, not a window.
            if self.step % cfg.log_every == 0 or self.step == self.first_step + 1:
                train_loss = self._log(window)
            if self.step % cfg.eval_every == 0 and self.budget.evaluation_affordable():
                self._evaluate_and_save(train_loss)
            elif self.step % cfg.eval_every == 0:
                self._save_only(train_loss)
            if self.step % (cfg.sample_every or cfg.eval_every) == 0:
                self._preview()  # after the evaluation, outside its timing: a preview is not part of the budget
        if window.steps:
            train_loss = self._log(window)
        if reason == "signal":
            self.save(train_loss, is_best=False)  # no evaluation: get out within seconds
        elif self.evaluated_step != self.step:
            self._evaluate_and_save(train_loss)
            if cfg.sample_every is None:
                self._preview()
        return self._result(reason, signum)

    def _step(self, lr: float) -> None:
        """The next batch through TrainStep; a new pass restarts every stream at its beginning."""
        if self.batch_index == 0:
            self.state = tuple(s.zero_() for s in self.state)
        x, y = self.feeder.batch(self.batch_index)  # (B, T), (B, T)
        self.state = self.train_step(x, y, self.state, lr)
        self.step += 1
        self.batch_index += 1
        if self.batch_index == self.feeder.batches_per_epoch:
            self.batch_index = 0
            self.epoch += 1

    def _result(self, reason: str, signum: int | None) -> TrainResult:
        best = self.run_dir.best_path if self.run_dir.best_path.exists() else self.run_dir.last_path
        return TrainResult(
            self.run_dir.path, best, self.run_dir.last_path, self.step, self.best_val, reason, signum,
            self.dist.rank, self.dist.world_size,
        )  # fmt: skip

    # -- set-up ----------------------------------------------------------------------------------
    def _build_model(self) -> CharRNN:
        start = self.setup.start
        runtime.seed_everything(self.cfg.seed)
        assert start.model_config is not None  # job.py sets it for every run, new or resumed
        start.model_config.check_trainable()  # with the real vocabulary
        model = CharRNN(start.model_config).to(self.device)
        if start.init is not None:
            load_weights(model, start.init.weights, start.init_path)
            self.report("message", {"text": f"initialised weights from {start.init_path}"})
        return model

    def _restore(self, resumed: Resumed) -> None:
        # Every tensor is checked before any kernel touches it: a crafted optimizer moment of the wrong shape
        # would otherwise make the fused AdamW step write past its buffer.
        saved = resumed.state
        check_resume_state(
            resumed.checkpoint, self.model, self.optimizer, resumed.path, batch_size=self.cfg.batch_size,
            world_size=self.dist.world_size, uses_scaler=self.train_step.scaler is not None,
            batches_per_epoch=self.feeder.batches_per_epoch,
        )  # fmt: skip
        copy_weights(self.model, resumed.bundle.weights, resumed.path, RESUME_ADVICE)  # checked just above
        self.optimizer.load_state_dict(saved.optimizer)
        if self.train_step.scaler is not None and saved.scaler:
            self.train_step.scaler.load_state_dict(saved.scaler)
        self.step, self.epoch, self.batch_index = saved.step, saved.epoch, saved.batch_index
        self.budget.elapsed_prior, self.skipped = saved.elapsed_s, saved.skipped_steps
        self.best_val, self.best_step, self.last_val = saved.best_val_loss, saved.best_step, saved.val_loss
        hidden, rng, self.batch_index = rank_view(
            saved, self.dist, self.feeder.batches_per_epoch, self.batch_index, self.report
        )
        if hidden and self.batch_index != 0:
            # float32: an AMP run carries fp16 state, which a CPU resume could not feed to its LSTM.
            self.state = tuple(h.to(self.device, torch.float32) for h in hidden)
        # RNG last: anything that draws random numbers after this would break bit-exact resume.
        runtime.set_rng_state(rng)
        if saved.world_size != self.dist.world_size and self.dist.enabled:
            runtime.seed_everything(self.cfg.seed + 1_000_003 * self.dist.rank + self.step)  # distinct masks per rank

    # -- checkpoints -----------------------------------------------------------------------------
    def train_state(self, train_loss: float) -> TrainState | None:
        """Everything beyond the model to resume exactly. Under torchrun every rank calls this (it gathers each
        rank's RNG and carried state); rank 0 gets the result, the others None."""
        hidden, rng = [s.detach().float().cpu() for s in self.state], runtime.rng_state()
        ranks = runtime.gather(self.dist, (hidden, rng))
        if not self.dist.is_main:
            return None
        corpus, scaler, many = self.setup.corpus, self.train_step.scaler, self.dist.enabled
        return TrainState(
            train_config=self.cfg.to_dict(),
            corpus=CorpusInfo(corpus.name, corpus.sha256, int(len(corpus.ids)), list(corpus.sources)),
            step=self.step, epoch=self.epoch, batch_index=self.batch_index,
            batches_per_epoch=self.feeder.batches_per_epoch, optimizer=self.optimizer.state_dict(), rng=rng,
            hidden=hidden, scaler=scaler.state_dict() if scaler is not None else None,
            world_size=self.dist.world_size, hidden_ranks=[r[0] for r in ranks] if many else None,
            rng_ranks=[r[1] for r in ranks] if many else None, elapsed_s=self.budget.elapsed,
            train_loss=train_loss, val_loss=self.current_val, best_val_loss=self.best_val, best_step=self.best_step,
            skipped_steps=self.skipped, device=str(self.device),
        )  # fmt: skip

    def save(self, train_loss: float, is_best: bool) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise DivergedError(
                f"diverged at step {self.step}: the weights are no longer finite; "
                f"{self._kept_checkpoint()}; try a lower --lr."
            )
        state = self.train_state(train_loss)
        if state is not None:  # rank 0 writes
            self.run_dir.save(checkpoint_dict(ModelBundle.of(self.model, self.vocab), state), self.step, is_best)
        runtime.barrier(self.dist)

    def _kept_checkpoint(self) -> str:
        """What a stopped run leaves behind, in words that are true: a run can diverge before its first save."""
        if self.run_dir.last_path.exists():
            return f"the last good checkpoint in {self.run_dir.path} is kept"
        return "no checkpoint had been written yet"

    # -- progress --------------------------------------------------------------------------------
    @property
    def epoch_float(self) -> float:
        return self.epoch + self.batch_index / self.feeder.batches_per_epoch

    @property
    def current_val(self) -> float:
        """The validation loss of the weights as they are now: NaN when they have not been evaluated."""
        return self.last_val if self.evaluated_step == self.step else math.nan

    def total_steps(self) -> int | None:
        return total_steps(self.cfg, self.feeder.batches_per_epoch)

    def _report_start(self) -> None:
        cfg, elapsed = self.cfg, self.budget.elapsed
        plan = plan_line(self.model, cfg, self.feeder.batches_per_epoch, self.step, elapsed, self.device)
        eta = max(0.0, cfg.max_time - elapsed) if cfg.max_time else None
        info = {"step": self.step, "total_steps": self.total_steps(), "max_time": cfg.max_time}
        self.report("start", info | {"elapsed_s": elapsed, "eta_s": eta, "plan": plan})

    def _fit_threads(self) -> None:
        threads = self.governor.check()
        if threads is not None:
            busy = (
                "other processes are using the CPU" if threads < self.governor.max_threads else "the CPU is free again"
            )
            self.report("message", {"text": f"{busy}: training with {threads} thread(s) (--threads fixes the count)"})

    def _log(self, window: LogWindow) -> float:
        """The only per-window host sync: the step's loss sum and divergence counters, then a progress line."""
        self._fit_threads()
        done = self.train_step.read_window(window.steps)
        self.skipped += done.skipped
        if done.longest_bad_streak >= self.cfg.max_skips:
            raise DivergedError(
                f"diverged at step {self.step}: {self.cfg.max_skips} consecutive steps had a non-finite loss or "
                f"gradient (skipped without updating the weights); {self._kept_checkpoint()}; try a lower --lr or "
                "a smaller --grad-clip."
            )
        steps, seconds = window.steps, window.restart()
        self.chars_per_sec = chars_per_sec(steps, self.cfg.batch_size * self.cfg.seq_len, seconds)
        total, elapsed = self.total_steps(), self.budget.elapsed
        record = {
            "step": self.step, "epoch": self.epoch_float, "train_loss": done.train_loss, "lr": self.lr,
            "chars_per_sec": self.chars_per_sec, "elapsed_s": elapsed,
            "eta_s": eta_seconds(self.step, total, seconds / steps, self.cfg.max_time, elapsed),
            "skipped": self.skipped, "total_steps": total, "max_time": self.cfg.max_time,
        }  # fmt: skip
        self.report("log", record)
        return done.train_loss

    # -- evaluations and previews ----------------------------------------------------------------
    def _save_only(self, train_loss: float) -> None:
        """A checkpoint on the evaluation cadence when evaluating would exceed EVAL_SHARE: a crash still loses at
        most eval_every steps. Its val_loss is NaN, not the last evaluation's, which was of other weights."""
        if not self.budget.thinned:
            text = (
                f"evaluating less often, to keep it under {EVAL_SHARE:.0%} of the time (checkpoints still every "
                "--eval-every steps; give --eval-every to evaluate at each)"
            )
            self.report("message", {"text": text})
            self.budget.thinned = True
        self.last_val = math.nan
        self.save(train_loss, is_best=False)

    def _evaluate_and_save(self, train_loss: float) -> None:
        t = time.perf_counter()
        cfg, self.evaluated_step = self.cfg, self.step
        val = math.nan  # other ranks wait in the save's gather while rank 0 scores the validation text
        if self.dist.is_main:
            seq_len = max(cfg.seq_len, 256)
            val = evaluate(self.model, self.val_ids, cfg.eval_streams, seq_len, self.device, self.amp, cfg.eval_chars)
        self.last_val = val
        is_best = math.isfinite(val) and val < self.best_val  # a NaN validation loss never becomes best
        if is_best:
            self.best_val, self.best_step = val, self.step
        progress = budget_progress(self.step, self.budget.elapsed, cfg, self.feeder.batches_per_epoch)
        record = {
            "step": self.step, "epoch": round(self.epoch_float, 4), "train_loss": train_loss, "val_loss": val,
            "val_bpc": val / math.log(2), "lr": lr_at(self.step, progress, cfg), "chars_per_sec": self.chars_per_sec,
            "elapsed_s": round(self.budget.elapsed, 3),
        }  # fmt: skip
        self.save(train_loss, is_best)
        if self.dist.is_main:
            append_metrics(self.run_dir.metrics_path, record)
            self.report("eval", {**record, "is_best": is_best})
        self.budget.spent_evaluating(time.perf_counter() - t)

    def _preview(self) -> None:
        """A preview of the model's text (rank 0): on stderr and in samples.jsonl, with the time it took."""
        if not self.cfg.sample_length or not self.dist.is_main:
            return
        record = preview_record(self.model, self.vocab, self.cfg, self.device, self.step, self.current_val)
        append_metrics(self.run_dir.samples_path, record)
        self.report("sample", record)


class LogWindow:
    """Steps and wall-clock time since the last progress line."""

    def __init__(self, started: float) -> None:
        self.steps, self.started = 0, started

    def restart(self) -> float:
        """Seconds the window lasted; the next one starts now."""
        now = time.perf_counter()
        seconds, self.steps, self.started = now - self.started, 0, now
        return seconds
