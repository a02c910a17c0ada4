"""The typed checkpoint: the one owner of what a checkpoint holds.

A checkpoint is one plain dict (torch.load(weights_only=True) reads it) made of two parts:

    ModelBundle   what sampling, scoring and export need: model config, vocabulary, weights (+ the run's facts and
                  provenance)
    TrainState    what resuming exactly needs: optimizer, scaler, RNG states, data position, carried hidden
                  state, counters, the run's TrainConfig and corpus identity

Each part writes and reads its own keys (`to_dict` / `from_dict`); `from_dict` checks every field it reads
(checks.py) and names the file and the field when one is wrong. checkpoint.py keeps the bytes: atomic writes,
verification, retention. Format 1 is the only layout charrnn has written; keys added since have defaults here
(`TrainConfig.from_dict` fills `decay_frac` for runs saved before it existed).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from charrnn.checkpoint.rules import check_resume_header
from charrnn.config.model import ModelConfig, weight_shapes
from charrnn.errors import CheckpointError
from charrnn.fields import (
    ANY_REAL,
    LOAD_ADVICE,
    LOSS,
    NON_NEGATIVE,
    TEXT,
    Rule,
    check_weights,
    field_error,
    int_in,
    require,
    require_dict,
)
from charrnn.model import CharRNN, copy_weights
from charrnn.text.vocab import StoredVocabError, Vocab
from charrnn.version import __version__

FORMAT_NAME = "charrnn"
FORMAT_VERSION = 1
MODEL_KEYS = ("format", "format_version", "model", "model_config", "vocab")  # enough to sample
RESUME_KEYS = ("train_config", "optimizer", "step", "rng", "data")  # and these to resume


def check_format(path: Path, d: object) -> None:
    """A charrnn checkpoint of a format this version reads (CheckpointError otherwise)."""
    refuse = functools.partial(CheckpointError.about, path)

    if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
        other = f" (its format is {d['format']!r})" if isinstance(d, dict) and "format" in d else ""
        raise refuse(f"was not written by charrnn{other}", "pass a checkpoint from `charrnn train`")
    version = d.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise refuse(f"has an invalid format_version {version!r}", "use another checkpoint")
    if version > FORMAT_VERSION:
        raise refuse(
            f"has format_version {version}, newer than this charrnn reads ({FORMAT_VERSION})",
            "upgrade charrnn to load it",
        )
    if version < FORMAT_VERSION:
        raise refuse(
            f"has format_version {version}, older than this charrnn reads ({FORMAT_VERSION})",
            "load it with the charrnn version that wrote it, or retrain",
        )


# ---------------------------------------------------------------- the model


@dataclass
class RunFacts:
    """What a checkpoint says about the run that wrote it (`info` prints it, export carries it); None where the
    checkpoint does not say. best_val_loss is None before the first evaluation, and best_step with it."""

    step: int | None = None
    epoch: float | None = None
    val_loss: float | None = None  # this checkpoint's own evaluation (None: saved between evaluations)
    best_val_loss: float | None = None
    best_step: int | None = None
    corpus_name: str | None = None
    corpus_chars: int | None = None
    device: str | None = None
    torch_version: str | None = None

    @classmethod
    def from_dict(cls, d: dict, path) -> RunFacts:
        corpus = require_dict(d.get("corpus", {}), "corpus", path)
        facts = cls(
            step=_get(d, "step", int_in(0), path),
            epoch=_get(d, "epoch", NON_NEGATIVE, path),
            val_loss=_get(d, "val_loss", ANY_REAL, path),
            best_val_loss=_get(d, "best_val_loss", LOSS, path),
            best_step=_get(d, "best_step", int_in(-1), path),
            corpus_name=_get(corpus, "name", TEXT, path, "corpus."),
            corpus_chars=_get(corpus, "num_chars", int_in(0), path, "corpus."),
            device=_get(d, "device", TEXT, path),
            torch_version=_get(d, "torch_version", TEXT, path),
        )
        if facts.best_val_loss is not None and math.isinf(facts.best_val_loss):
            facts.best_val_loss = None
        if facts.best_val_loss is None or facts.best_step == -1:
            facts.best_step = None
        if facts.val_loss is not None and not math.isfinite(facts.val_loss):
            facts.val_loss = None
        facts.epoch = None if facts.epoch is None else float(facts.epoch)
        facts.best_val_loss = None if facts.best_val_loss is None else float(facts.best_val_loss)
        return facts

    def as_dict(self) -> dict:
        return asdict(self)

    def to_dict(self) -> dict:
        """The checkpoint's keys for these facts (what from_dict reads), the unknown ones left out (None, or a
        NaN / inf loss, which from_dict reads as None): export writes this into a model file's metadata as JSON,
        and from_dict reads it back there with the same checks."""
        known = {k: v for k, v in self.as_dict().items() if v is not None and not k.startswith("corpus_")}
        d = {k: v for k, v in known.items() if not (isinstance(v, float) and not math.isfinite(v))}
        corpus = {"name": self.corpus_name, "num_chars": self.corpus_chars}
        return d | {"corpus": {k: v for k, v in corpus.items() if v is not None}}


@dataclass
class Provenance:
    """Where a model came from beyond what `info` prints: the hash of the text it trained on and the charrnn
    version that trained it; an exported model file carries them so a shared model can be traced to its data."""

    corpus_sha256: str | None = None
    charrnn_version: str | None = None

    @classmethod
    def from_dict(cls, d: dict, path) -> Provenance:
        corpus = require_dict(d.get("corpus", {}), "corpus", path)
        return cls(
            corpus_sha256=_get(corpus, "sha256", TEXT, path, "corpus.") or None,  # "": a run saved before hashing
            charrnn_version=_get(d, "charrnn_version", TEXT, path),
        )

    def to_dict(self) -> dict:
        """The checkpoint's keys (what from_dict reads), the unknown ones left out."""
        d: dict = {"corpus": {"sha256": self.corpus_sha256} if self.corpus_sha256 is not None else {}}
        return d | ({"charrnn_version": self.charrnn_version} if self.charrnn_version is not None else {})


