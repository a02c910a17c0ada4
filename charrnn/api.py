"""The Python API: a trained model as an object, and training as a call. The CLI's `sample`, `score` and `train`
stand on the same functions (Model.sample_blocks, Model.beam_events, Model.score, train_job), so a seed gives the
same text here as on the command line, and a text the same score.

    import charrnn
    model = charrnn.load("checkpoints/notes")           # a run directory, a .pt or a .safetensors
    text = model.generate("ROMEO:", length=500, temperature=0.8, seed=1)   # the new text, without the prime
    result = charrnn.train("notes.txt", max_time="5m")  # result.checkpoint, result.best_val_loss, result.steps

Every problem a user can fix raises charrnn.CharRNNError (UsageError for a bad option) with the one sentence the
CLI prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from charrnn import runtime
from charrnn.checkpoint.files import load_model
from charrnn.checkpoint.rundir import checkpoint_in, find_latest_run
from charrnn.checkpoint.state import ModelBundle
from charrnn.config.model import ModelConfig
from charrnn.config.sample import SAMPLE_PRECISIONS, SampleConfig
from charrnn.config.seed import check_seed, draw_seed
from charrnn.config.settings import parsed, settings_of
from charrnn.config.train import TrainConfig
from charrnn.errors import CorpusError, UsageError
from charrnn.generation.beam import BeamConfig, BeamEvent, BeamResult, beam_search
from charrnn.generation.heatmap import CharScore, char_scores
from charrnn.generation.lines import score_lines
from charrnn.generation.sample import generate
from charrnn.generation.score import LineScore, Score, ScoreConfig
from charrnn.generation.stepper import check_precision, check_precision_on
from charrnn.generation.whole import score_text
from charrnn.model import CharRNN
from charrnn.text.vocab import Vocab, listed
from charrnn.training.job import MODEL_FIELDS, ModelOptions, TrainJob, run
from charrnn.training.setup import TrainResult

Progress = Callable[[str, dict], None]  # (event, info): "eval" {step, val_loss, train_loss, ...}, "log", ...


def load(path: Path | str | None = None, *, device: str = "auto", precision: str = "fp32") -> Model:
    """The model in `path`: a checkpoint (.pt), an exported .safetensors, or a run directory (its best.pt, else
    last.pt); None: the newest run under ./checkpoints. `device`: auto (CUDA when present), cpu, cuda, cuda:N.
    `precision`: fp32, bf16, int8 or auto, for generate() and stream().

    >>> model = charrnn.load("checkpoints/notes", device="cpu")
    """
    check_precision(precision, SAMPLE_PRECISIONS)
    dev = runtime.select_device(device)
    check_precision_on(precision, dev)
    return Model.from_file(find_latest_run() if path is None else checkpoint_in(Path(path)), dev, precision)


class Model:
    """A loaded model: generate, stream, beam and score text. Build one with charrnn.load()."""

    def __init__(self, net: CharRNN, bundle: ModelBundle, path: Path, device: torch.device, precision: str) -> None:
        self.net, self.bundle, self.path, self.device, self.precision = net, bundle, path, device, precision

    @classmethod
    def from_file(cls, path: Path, device: torch.device, precision: str = "fp32") -> Model:
        """The checkpoint file `path` (already resolved: checkpoint.checkpoint_in) loaded and verified on
        `device`, for a precision already checked there."""
        net, bundle = load_model(path, device)
        return cls(net, bundle, path, device, precision)

    @property
    def vocab(self) -> list[str]:
        """The characters the model knows, in id order."""
        return list(self.bundle.vocab.chars)

    @property
    def config(self) -> ModelConfig:
        return self.net.config

    @property
    def info(self) -> dict[str, Any]:
        """What the checkpoint says about its run: step, epoch, val_loss (this checkpoint's), best_val_loss,
        best_step, corpus_name, corpus_chars, device, torch_version; None where it does not say."""
        facts = self.bundle.facts
        return {f.name: getattr(facts, f.name) for f in fields(facts)}

    def __repr__(self) -> str:
        c = self.config
        return f"<charrnn.Model {c.model} {c.num_layers}x{c.hidden_size}, {c.vocab_size} characters, {self.path}>"

    # ---- sampling

    def generate(
        self,
        prime: str = "",
        length: int = 2000,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        num_samples: int = 1,
        seed: int | None = None,
    ) -> str | list[str]:
        """`length` new characters after `prime` (not included), sampled at `temperature` (0: greedy), from the
        `top_k` most likely or the `top_p` nucleus; a list of `num_samples` texts when more than one. The same
        seed gives the text `charrnn sample --seed` prints after its prime; None draws one.

        >>> model.generate("ROMEO:", length=200, temperature=0.8, seed=1)
        """
        cfg = self.sample_config(temperature, top_k, top_p, length, num_samples, seed)
        rows: list[list[str]] = [[] for _ in range(num_samples)]
        for block in self.sample_blocks(self.prime_ids(prime), cfg):  # (B, k) ids
            for row, ids in zip(rows, block.tolist(), strict=True):
                row.append(self.bundle.vocab.decode(ids))
        texts = ["".join(row) for row in rows]
        return texts[0] if num_samples == 1 else texts

    def stream(
        self,
        prime: str = "",
        length: int = 2000,
        *,
        temperature: float = 0.8,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """generate()'s text piece by piece as it is produced (a character at a time on a CPU).

        >>> for piece in model.stream("ROMEO:", length=2000, seed=1): print(piece, end="")
        """
        cfg = self.sample_config(temperature, top_k, top_p, length, 1, seed)
        blocks = self.sample_blocks(self.prime_ids(prime), cfg)  # options are checked here, at the call
        return (piece for block in blocks if (piece := self.bundle.vocab.decode(block[0].tolist())))

    def beam(self, prime: str = "", length: int = 2000, *, beams: int = 5, num_results: int = 1) -> str | list[str]:
        """The most likely continuation of `prime` by beam search with `beams` beams, `length` characters (not
        including the prime); the `num_results` best, best first, as a list when more than one.

        >>> model.beam("ROMEO:", length=100, beams=5)
        """
        cfg = BeamConfig(beam_size=beams, length=length, num_results=num_results)
        results = [e for e in self.beam_events(self.prime_ids(prime), cfg) if isinstance(e, BeamResult)]
        texts = [self.bundle.vocab.decode(r.ids) for r in results]
        if num_results > 1:
            return texts
        return texts[0] if texts else ""  # length 0: nothing to search

    def sample_config(
        self, temperature: float, top_k: int | None, top_p: float | None, length: int, num_samples: int,
        seed: int | None,
    ) -> SampleConfig:  # fmt: skip
        seed = draw_seed() if seed is None else seed
        cfg = SampleConfig(
            temperature=temperature, top_k=top_k, top_p=top_p, length=length, num_samples=num_samples, seed=seed,
            precision=self.precision,
        )  # fmt: skip
        cfg.validate()
        return cfg

    def sample_blocks(
        self, prime_ids: list[int], cfg: SampleConfig, on_precision: Callable[[Any], None] | None = None
    ) -> Iterator[torch.Tensor]:
        """The sampler's (B, k) blocks of new ids after the prime's ids (prime_ids()), from sample.generate, which
        runs its steps under inference mode itself: what the CLI streams and generate() joins. Options are
        checked at the call."""
        return generate(self.net, prime_ids, cfg, self.device, on_precision=on_precision)

    def beam_events(self, prime_ids: list[int], cfg: BeamConfig) -> Iterator[BeamEvent]:
        """beam.beam_search's events after the prime's ids (prime_ids()): what the CLI streams and beam() collects."""
        return beam_search(self.net, prime_ids, cfg, self.device)

    def prime_ids(self, prime: str) -> list[int]:
        """`prime` as ids; an empty prime is the vocabulary's start character (a newline when it has one), which
        is never printed. Characters the model never saw are refused in one sentence."""
        vocab = self.bundle.vocab
        check_prime_text(prime, vocab)
        return [int(i) for i in vocab.encode(prime or vocab.start())]

    # ---- scoring

    def score(
        self, text: str, *, per_line: bool = False, independent: bool = False, skip_unknown: bool = False
    ) -> Score | list[LineScore]:
        """How well the model predicts `text`: a Score (.nats_per_char, .bits_per_char, .perplexity, .chars; its
        to_dict() is what `charrnn score --json` prints), or with per_line a list of LineScore (.text, .nats,
        .chars, .nats_per_char, .bits_per_char, .perplexity) with one per line, each scored
        in context or, with independent, from a fresh state. Characters the model never saw are charged ln(V)
        nats each, or left out with skip_unknown.

        >>> model.score(open("draft.txt").read()).bits_per_char
        """
        if independent and not per_line:
            raise UsageError("independent=True scores each line from a fresh state, so it needs per_line=True.")
        cfg = ScoreConfig(skip_unknown=skip_unknown, independent=independent)
        if per_line:
            return list(score_lines(self.net, self.bundle.vocab, [text], self.device, cfg))
        return score_text(self.net, self.bundle.vocab, [text], self.device, cfg)

    def char_scores(self, text: str, *, top_k: int = 5) -> list[CharScore]:
        """Per-character surprise, as `charrnn score --html` draws it: one CharScore per character of `text`
        (.char, .surprise in bits, .prob, .top: the model's `top_k` likeliest characters there, .known), scored
        in context as one stream. The first character is context only; one the model never saw is marked."""
        return char_scores(self.net, self.bundle.vocab, text, self.device, top_k=top_k)


def check_prime_text(prime: str, vocab: Vocab) -> None:
    unknown = vocab.unknown(prime)
    if unknown:
        raise CorpusError(
            f"--prime has character(s) the model never saw: {listed(unknown, ' ')}; remove them or train on text "
            "that has them."
        )


# ---- training

# train()'s keywords: every TrainConfig setting, and ModelConfig's that have a flag (the vocabulary comes from
# the corpus).
TRAIN_OPTIONS = tuple(settings_of(TrainConfig))
MODEL_OPTIONS = MODEL_FIELDS


@dataclass(frozen=True)
class Trained:
    """What train() returns: `checkpoint` (the best one; load it with charrnn.load), `steps` trained in all."""

    checkpoint: Path
    last_checkpoint: Path
    run_dir: Path
    best_val_loss: float
    steps: int
    stop_reason: str  # "max_steps" | "max_epochs" | "max_time" | "signal"

    @classmethod
    def of(cls, result: TrainResult) -> Trained:
        return cls(
            result.best_path, result.last_path, result.run_dir, result.best_val_loss, result.step, result.stop_reason
        )


def train(
    corpus: str | Path | list[str | Path] | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Trained:
    """Train on `corpus` (a file, a directory, a named corpus such as "pydocs", or a list of them) as
    `charrnn train` does, and return where the checkpoints are. `options` are train's flags as keywords
    (max_time="5m" or seconds, max_steps, hidden_size, num_layers, model, dropout, lr, seq_len, batch_size,
    seed, device, ...). `progress(event, info)` hears the run: "eval" after each evaluation (step, val_loss,
    train_loss, lr, ...), "log" every log_every steps, "message" for a line the CLI would print; without it the
    run is silent.

    >>> result = charrnn.train("notes.txt", max_time="5m", hidden_size=256)
    >>> charrnn.load(result.checkpoint).generate("Dear ", length=200, seed=1)
    """
    job = train_job(corpus, run_dir, resume, overwrite, init_from, options, given=set(options))
    return Trained.of(run(job) if progress is None else run(job, progress))


def train_job(
    corpus: str | Path | list[str | Path] | None,
    run_dir: str | Path | None,
    resume: bool,
    overwrite: bool,
    init_from: str | Path | None,
    options: dict[str, Any],
    given: set[str],
    *,
    started: float | None = None,
    verbose: bool = False,
    show_progress: bool = False,
) -> TrainJob:
    """The TrainJob of train's options, the one the CLI's `train` runs too. `given`: the options the caller
    set (on --resume those may not differ from the run's); a seed left unset is drawn here."""
    unknown = sorted(set(options) - set(TRAIN_OPTIONS) - set(MODEL_OPTIONS))
    if unknown:
        raise UsageError(f"train has no option {unknown[0]!r}; the options are train's flags, e.g. max_time.")
    train_options = parsed(TrainConfig, {k: v for k, v in options.items() if k in TRAIN_OPTIONS})
    if train_options.get("seed") is None:
        train_options["seed"] = draw_seed()
    check_seed(train_options["seed"])  # from 0 (docs/limits-and-errors.md); older runs resume theirs
    sources = [] if corpus is None else [str(c) for c in corpus] if isinstance(corpus, list) else [str(corpus)]
    return TrainJob(
        sources=sources,
        train=TrainConfig(**train_options),
        model=ModelOptions(**{k: v for k, v in options.items() if k in MODEL_OPTIONS}),
        run_dir=None if run_dir is None else Path(run_dir),
        resume=resume,
        overwrite=overwrite,
        init_from=None if init_from is None else Path(init_from),
        given=given & (set(TRAIN_OPTIONS) | set(MODEL_OPTIONS)),
        verbose=verbose,
        show_progress=show_progress,
        started=time.perf_counter() if started is None else started,
    )
