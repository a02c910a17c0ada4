"""A training job, from the command line's request to its result: the one setup path.

    TrainJob (flags as configs) -> check every option -> read the corpus -> claim the run directory
        -> (resume: the run's checkpoint, read once the directory is locked; without a corpus argument its
            sources are read before, to find the corpus) -> torchrun, device, threads -> the model size -> Trainer

Each decision is made here exactly once and handed on; loop.py's Trainer receives a ready `Setup` (setup.py)
and only builds the model, the optimizer and the loop from it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charrnn import runtime
from charrnn.checkpoint.files import load_bundle, verify_checkpoint
from charrnn.checkpoint.rundir import RunDir, check_run_dir, checkpoint_in, claim_run_dir
from charrnn.checkpoint.state import ModelBundle, TrainState
from charrnn.config.model import ModelConfig
from charrnn.config.settings import flag_defaults
from charrnn.config.train import LIMITS, RESUME_OVERRIDABLE, TrainConfig
from charrnn.display import format_duration
from charrnn.errors import CharRNNError, CorpusError, UsageError
from charrnn.fields import RESUME_ADVICE
from charrnn.text.corpus import Corpus, load_corpus
from charrnn.text.vocab import Vocab, listed
from charrnn.training.autosize import choose_model_size, dropout_for
from charrnn.training.loop import Trainer
from charrnn.training.setup import Resumed, Setup, Start, TrainResult, check_corpus_size

Reporter = Callable[[str, dict], None]

# With no limit given, a run gets a time budget from its corpus size: bench/README.md (issue 9) shows 10 minutes
# of an auto-sized model on 2 CPU cores reaching tiny-shakespeare's (1.1 M characters) ~1.48 nats, with more
# time helping little at that size. The device enters through auto-sizing: a GPU trains a larger model in it.
BUDGET_PER_MILLION_CHARS = 600.0
MIN_BUDGET, MAX_BUDGET = 120.0, 3600.0


def default_budget(num_chars: int) -> float:
    """Seconds of training for a corpus of `num_chars` when the user gave no limit."""
    return float(round(min(MAX_BUDGET, max(MIN_BUDGET, BUDGET_PER_MILLION_CHARS * num_chars / 1e6))))


class ModelOptions:
    """The model flags as given: ModelConfig's settings that have a flag, at their flag's default unless given.
    None: chosen here (sizes by auto-sizing under a time budget, else ModelConfig's 2x512; dropout by the planned
    passes over the text, autosize.dropout_for)."""

    def __init__(self, **values: Any) -> None:
        defaults = flag_defaults(ModelConfig)
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            raise TypeError(f"ModelOptions has no option {unknown[0]!r}")
        self.values: dict[str, Any] = defaults | values

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelOptions) and self.values == other.values

    def __repr__(self) -> str:
        return f"ModelOptions({', '.join(f'{k}={v!r}' for k, v in self.values.items())})"

    @classmethod
    def of(cls, config: ModelConfig) -> ModelOptions:
        return cls(**{name: getattr(config, name) for name in MODEL_FIELDS})

    def check(self) -> None:
        """Every value checked now, by building a ModelConfig from them with the unset sizes at their default."""
        ModelConfig(vocab_size=2, **self.chosen()).check_trainable()

    def config(self, vocab_size: int, sized: dict | None = None) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, **self.chosen() | (sized or {}))

    def chosen(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if v is not None}


MODEL_FIELDS = tuple(flag_defaults(ModelConfig))


@dataclass
class TrainJob:
    """What the user asked for. `given` names the options typed on the command line (TrainConfig and
    ModelOptions fields): on --resume those may not silently differ from the run's."""

    sources: list[str] = field(default_factory=list)  # files, directories, "-" or a named corpus
    corpus: Corpus | None = None  # or the corpus, already loaded (library callers)
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelOptions = field(default_factory=ModelOptions)
    run_dir: Path | None = None
    resume: bool = False
    overwrite: bool = False
    init_from: Path | None = None
    given: set[str] | None = None
    verbose: bool = False
    show_progress: bool = True
    started: float = field(default_factory=time.perf_counter)  # --max-time counts from the command's start

    def check(self) -> None:
        """Every option, before the corpus is touched; nothing is created."""
        if self.resume and (self.init_from is not None or self.overwrite):
            raise UsageError("--resume continues a run, so it cannot be combined with --init-from or --overwrite.")
        if not self.sources and self.corpus is None and not self.resume:
            raise UsageError(
                "give a corpus to train on (a file, a directory, '-' or a named corpus such as pydocs), or "
                "--resume --run-dir DIR to continue a run."
            )
        if self.resume and not self.sources and self.corpus is None and self.run_dir is None:
            raise UsageError("--resume without a corpus needs --run-dir: the run directory to continue.")
        self.train.validate()
        runtime.select_device(self.train.device)
        self.model.check()
        if self.run_dir is not None:
            check_run_dir(self.run_dir, resume=self.resume, overwrite=self.overwrite)
        if self.init_from is not None:
            self.init_from = checkpoint_in(self.init_from)  # a run directory: its best.pt, as sample takes it
            verify_checkpoint(self.init_from)