def run_dict(facts: RunFacts, provenance: Provenance) -> dict:
    """Both as one checkpoint-shaped dict (their corpus keys merged), which RunFacts and Provenance.from_dict read."""
    a, b = facts.to_dict(), provenance.to_dict()
    return a | b | {"corpus": a.get("corpus", {}) | b.get("corpus", {})}


def _get(values: dict, key: str, rule: Rule, path, prefix: str = ""):
    return require(values[key], rule, prefix + key, path) if key in values else None


@dataclass
class ModelBundle:
    """A trained model as data: config, vocabulary and weights (CPU tensors), and the facts of its run and where
    it came from."""

    config: ModelConfig
    vocab: Vocab
    weights: dict[str, torch.Tensor]
    facts: RunFacts = field(default_factory=RunFacts)
    provenance: Provenance = field(default_factory=Provenance)

    @classmethod
    def of(cls, model: CharRNN, vocab: Vocab) -> ModelBundle:
        weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return cls(model.config, vocab, weights)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "model": self.weights,
            "model_config": self.config.to_dict(),
            "vocab": self.vocab.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict, path, advice: str = LOAD_ADVICE) -> ModelBundle:
        """Every field checked (CheckpointError naming the file and the field) before anything is allocated."""
        check_format(path, d)
        missing = [key for key in MODEL_KEYS if key not in d]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is incomplete, so use another checkpoint.")
        config = ModelConfig.from_dict(d["model_config"], path)
        vocab = _vocab(d, path, advice)
        if len(vocab) != config.vocab_size:
            problem = f"has {len(vocab)} characters but model_config.vocab_size is {config.vocab_size}"
            raise field_error(path, "vocab", problem, advice)
        check_weights(d["model"], weight_shapes(config), path, advice)
        return cls(config, vocab, d["model"], RunFacts.from_dict(d, path), Provenance.from_dict(d, path))

    def build_model(self, device: torch.device | str = "cpu") -> CharRNN:
        """The model, in eval mode on `device`; the weights were checked against the config on reading."""
        model = CharRNN(self.config)
        copy_weights(model, self.weights, None)
        return model.to(device).eval()


def _vocab(d: dict, path, advice: str) -> Vocab:
    try:
        return Vocab.from_dict(d.get("vocab"))  # type: ignore[arg-type]  # from_dict checks the type
    except StoredVocabError as exc:
        raise field_error(path, "vocab", exc.problem, advice) from None


# ---------------------------------------------------------------- the run


