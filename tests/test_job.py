"""job.py, the one setup path: options checked before the corpus is read, each default decided in one place,
the model sized once and handed to the Trainer as decided."""

from __future__ import annotations

import pytest

from charrnn.config.train import TrainConfig
from charrnn.errors import UsageError
from charrnn.text.corpus import load_corpus
from charrnn.training import job
from charrnn.training.job import ModelOptions, TrainJob, prepared
from tests.conftest import word_text


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(word_text(200))
    return load_corpus([str(path)], cache_dir=tmp_path / "cache")


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 4, "seq_len": 16, "device": "cpu", "seed": 1, "eval_every": 1000, **kw})


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"resume": True, "overwrite": True}, "--resume continues a run"),
        ({"sources": []}, "give a corpus to train on"),
        ({"resume": True, "sources": []}, "--resume without a corpus needs --run-dir"),
    ],
)
def test_a_bad_combination_is_refused_before_the_corpus_is_read(fields, expected):
    with pytest.raises(UsageError, match=expected):
        TrainJob(**{"sources": ["/nonexistent"], **fields}).check()


def test_model_options_are_checked_with_their_defaults_filled_in():
    ModelOptions().check()
    with pytest.raises(UsageError, match="--dropout must be in"):
        ModelOptions(dropout=1.5).check()
    with pytest.raises(UsageError, match="--tie-weights needs"):
        ModelOptions(hidden_size=64, embed_size=32, tie_weights=True).check()


@pytest.mark.parametrize(
    "values",
    [
        {"sample_every": 1, "sample_length": 0, "sample_prime": ""},
        {"sample_length": 10_000, "sample_prime": "x" * 65_536, "max_time": 1e-3, "eval_chars": None},
        {"seed": -(2**63), "threads": 1, "keep": 0, "warmup_steps": 0, "min_lr_frac": 0.0, "decay_frac": 1.0},
        {"seed": 2**63 - 1, "max_steps": 1, "max_epochs": 1e-9, "val_frac": 1e-9, "weight_decay": 0.0},
    ],
)
def test_every_setting_validate_accepts_is_one_a_checkpoint_may_hold(values):
    """A run whose settings pass TrainConfig.validate() must be resumable: its saved train_config must pass the
    rules resume checks (checks.TRAIN_RULES), or the run's own checkpoint reads as damaged."""
    from charrnn.checkpoint.rules import TRAIN_RULES
    from charrnn.fields import check_fields

    cfg = TrainConfig(**values)
    cfg.validate()
    check_fields(cfg.to_dict(), TRAIN_RULES, "train_config.", "x.pt", "")
    assert set(TRAIN_RULES) == set(cfg.to_dict())  # every field has a rule


@pytest.mark.parametrize(
    "limits, dropout",
    [
        ({"max_epochs": 2.0}, 0.0),  # few passes cannot overfit: dropout only slows learning
        ({"max_epochs": 10.0}, 0.1),
        ({"max_epochs": 20.0}, 0.2),
        ({"max_steps": 10_000}, 0.2),  # 10,000 steps of 4x16 over ~20 k training characters: ~30 passes
    ],
)
def test_dropout_left_out_follows_the_planned_passes(corpus, tmp_path, limits, dropout):
    model = ModelOptions(hidden_size=16, num_layers=1)
    with prepared(TrainJob(corpus=corpus, train=_cfg(**limits), model=model, run_dir=tmp_path / "r")) as trainer:
        assert trainer.model.config.dropout == dropout
        assert trainer.model.config.hidden_size == 16 and trainer.model.config.num_layers == 1


def test_a_dropout_given_is_kept_and_sizes_left_out_take_the_model_config_defaults(corpus, tmp_path):
    model = ModelOptions(dropout=0.3)
    with prepared(TrainJob(corpus=corpus, train=_cfg(max_steps=1), model=model, run_dir=tmp_path / "r")) as trainer:
        config = trainer.model.config
        assert (config.dropout, config.hidden_size, config.num_layers) == (0.3, 512, 2)


def test_the_model_is_sized_once_and_trained_as_sized(corpus, tmp_path, monkeypatch):
    calls = []

    def choose(*args, **kwargs):
        calls.append(args)
        return {"hidden_size": 24, "num_layers": 1, "dropout": 0.0}

    monkeypatch.setattr(job, "choose_model_size", choose)
    run = TrainJob(corpus=corpus, train=_cfg(max_time=30.0), run_dir=tmp_path / "r")
    with prepared(run) as trainer:
        assert len(calls) == 1
        assert (trainer.model.config.hidden_size, trainer.model.config.num_layers) == (24, 1)


def test_no_limit_gets_a_budget_from_the_corpus_size(corpus, tmp_path):
    said = []
    run = TrainJob(corpus=corpus, train=_cfg(), model=ModelOptions(hidden_size=16, num_layers=1), run_dir=tmp_path)
    with prepared(run, lambda event, info: said.append(info.get("text", ""))) as trainer:
        assert trainer.cfg.max_time == job.MIN_BUDGET  # ~20 k characters: the two-minute floor
    assert any("no limit given: a budget of 2m00s" in text for text in said)