def run(
    job: TrainJob,
    report: Reporter = lambda event, info: None,
    should_stop: Callable[[], int | None] = lambda: None,
    on_claim: Callable[[Path], None] = lambda path: None,
) -> TrainResult:
    """Check, set up and train; raises CharRNNError subclasses for problems a user can fix. `on_claim` hears
    the run directory once it is locked (the CLI removes its temp files there on an abrupt exit)."""
    with prepared(job, report, should_stop, on_claim) as trainer:
        return trainer.run()


@contextlib.contextmanager
def prepared(
    job: TrainJob,
    report: Reporter = lambda event, info: None,
    should_stop: Callable[[], int | None] = lambda: None,
    on_claim: Callable[[Path], None] = lambda path: None,
) -> Iterator[Trainer]:
    """A Trainer ready to run, inside its locked run directory (released on exit)."""
    job.check()
    dist = runtime.dist_from_env()
    if not dist.is_main:
        report = _silent  # under torchrun only rank 0 speaks
    try:
        corpus = job.corpus if job.corpus is not None else _load_corpus(job, dist, report)
        cfg = job.train
        _check_sample_prime(cfg, corpus.vocab)
        if not job.resume:
            check_corpus_size(len(corpus.ids), cfg, len(corpus.vocab))  # before the run directory is created
            _default_budget(cfg, len(corpus.ids), report)
        with _claimed(job, corpus.name, dist, report, on_claim) as run_dir:
            yield Trainer(_setup(job, corpus, dist, run_dir, report), report, should_stop)
    finally:
        report("end", {})
        runtime.close_distributed()


def train(
    corpus: Corpus,
    model_config: ModelConfig | None,
    cfg: TrainConfig,
    run_dir: Path,
    report: Reporter = lambda event, info: None,
    should_stop: Callable[[], int | None] = lambda: None,
    **job_fields,
) -> TrainResult:
    """run() for a library caller with a corpus already loaded and a whole model config (None: on --resume or
    --init-from, where the checkpoint has it). `job_fields`: TrainJob's (resume, overwrite, init_from, ...)."""
    model = ModelOptions.of(model_config) if model_config is not None else ModelOptions()
    job = TrainJob(corpus=corpus, train=cfg, model=model, run_dir=Path(run_dir), **job_fields)
    return run(job, report, should_stop)


def _silent(event: str, info: dict) -> None:
    pass


def _say(report: Reporter) -> Callable[[str], None]:
    return lambda text: report("message", {"text": text})


def _load_corpus(job: TrainJob, dist: runtime.Dist, report: Reporter) -> Corpus:
    sources = job.sources or _resume_sources(job.run_dir)
    exclude = [Path("checkpoints").resolve()] + ([job.run_dir.resolve()] if job.run_dir is not None else [])

    def warn(text: str) -> None:
        report("warning", {"text": text})

    return load_corpus(sources, show_progress=job.show_progress and dist.is_main, warn=warn, exclude=exclude)


