"""The Python API (charrnn.load, Model, charrnn.train): the same text as `charrnn sample` for a seed, the same
numbers as `charrnn score --json`, a train() whose checkpoint loads, and CharRNNError with the CLI's sentence."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, cli, word_text

import charrnn
from charrnn.errors import CharRNNError, UsageError


def cli_text(prime: str, texts: list[str]) -> str:
    """What `charrnn sample` prints for these new texts: each after its prime, a blank line apart, and a final
    newline when the last does not end with one."""
    out, last = "", ""
    for i, text in enumerate(texts):
        if i:
            out += ("\n" if not last.endswith("\n") else "") + "\n"
        out += prime + text
        last = prime + text
    return out + ("" if last.endswith("\n") else "\n")


@pytest.fixture(scope="module")
def model(trained_run):
    return charrnn.load(trained_run, device="cpu")


def test_import_charrnn_loads_no_torch():
    code = "import sys, charrnn; charrnn.CharRNNError; assert 'torch' not in sys.modules; charrnn.load; "
    code += "assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_the_model_says_what_it_is(model, trained_run):
    assert model.path == trained_run / "best.pt"
    assert model.vocab == sorted(set(word_text()))
    assert (model.config.hidden_size, model.config.num_layers, model.config.vocab_size) == (32, 1, len(model.vocab))
    assert model.info["step"] == 20 and model.info["best_val_loss"] > 0 and model.info["corpus_name"] == "words"


@pytest.mark.parametrize(("prime", "temperature"), [("the ", 0.8), ("", 1.0), ("dog", 0.0)])
def test_generate_gives_the_cli_text_for_a_seed(model, trained_run, tmp_path, prime, temperature):
    text = model.generate(prime, length=120, temperature=temperature, seed=11)
    assert isinstance(text, str) and len(text) == 120
    args = ["sample", trained_run, "--length", "120", "--temp", str(temperature), "--seed", "11", "--device", "cpu"]
    proc = cli([*args, *(["--prime", prime] if prime else [])], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == cli_text(prime, [text])


def test_several_samples_are_a_list_as_the_cli_prints_them(model, trained_run, tmp_path):
    texts = model.generate("a ", length=60, num_samples=3, top_k=5, seed=3)
    assert isinstance(texts, list) and len(texts) == 3 and all(len(t) == 60 for t in texts)
    assert len(set(texts)) > 1  # each stream its own seed
    args = ["--length", "60", "--num-samples", "3", "--top-k", "5", "--seed", "3", "--prime", "a ", "--device", "cpu"]
    proc = cli(["sample", trained_run, *args], cwd=tmp_path)
    assert proc.stdout == cli_text("a ", texts)


def test_stream_yields_the_text_generate_returns(model):
    pieces = list(model.stream("the ", length=80, top_p=0.9, seed=5))
    assert len(pieces) > 1
    assert "".join(pieces) == model.generate("the ", length=80, top_p=0.9, seed=5)


def test_beam_gives_the_cli_text(model, trained_run, tmp_path):
    best = model.beam("the ", length=40, beams=4)
    assert isinstance(best, str) and len(best) == 40
    proc = cli(["sample", trained_run, "--beam", "4", "--length", "40", "--prime", "the ", "-q"], cwd=tmp_path)
    assert proc.stdout == cli_text("the ", [best])
    several = model.beam("the ", length=40, beams=4, num_results=2)
    assert several[0] == best and len(several) == 2


def test_score_gives_what_score_json_prints(model, trained_run, tmp_path):
    text = word_text(30, seed=4)
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    score = model.score(text)
    proc = cli(["score", trained_run, "t.txt", "--json", "-q"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == score.to_dict()
    assert score.chars == len(text) - 1 and 0 < score.bits_per_char < 8
    assert score.perplexity == pytest.approx(2**score.bits_per_char)


def test_score_per_line_independent_gives_what_the_cli_prints(model, trained_run, tmp_path):
    text = "the dog sat\na lazy cat\nthe fox jumps over\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    lines = model.score(text, per_line=True, independent=True)
    proc = cli(["score", trained_run, "t.txt", "--per-line", "--independent", "--json", "-q"], cwd=tmp_path)
    printed = [json.loads(row) for row in proc.stdout.splitlines()]
    assert [(r["line"], r["nats"], r["chars"], r["bpc"]) for r in printed] == [
        (line.text.rstrip("\n"), line.nats, line.chars, line.bits_per_char) for line in lines
    ]
    assert lines[0].nats_per_char == pytest.approx(lines[0].nats / lines[0].chars)


def test_errors_are_charrnn_errors_with_the_cli_sentence(model, trained_run, tmp_path):
    with pytest.raises(UsageError, match="--temperature must be a finite number >= 0"):
        model.generate("the ", temperature=-1)
    with pytest.raises(UsageError, match="--top-p must be in"):
        model.stream("the ", top_p=2.0)  # at the call, not at the first piece
    with pytest.raises(CharRNNError) as err:
        model.generate("the Z", length=5)
    proc = cli(["sample", trained_run, "--prime", "the Z", "--length", "5"], cwd=tmp_path)
    assert proc.returncode == 1 and str(err.value) in proc.stderr
    with pytest.raises(CharRNNError, match="does not exist"):
        charrnn.load(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="needs per_line=True"):
        model.score("the dog", independent=True)
    with pytest.raises(UsageError, match="--seed must be"):
        model.generate("the ", seed=-1)


def test_train_returns_a_checkpoint_that_loads(tmp_path):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(), encoding="utf-8")
    events = []
    result = charrnn.train(
        corpus, run_dir=tmp_path / "run", hidden_size=32, num_layers=1, batch_size=4, seq_len=16, eval_every=10,
        max_steps=20, seed=7, device="cpu", progress=lambda event, info: events.append((event, info)),
    )  # fmt: skip
    assert result.checkpoint == tmp_path / "run" / "best.pt" and result.steps == 20
    assert result.stop_reason == "max_steps" and result.best_val_loss > 0
    evals = [info for event, info in events if event == "eval"]
    assert [info["step"] for info in evals] == [10, 20]
    assert min(info["val_loss"] for info in evals) == result.best_val_loss
    model = charrnn.load(result.run_dir, device="cpu")
    assert model.info["step"] == 20 and len(model.generate("the ", length=30, seed=1)) == 30


def test_train_takes_a_duration_and_refuses_what_it_does_not_know(tmp_path):
    with pytest.raises(UsageError, match="train has no option 'hidden'"):
        charrnn.train(tmp_path / "x.txt", hidden=32)
    with pytest.raises(UsageError, match="'soon' is not a duration"):
        charrnn.train(tmp_path / "x.txt", max_time="soon")
    with pytest.raises(CharRNNError, match="x.txt"):
        charrnn.train(tmp_path / "x.txt", max_time="5m", device="cpu")  # no such corpus: one sentence naming it


def test_train_resume_refuses_a_model_option_that_differs(tmp_path, trained_run):
    import shutil

    shutil.copytree(trained_run, tmp_path / "run")
    with pytest.raises(UsageError, match="hidden"):
        charrnn.train(run_dir=tmp_path / "run", resume=True, hidden_size=64, max_steps=30, device="cpu")


def test_a_line_scores_per_char_figures_without_overflow():
    from charrnn.generation.score import LineScore

    line = LineScore("x\n", nats=2000.0, chars=2)
    assert line.nats_per_char == 1000.0 and line.perplexity == float("inf")
    assert LineScore("ab", nats=2.0, chars=2).perplexity == pytest.approx(2.718281828)
