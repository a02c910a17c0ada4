"""Issue 9's user-facing half: the time budget is the user's wall clock, a run with no limit gets a budget sized to
its corpus, the plan and the first progress line come before and right after the first step, evaluation stays a
small share of a time budget, and auto-sizing never gives small text a huge model."""

from __future__ import annotations

import io
import json
import signal
import time

import numpy as np
import pytest
import torch
from rich.console import Console

from charrnn.checkpoint.files import load_checkpoint
from charrnn.config.train import TrainConfig
from charrnn.model import ModelConfig
from charrnn.text.corpus import load_corpus
from charrnn.training import autosize
from charrnn.training.job import MAX_BUDGET, MIN_BUDGET, default_budget, train
from charrnn.training.progress import Reporter
from tests.conftest import TINY_TRAIN, cli, cli_start, flags, word_text


def test_max_time_ends_the_whole_command_within_a_few_seconds_of_the_budget(tmp_path, small_corpus):
    budget = 6.0
    args = flags(hidden_size=64, num_layers=1, batch_size=4, seq_len=16, max_time=f"{budget:g}s", seed=1, device="cpu")
    t = time.perf_counter()
    r = cli(["train", small_corpus, "--run-dir", tmp_path / "run", *args], cwd=tmp_path)
    wall = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    # Python and torch start-up before the command begins are the only time outside the budget.
    assert wall < budget + 3.0, (wall, r.stderr)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["elapsed_s"] > budget - 2.0  # and it used the budget, not stopped early
    assert ckpt["elapsed_s"] <= budget