def _resume_sources(run_dir: Path | None) -> list[str]:
    """The corpus sources recorded in the run's newest checkpoint, so --resume needs no corpus argument."""
    assert run_dir is not None  # TrainJob.check: --resume without a corpus needs --run-dir
    ckpt, path, _ = RunDir(run_dir).load_latest()
    sources = ckpt.get("corpus", {}).get("sources") if isinstance(ckpt.get("corpus"), dict) else None
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise CharRNNError(
            f"{path} does not record its corpus; give the corpus again: charrnn train CORPUS --resume "
            f"--run-dir {run_dir}."
        )
    if "-" in sources:
        raise UsageError(
            f"the run in {run_dir} was trained on standard input; pipe the same text in again: "
            f"... | charrnn train - --resume --run-dir {run_dir}."
        )
    return sources


@contextlib.contextmanager
def _claimed(job: TrainJob, corpus_name: str, dist: runtime.Dist, report: Reporter, on_claim) -> Iterator[RunDir]:
    """The run directory, locked by rank 0 for the whole run."""
    path = job.run_dir or Path("checkpoints") / corpus_name
    lock = None
    if dist.is_main:
        # Under torchrun every rank must write to the same place, so no rank may pick a -2 on its own.
        explicit = job.run_dir is not None or dist.enabled
        lock, path, note = claim_run_dir(path, explicit=explicit, resume=job.resume, overwrite=job.overwrite)
        if note:
            report("warning", {"text": note})
        on_claim(path)
    try:
        yield RunDir(path, keep=job.train.keep, overwrite=job.overwrite)
    finally:
        if lock is not None:
            lock.close()


def _default_budget(cfg: TrainConfig, num_chars: int, report: Reporter) -> None:
    if cfg.max_steps is None and cfg.max_epochs is None and cfg.max_time is None:
        cfg.max_time = default_budget(num_chars)
        report(
            "message",
            {
                "text": f"no limit given: a budget of {format_duration(cfg.max_time)} for {num_chars:,} characters "
                "(10 min a million, 2 min to 1 h); --max-time, --max-steps or --max-epochs set one"
            },
        )


def _setup(job: TrainJob, corpus: Corpus, dist: runtime.Dist, run_dir: RunDir, report: Reporter) -> Setup:
    """The one place where the run's configs, device and starting point are decided."""
    resumed = _read_resume(job, corpus, run_dir, report) if job.resume else None
    cfg = job.train
    if resumed:  # the run's settings with the ones that may change: checked as a new run's were in job.check()
        cfg = _resume_config(job, resumed.state, run_dir.path)
        cfg.validate()
        check_corpus_size(len(corpus.ids), cfg)
    run_dir.keep = cfg.keep  # on resume, the saved --keep unless given again
    device = runtime.init_distributed(dist, runtime.select_device(cfg.device))
    runtime.set_threads(cfg.threads)
    runtime.configure_backends(device)
    report("message", {"text": f"corpus {corpus.name}: {len(corpus.ids):,} characters, {len(corpus.vocab)} distinct"})
    _report_skipped(corpus, job.verbose, report)
    start = Start(corpus.ids, corpus.vocab)
    if resumed:
        _check_resume_model(job, resumed.bundle.config, run_dir.path)
        start = Start(corpus.ids, resumed.bundle.vocab, resumed.bundle.config, resumed=resumed)
    else:
        report("message", {"text": f"seed {cfg.seed}"})
        if job.init_from is not None:
            start = _fine_tune_start(corpus, job)
        else:
            start.model_config = _new_model_config(job, corpus, cfg, dist, device, report)
    return Setup(corpus, start, cfg, run_dir, dist, device, job.given, job.started)


def _check_sample_prime(cfg: TrainConfig, vocab: Vocab) -> None:
    """--sample-prime must be text the model can read; checked before anything is created, not at the first
    preview. (A resumed run's vocabulary is its corpus's; a fine-tuned model's holds the corpus's.)"""
    unknown = vocab.unknown(cfg.sample_prime)
    if unknown:
        raise UsageError(
            f"--sample-prime has character(s) the corpus does not: {listed(unknown, ' ')}; remove them or leave it out."
        )


