"""A crafted or damaged metrics.jsonl (#19 item 5): a row that is not a flat object of finite numbers (deep
nesting, 1e308, a 4000-digit step, Infinity, NaN, a nested or string value) is skipped and counted like a torn
row, by the one parser that plot, info and the end of train all read through, so none of them traces back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import cli

from charrnn.training.plot import read_metrics, terminal_curve, val_sparkline

GOOD = [
    {"step": 10, "epoch": 0.1, "train_loss": 2.5, "val_loss": 2.6, "val_bpc": 3.75, "lr": 2e-3, "elapsed_s": 1.0},
    {"step": 20, "epoch": 0.2, "train_loss": 2.1, "val_loss": 2.2, "val_bpc": 3.17, "lr": 2e-3, "elapsed_s": 2.0},
    {"step": 30, "epoch": 0.3, "train_loss": 1.9, "val_loss": None, "val_bpc": None, "lr": 2e-3, "elapsed_s": 3.0},
]

CRAFTED = {
    "deep nesting": '{"step": 40, "val_loss": ' + "[" * 100_000 + "]" * 100_000 + "}",
    "a nested list alone": "[" * 100_000 + "]" * 100_000,
    "a huge loss": '{"step": 40, "val_loss": 1e308, "train_loss": -1e308, "elapsed_s": 4.0}',
    "a 4000-digit step": '{"step": ' + "9" * 4000 + ', "val_loss": 1.5, "train_loss": 1.4, "elapsed_s": 4.0}',
    "a 5000-digit step": '{"step": ' + "9" * 5000 + ', "val_loss": 1.5, "train_loss": 1.4}',
    "a huge elapsed_s": '{"step": 40, "val_loss": 1.5, "train_loss": 1.4, "elapsed_s": 1e308}',
    "Infinity": '{"step": 40, "val_loss": Infinity, "train_loss": 1.4, "elapsed_s": 4.0}',
    "-Infinity": '{"step": 40, "val_loss": 1.5, "train_loss": -Infinity, "elapsed_s": 4.0}',
    "NaN": '{"step": 40, "val_loss": NaN, "train_loss": 1.4, "elapsed_s": 4.0}',
    "an overflowing float": '{"step": 40, "val_loss": 1e999, "train_loss": 1.4, "elapsed_s": 4.0}',
    "a nested value": '{"step": 40, "val_loss": {"a": 1}, "train_loss": 1.4, "elapsed_s": 4.0}',
    "a string value": '{"step": 40, "val_loss": "1.5", "train_loss": 1.4, "elapsed_s": 4.0}',
    "a boolean step": '{"step": true, "val_loss": 1.5, "train_loss": 1.4, "elapsed_s": 4.0}',
    "a float step": '{"step": 40.5, "val_loss": 1.5, "train_loss": 1.4, "elapsed_s": 4.0}',
}


def crafted_run(directory: Path, line: str) -> Path:
    """A run whose metrics.jsonl holds three good rows, then the crafted `line` (last, so that no later step
    replaces it)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps(r) for r in GOOD]
    (directory / "metrics.jsonl").write_text("\n".join([*rows, line]) + "\n", encoding="utf-8")
    return directory


@pytest.mark.parametrize("kind", CRAFTED)
def test_a_crafted_row_is_skipped_and_counted(tmp_path, kind):
    run = read_metrics(crafted_run(tmp_path / "run", CRAFTED[kind]))
    assert run.step == (10, 20, 30)
    assert run.skipped_lines == 1
    assert run.val_loss[:2] == (2.6, 2.2)


@pytest.mark.parametrize("kind", CRAFTED)
def test_the_terminal_drawings_survive_a_crafted_row(tmp_path, kind):
    run_dir = crafted_run(tmp_path / "run", CRAFTED[kind])
    assert len(terminal_curve(run_dir, 60, 10).plain.split("\n")) == 10
    line = val_sparkline(run_dir)
    assert line is not None and len(line) == 40


@pytest.mark.parametrize("kind", ["deep nesting", "a huge loss", "a 4000-digit step", "Infinity"])
def test_plot_in_the_terminal_warns_of_the_skipped_row_and_draws(tmp_path, kind):
    crafted_run(tmp_path / "run", CRAFTED[kind])
    proc = cli(["plot", "run"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "1 unreadable line(s) skipped" in proc.stderr
    assert "validation" in proc.stdout


@pytest.mark.parametrize("x", ["step", "time"])
@pytest.mark.parametrize("kind", ["a huge loss", "a 4000-digit step", "a huge elapsed_s", "deep nesting"])
def test_plot_to_a_file_survives_a_crafted_row(tmp_path, kind, x):
    pytest.importorskip("matplotlib")
    crafted_run(tmp_path / "run", CRAFTED[kind])
    proc = cli(["plot", "run", "-o", "loss.png", "--x", x], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_info_and_the_end_of_a_resumed_train_survive_crafted_rows(tmp_path, trained_run, small_corpus):
    """info draws the run's sparkline, and so does train when it ends: a crafted row once made info trace back
    and made a resumed run that had trained and saved exit 1."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        for kind in ("deep nesting", "a huge loss", "a 4000-digit step", "Infinity"):
            f.write(CRAFTED[kind] + "\n")
    info = cli(["info", run_dir], cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "Traceback" not in info.stderr
    assert "validation loss: " in info.stderr

    resume = ["train", small_corpus, "--resume", "--run-dir", run_dir, "--max-steps", "30", "--device", "cpu"]
    resumed = cli(resume, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert resumed.stdout.strip().endswith(".pt")
    assert read_metrics(run_dir).step[-1] == 30
