"""TrainConfig and train(): the whole loop top to bottom.

lr -> forward -> loss -> backward -> clip -> step, every step; evaluate, checkpoint and report on a cadence.
Host syncs (.item()) happen only every `log_every` steps and at evaluations: the divergence guard runs on the
device (fused AdamW's found_inf skips a non-finite step without touching weights or optimizer moments).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charrnn import __version__, runtime
from charrnn.checkpoint import FORMAT_NAME, FORMAT_VERSION, RunDir, load_checkpoint
from charrnn.corpus import Corpus
from charrnn.data import DeviceFeeder, min_corpus_chars, split
from charrnn.errors import CheckpointError, CorpusError, DivergedError, UsageError
from charrnn.model import CharRNN, ModelConfig, State, detach_state, load_weights
from charrnn.report import append_metrics, check_metrics_writable, format_duration
from charrnn.state import RESUME_ADVICE, check_resume_header, check_resume_state, load_vocab
from charrnn.vocab import Vocab

Reporter = Callable[[str, dict], None]

# Options that change no arithmetic, so a resumed run may take new values for them.
RESUME_OVERRIDABLE = ("device", "threads", "keep", "log_every", "eval_every", "max_skips")
LIMITS = ("max_steps", "max_epochs", "max_time")
MAX_LOGITS = 1 << 28  # B * T * V values per step; fp32 logits, their softmax and gradient are 3 GiB at the limit
EVAL_LOGITS = 1 << 24  # evaluation scores at most this many logits at a time (64 MiB), whatever the vocabulary
# Under --max-time (with --eval-every left at its default) evaluations during the run may take at most this share
# of the time so far; a scheduled one beyond it only saves a checkpoint. Evaluating 111 k characters every 200
# steps of 2x512 took ~6 % of a 10-minute budget on 2 cores (bench/README.md, issue 9), steps the model never got.
EVAL_SHARE = 0.04
CLOSING_MARGIN = 1.0  # seconds kept back beyond the final evaluation and save's expected cost


@dataclass
class TrainConfig:
    # data
    # 2,500 characters a step: on 2 CPU cores at 3 minutes, 50x50 beat 32x64 by 0.014 nats (more, cheaper steps;
    # bench/README.md, issue 9). Early in training the number of optimizer steps is what counts.
    seq_len: int = 50
    batch_size: int = 50
    val_frac: float = 0.1
    # optimisation
    # Warm-up, a constant rate, then a cosine over the last 20 % down to a tenth ("warmup-stable-decay"). A cosine
    # over the whole budget lost 0.10 nats to a constant rate at one pass, and 3e-3 lost 0.02 to 2e-3 (issue 9).
    lr: float = 2e-3
    min_lr_frac: float = 0.1  # the decay ends at lr * min_lr_frac
    decay_frac: float = 0.2  # the cosine takes the last decay_frac of the budget; the lr is constant before it
    warmup_steps: int = 20  # Adam on an LSTM needs little warm-up; a long one wastes a short budget
    weight_decay: float = 0.1  # on weight matrices only, not biases
    grad_clip: float = 1.0
    # when to stop (whichever comes first); None means no limit from that side
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None  # seconds
    # evaluation, logging, checkpoints
    eval_every: int = 200
    eval_streams: int = 8  # validation text is cut into this many contiguous streams, every char scored once
    eval_chars: int | None = 2_000_000  # score at most this many validation chars (None: all of them)
    log_every: int = 20
    keep: int = 3
    max_skips: int = 5  # consecutive non-finite steps before training stops as diverged
    # runtime
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    amp: bool = True  # fp16 autocast + GradScaler on CUDA; ignored elsewhere

    def validate(self) -> None:
        positive = {
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "eval_every": self.eval_every,
            "log_every": self.log_every,
            "eval_streams": self.eval_streams,
            "max_skips": self.max_skips,
        }
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, not {value}.")
        if not 0.0 < self.val_frac < 1.0:
            raise UsageError(f"--val-frac must be between 0 and 1 (exclusive), not {self.val_frac}.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"--lr must be a positive number, not {self.lr}.")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise UsageError(f"--weight-decay must be a number >= 0, not {self.weight_decay}.")
        if not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise UsageError(f"--grad-clip must be a positive number, not {self.grad_clip}.")
        if self.warmup_steps < 0 or self.keep < 0:
            raise UsageError("--warmup-steps and --keep must be 0 or more.")
        if not 0.0 <= self.min_lr_frac <= 1.0:
            raise UsageError(f"--min-lr-frac must be between 0 and 1, not {self.min_lr_frac}.")
        if not 0.0 <= self.decay_frac <= 1.0:
            raise UsageError(f"--decay-frac must be between 0 and 1, not {self.decay_frac}.")
        for name in LIMITS:
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise UsageError(
                    f"--{name.replace('_', '-')} must be a positive finite number, not {value}; "
                    "leave it out for no limit from that side."
                )
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, not {self.threads}.")
        runtime.check_seed(self.seed)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {"decay_frac": 1.0, **d}  # saved before decay_frac existed: the cosine ran over the whole budget
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainResult:
    run_dir: Path
    best_path: Path
    last_path: Path
    step: int
    best_val_loss: float
    stop_reason: str  # "max_steps" | "max_epochs" | "max_time" | "signal"
    signal: int | None = None


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


@torch.no_grad()
def evaluate(
    model: CharRNN,
    ids: np.ndarray,
    num_streams: int,
    seq_len: int,
    device: torch.device,
    amp: bool = False,
    max_chars: int | None = None,
) -> float:
    """Mean cross-entropy (nats/char) over `ids`, cut into `num_streams` contiguous streams scored with the
    hidden state carried through each stream, so every character (but each stream's first) is scored once."""
    if max_chars is not None:
        ids = ids[: max_chars + 1]
    # Bound the (S, T, V) logits: a corpus with a million distinct characters would otherwise ask for 18 GB.
    # Fewer streams first (V <= 1,114,112 leaves room for at least 15), then shorter chunks.
    V = model.config.vocab_size
    num_streams = max(1, min(num_streams, len(ids) - 1, EVAL_LOGITS // V))
    seq_len = max(1, min(seq_len, EVAL_LOGITS // (num_streams * V)))
    stream_len = (len(ids) - 1) // num_streams
    starts = np.arange(num_streams, dtype=np.int64)[:, None] * stream_len  # (S, 1)
    was_training = model.training
    model.eval()
    state: State | None = None
    total = torch.zeros((), dtype=torch.float64, device=device)
    for a in range(0, stream_len, seq_len):
        cols = np.arange(a, min(a + seq_len, stream_len) + 1, dtype=np.int64)  # T+1 positions
        chunk = torch.from_numpy(ids[starts + cols].astype(np.int64)).to(device)  # (S, T+1)
        with runtime.autocast(device, amp):
            logits, state = model(chunk[:, :-1], state)
        total += F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), chunk[:, 1:].reshape(-1), reduction="sum"
        ).double()
    model.train(was_training)
    return total.item() / (num_streams * stream_len)


# ---------------------------------------------------------------------------------------------------
# set-up helpers


def make_optimizer(model: CharRNN, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # weight matrices decay; biases and the embedding table do not
        (decay if p.dim() >= 2 and not name.startswith("embed") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for the whole update, and it honours `found_inf`, which lets us skip a bad step on
    # the device without a host sync. CPU and CUDA support it; MPS falls back to foreach.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=fused, foreach=None if fused else True)


def resolve_init_vocab(corpus: Corpus, ckpt_vocab: Vocab) -> np.ndarray:
    """Re-encode the corpus ids into the checkpoint's vocabulary (for --init-from fine-tuning)."""
    missing = [c for c in corpus.vocab.chars if c not in set(ckpt_vocab.chars)]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:20]) + (" …" if len(missing) > 20 else "")
        raise CorpusError(
            f"the corpus has {len(missing)} character(s) the --init-from checkpoint's vocabulary lacks "
            f"({shown}); fine-tune on text that uses only its characters, or train from scratch."
        )
    stoi = {c: i for i, c in enumerate(ckpt_vocab.chars)}
    lut = np.array([stoi[c] for c in corpus.vocab.chars], dtype=ckpt_vocab.dtype)
    return lut[np.asarray(corpus.ids)]


def resume_conflict(flags: list[str], run_dir) -> str:
    """The one sentence that refuses flags a resumed run cannot take."""
    may = (
        "--max-steps, --max-epochs, --max-time, --eval-every, --log-every, --keep, --max-skips, --threads, --device "
        "and --quiet"
    )
    return (
        f"{' and '.join(flags)} cannot change on --resume: the run in {run_dir} continues with the settings it "
        f"was started with (only {may} may change); leave {'them' if len(flags) > 1 else 'it'} out, or start a "
        "new run, with --init-from to begin from its weights."
    )


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
    """State of one training run; `run()` is the loop. Split into small methods so each reads on its own."""

    def __init__(
        self,
        corpus: Corpus,
        model_config: ModelConfig | None,
        cfg: TrainConfig,
        run_dir: RunDir,
        report: Reporter,
        should_stop: Callable[[], int | None],
        resume: bool,
        init_from: Path | None,
        given: set[str] | None = None,
        started: float | None = None,
    ):
        # The budget is the user's wall clock: it counts from `started` (the command's start), so corpus
        # loading, auto-sizing and this set-up are inside --max-time, not added to it.
        self.started = time.perf_counter() if started is None else started
        self.given = given
        self.report, self.should_stop, self.run_dir = report, should_stop, run_dir
        self.corpus = corpus
        ckpt = self._load_resume(cfg) if resume else None
        self.cfg = self._merge_resume_config(cfg, ckpt, given) if ckpt else cfg
        self.cfg.validate()
        self.run_dir.keep = self.cfg.keep  # on resume, the saved --keep unless given again
        cfg = self.cfg
        self.dist = runtime.dist_from_env()
        self.device = runtime.init_distributed(self.dist, runtime.select_device(cfg.device))
        runtime.set_threads(cfg.threads)
        self.governor = runtime.ThreadGovernor(enabled=cfg.threads is None and self.device.type == "cpu")
        runtime.configure_backends(self.device)
        self.amp = cfg.amp and self.device.type == "cuda"

        ids, self.vocab, model_config = self._resolve_vocab(corpus, model_config, ckpt, init_from)
        check_corpus_size(len(ids), cfg)
        self.train_ids, self.val_ids = split(ids, cfg.val_frac)
        # Under torchrun each rank trains its own batch_size streams out of batch_size * world_size.
        self.feeder = DeviceFeeder(
            self.train_ids, cfg.batch_size, cfg.seq_len, self.device, self.dist.rank, self.dist.world_size
        )

        runtime.seed_everything(cfg.seed)
        model_config.check_trainable()  # with the real vocabulary now
        self.model = CharRNN(model_config).to(self.device)
        if init_from is not None:
            self._init_weights(init_from)
        self.optimizer = make_optimizer(self.model, cfg, self.device)
        self.fused = bool(self.optimizer.defaults.get("fused"))
        self.net = self.model  # what the step calls: the model itself, or its DDP wrapper
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            runtime.seed_everything(cfg.seed + 1_000_003 * self.dist.rank)  # distinct dropout masks per rank
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

        self.step, self.epoch, self.batch_index = 0, 0, 0
        self.elapsed_prior = 0.0
        self.best_val, self.best_step, self.last_val = math.inf, -1, math.nan
        self.skipped = 0
        # Divergence counters live on the device, so the step never waits for the host (read once per log window).
        self.streak, self.max_streak, self.bad_count = (self._zero(torch.int64) for _ in range(3))
        self.loss_sum = self._zero(torch.float32)
        self.last_log: dict = {}
        self.lr = cfg.lr  # the rate of the latest step
        self.first_step = 0  # the step this process started at (after a resume, the checkpoint's)
        # The time budget's bookkeeping: seconds spent evaluating, the expected cost of the final evaluation and
        # save (kept back from --max-time), and the last step that was evaluated.
        self.eval_s, self.eval_skipped, self.closing_s, self.evaluated_step = 0.0, False, 0.0, -1
        self.state: State = self.model.init_state(cfg.batch_size, self.device)
        if ckpt:
            self._restore(ckpt)
        if self.dist.is_main:
            self.run_dir.prepare()
            check_metrics_writable(self.run_dir.metrics_path)

    # -- set-up ----------------------------------------------------------------------------------
    def _load_resume(self, cfg: TrainConfig) -> dict:
        ckpt, path, warnings = self.run_dir.load_latest()
        for w in warnings:
            self.report("warning", {"text": w})
        for key in ("train_config", "optimizer", "step", "rng", "data"):
            if key not in ckpt:
                raise CheckpointError(
                    f"{path} lacks '{key}', so it cannot be resumed; use --init-from to start a "
                    "new run from its weights."
                )
        check_resume_header(ckpt, path)  # types first: the corpus hash and the config are read next
        self.resume_path = path
        if ckpt.get("corpus", {}).get("sha256") != self.corpus.sha256:
            raise CorpusError(
                f"the corpus differs from the one {self.run_dir.path} was trained on (its content hash "
                "changed); resume with the same text, or start a new run with another --run-dir."
            )
        self.report("message", {"text": f"resuming from {path} at step {ckpt['step']}"})
        return ckpt

    def _merge_resume_config(self, cfg: TrainConfig, ckpt: dict, given: set[str] | None) -> TrainConfig:
        """The saved settings, with the options given on this command line that may change on resume.

        `given` names the options the user typed; None (a library caller) means every resumable setting and
        every limit set in `cfg`. A given option that would change the arithmetic (the lr, the batch, the seed...)
        is refused before anything is written: silently keeping the old value misleads, and taking the new one
        would make the run neither the old one nor a fresh one."""
        saved = TrainConfig.from_dict(ckpt["train_config"])
        if given is None:
            given = set(RESUME_OVERRIDABLE) | {k for k in LIMITS if getattr(cfg, k) is not None}
        updates = {k: getattr(cfg, k) for k in given if k in RESUME_OVERRIDABLE or k in LIMITS}
        names = {f.name for f in fields(TrainConfig)}
        conflicts = [k for k in sorted(given - set(updates)) if k in names and getattr(cfg, k) != getattr(saved, k)]
        if conflicts:
            raise UsageError(resume_conflict([f"--{k.replace('_', '-')}" for k in conflicts], self.run_dir.path))
        return replace(saved, **updates)

    def _resolve_vocab(self, corpus, model_config, ckpt, init_from):
        if ckpt:
            return (
                corpus.ids,
                load_vocab(ckpt, self.resume_path, RESUME_ADVICE),
                ModelConfig.from_dict(ckpt["model_config"], self.resume_path),
            )
        if init_from is not None:
            self.init_ckpt = load_checkpoint(init_from)
            vocab = load_vocab(self.init_ckpt, init_from)
            ids = resolve_init_vocab(corpus, vocab)
            cfg = ModelConfig.from_dict(self.init_ckpt["model_config"], init_from)
            if model_config is not None and model_config.dropout != cfg.dropout:
                cfg.dropout = model_config.dropout  # dropout is a training choice, free to change when fine-tuning
            return ids, vocab, cfg
        if model_config is None:
            raise UsageError("a model config is needed for a new run.")
        return corpus.ids, corpus.vocab, replace(model_config, vocab_size=len(corpus.vocab))

    def _init_weights(self, path: Path) -> None:
        load_weights(self.model, self.init_ckpt["model"], Path(path))
        self.report("message", {"text": f"initialised weights from {path}"})

    def _restore(self, ckpt: dict) -> None:
        # Every tensor is checked before any kernel touches it: a crafted optimizer moment of the wrong shape
        # would otherwise make the fused AdamW step write past its buffer.
        check_resume_state(
            ckpt,
            self.model,
            self.optimizer,
            self.resume_path,
            batch_size=self.cfg.batch_size,
            world_size=self.dist.world_size,
            uses_scaler=self.scaler is not None,
            batches_per_epoch=self.feeder.batches_per_epoch,
        )
        load_weights(self.model, ckpt["model"], self.resume_path, RESUME_ADVICE)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = ckpt["step"]
        self.epoch, self.batch_index = ckpt["data"]["epoch"], ckpt["data"]["batch_index"]
        self.elapsed_prior = float(ckpt.get("elapsed_s", 0.0))
        self.best_val = float(ckpt.get("best_val_loss", math.inf))
        self.best_step = int(ckpt.get("best_step", -1))
        self.last_val = float(ckpt.get("val_loss", math.nan))
        self.skipped = int(ckpt.get("skipped_steps", 0))
        hidden, rng = ckpt.get("hidden"), ckpt["rng"]
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world == self.dist.world_size and self.dist.enabled:
            hidden, rng = ckpt["hidden_ranks"][self.dist.rank], ckpt["rng_ranks"][self.dist.rank]
        elif saved_world != self.dist.world_size:
            self.report(
                "warning",
                {
                    "text": f"the run was saved with {saved_world} process(es) and resumes with "
                    f"{self.dist.world_size}: streams are re-sharded, so this resume is not bit-exact"
                },
            )
            hidden = None
            # Same fraction of the epoch: batches per epoch scale with 1 / world size.
            saved_bpe = int(ckpt["data"].get("batches_per_epoch", self.feeder.batches_per_epoch))
            self.batch_index = min(
                self.batch_index * self.feeder.batches_per_epoch // max(saved_bpe, 1), self.feeder.batches_per_epoch - 1
            )
        if hidden and self.batch_index != 0:
            # float32: an AMP run carries fp16 state, which a CPU resume could not feed to its LSTM.
            self.state = tuple(h.to(self.device, torch.float32) for h in hidden)
        # RNG last: anything that draws random numbers after this would break bit-exact resume.
        runtime.set_rng_state(rng if saved_world == self.dist.world_size else dict(rng, cuda=[]))
        if saved_world != self.dist.world_size and self.dist.enabled:
            runtime.seed_everything(self.cfg.seed + 1_000_003 * self.dist.rank + self.step)  # distinct masks per rank

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint_state(self, train_loss: float) -> dict:
        """Everything to sample from and to resume exactly. Under torchrun every rank calls this (it gathers
        each rank's RNG and carried state); only rank 0 writes the result."""
        hidden, rng = [s.detach().float().cpu() for s in self.state], runtime.rng_state()
        per_rank = {}
        if self.dist.enabled:
            import torch.distributed as tdist

            gathered: list = [None] * self.dist.world_size
            tdist.all_gather_object(gathered, (hidden, rng))
            per_rank = {"hidden_ranks": [g[0] for g in gathered], "rng_ranks": [g[1] for g in gathered]}
        if not self.dist.is_main:
            return {}  # only rank 0 writes, so the others skip copying the model and optimizer
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "model_config": self.model.config.to_dict(),
            "vocab": self.vocab.to_dict(),
            "train_config": self.cfg.to_dict(),
            "corpus": {
                "name": self.corpus.name,
                "sha256": self.corpus.sha256,
                "num_chars": int(len(self.corpus.ids)),
                "sources": list(self.corpus.sources),
            },
            "step": self.step,
            "epoch": self.epoch_float,
            "data": {
                "epoch": self.epoch,
                "batch_index": self.batch_index,
                "batches_per_epoch": self.feeder.batches_per_epoch,
            },
            "hidden": hidden,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng,
            "world_size": self.dist.world_size,
            **per_rank,
            "elapsed_s": self.elapsed,
            "train_loss": train_loss,
            "val_loss": self.last_val,
            "val_bpc": self.last_val / math.log(2),
            "best_val_loss": self.best_val,
            "best_step": self.best_step,
            "skipped_steps": self.skipped,
            "device": str(self.device),
            "torch_version": str(torch.__version__),  # TorchVersion is a str subclass weights_only refuses
            "charrnn_version": __version__,
            "saved_at": time.time(),
        }

    def save(self, train_loss: float, is_best: bool) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise DivergedError(
                f"diverged at step {self.step}: the weights are no longer finite; "
                f"{self._kept_checkpoint()}; try a lower --lr."
            )
        state = self.checkpoint_state(train_loss)
        if self.dist.is_main:
            self.run_dir.save(state, self.step, is_best)
        self._barrier()

    def _kept_checkpoint(self) -> str:
        """What a stopped run leaves behind, in words that are true: a run can diverge before its first save."""
        if self.run_dir.last_path.exists():
            return f"the last good checkpoint in {self.run_dir.path} is kept"
        return "no checkpoint had been written yet"

    def _barrier(self) -> None:
        if self.dist.enabled:
            import torch.distributed as tdist

            tdist.barrier()

    def _agree(self, elapsed: float, signum: int | None) -> tuple[float, int | None]:
        """Under torchrun, all ranks take the largest elapsed time and any rank's signal, so they stop at the
        same step and follow the same lr schedule. One tiny all-reduce per step; nothing when single-process."""
        if not self.dist.enabled:
            return elapsed, signum
        import torch.distributed as tdist

        flags = torch.tensor([elapsed, float(signum or 0)], dtype=torch.float64, device=self.device)
        tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
        elapsed, sig = flags.tolist()
        return elapsed, int(sig) or None

    def _zero(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.zeros((), dtype=dtype, device=self.device)

    # -- progress --------------------------------------------------------------------------------
    @property
    def epoch_float(self) -> float:
        return self.epoch + self.batch_index / self.feeder.batches_per_epoch

    @property
    def elapsed(self) -> float:
        return self.elapsed_prior + (time.perf_counter() - self.started)

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
        if not self.cfg.max_time or self.dist.enabled or (self.given is not None and "eval_every" in self.given):
            return True
        return self.eval_s + self.closing_s - CLOSING_MARGIN <= EVAL_SHARE * (time.perf_counter() - self.started)

    def total_steps(self) -> int | None:
        bounds = []
        if self.cfg.max_steps:
            bounds.append(self.cfg.max_steps)
        if self.cfg.max_epochs:
            bounds.append(math.ceil(self.cfg.max_epochs * self.feeder.batches_per_epoch))
        return min(bounds) if bounds else None

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, lr: float) -> torch.Tensor:
        """Forward, backward, clip and update on the next batch; returns the loss tensor (no host sync)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.batch_index == 0:
            for s in self.state:  # a new epoch restarts every stream at its beginning
                s.zero_()
        x, y = self.feeder.batch(self.batch_index)  # (B, T), (B, T)
        with runtime.autocast(self.device, self.amp):
            logits, state = self.net(x, self.state)  # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip, foreach=True)
        bad = ~torch.isfinite(loss)
        if self.scaler is None:
            bad = bad | ~torch.isfinite(norm)
        if self.dist.enabled:  # one rank's bad loss must make every rank skip, or their weights drift apart
            flag = bad.to(torch.float32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            bad = flag > 0
        if self.scaler is not None:
            # GradScaler skips steps whose fp16 gradients overflowed; those are not divergence.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.fused:
            self.optimizer.found_inf = bad.float()  # fused AdamW leaves weights and moments untouched when 1
            self.optimizer.step()
        elif not bad.item():  # foreach AdamW (MPS) has no found_inf: a host check, on a device we do not tune for
            self.optimizer.step()
        self.state = tuple(s.masked_fill_(bad, 0.0) for s in detach_state(state))
        self.streak = (self.streak + 1) * bad
        self.max_streak = torch.maximum(self.max_streak, self.streak)
        self.bad_count += bad
        self.loss_sum += torch.where(bad, 0.0, loss.detach().float())
        return loss

    def advance(self) -> None:
        self.step += 1
        self.batch_index += 1
        if self.batch_index == self.feeder.batches_per_epoch:
            self.batch_index = 0
            self.epoch += 1

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.closing_s = self._estimate_closing() if cfg.max_time and self.dist.is_main else 0.0
        steps_in_window, window_t, train_loss = 0, time.perf_counter(), math.nan
        self.first_step = self.step
        eta = max(0.0, cfg.max_time - self.elapsed) if cfg.max_time else None
        self.report(
            "start",
            {
                "step": self.step,
                "total_steps": self.total_steps(),
                "max_time": cfg.max_time,
                "elapsed_s": self.elapsed,
                "eta_s": eta,
                "plan": self.plan(),
            },
        )
        reason, signum = None, None
        while True:
            elapsed, signum = self._agree(self.budget_elapsed, self.should_stop())
            reason = stop_reason(self.step, self.epoch_float, elapsed, cfg)
            if reason:
                break
            if signum is not None:
                reason = "signal"
                break
            progress = budget_progress(self.step, elapsed, cfg, self.feeder.batches_per_epoch)
            lr = self.lr = lr_at(self.step, progress, cfg)
            self.train_step(lr)
            self.advance()
            steps_in_window += 1
            if steps_in_window in (2, 4) and self.step < cfg.log_every:
                self._fit_threads()  # early, so a loaded machine is not slow for a whole first window
            # The first step is reported at once: the user sees the speed and ETA within seconds, not a window.
            if self.step % cfg.log_every == 0 or self.step == self.first_step + 1:
                train_loss = self._log(lr, steps_in_window, time.perf_counter() - window_t)
                steps_in_window, window_t = 0, time.perf_counter()
            if self.step % cfg.eval_every == 0:
                if self._evaluation_affordable():
                    self._evaluate_and_save(train_loss)
                else:
                    self._save_without_evaluation(train_loss)
        if steps_in_window:
            train_loss = self._log(self.lr, steps_in_window, time.perf_counter() - window_t)
        if reason == "signal":
            self.save(train_loss, is_best=False)  # no evaluation: get out within seconds
        elif self.evaluated_step != self.step:
            self._evaluate_and_save(train_loss)
        best = self.run_dir.best_path if self.run_dir.best_path.exists() else self.run_dir.last_path
        return TrainResult(self.run_dir.path, best, self.run_dir.last_path, self.step, self.best_val, reason, signum)

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

    def _log(self, lr: float, steps: int, seconds: float) -> float:
        """The only per-window host sync: read the loss sum and the divergence counters."""
        self._fit_threads()
        bad_in_window = int(self.bad_count.item())
        good = steps - bad_in_window
        train_loss = self.loss_sum.item() / good if good else math.nan
        self.skipped += bad_in_window
        if int(self.max_streak.item()) >= self.cfg.max_skips:
            raise DivergedError(
                f"diverged at step {self.step}: {self.cfg.max_skips} consecutive steps had a non-finite loss or "
                f"gradient (skipped without updating the weights); {self._kept_checkpoint()}; try a lower --lr or "
                "a smaller --grad-clip."
            )
        self.loss_sum.zero_(), self.bad_count.zero_(), self.max_streak.copy_(self.streak)
        chars_per_sec = steps * self.cfg.batch_size * self.cfg.seq_len / seconds if seconds > 0 else 0.0
        total = self.total_steps()
        eta = None
        if total:
            eta = (total - self.step) * seconds / steps
        if self.cfg.max_time:
            eta = min(eta if eta is not None else math.inf, max(0.0, self.cfg.max_time - self.elapsed))
        self.last_log = {
            "step": self.step,
            "epoch": self.epoch_float,
            "train_loss": train_loss,
            "lr": lr,
            "chars_per_sec": chars_per_sec,
            "elapsed_s": self.elapsed,
            "eta_s": eta,
            "skipped": self.skipped,
            "total_steps": total,
            "max_time": self.cfg.max_time,
        }
        self.report("log", self.last_log)
        return train_loss

    def _save_without_evaluation(self, train_loss: float) -> None:
        """A checkpoint on the evaluation cadence when evaluating would exceed EVAL_SHARE: a crash still loses at
        most eval_every steps. Its val_loss is NaN, not the last evaluation's, which was of other weights."""
        if not self.eval_skipped:
            self.report(
                "message",
                {
                    "text": f"evaluating less often, to keep it under {EVAL_SHARE:.0%} of the time "
                    "(checkpoints still every --eval-every steps; give --eval-every to "
                    "evaluate at each)"
                },
            )
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
            "chars_per_sec": self.last_log.get("chars_per_sec", 0.0),
            "elapsed_s": round(self.elapsed, 3),
        }
        self.save(train_loss, is_best)
        if self.dist.is_main:
            append_metrics(self.run_dir.metrics_path, record)
            self.report("eval", {**record, "is_best": is_best})


def train(
    corpus: Corpus,
    model_config: ModelConfig | None,
    cfg: TrainConfig,
    run_dir: RunDir,
    report: Reporter = lambda event, info: None,
    should_stop: Callable[[], int | None] = lambda: None,
    resume: bool = False,
    init_from: Path | None = None,
    given: set[str] | None = None,
    started: float | None = None,
) -> TrainResult:
    """Train (or resume) a run; raises CharRNNError subclasses for problems the user can fix.

    `given`: the TrainConfig fields the user set explicitly (see Trainer._merge_resume_config).
    `started`: time.perf_counter() when the command started; --max-time counts from it (default: now)."""
    if resume and init_from is not None:
        raise UsageError("--resume and --init-from cannot be combined: resume continues a run, init-from starts one.")
    try:
        trainer = Trainer(corpus, model_config, cfg, run_dir, report, should_stop, resume, init_from, given, started)
        return trainer.run()
    finally:
        report("end", {})
        runtime.close_distributed()