def _read_resume(job: TrainJob, corpus: Corpus, run_dir: RunDir, report: Reporter) -> Resumed:
    """The run's newest usable checkpoint, read once, its header fields checked."""
    ckpt, path, warnings = run_dir.load_latest()
    for w in warnings:
        report("warning", {"text": w})
    state = TrainState.from_dict(ckpt, path)  # types first: the corpus hash and the config are read next
    if state.corpus.sha256 != corpus.sha256:
        raise CorpusError(
            f"the corpus differs from the one {run_dir.path} was trained on (its content hash "
            "changed); resume with the same text, or start a new run with another --run-dir."
        )
    report("message", {"text": f"resuming from {path} at step {state.step}"})
    return Resumed(ckpt, ModelBundle.from_dict(ckpt, path, RESUME_ADVICE), state, path)


def resume_conflict(flags: list[str], run_dir) -> str:
    """The one sentence that refuses flags a resumed run cannot take."""
    may = ", ".join(f"--{name.replace('_', '-')}" for name in LIMITS + RESUME_OVERRIDABLE) + " and --quiet"
    return (
        f"{' and '.join(flags)} cannot change on --resume: the run in {run_dir} continues with the settings it "
        f"was started with (only {may} may change); leave {'them' if len(flags) > 1 else 'it'} out, or start a "
        "new run, with --init-from to begin from its weights."
    )


def _resume_config(job: TrainJob, state: TrainState, run_dir: Path) -> TrainConfig:
    """The saved settings, with the options given on this command line that may change on resume.

    `given` names the options the user typed; None (a library caller) means every resumable setting and
    every limit set in the job. A given option that would change the arithmetic (the lr, the batch, the
    seed...) is refused before anything is written: silently keeping the old value misleads, and taking the
    new one would make the run neither the old one nor a fresh one."""
    cfg, saved = job.train, TrainConfig.from_dict(state.train_config)
    given = job.given
    if given is None:
        given = set(RESUME_OVERRIDABLE) | {k for k in LIMITS if getattr(cfg, k) is not None}
    updates = {k: getattr(cfg, k) for k in given if k in RESUME_OVERRIDABLE or k in LIMITS}
    names = {f.name for f in fields(TrainConfig)}
    conflicts = [k for k in sorted(given - set(updates)) if k in names and getattr(cfg, k) != getattr(saved, k)]
    if conflicts:
        raise UsageError(resume_conflict([f"--{k.replace('_', '-')}" for k in conflicts], run_dir))
    return replace(saved, **updates)


def _check_resume_model(job: TrainJob, saved: ModelConfig, run_dir: Path) -> None:
    """Model flags given again on --resume must match the run's model: a new value is refused, not ignored."""
    changed = _changed_model_flags(job, saved)
    if changed:
        raise UsageError(resume_conflict([flag for flag, _ in changed], run_dir))


def _changed_model_flags(job: TrainJob, saved: ModelConfig, free: tuple[str, ...] = ()) -> list[tuple[str, object]]:
    """(--flag, the checkpoint's value) for each model flag typed on the command line that disagrees with the
    model in a checkpoint (--resume, --init-from): one rule, so a flag is never silently ignored. `free`: the
    flags that may change."""
    given = {n: getattr(job.model, n) for n in MODEL_FIELDS if job.given is not None and n in job.given}
    if given.get("embed_size") == 0:  # 0 means "the hidden size", which is what the run stored
        given["embed_size"] = saved.hidden_size
    return [
        (f"--{n.replace('_', '-')}", getattr(saved, n))
        for n, v in given.items()
        if v is not None and n not in free and getattr(saved, n) != v
    ]


def _check_init_model(job: TrainJob, saved: ModelConfig) -> None:
    changed = _changed_model_flags(job, saved, free=("dropout",))
    if changed:
        listed = ", ".join(f"{flag} (it has {value})" for flag, value in changed)
        raise UsageError(
            f"{listed} disagree{'s' if len(changed) == 1 else ''} with the model in {job.init_from}: --init-from "
            "keeps its architecture (only --dropout may change); leave "
            f"{'them' if len(changed) > 1 else 'it'} out, or train a new model without --init-from."
        )


