"""`charrnn score` and `charrnn sample --beam` through the CLI: what a user sees on stdout and stderr, and the
one-sentence refusals (the scoring and beam arithmetic are tested in test_score.py and test_sample.py)."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from tests.conftest import word_text
from tests.test_cli import assert_one_error, run


def _words(tmp_path, n_lines: int = 30, seed: int = 5):
    path = tmp_path / "words.txt"
    path.write_text(word_text(n_lines, seed=seed), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------
# score


def test_score_prints_one_summary_line_or_json(trained_run, tmp_path):
    words = _words(tmp_path)
    r = run(["score", trained_run, words])
    assert r.exit_code == 0, r.stderr
    (line,) = r.stdout.splitlines()
    assert "nats/char" in line and "bits/char" in line and "perplexity" in line
    j = run(["score", trained_run, words, "--json", "-q"])
    assert j.exit_code == 0 and j.stderr == ""
    d = json.loads(j.stdout)
    assert d["chars"] == len(words.read_text()) - 1  # every character but the first, which is only context
    assert math.isclose(d["bits_per_char"], d["nats_per_char"] / math.log(2))
    assert math.isclose(d["perplexity"], math.exp(d["nats_per_char"]))
    assert f"{d['nats_per_char']:.4f} nats/char" in line


def test_per_line_is_tsv_in_input_order_that_sort_orders(trained_run, tmp_path):
    words = _words(tmp_path)
    r = run(["score", trained_run, words, "--per-line"])
    assert r.exit_code == 0, r.stderr
    rows = [row.split("\t") for row in r.stdout.splitlines()]
    assert [row[3] for row in rows] == words.read_text().splitlines()
    assert all(len(row) == 4 and float(row[0]) > 0 and int(row[2]) > 0 for row in rows)
    ordered = subprocess.run(["sort", "-n"], input=r.stdout, capture_output=True, text=True, check=True).stdout
    firsts = [float(row.split("\t")[0]) for row in ordered.splitlines()]
    assert firsts == sorted(firsts) and len(firsts) == len(rows)
    assert "total:" in r.stderr  # the whole, on stderr, so stdout stays one row per line


def test_independent_lines_differ_from_lines_in_context(trained_run, tmp_path):
    words = _words(tmp_path)
    in_context = run(["score", trained_run, words, "--per-line", "-q"]).stdout.splitlines()
    independent = run(["score", trained_run, words, "--per-line", "--independent", "-q"]).stdout.splitlines()
    assert len(in_context) == len(independent)
    assert [r.split("\t")[3] for r in in_context] == [r.split("\t")[3] for r in independent]
    assert [r.split("\t")[1] for r in in_context] != [r.split("\t")[1] for r in independent]
    # each independent line starts afresh, so a repeated line scores the same wherever it stands
    twice = tmp_path / "twice.txt"
    twice.write_text("the cat sat on its mat\nevery dog\nthe cat sat on its mat\n")
    rows = run(["score", trained_run, twice, "--per-line", "--independent", "-q"]).stdout.splitlines()
    assert rows[0] == rows[2]


def test_unknown_characters_are_reported_once_and_priced(trained_run, tmp_path):
    odd = tmp_path / "odd.txt"
    odd.write_text("the cat Z sat Z\n")
    r = run(["score", trained_run, odd, "--json"])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["unknown"] == 2 and d["unknown_chars"] == ["Z"]
    assert r.stderr.count("not in the model's vocabulary") == 1 and "ln " in r.stderr
    skipped = json.loads(run(["score", trained_run, odd, "--json", "--skip-unknown", "-q"]).stdout)
    assert skipped["chars"] == d["chars"] - 2


def test_heatmap_and_html_show_every_character_escaped(trained_run, tmp_path):
    text = "the cat <sat> & the dog\n"
    src = tmp_path / "t.txt"
    src.write_text(text)
    page = tmp_path / "page.html"
    r = run(["score", trained_run, src, "--heatmap", "--html", page])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.rstrip("\n") == text.rstrip("\n")  # not a terminal: the text itself, uncoloured
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "&lt;" in html and "&amp;" in html and "<sat>" not in html
    assert html.count("top:") >= len(text) - 5  # each scored character carries the model's choices


def test_score_refusals_are_one_sentence(trained_run, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"the\x00cat")
    latin = tmp_path / "l.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    for path, needle in [(empty, "empty"), (binary, "NUL"), (latin, "not valid UTF-8 at byte 3")]:
        assert needle in assert_one_error(run(["score", trained_run, path]), 1)
    words = _words(tmp_path)
    usage = [
        (["score", trained_run, words, "--per-line", "--heatmap"], "--heatmap and --html", 2),
        (["score", trained_run, words, "--html", tmp_path / "no" / "x.html"], "does not exist", 2),
        (["score", trained_run, words, words], "[CHECKPOINT] FILE", 2),
        (["score", trained_run, tmp_path / "missing.txt"], "missing.txt", 1),  # data, not usage
    ]
    for args, needle, code in usage:
        r = run(args)
        assert r.exit_code == code and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------------------------------------------
# beam search


def test_beam_streams_the_most_likely_continuation_after_the_prime(trained_run):
    r = run(["sample", trained_run, "--beam", "4", "-n", "40", "--prime", "the ", "-q"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("the ") and len(r.stdout.rstrip("\n")) >= 40
    assert run(["sample", trained_run, "--beam", "4", "-n", "40", "--prime", "the ", "-q"]).stdout == r.stdout
    greedy = run(["sample", trained_run, "--temp", "0", "-n", "40", "--prime", "the ", "-q", "--seed", "1"])
    assert run(["sample", trained_run, "--beam", "1", "-n", "40", "--prime", "the ", "-q"]).stdout == greedy.stdout


def test_beam_with_several_results_gives_them_best_first_a_blank_line_apart(trained_run):
    r = run(["sample", trained_run, "--beam", "5", "--num-samples", "3", "-n", "20", "--prime", "a "])
    assert r.exit_code == 0, r.stderr
    results = r.stdout.rstrip("\n").split("\n\n")
    assert len(results) == 3 and all(res.startswith("a ") for res in results) and len(set(results)) == 3
    scores = [float(line.split()[-2]) for line in r.stderr.splitlines() if line.startswith("beam result")]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)


def test_beam_refuses_sampling_controls_and_bad_sizes(trained_run):
    for args, needle in [
        (["--temp", "0.5"], "--beam cannot be combined with --temperature"),
        (["--top-k", "3"], "--top-k"),
        (["--seed", "3"], "--seed does nothing"),
        (["--num-samples", "9"], "--num-samples"),
    ]:
        r = run(["sample", trained_run, "--beam", "4", *args])
        assert r.exit_code == 2 and needle in r.stderr and r.stdout == "", r.stderr
    zero = run(["sample", trained_run, "--beam", "0"])
    assert zero.exit_code == 2 and "--beam must be at least 1" in zero.stderr


# ---------------------------------------------------------------------------------------------------
# plot, and the sparkline in info


def test_plot_writes_a_figure_of_two_runs_and_draws_one_in_the_terminal(trained_run, tmp_path):
    pytest.importorskip("matplotlib")  # an optional extra for users; CI installs it with .[dev]
    other = tmp_path / "other"
    shutil.copytree(trained_run, other)
    png = tmp_path / "loss.png"
    r = run(["plot", trained_run, other, "-o", png])
    assert r.exit_code == 0 and r.stdout == "" and f"wrote {png}" in r.stderr, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    terminal = run(["plot", trained_run])
    assert terminal.exit_code == 0, terminal.stderr
    assert "validation" in terminal.stdout and "┤" in terminal.stdout


def test_plot_refusals(trained_run, tmp_path):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert "metrics.jsonl" in assert_one_error(run(["plot", empty]), 1)
    for args, needle in [
        (["--x", "epoch"], "--x must be step or time"),
        (["--x", "time"], "give -o FILE"),
        (["-o", tmp_path / "loss.gif"], ".png"),
        (["-o", tmp_path / "no" / "loss.png"], "does not exist"),
    ]:
        r = run(["plot", trained_run, *args])
        assert r.exit_code == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_info_and_train_end_with_the_validation_sparkline(trained_run):
    r = run(["info", trained_run])
    assert r.exit_code == 0, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("validation loss: ")]
    assert set(line.removeprefix("validation loss: ")) <= set("▁▂▃▄▅▆▇█ ")
    assert "▁" not in r.stdout  # the description on stdout stays plain data