@dataclass
class CorpusInfo:
    """Which text a run trained on: resume checks the hash, --resume without a corpus reads the sources."""

    name: str = ""
    sha256: str = ""
    num_chars: int = 0
    sources: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> CorpusInfo:
        sources = d.get("sources")
        if not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
            sources = []
        return cls(d.get("name", ""), d.get("sha256", ""), int(d.get("num_chars", 0)), list(sources))


@dataclass
class TrainState:
    """Everything beyond the model that resuming exactly needs. `train_config` is TrainConfig.to_dict() (config/train.py
    owns that type); `hidden` is this process's carried state, and under torchrun `hidden_ranks` / `rng_ranks`
    hold every rank's, so a resume with the same world size is bit-exact on each rank."""

    train_config: dict
    corpus: CorpusInfo
    step: int
    epoch: int  # whole passes done
    batch_index: int  # the next batch within the pass
    batches_per_epoch: int | None
    optimizer: dict
    rng: dict
    hidden: list[torch.Tensor] = field(default_factory=list)
    scaler: dict | None = None
    world_size: int = 1
    hidden_ranks: list | None = None
    rng_ranks: list | None = None
    elapsed_s: float = 0.0
    train_loss: float = math.nan
    val_loss: float = math.nan  # the latest evaluation's; NaN when the latest checkpoint was not evaluated
    best_val_loss: float = math.inf
    best_step: int = -1
    skipped_steps: int = 0
    device: str = "cpu"

    @property
    def epoch_float(self) -> float:
        return self.epoch + (self.batch_index / self.batches_per_epoch if self.batches_per_epoch else 0.0)

    def to_dict(self) -> dict:
        data = {"epoch": self.epoch, "batch_index": self.batch_index, "batches_per_epoch": self.batches_per_epoch}
        ranks = {"hidden_ranks": self.hidden_ranks, "rng_ranks": self.rng_ranks} if self.hidden_ranks else {}
        return {
            "train_config": self.train_config,
            "corpus": asdict(self.corpus),
            "step": self.step,
            "epoch": self.epoch_float,
            "data": data,
            "hidden": self.hidden,
            "optimizer": self.optimizer,
            "scaler": self.scaler,
            "rng": self.rng,
            "world_size": self.world_size,
            **ranks,
            "elapsed_s": self.elapsed_s,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_bpc": self.val_loss / math.log(2),
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "skipped_steps": self.skipped_steps,
            "device": self.device,
            "torch_version": str(torch.__version__),  # TorchVersion is a str subclass weights_only refuses
            "charrnn_version": __version__,
            "saved_at": time.time(),
        }

    @classmethod
    def from_dict(cls, d: dict, path) -> TrainState:
        """The header fields checked (types and ranges); the tensors are checked against the live model and
        optimizer by checks.check_resume_state before any kernel touches them."""
        for key in RESUME_KEYS:
            if key not in d:
                raise CheckpointError(
                    f"{path} lacks '{key}', so it cannot be resumed; use --init-from to start a new run from its "
                    "weights."
                )
        check_resume_header(d, path)
        data = d["data"]
        return cls(
            train_config=d["train_config"],
            corpus=CorpusInfo.from_dict(d.get("corpus", {})),
            step=d["step"],
            epoch=data["epoch"],
            batch_index=data["batch_index"],
            batches_per_epoch=data.get("batches_per_epoch"),
            optimizer=d["optimizer"],
            rng=d["rng"],
            # checked against the live model by check_resume_state before use; only its container is read here
            hidden=list(d["hidden"]) if isinstance(d.get("hidden"), (list, tuple)) else [],
            scaler=d.get("scaler"),
            world_size=int(d.get("world_size", 1)),
            hidden_ranks=d.get("hidden_ranks"),
            rng_ranks=d.get("rng_ranks"),
            elapsed_s=float(d.get("elapsed_s", 0.0)),
            val_loss=float(d.get("val_loss", math.nan)),
            best_val_loss=float(d.get("best_val_loss", math.inf)),
            best_step=int(d.get("best_step", -1)),
            skipped_steps=int(d.get("skipped_steps", 0)),
            device=str(d.get("device", "cpu")),
        )


def checkpoint_dict(bundle: ModelBundle, state: TrainState) -> dict:
    """One checkpoint: each part writes its own keys, so none is written twice."""
    return {**bundle.to_dict(), **state.to_dict()}
