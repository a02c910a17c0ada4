"""Previews during training: a short sample at each evaluation on stderr and in samples.jsonl, comparable from
one evaluation to the next, and never changing what training does (tests/test_resume.py checks the losses)."""

from __future__ import annotations

import json

import torch

from charrnn.model import CharRNN, ModelConfig
from charrnn.text.vocab import Vocab
from charrnn.training.evaluation import preview_text
from tests.conftest import TINY_TRAIN, cli


def _previews(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def test_each_evaluation_shows_a_preview_and_keeps_it_with_its_step_and_loss(tmp_path, small_corpus):
    r = cli(["train", small_corpus, "--run-dir", tmp_path / "run", *TINY_TRAIN, "--sample-length", "50"], tmp_path)
    assert r.returncode == 0, r.stderr
    previews = _previews(tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in previews] == [m["step"] for m in metrics] == [10, 20]
    assert [p["val_loss"] for p in previews] == [m["val_loss"] for m in metrics]
    assert all(len(p["text"]) == 50 and p["temperature"] == 0.8 for p in previews)
    assert len({p["seed"] for p in previews}) == 1  # one seed per run: previews differ only by the model
    assert previews[0]["text"] != previews[1]["text"]  # ten more steps of training changed what it writes
    for p in previews:
        assert f"sample at step {p['step']}" in r.stderr
        assert p["text"].splitlines()[0] in r.stderr
    assert r.stdout.strip() == str(tmp_path / "run" / "best.pt")  # previews never reach stdout
    assert "validation loss: " in r.stderr.splitlines()[-1]  # and the run ends with its curve as a sparkline


def test_sample_every_length_and_prime_and_zero_turns_them_off(tmp_path, small_corpus):
    args = ["train", small_corpus, *TINY_TRAIN, "--sample-every", "4", "--sample-length", "12"]
    r = cli([*args, "--run-dir", tmp_path / "a", "--sample-prime", "the "], tmp_path)
    assert r.returncode == 0, r.stderr
    previews = _previews(tmp_path / "a")
    assert [p["step"] for p in previews] == [4, 8, 12, 16, 20] and previews[0]["prime"] == "the "
    off = cli([*args, "--run-dir", tmp_path / "b", "--sample-length", "0"], tmp_path)
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "b" / "samples.jsonl").exists() and "sample at step" not in off.stderr
    quiet = cli([*args, "--run-dir", tmp_path / "c", "--quiet"], tmp_path)
    assert quiet.returncode == 0 and "sample at step" not in quiet.stderr
    assert len(_previews(tmp_path / "c")) == 5  # --quiet silences the terminal, not the record


def test_a_prime_the_corpus_cannot_spell_is_refused_before_training(tmp_path, small_corpus):
    r = cli(["train", small_corpus, "--run-dir", tmp_path / "run", *TINY_TRAIN, "--sample-prime", "Zebra"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--sample-prime has character(s) the corpus does not: 'Z'" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_preview_leaves_the_global_rng_and_the_training_mode_alone():
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=4, hidden_size=8, num_layers=2, dropout=0.5)).train()
    vocab = Vocab("ab\nc")
    from tests.conftest import tiny_train_config

    cfg = tiny_train_config(sample_length=40, seed=3)
    before = torch.get_rng_state()
    first = preview_text(model, vocab, cfg, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), before) and model.training
    assert len(first) == 40 and set(first) <= set("ab\nc")
    assert preview_text(model, vocab, cfg, torch.device("cpu")) == first  # the same seed, the same preview