def test_the_plan_comes_before_the_first_step_and_the_first_step_is_reported_at_once(tmp_path, small_corpus):
    r = cli(["train", small_corpus, "--run-dir", tmp_path / "run", *TINY_TRAIN], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    plan = next(i for i, ln in enumerate(lines) if ln.startswith("training 1x32 LSTM ("))
    first = next(i for i, ln in enumerate(lines) if ln.startswith("step "))
    assert plan < first
    assert "batch 4x16" in lines[plan] and "for 20 steps" in lines[plan] and "on cpu" in lines[plan]
    assert lines[first].startswith("step      1 ")  # not after a whole --log-every window


def test_no_limit_gets_a_budget_from_the_corpus_size_and_says_so(tmp_path, small_corpus):
    assert default_budget(14_000) == MIN_BUDGET
    assert default_budget(1_115_394) == pytest.approx(669)  # tiny-shakespeare: about 11 minutes
    assert default_budget(500_000_000) == MAX_BUDGET
    proc = cli_start(["train", small_corpus, "--run-dir", tmp_path / "run", "--device", "cpu", "--seed", "1"], tmp_path)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("step "):
                break
        proc.send_signal(signal.SIGINT)  # the budget is two minutes; what matters is what it said before step 1
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    said = "".join(seen)
    assert "no limit given: a budget of 2m00s for 14,633 characters" in said, said
    assert "auto-sized for 2m00s" in said and "training 2x128 LSTM" in said, said
    assert "for 2m00s (ends about" in said
    assert proc.returncode == 130, rest
    assert load_checkpoint(tmp_path / "run" / "last.pt")["train_config"]["max_time"] == MIN_BUDGET


def test_auto_sizing_caps_the_model_by_what_the_text_can_support(monkeypatch):
    monkeypatch.setattr(autosize, "measure_chars_per_sec", lambda *a, **k: 1e12)  # a machine fast enough for any size
    said = []
    cfg = TrainConfig(batch_size=4, seq_len=16)
    small = autosize.choose_model_size(50_000, 3600, torch.device("cpu"), cfg, report=said.append, vocab_size=65)
    assert (small["hidden_size"], small["num_layers"]) == (128, 2)  # the smallest: 50 k characters, not 2x1024
    assert "parameters per training character" in said[0]
    big = autosize.choose_model_size(1_115_394, 3600, torch.device("cpu"), cfg, report=said.append, vocab_size=65)
    assert (big["hidden_size"], big["num_layers"]) == (512, 2)  # 4.3 M parameters for 1 M characters, not 2x768
    assert ModelConfig(65, "lstm", 512, 2).num_params() <= autosize.PARAMS_PER_CHAR * 1_115_394 * 0.9
    assert ModelConfig(65, "lstm", 768, 2).num_params() > autosize.PARAMS_PER_CHAR * 1_115_394 * 0.9


def train_words(tmp_path, cfg: TrainConfig, hidden_size: int, given: set[str]) -> tuple:
    """Train a 1-layer model on 2,000 lines of words in tmp_path / "run"; returns the result and the reported
    (event, info) pairs. `given` names the settings the user gave."""
    path = tmp_path / "words.txt"
    path.write_text(word_text(2000), encoding="utf-8")
    corpus = load_corpus([str(path)])
    said = []
    model = ModelConfig(vocab_size=len(corpus.vocab), hidden_size=hidden_size, num_layers=1)
    result = train(corpus, model, cfg, tmp_path / "run", report=lambda e, i: said.append((e, i)), given=given)
    return result, said


def test_evaluation_stays_a_small_share_of_a_time_budget(tmp_path):
    cfg = TrainConfig(
        batch_size=4, seq_len=16, max_time=4.0, eval_every=2, log_every=50, seed=1, device="cpu", eval_chars=None
    )
    result, said = train_words(tmp_path, cfg, hidden_size=64, given=set())
    evals = [i for e, i in said if e == "eval"]
    messages = [i["text"] for e, i in said if e == "message"]
    assert any("evaluating less often" in m for m in messages), messages
    assert 1 <= len(evals) < result.step // 2  # far fewer than one per --eval-every of 2 steps
    assert evals[-1]["step"] == result.step  # the final evaluation always runs
    metrics = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == len(evals)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == result.step


def test_eval_every_given_evaluates_at_every_one_even_under_a_budget(tmp_path):
    cfg = TrainConfig(
        batch_size=4, seq_len=16, max_time=60.0, max_steps=12, eval_every=2, log_every=50, seed=1, device="cpu"
    )
    _, said = train_words(tmp_path, cfg, hidden_size=32, given={"eval_every"})
    assert [i["step"] for e, i in said if e == "eval"] == [2, 4, 6, 8, 10, 12]


def log_event(step: int, elapsed: float, eta: float, total_steps=None, max_time=None) -> dict:
    """A "log" event as the trainer reports it."""
    return {"step": step, "epoch": 0.0, "train_loss": 4.1, "lr": 1e-4, "chars_per_sec": 6000.0, "elapsed_s": elapsed,
            "eta_s": eta, "skipped": 0, "total_steps": total_steps, "max_time": max_time}  # fmt: skip


def test_the_progress_bar_shows_the_trainers_eta_from_the_first_report():
    buf = io.StringIO()
    reporter = Reporter(console=Console(file=buf, force_terminal=True, width=160, color_system=None))
    reporter(
        "start",
        {
            "step": 0,
            "total_steps": None,
            "max_time": 600.0,
            "elapsed_s": 2.0,
            "eta_s": 598.0,
            "plan": "training 2x512 LSTM",
        },
    )
    reporter("log", log_event(1, elapsed=3.0, eta=597.0, max_time=600.0))
    reporter.close()
    out = buf.getvalue()
    assert "training 2x512 LSTM" in out
    assert "eta 9m57s" in out and "-:--:--" not in out


def test_a_quiet_reporter_draws_no_bar_even_on_a_terminal_and_only_warns():
    buf = io.StringIO()
    quiet = Reporter(quiet=True, console=Console(file=buf, force_terminal=True, width=120, color_system=None))
    quiet("start", {"step": 0, "total_steps": 10, "plan": "training 1x32 LSTM"})
    quiet.info("corpus small")
    quiet("log", log_event(1, elapsed=1.0, eta=9.0, total_steps=10))
    quiet.warn("disk nearly full")
    quiet.close()
    assert quiet._progress is None and buf.getvalue().strip() == "warning: disk nearly full"


# A throughput table (chars/s by size) for a machine where each size is ~2x slower than the one before it.
RATES = {128: 64_000.0, 192: 40_000.0, 256: 24_000.0, 384: 12_000.0, 512: 6_400.0, 768: 2_900.0, 1024: 1_600.0}


@pytest.mark.parametrize(
    "seconds,expected",
    [(180, 384), (600, 512), (60, 192), (1800, 512)],  # 30 min: the 8-parameters-per-character cap keeps 2x512
)
def test_auto_sizing_picks_the_largest_size_that_gets_its_passes(monkeypatch, seconds, expected):
    monkeypatch.setattr(autosize, "measure_chars_per_sec", lambda config, *a, **k: RATES[config.hidden_size])
    cfg = TrainConfig()
    size = autosize.choose_model_size(1_115_394, seconds, torch.device("cpu"), cfg, vocab_size=65)
    assert (size["hidden_size"], size["num_layers"]) == (expected, 2)
    train_chars = 1_115_394 * 0.9 * (1 - autosize.CALIBRATION_FRACTION - autosize.EVAL_FRACTION)
    passes = RATES[expected] * seconds / train_chars
    assert passes >= autosize.TARGET_EPOCHS
    assert size["dropout"] == autosize.dropout_for(passes)


def test_init_from_starts_a_new_run_from_the_weights(tmp_path, small_corpus, trained_run):
    r = cli(["train", small_corpus, "--run-dir", tmp_path / "tuned", "--init-from", trained_run / "best.pt",
             "--max-steps", "4", "--eval-every", "2", "--batch-size", "4", "--seq-len", "16", "--device", "cpu"],
            cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    base, tuned = load_checkpoint(trained_run / "best.pt"), load_checkpoint(tmp_path / "tuned" / "last.pt")
    assert tuned["step"] == 4  # a new run: its own step count, not the base's
    assert tuned["model_config"] == base["model_config"] and tuned["vocab"] == base["vocab"]
    # Four steps move the weights a little from the base's, nowhere near a fresh initialisation.
    gap = max((tuned["model"][k] - base["model"][k]).abs().max().item() for k in base["model"])
    assert 0 < gap < 0.1


def test_evaluation_scores_at_most_eval_chars_of_the_validation_text():
    from charrnn.model import CharRNN, ModelConfig
    from charrnn.training.evaluation import evaluate

    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=5, hidden_size=8, num_layers=1))
    head = torch.randint(0, 5, (301,)).numpy().astype("uint8")
    ids = np.concatenate([head, np.zeros(5000, dtype="uint8")])  # the tail would change the mean if scored
    capped = evaluate(model, ids, num_streams=1, seq_len=64, device=torch.device("cpu"), max_chars=300)
    assert capped == pytest.approx(evaluate(model, head, num_streams=1, seq_len=64, device=torch.device("cpu")))
    assert capped != pytest.approx(evaluate(model, ids, num_streams=1, seq_len=64, device=torch.device("cpu")))