def _fine_tune_start(corpus: Corpus, job: TrainJob) -> Start:
    """--init-from: the checkpoint's model and vocabulary (only dropout may change), the corpus re-encoded."""
    assert job.init_from is not None
    bundle = load_bundle(job.init_from)
    config = bundle.config
    _check_init_model(job, config)
    if job.model.dropout is not None:
        config = replace(config, dropout=job.model.dropout)  # a training choice, free to change when fine-tuning
    ids = resolve_init_vocab(corpus, bundle.vocab)
    check_corpus_size(len(ids), job.train, len(bundle.vocab))  # the checkpoint's vocabulary sets the logits' size
    return Start(ids, bundle.vocab, config, init=bundle, init_path=job.init_from)


def resolve_init_vocab(corpus: Corpus, ckpt_vocab: Vocab) -> np.ndarray:
    """Re-encode the corpus ids into the checkpoint's vocabulary (for --init-from fine-tuning)."""
    missing = ckpt_vocab.unknown("".join(corpus.vocab.chars))
    if missing:
        raise CorpusError(
            f"the corpus has {len(missing)} character(s) the --init-from checkpoint's vocabulary lacks "
            f"({listed(missing)}); fine-tune on text that uses only its characters, or train from scratch."
        )
    stoi = {c: i for i, c in enumerate(ckpt_vocab.chars)}
    lut = np.array([stoi[c] for c in corpus.vocab.chars], dtype=ckpt_vocab.dtype)
    return lut[np.asarray(corpus.ids)]


def _new_model_config(job, corpus, cfg, dist, device, report) -> ModelConfig:
    """The flags' model; sizes the user left out are auto-sized under a time budget (else ModelConfig's), and
    dropout left out follows the planned passes over the text."""
    opts, vocab_size = job.model, len(corpus.vocab)
    sized: dict = {}
    if cfg.max_time is not None and opts.hidden_size is None and opts.num_layers is None:
        sized = _auto_size(job, corpus, cfg, dist, device, report)
    if opts.dropout is None and "dropout" not in sized:
        sized["dropout"] = dropout_for(_planned_passes(cfg, len(corpus.ids), dist.world_size))
    return opts.config(vocab_size, sized)


def _auto_size(
    job: TrainJob, corpus: Corpus, cfg: TrainConfig, dist: runtime.Dist, device: torch.device, report: Reporter
) -> dict:
    """choose_model_size's pick (hidden_size, num_layers, dropout). Under torchrun rank 0 alone times the
    candidates and the other ranks wait in the broadcast for its choice: ranks timing apart could pick different
    sizes (DDP refuses parameters whose shapes differ across ranks), and ranks timing at once would slow each
    other on shared cores."""
    assert cfg.max_time is not None  # sized only under a time budget
    sized: dict = {}
    if dist.is_main:
        opts = job.model
        sized = choose_model_size(
            len(corpus.ids),
            cfg.max_time,
            device,
            cfg,
            opts.model,
            opts.dropout,
            _say(report),
            len(corpus.vocab),
            world_size=dist.world_size,
        )
    return runtime.broadcast(dist, sized)


def _planned_passes(cfg: TrainConfig, num_chars: int, world_size: int = 1) -> float:
    """Passes over the training text the limits allow, when steps or epochs set them (0 when only time does:
    the passes a time buys are known only once measured, which auto-sizing does). Under torchrun a step reads
    batch_size streams on every process."""
    per_pass = num_chars * (1.0 - cfg.val_frac) / (cfg.batch_size * cfg.seq_len * world_size)
    passes = [cfg.max_epochs or 0.0, (cfg.max_steps or 0) / per_pass]
    return max(passes)


def _report_skipped(corpus: Corpus, verbose: bool, report: Reporter) -> None:
    if not corpus.skipped:
        return
    report(
        "warning",
        {
            "text": f"skipped {len(corpus.skipped)} file(s) of the corpus directory (binary, not UTF-8, hidden or a "
            f"run directory){'' if verbose else '; --verbose lists them'}"
        },
    )
    if verbose:
        for where, why in corpus.skipped:
            report("warning", {"text": f"skipped {where}: {why}"})
