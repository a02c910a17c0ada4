"""TrainConfig, the schedule, evaluation, and the loop: fetch a batch, step, maybe evaluate, maybe save, maybe stop.

The step and its on-device divergence guard are step.py's TrainStep; what the run starts from (configs, device,
a resumed checkpoint) is decided once by job.py. Host syncs (.item()) happen only every `log_every` steps and at
evaluations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charrnn import runtime
from charrnn.checkpoint.rules import check_resume_state
from charrnn.checkpoint.rundir import RunDir
from charrnn.checkpoint.state import CorpusInfo, ModelBundle, TrainState, checkpoint_dict
from charrnn.config.train import PREVIEW_TEMPERATURE, TrainConfig
from charrnn.display import format_duration
from charrnn.errors import CorpusError, DivergedError
from charrnn.fields import RESUME_ADVICE
from charrnn.generation.sample import SampleConfig, generate
from charrnn.generation.score import ScoreConfig, streams_nats
from charrnn.model import CharRNN, State, copy_weights, load_weights
from charrnn.text.data import DeviceFeeder, min_corpus_chars, split
from charrnn.text.vocab import Vocab
from charrnn.training.progress import append_metrics, chars_per_sec, check_metrics_writable, eta_seconds
from charrnn.training.step import TrainStep, make_optimizer

Reporter = Callable[[str, dict], None]

MAX_LOGITS = 1 << 28  # B * T * V values per step; fp32 logits, their softmax and gradient are 3 GiB at the limit
# Under --max-time (with --eval-every left at its default) evaluations during the run may take at most this share
# of the time so far; a scheduled one beyond it only saves a checkpoint. Evaluating 111 k characters every 200
# steps of 2x512 took ~6 % of a 10-minute budget on 2 cores (bench/README.md, Quality per
# minute), steps the model never got.
EVAL_SHARE = 0.04
CLOSING_MARGIN = 1.0  # seconds kept back beyond the final evaluation and save's expected cost


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


# ---------------------------------------------------------------------------------------------------
# schedule


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


# ---------------------------------------------------------------------------------------------------
# evaluation


def evaluate(
    model: CharRNN,
    ids: np.ndarray,
    num_streams: int,
    seq_len: int,
    device: torch.device,
    amp: bool = False,
    max_chars: int | None = None,
) -> float:
    """Mean cross-entropy (nats/char) over `ids` (at most max_chars + 1 of them): score.py's whole-text scoring,
    so `charrnn score` on the validation text gives the validation loss. The text is cut into `num_streams`
    contiguous streams scored with their hidden state carried, so every character but the first is scored."""
    if max_chars is not None:
        ids = ids[: max_chars + 1]
    cfg = ScoreConfig(num_streams=num_streams, seq_len=seq_len, amp=amp)
    return streams_nats(model, np.asarray(ids, dtype=np.int64), device, cfg) / (len(ids) - 1)


def preview_seed(seed: int) -> int:
    """The run's seed as a sampling seed (sampling takes 0 .. 2^63 - 2; a run's seed may be any 64-bit value)."""
    return seed % (2**63 - 1)


def preview_text(model: CharRNN, vocab: Vocab, cfg: TrainConfig, device: torch.device) -> str:
    """`sample_length` characters at temperature 0.8 from the run's seed, after `sample_prime` (not repeated).

    The model runs in eval mode, so no dropout mask is drawn from the global RNG the training step uses, and
    sampling draws from its own seeded generator: a preview never changes what training does next."""
    was_training = model.training
    model.eval()
    try:
        sampling = SampleConfig(
            temperature=PREVIEW_TEMPERATURE, length=cfg.sample_length, seed=preview_seed(cfg.seed), precision="fp32"
        )
        prime_ids = [int(i) for i in vocab.encode(cfg.sample_prime or vocab.start())]
        with torch.no_grad():
            return "".join(vocab.decode(block[0].tolist()) for block in generate(model, prime_ids, sampling, device))
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------
# set-up helpers


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


# ---------------------------------------------------------------------------------------------------
# the loop


class Trainer:
    """One training run on a ready Setup (job.py decides everything once); `run()` is the loop."""

    def __init__(self, setup, report: Reporter, should_stop: Callable[[], int | None]):
        self.setup, self.report, self.should_stop = setup, report, should_stop
        self.cfg: TrainConfig = setup.cfg
        self.run_dir: RunDir = setup.run_dir
        self.dist, self.device, self.vocab = setup.dist, setup.device, setup.start.vocab
        cfg = self.cfg
        self.train_ids, self.val_ids = split(setup.start.ids, cfg.val_frac)
        # Under torchrun each rank trains its own batch_size streams out of batch_size * world_size.
        self.feeder = DeviceFeeder(
            self.train_ids, cfg.batch_size, cfg.seq_len, self.device, self.dist.rank, self.dist.world_size
        )
        self.amp = cfg.amp and self.device.type == "cuda"
        self.model = self._build_model()
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.train_step = TrainStep(
            self.model, self.optimizer, self.device, cfg.grad_clip, amp=self.amp, net=self._data_parallel(),
            distributed=self.dist.enabled,
        )  # fmt: skip
        self.governor = runtime.ThreadGovernor(enabled=cfg.threads is None and self.device.type == "cpu")
        # Position and counters: a resume overwrites them from the checkpoint.
        self.step, self.epoch, self.batch_index, self.first_step = 0, 0, 0, 0
        self.elapsed_prior, self.lr, self.chars_per_sec = 0.0, cfg.lr, 0.0
        self.best_val, self.best_step, self.last_val, self.skipped = math.inf, -1, math.nan, 0
        # The time budget's bookkeeping: seconds spent evaluating, the expected cost of the final evaluation and
        # save (kept back from --max-time), and the last step that was evaluated.
        self.eval_s, self.eval_skipped, self.closing_s, self.evaluated_step = 0.0, False, 0.0, -1
        self.state: State = self.model.init_state(cfg.batch_size, self.device)
        if setup.start.resumed is not None:
            self._restore(setup.start.resumed)
        if self.dist.is_main:
            self.run_dir.prepare()
            check_metrics_writable(self.run_dir.metrics_path)
            if self.cfg.sample_length:
                check_metrics_writable(self.run_dir.samples_path)

    # -- set-up ----------------------------------------------------------------------------------
    def _build_model(self) -> CharRNN:
        start = self.setup.start
        runtime.seed_everything(self.cfg.seed)
        start.model_config.check_trainable()  # with the real vocabulary
        model = CharRNN(start.model_config).to(self.device)
        if start.init is not None:
            load_weights(model, start.init.weights, start.init_path)
            self.report("message", {"text": f"initialised weights from {start.init_path}"})
        return model

    def _data_parallel(self) -> torch.nn.Module | None:
        """The DDP wrapper under torchrun (what the step calls), else None: the model itself."""
        if not self.dist.enabled:
            return None
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
        )
        runtime.seed_everything(self.cfg.seed + 1_000_003 * self.dist.rank)  # distinct dropout masks per rank
        return net

    def _restore(self, resumed) -> None:
        # Every tensor is checked before any kernel touches it: a crafted optimizer moment of the wrong shape
        # would otherwise make the fused AdamW step write past its buffer.
        saved: TrainState = resumed.state
        check_resume_state(
            resumed.checkpoint,
            self.model,
            self.optimizer,
            resumed.path,
            batch_size=self.cfg.batch_size,
            world_size=self.dist.world_size,
            uses_scaler=self.train_step.scaler is not None,
            batches_per_epoch=self.feeder.batches_per_epoch,
        )
        copy_weights(self.model, resumed.bundle.weights, resumed.path, RESUME_ADVICE)  # checked just above
        self.optimizer.load_state_dict(saved.optimizer)
        if self.train_step.scaler is not None and saved.scaler:
            self.train_step.scaler.load_state_dict(saved.scaler)
        self.step, self.epoch, self.batch_index = saved.step, saved.epoch, saved.batch_index
        self.elapsed_prior, self.skipped = saved.elapsed_s, saved.skipped_steps
        self.best_val, self.best_step, self.last_val = saved.best_val_loss, saved.best_step, saved.val_loss
        hidden, rng = self._rank_view(saved)
        if hidden and self.batch_index != 0:
            # float32: an AMP run carries fp16 state, which a CPU resume could not feed to its LSTM.
            self.state = tuple(h.to(self.device, torch.float32) for h in hidden)
        # RNG last: anything that draws random numbers after this would break bit-exact resume.
        runtime.set_rng_state(rng)
        if saved.world_size != self.dist.world_size and self.dist.enabled:
            runtime.seed_everything(self.cfg.seed + 1_000_003 * self.dist.rank + self.step)  # distinct masks per rank

    def _rank_view(self, saved: TrainState) -> tuple[list, dict]:
        """This process's carried state and RNG: its own rank's under the same world size; under another, no
        carried state, streams re-sharded at the same fraction of the epoch."""
        world = self.dist.world_size
        if saved.world_size == world:
            if self.dist.enabled and saved.hidden_ranks is not None and saved.rng_ranks is not None:
                return saved.hidden_ranks[self.dist.rank], saved.rng_ranks[self.dist.rank]
            return saved.hidden, saved.rng
        self.report(
            "warning",
            {
                "text": f"the run was saved with {saved.world_size} process(es) and resumes with {world}: streams "
                "are re-sharded, so this resume is not bit-exact"
            },
        )
        per_epoch = self.feeder.batches_per_epoch  # scales with 1 / world size
        saved_per_epoch = saved.batches_per_epoch or per_epoch
        self.batch_index = min(self.batch_index * per_epoch // max(saved_per_epoch, 1), per_epoch - 1)
        return [], dict(saved.rng, cuda=[])

    # -- checkpoints -----------------------------------------------------------------------------
    def train_state(self, train_loss: float) -> TrainState | None:
        """Everything beyond the model to resume exactly. Under torchrun every rank calls this (it gathers each
        rank's RNG and carried state); rank 0 gets the result, the others None."""
        hidden, rng = [s.detach().float().cpu() for s in self.state], runtime.rng_state()
        ranks = runtime.gather(self.dist, (hidden, rng))
        if not self.dist.is_main:
            return None
        corpus = self.setup.corpus
        return TrainState(
            train_config=self.cfg.to_dict(),
            corpus=CorpusInfo(corpus.name, corpus.sha256, int(len(corpus.ids)), list(corpus.sources)),
            step=self.step,
            epoch=self.epoch,
            batch_index=self.batch_index,
            batches_per_epoch=self.feeder.batches_per_epoch,
            optimizer=self.optimizer.state_dict(),
            rng=rng,
            hidden=hidden,
            scaler=self.train_step.scaler.state_dict() if self.train_step.scaler is not None else None,
            world_size=self.dist.world_size,
            hidden_ranks=[r[0] for r in ranks] if self.dist.enabled else None,
            rng_ranks=[r[1] for r in ranks] if self.dist.enabled else None,
            elapsed_s=self.elapsed,
            train_loss=train_loss,
            val_loss=self.current_val,
            best_val_loss=self.best_val,
            best_step=self.best_step,
            skipped_steps=self.skipped,
            device=str(self.device),
        )

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

    @property
    def elapsed(self) -> float:
        return self.elapsed_prior + (time.perf_counter() - self.setup.started)

    @property
    def budget_elapsed(self) -> float:
        """The elapsed time at which the command would end if the loop stopped now: the final evaluation and
        save still to come are counted in, so --max-time ends the whole command, not only the loop."""
        return self.elapsed + (self.closing_s if self.cfg.max_time else 0.0)

    def _estimate_closing(self) -> float:
        """Seconds for the final evaluation and save, before a whole one has been timed: score a slice of the
        validation text (a warm-up call first, as oneDNN builds its kernels on the first), scale it to the
        whole, and add writing the weights and Adam's moments at a slow disk's 100 MB/s."""
        cfg = self.cfg
        val_chars = min(len(self.val_ids) - 1, cfg.eval_chars or len(self.val_ids))
        seq_len = max(cfg.seq_len, 256)
        sample = min(val_chars, 2 * cfg.eval_streams * seq_len)
        ids = self.val_ids[: sample + 1]
        evaluate(
            self.model, ids[: min(len(ids), cfg.eval_streams + 1)], cfg.eval_streams, seq_len, self.device, self.amp
        )
        t = time.perf_counter()
        evaluate(self.model, ids, cfg.eval_streams, seq_len, self.device, self.amp)
        scoring = (time.perf_counter() - t) * val_chars / max(1, sample)
        return scoring + 12 * self.model.num_params() / 100e6 + CLOSING_MARGIN

    def _evaluation_affordable(self) -> bool:
        """Whether a scheduled evaluation fits in EVAL_SHARE of the time so far. Only under --max-time with the
        default --eval-every, and never under torchrun (the ranks would have to agree on it)."""
        given = self.setup.given
        if not self.cfg.max_time or self.dist.enabled or (given is not None and "eval_every" in given):
            return True
        return self.eval_s + self.closing_s - CLOSING_MARGIN <= EVAL_SHARE * (time.perf_counter() - self.setup.started)

    def total_steps(self) -> int | None:
        bounds = []
        if self.cfg.max_steps:
            bounds.append(self.cfg.max_steps)
        if self.cfg.max_epochs:
            bounds.append(math.ceil(self.cfg.max_epochs * self.feeder.batches_per_epoch))
        return min(bounds) if bounds else None

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.closing_s = self._estimate_closing() if cfg.max_time and self.dist.is_main else 0.0
        self.first_step = self.step
        self._report_start()
        window = LogWindow(time.perf_counter())
        train_loss, reason, signum = math.nan, None, None
        while True:
            elapsed, signum = runtime.agree_to_stop(self.dist, self.device, self.budget_elapsed, self.should_stop())
            reason = stop_reason(self.step, self.epoch_float, elapsed, cfg) or ("signal" if signum else None)
            if reason:
                break
            self.lr = lr_at(self.step, budget_progress(self.step, elapsed, cfg, self.feeder.batches_per_epoch), cfg)
            self._step(self.lr)
            window.steps += 1
            if window.steps in (2, 4) and self.step < cfg.log_every:
                self._fit_threads()  # early, so a loaded machine is not slow for a whole first window
            # The first step is reported at once: the user sees the speed and ETA within seconds, not a window.
            if self.step % cfg.log_every == 0 or self.step == self.first_step + 1:
                train_loss = self._log(window)
            if self.step % cfg.eval_every == 0 and self._evaluation_affordable():
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
        best = self.run_dir.best_path if self.run_dir.best_path.exists() else self.run_dir.last_path
        return TrainResult(
            self.run_dir.path,
            best,
            self.run_dir.last_path,
            self.step,
            self.best_val,
            reason,
            signum,
            self.dist.rank,
            self.dist.world_size,
        )

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

    def _report_start(self) -> None:
        cfg = self.cfg
        info = {
            "step": self.step,
            "total_steps": self.total_steps(),
            "max_time": cfg.max_time,
            "elapsed_s": self.elapsed,
            "eta_s": max(0.0, cfg.max_time - self.elapsed) if cfg.max_time else None,
            "plan": self.plan(),
        }
        self.report("start", info)

    def plan(self) -> str:
        """One line before the first step: the model, the batch, the device and the budget, so a user knows what
        is about to run and for how long before any progress line."""
        c, cfg = self.model.config, self.cfg
        limits = []
        if cfg.max_time:
            ends = time.strftime("%H:%M", time.localtime(time.time() + max(0.0, cfg.max_time - self.elapsed)))
            limits.append(f"{format_duration(cfg.max_time)} (ends about {ends})")
        if cfg.max_steps:
            limits.append(f"{cfg.max_steps:,} steps")
        if cfg.max_epochs:
            limits.append(
                f"{cfg.max_epochs:g} passes ({math.ceil(cfg.max_epochs * self.feeder.batches_per_epoch):,} steps)"
            )
        start = f"from step {self.step:,} " if self.step else ""
        return (
            f"training {c.num_layers}x{c.hidden_size} {c.model.upper()} ({self.model.num_params():,} parameters, "
            f"dropout {c.dropout:g}) on {self.device}, batch {cfg.batch_size}x{cfg.seq_len}, {start}for "
            f"{' or '.join(limits)}{', whichever comes first' if len(limits) > 1 else ''}"
        )

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
        total = self.total_steps()
        record = {
            "step": self.step,
            "epoch": self.epoch_float,
            "train_loss": done.train_loss,
            "lr": self.lr,
            "chars_per_sec": self.chars_per_sec,
            "elapsed_s": self.elapsed,
            "eta_s": eta_seconds(self.step, total, seconds / steps, self.cfg.max_time, self.elapsed),
            "skipped": self.skipped,
            "total_steps": total,
            "max_time": self.cfg.max_time,
        }
        self.report("log", record)
        return done.train_loss

    def _save_only(self, train_loss: float) -> None:
        """A checkpoint on the evaluation cadence when evaluating would exceed EVAL_SHARE: a crash still loses at
        most eval_every steps. Its val_loss is NaN, not the last evaluation's, which was of other weights."""
        if not self.eval_skipped:
            text = (
                f"evaluating less often, to keep it under {EVAL_SHARE:.0%} of the time (checkpoints still every "
                "--eval-every steps; give --eval-every to evaluate at each)"
            )
            self.report("message", {"text": text})
            self.eval_skipped = True
        self.last_val = math.nan
        self.save(train_loss, is_best=False)

    def _evaluate_and_save(self, train_loss: float) -> None:
        t = time.perf_counter()
        self._evaluate_and_save_now(train_loss)
        # The final evaluation and save will cost what this one did: the budget reserves exactly that.
        spent = time.perf_counter() - t
        self.eval_s += spent
        self.closing_s = spent + CLOSING_MARGIN

    def _evaluate_and_save_now(self, train_loss: float) -> None:
        cfg = self.cfg
        self.evaluated_step = self.step
        val = math.nan  # other ranks wait in the save's gather while rank 0 scores the validation text
        if self.dist.is_main:
            val = evaluate(
                self.model, self.val_ids, cfg.eval_streams, max(cfg.seq_len, 256), self.device, self.amp, cfg.eval_chars
            )
        self.last_val = val
        is_best = math.isfinite(val) and val < self.best_val  # a NaN validation loss never becomes best
        if is_best:
            self.best_val, self.best_step = val, self.step
        record = {
            "step": self.step,
            "epoch": round(self.epoch_float, 4),
            "train_loss": train_loss,
            "val_loss": val,
            "val_bpc": val / math.log(2),
            "lr": lr_at(self.step, budget_progress(self.step, self.elapsed, cfg, self.feeder.batches_per_epoch), cfg),
            "chars_per_sec": self.chars_per_sec,
            "elapsed_s": round(self.elapsed, 3),
        }
        self.save(train_loss, is_best)
        if self.dist.is_main:
            append_metrics(self.run_dir.metrics_path, record)
            self.report("eval", {**record, "is_best": is_best})

    def _preview(self) -> None:
        """A preview of the model's text (rank 0): on stderr and in samples.jsonl, with the time it took."""
        if not self.cfg.sample_length or not self.dist.is_main:
            return
        t = time.perf_counter()
        text = preview_text(self.model, self.vocab, self.cfg, self.device)
        record = {
            "step": self.step,
            "val_loss": self.current_val,
            "temperature": PREVIEW_TEMPERATURE,
            "seed": preview_seed(self.cfg.seed),
            "prime": self.cfg.sample_prime,
            "text": text,
            "seconds": round(time.perf_counter() - t, 4),
        }
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
