"""--init-from: the checkpoint's architecture or a refusal, never a flag silently ignored; a run directory is
taken as sample takes it (#19 item 9)."""

from __future__ import annotations

import torch

from charrnn.checkpoint.files import load_checkpoint
from tests.conftest import TINY_TRAIN, cli, word_text

SMALL = ["--batch-size", "4", "--seq-len", "16", "--max-steps", "3", "--eval-every", "3", "--device", "cpu"]


def test_model_flags_that_disagree_with_the_checkpoint_are_refused(tmp_path, trained_run):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(200, seed=2), encoding="utf-8")
    args = ["train", corpus, "--run-dir", tmp_path / "new", "--init-from", trained_run / "best.pt", *SMALL]
    proc = cli([*args, "--model", "gru", "--hidden-size", "64", "--num-layers", "3"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("Error")]
    assert "--model (it has lstm)" in line and "--hidden-size (it has 32)" in line and "--num-layers (it has 1)" in line
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.rglob("*.pt")) == []  # refused before any checkpoint was written


def test_flags_that_agree_and_dropout_are_accepted(tmp_path, trained_run):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(200, seed=2), encoding="utf-8")
    agree = ["--model", "lstm", "--hidden-size", "32", "--num-layers", "1", "--dropout", "0.1"]
    proc = cli(
        ["train", corpus, "--run-dir", tmp_path / "new", "--init-from", trained_run, *SMALL, *agree], cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    config = load_checkpoint(tmp_path / "new" / "best.pt")["model_config"]
    assert (config["hidden_size"], config["num_layers"], config["dropout"]) == (32, 1, 0.1)


def test_a_run_directory_starts_from_its_best_checkpoint(tmp_path, trained_run):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(200, seed=2), encoding="utf-8")
    args = ["train", corpus, "--run-dir", tmp_path / "new", "--init-from", trained_run, *SMALL, "--lr", "1e-12"]
    proc = cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    before = load_checkpoint(trained_run / "best.pt")["model"]
    after = load_checkpoint(tmp_path / "new" / "last.pt")["model"]
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # lr 1e-12: best.pt's weights


def test_a_directory_without_a_checkpoint_is_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(200, seed=2), encoding="utf-8")
    proc = cli(["train", corpus, "--init-from", tmp_path / "empty", *TINY_TRAIN], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no best.pt or last.pt" in proc.stderr.strip().splitlines()[-1]
