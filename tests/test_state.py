"""The typed checkpoint (state.py): each part writes and reads its own keys, round trips, and reads every
format charrnn has written."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from charrnn.checkpoint.files import load_bundle, load_checkpoint
from charrnn.checkpoint.state import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MODEL_KEYS,
    RESUME_KEYS,
    ModelBundle,
    TrainState,
    check_format,
    checkpoint_dict,
)
from charrnn.config.train import TrainConfig
from charrnn.errors import CheckpointError
from charrnn.model import CharRNN, ModelConfig
from charrnn.text.vocab import Vocab

FORMAT1 = Path(__file__).resolve().parent / "fixtures" / "format1" / "best.pt"


def _bundle(seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=5, model="gru", hidden_size=8, num_layers=2, dropout=0.2))
    return ModelBundle.of(model, Vocab("abcde"))


def test_a_model_bundle_round_trips_and_builds_the_same_model():
    bundle = _bundle()
    back = ModelBundle.from_dict(bundle.to_dict(), "x.pt")
    assert back.config == bundle.config and back.vocab == bundle.vocab
    assert back.weights.keys() == bundle.weights.keys()
    assert all(torch.equal(back.weights[k], bundle.weights[k]) for k in bundle.weights)
    x = torch.tensor([[0, 3, 1, 4]])  # (B, T)
    a, _ = bundle.build_model()(x)
    b, _ = back.build_model()(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, _bundle(seed=1).build_model()(x)[0])  # other weights give other logits


def test_each_part_writes_its_own_keys_and_the_format_once():
    live = load_checkpoint(FORMAT1)
    model_keys, train_keys = set(_bundle().to_dict()), set(TrainState.from_dict(live, FORMAT1).to_dict())
    assert model_keys & train_keys == set()
    assert set(MODEL_KEYS) <= model_keys and set(RESUME_KEYS) <= train_keys
    assert {"format", "format_version"} <= model_keys


def test_a_train_state_round_trips_through_its_dict():
    ckpt = load_checkpoint(FORMAT1)
    state = TrainState.from_dict(ckpt, FORMAT1)
    again = TrainState.from_dict({**ckpt, **state.to_dict()}, FORMAT1)
    for name in ("step", "epoch", "batch_index", "batches_per_epoch", "world_size", "best_step", "skipped_steps"):
        assert getattr(again, name) == getattr(state, name), name
    assert again.best_val_loss == state.best_val_loss == ckpt["best_val_loss"]
    assert again.corpus == state.corpus and state.corpus.sha256 == ckpt["corpus"]["sha256"]
    assert all(torch.equal(a, b) for a, b in zip(again.hidden, state.hidden, strict=True))
    assert state.to_dict()["epoch"] == pytest.approx(state.epoch + state.batch_index / state.batches_per_epoch)


def test_format_1_from_before_the_typed_checkpoint_reads_in_full():
    ckpt = load_checkpoint(FORMAT1)
    bundle = load_bundle(FORMAT1)
    assert bundle.config.hidden_size == ckpt["model_config"]["hidden_size"] and len(bundle.vocab) > 2
    assert bundle.facts.step == 20 and bundle.facts.corpus_name == ckpt["corpus"]["name"]
    state = TrainState.from_dict(ckpt, FORMAT1)
    assert "decay_frac" not in state.train_config  # saved before it existed
    assert TrainConfig.from_dict(state.train_config).decay_frac == 1.0  # the cosine over the whole budget, as then
    assert state.step == 20 and state.batch_index == ckpt["data"]["batch_index"]


def test_a_checkpoint_is_the_two_parts_together():
    ckpt = load_checkpoint(FORMAT1)
    bundle, state = load_bundle(FORMAT1), TrainState.from_dict(ckpt, FORMAT1)
    merged = checkpoint_dict(bundle, state)
    assert merged["format"] == FORMAT_NAME and merged["format_version"] == FORMAT_VERSION
    assert merged["step"] == 20 and merged["model"] is bundle.weights


@pytest.mark.parametrize("missing", RESUME_KEYS)
def test_a_checkpoint_without_a_resume_key_says_to_use_init_from(missing):
    ckpt = dict(load_checkpoint(FORMAT1))
    del ckpt[missing]
    with pytest.raises(CheckpointError, match=f"lacks '{missing}', so it cannot be resumed; use --init-from"):
        TrainState.from_dict(ckpt, FORMAT1)


@pytest.mark.parametrize(
    "header, expected",
    [
        ({}, "was not written by charrnn"),
        ({"format": "other"}, "was not written by charrnn (its format is 'other')"),
        ({"format": FORMAT_NAME, "format_version": "1"}, "invalid format_version '1'"),
        ({"format": FORMAT_NAME, "format_version": FORMAT_VERSION + 1}, "newer than this charrnn reads"),
        ({"format": FORMAT_NAME, "format_version": 0}, "older than this charrnn reads"),
    ],
)
def test_the_format_header_is_checked_in_one_place(header, expected):
    with pytest.raises(CheckpointError, match=expected.replace("(", r"\(").replace(")", r"\)")) as info:
        check_format(Path("x.pt"), header)
    assert str(info.value).startswith("checkpoint x.pt ")
    check_format(Path("x.pt"), {"format": FORMAT_NAME, "format_version": FORMAT_VERSION})  # the current one passes


def test_run_facts_hide_a_loss_that_was_never_evaluated():
    d = {**_bundle().to_dict(), "val_loss": math.nan, "best_val_loss": math.inf, "best_step": -1}
    facts = ModelBundle.from_dict(d, "x.pt").facts
    assert facts.val_loss is None and facts.best_val_loss is None and facts.best_step is None
