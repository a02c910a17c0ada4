"""TrainConfig: every training setting, each declared once with its default, rule, help, panel and resume rule.

From these declarations come validate() (here), the checkpoint's train_config rules and resume's
(checkpoint/rules.py, training/job.py), charrnn.train()'s keywords (api.py) and `charrnn train`'s flags
(cli/train.py). The fields are in the order `charrnn train --help` lists them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from charrnn.config.seed import RECORDED_MAX_SEED, RECORDED_MIN_SEED
from charrnn.config.settings import (
    DATA,
    FLAG,
    FREE,
    LIMIT,
    LIMIT_CHECK,
    NON_NEGATIVE_NUMBER,
    OPTIM,
    OUTPUT,
    POSITIVE_NUMBER,
    RUNTIME,
    STOP,
    Check,
    at_least,
    between,
    check_settings,
    maybe,
    names_where,
    rules_of,
    setting,
)
from charrnn.display import parse_duration
from charrnn.fields import MAX_TEXT, TEXT, int_in

MAX_PREVIEW = 10_000  # characters in a preview during training (`charrnn sample` has no such limit)
PREVIEW_TEMPERATURE = 0.8
UNIT = between(0.0, 1.0, "between 0 and 1")


@dataclass
class TrainConfig:
    # data
    val_frac: float = setting(
        0.1,
        between(0.0, 1.0, "between 0 and 1 (exclusive)", lo_open=True, hi_open=True),
        "Last fraction of the text held out for validation.",
        DATA,
    )
    # 2,500 characters a step: on 2 CPU cores at 3 minutes, 50x50 beat 32x64 by 0.014 nats (more, cheaper steps;
    # bench/README.md, Quality per minute). Early in training the number of optimizer steps is what counts.
    seq_len: int = setting(50, at_least(1), "Characters per stream per step (truncated BPTT length).", DATA)
    batch_size: int = setting(50, at_least(1), "Parallel contiguous streams per step.", DATA)
    # optimisation
    # Warm-up, a constant rate, then a cosine over the last 20 % down to a tenth ("warmup-stable-decay"). A cosine
    # over the whole budget lost 0.10 nats to a constant rate at one pass, and 3e-3 lost 0.02 to 2e-3 (issue 9).
    lr: float = setting(2e-3, POSITIVE_NUMBER, "Peak learning rate (AdamW).", OPTIM)
    min_lr_frac: float = setting(0.1, UNIT, "The decay ends at lr * this.", OPTIM)
    decay_frac: float = setting(
        0.2,
        UNIT,
        "The cosine decay takes the last this fraction of the budget; the lr is constant before it.",
        OPTIM,
        since_v1=False,  # saved before it existed: the cosine ran over the whole budget (from_dict)
    )
    # Adam on an LSTM needs little warm-up; a long one wastes a short budget
    warmup_steps: int = setting(20, at_least(0, says="0 or more"), "Linear warm-up steps.", OPTIM)
    weight_decay: float = setting(0.1, NON_NEGATIVE_NUMBER, "AdamW weight decay on weight matrices.", OPTIM)
    grad_clip: float = setting(1.0, POSITIVE_NUMBER, "Clip the global gradient norm to this.", OPTIM)
    max_skips: int = setting(
        5, at_least(1), "Stop as diverged after this many consecutive non-finite steps.", OPTIM, resume=FREE
    )
    # when to stop (whichever comes first); None means no limit from that side
    max_steps: int | None = setting(
        None, maybe(Check(int_in(1), LIMIT_CHECK.says, LIMIT_CHECK.hint)), "Stop after this many steps.", STOP,
        resume=LIMIT,
    )  # fmt: skip
    max_epochs: float | None = setting(
        None, LIMIT_CHECK, "Stop after this many passes over the training text.", STOP, resume=LIMIT
    )
    max_time: float | None = setting(  # seconds
        None,
        LIMIT_CHECK,
        "The whole command ends within this long: 90s, 10m, 2h, 1h30m; a bare number is seconds "
        "\\[default, when no limit is given: 10m per million characters, 2m to 1h].",
        STOP,
        flag_type=str,
        parse=parse_duration,
        resume=LIMIT,
    )
    # evaluation, logging, checkpoints
    eval_every: int = setting(200, at_least(1), "Evaluate and checkpoint every N steps.", OUTPUT, resume=FREE)
    eval_streams: int = setting(
        8, at_least(1), "Validation text is scored as this many carried streams.", OUTPUT
    )  # every char scored once
    eval_chars: int | None = setting(2_000_000, maybe(at_least(1)))  # score at most this many (None: all of them)
    log_every: int = setting(20, at_least(1), "Report progress every N steps.", OUTPUT, resume=FREE)
    # a preview of the model's text at every evaluation (or every sample_every steps), on stderr and in
    # samples.jsonl; a fixed seed per run, so successive previews differ only by what the model learned
    sample_every: int | None = setting(
        None,
        maybe(at_least(1)),
        "Preview the model's text every N steps \\[default: at each evaluation].",
        OUTPUT,
        resume=FREE,
        since_v1=False,
    )
    sample_length: int = setting(
        200,
        at_least(0, MAX_PREVIEW, says=f"from 0 to {MAX_PREVIEW:,} (a preview, not a sample)"),
        "Characters in each preview (temperature 0.8, the run's seed), on stderr and in samples.jsonl; 0: none.",
        OUTPUT,
        resume=FREE,
        since_v1=False,
    )
    sample_prime: str = setting(
        "",
        Check(TEXT, f"at most {MAX_TEXT:,} characters"),
        "Text each preview starts from (not shown) \\[default: a newline].",
        OUTPUT,
        show_default=False,
        resume=FREE,
        since_v1=False,
    )
    keep: int = setting(
        3,
        at_least(0, says="0 or more"),
        "Older numbered checkpoints to keep besides best.pt and last.pt.",
        OUTPUT,
        resume=FREE,
    )
    # runtime
    device: str = setting("auto", Check(TEXT, "a device name"), "auto, cpu, cuda, cuda:N or mps.", RUNTIME, resume=FREE)
    seed: int = setting(
        0,
        at_least(RECORDED_MIN_SEED, RECORDED_MAX_SEED),  # what a run may have recorded; a new run's: config/seed.py
        "Random seed \\[default: drawn and printed].",
        RUNTIME,
        flag_default=None,
    )
    threads: int | None = setting(
        None, maybe(at_least(1)), "CPU threads \\[default: torch's].", RUNTIME, resume=FREE, flag_default=None
    )
    amp: bool = setting(True, FLAG, "fp16 mixed precision on CUDA.", RUNTIME)  # fp16 + GradScaler on CUDA only

    def validate(self) -> None:
        check_settings(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        d = {"decay_frac": 1.0, **d}  # saved before decay_frac existed: the cosine ran over the whole budget
        return cls(**{k: v for k, v in d.items() if k in known})


TRAIN_RULES = rules_of(TrainConfig)  # a checkpoint's train_config, checked on resume
# What every train_config has held since format 1; a missing one of these means the file was edited.
TRAIN_REQUIRED = names_where(TrainConfig, lambda s: s.since_v1)
# Options that change no arithmetic, so a resumed run may take new values for them; and the limits, which it may.
RESUME_OVERRIDABLE = names_where(TrainConfig, lambda s: s.resume == FREE)
LIMITS = names_where(TrainConfig, lambda s: s.resume == LIMIT)
