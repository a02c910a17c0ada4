"""Loss curves from metrics.jsonl: reading what crashes and resumes leave, figure files that really show every
run, and the terminal sparkline and curve."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from charrnn.errors import CharRNNError
from charrnn.training.plot import (
    BLOCKS,
    COLOURS,
    plot_runs,
    read_metrics,
    run_labels,
    sparkline,
    terminal_curve,
    time_unit,
    val_sparkline,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(step: int, val: float | None, train: float | None = None, elapsed: float | None = None) -> dict:
    """One evaluation as training.py writes it."""
    return {
        "step": step,
        "epoch": step / 1000,
        "train_loss": train if train is not None else (val - 0.05 if val is not None else None),
        "val_loss": val,
        "val_bpc": val / math.log(2) if val is not None else None,
        "lr": 2e-3,
        "chars_per_sec": 50_000.0,
        "elapsed_s": elapsed if elapsed is not None else step * 0.9,
    }


def write_run(directory: Path, records: list[dict], tail: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records) + tail
    (directory / "metrics.jsonl").write_text(text, encoding="utf-8")
    return directory


def curve(start: float, end: float, n: int = 30, every: int = 200, seconds_per_step: float = 0.9) -> list[dict]:
    """A loss falling from `start` towards `end` like a real run's, one evaluation every `every` steps."""
    out = []
    for i in range(1, n + 1):
        val = end + (start - end) * math.exp(-i / 6)
        out.append(record(i * every, val, val - 0.04 - 0.002 * i, i * every * seconds_per_step))
    return out


@pytest.fixture
def two_runs(tmp_path) -> list[Path]:
    return [
        write_run(tmp_path / "small", curve(2.6, 1.55)),
        write_run(tmp_path / "large", curve(2.4, 1.35, seconds_per_step=2.5)),
    ]


# ---------------------------------------------------------------- reading metrics.jsonl


def test_reads_evaluations_in_order_with_nulls_as_nan(tmp_path):
    run = read_metrics(write_run(tmp_path / "r", [record(10, 2.0), record(20, None), record(30, 1.5)]))
    assert run.step == (10, 20, 30)
    assert run.label == "r"
    assert run.val_loss[0] == 2.0 and math.isnan(run.val_loss[1]) and run.val_loss[2] == 1.5
    assert run.elapsed_s == pytest.approx((9.0, 18.0, 27.0))
    assert run.skipped_lines == 0


def test_a_torn_last_line_is_skipped(tmp_path):
    run = read_metrics(write_run(tmp_path / "r", [record(10, 2.0), record(20, 1.8)], tail='{"step": 30, "epo'))
    assert run.step == (10, 20)
    assert run.skipped_lines == 1


def test_a_resume_after_a_torn_line_keeps_both_sides(tmp_path):
    # The resumed run appends onto the torn line: that one line is lost, the evaluations after it are kept.
    tail = '{"step": 30, "epo' + json.dumps(record(30, 1.7)) + "\n" + json.dumps(record(40, 1.6)) + "\n"
    run = read_metrics(write_run(tmp_path / "r", [record(10, 2.0), record(20, 1.8)], tail=tail))
    assert run.step == (10, 20, 40)
    assert run.skipped_lines == 1


def test_a_resume_from_an_earlier_checkpoint_replaces_the_later_history(tmp_path):
    old = [record(10, 2.0), record(20, 1.8), record(30, 1.7)]
    new = [record(20, 1.9), record(30, 1.75), record(40, 1.6)]
    run = read_metrics(write_run(tmp_path / "r", old + new))
    assert run.step == (10, 20, 30, 40)
    assert run.val_loss == (2.0, 1.9, 1.75, 1.6)


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", '{"step": 10, "val_lo', "not json\n", '[1, 2]\n{"no_step": 1}\n{"step": "ten"}\n'],
    ids=["empty", "blank", "only-torn", "garbage", "no-steps"],
)
def test_metrics_without_a_usable_evaluation_are_one_sentence(tmp_path, text):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(CharRNNError, match="no complete evaluation yet"):
        read_metrics(tmp_path / "r")


def test_a_directory_without_metrics_is_one_sentence(tmp_path):
    (tmp_path / "r").mkdir()
    with pytest.raises(CharRNNError, match="has no metrics.jsonl"):
        read_metrics(tmp_path / "r")


def test_a_missing_directory_or_a_file_is_one_sentence(tmp_path):
    with pytest.raises(CharRNNError, match="does not exist"):
        read_metrics(tmp_path / "nowhere")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CharRNNError, match="is not a directory"):
        read_metrics(tmp_path / "file.txt")


def test_labels_are_directory_names_made_unique(tmp_path):
    a, b, c = tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "other"
    assert run_labels([a, c]) == ["run", "other"]
    assert run_labels([a, b, c]) == ["a/run", "b/run", "other"]
    assert run_labels([c, c]) == ["other", "other (2)"]


# ---------------------------------------------------------------- figure files


def colour_pixels(png: Path, hex_colour: str) -> int:
    """How many pixels of `png` are `hex_colour` (to within antialiasing's rounding)."""
    import numpy as np
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread

    image = imread(png)[..., :3]
    return int(np.all(np.abs(image - np.array(to_rgb(hex_colour))) < 0.03, axis=-1).sum())


def hide_matplotlib(monkeypatch) -> None:
    """Make every `import matplotlib...` raise ImportError, as when it is not installed: the package and any
    submodule that an earlier test already imported (a cached submodule would otherwise still import)."""
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_png_shows_both_runs(tmp_path, two_runs):
    pytest.importorskip("matplotlib")
    out = plot_runs(two_runs, tmp_path / "loss.png")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert 10_000 < len(data) < 2_000_000
    from matplotlib.image import imread

    height, width = imread(out).shape[:2]
    assert 400 <= height <= 2000 and 600 <= width <= 3000
    # Each run's validation curve is a solid 2-pixel line across the plot: far more of its colour than the
    # legend's short sample line alone would give. A third colour is there for no run.
    first, second, third = (colour_pixels(out, c) for c in COLOURS[:3])
    assert first > 300 and second > 300, (first, second)
    assert third < 20


def test_time_axis(tmp_path, two_runs):
    pytest.importorskip("matplotlib")
    out = plot_runs(two_runs, tmp_path / "time.png", x="time")
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert colour_pixels(out, COLOURS[0]) > 300 and colour_pixels(out, COLOURS[1]) > 300


def test_time_is_shown_in_minutes_or_hours():
    assert time_unit(90) == (1.0, "wall-clock time (seconds)")
    assert time_unit(121) == (60.0, "wall-clock time (minutes)")
    assert time_unit(100 * 60) == (60.0, "wall-clock time (minutes)")
    assert time_unit(5 * 3600) == (3600.0, "wall-clock time (hours)")


def test_svg_and_pdf_follow_the_extension(tmp_path, two_runs):
    pytest.importorskip("matplotlib")
    svg = plot_runs(two_runs, tmp_path / "loss.SVG").read_text(encoding="utf-8")
    assert "<svg" in svg
    assert "bits/char" in svg and "nats/char" in svg  # matplotlib writes each text as a comment by its glyphs
    assert plot_runs(two_runs, tmp_path / "loss.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize("name", ["loss.jpg", "loss", "loss.png.txt"])
def test_an_unsupported_extension_is_refused_before_plotting(tmp_path, two_runs, monkeypatch, name):
    hide_matplotlib(monkeypatch)  # the output is checked before matplotlib is needed
    with pytest.raises(CharRNNError, match=r"\.png, \.svg or \.pdf"):
        plot_runs(two_runs, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large", "small"]


def test_a_missing_output_directory_is_one_sentence(tmp_path, two_runs):
    with pytest.raises(CharRNNError, match="does not exist; create it first"):
        plot_runs(two_runs, tmp_path / "no" / "such" / "loss.png")


def test_a_bad_run_is_reported_and_nothing_is_written(tmp_path, two_runs):
    empty = write_run(tmp_path / "empty", [])
    with pytest.raises(CharRNNError, match="no complete evaluation"):
        plot_runs([*two_runs, empty], tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


def test_a_torn_last_line_still_plots(tmp_path):
    pytest.importorskip("matplotlib")
    run = write_run(tmp_path / "r", curve(2.5, 1.5, n=8), tail='{"step": 9999, "val_loss": 1.')
    assert plot_runs([run], tmp_path / "loss.png").read_bytes().startswith(PNG_MAGIC)


def test_without_matplotlib_the_message_says_how_to_install_it(tmp_path, two_runs, monkeypatch):
    hide_matplotlib(monkeypatch)
    with pytest.raises(CharRNNError) as caught:
        plot_runs(two_runs, tmp_path / "loss.png")
    assert "install it with `pip install 'charrnn[plot]'` (or `pip install matplotlib`)" in str(caught.value)
    assert not (tmp_path / "loss.png").exists()


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, two_runs, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    out = tmp_path / "out"
    out.mkdir()
    (out / "loss.png").write_bytes(b"old plot")

    def full_disk(self, fname, **kw):
        fname.write(b"half a plot")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(CharRNNError, match="No space left on device"):
        plot_runs(two_runs, out / "loss.png", force=True)
    assert [p.name for p in out.iterdir()] == ["loss.png"]
    assert (out / "loss.png").read_bytes() == b"old plot"


# ---------------------------------------------------------------- terminal drawings


def test_sparkline_of_a_falling_loss_falls_and_has_the_width():
    values = [3.0 - 0.1 * i for i in range(17)]
    for width in (5, 17, 40):
        line = sparkline(values, width=width)
        assert len(line) == width
        heights = [BLOCKS.index(c) for c in line]
        assert heights == sorted(heights, reverse=True)
        assert heights[0] == len(BLOCKS) - 1 and heights[-1] == 0


def test_sparkline_gaps_and_flat_series():
    line = sparkline([2.0, None, math.nan, 1.0], width=4)
    assert line == "█  ▁"
    assert sparkline([1.5, 1.5, 1.5], width=6) == BLOCKS[3] * 6
    assert sparkline([None, math.nan], width=3) == "   "


def test_val_sparkline_needs_two_evaluations(tmp_path):
    assert val_sparkline(write_run(tmp_path / "one", [record(10, 2.0)])) is None
    assert val_sparkline(write_run(tmp_path / "nan", [record(10, 2.0), record(20, None)])) is None
    assert val_sparkline(tmp_path / "missing") is None
    line = val_sparkline(write_run(tmp_path / "two", [record(10, 2.0), record(20, 1.0)]), width=10)
    assert line == "█" * 5 + "▁" * 5


def test_terminal_curve_rows_width_and_labels(tmp_path):
    run = write_run(tmp_path / "myrun", curve(2.6, 1.5, n=25, every=100))
    metrics = read_metrics(run)
    drawing = terminal_curve(run, width=70, height=12)
    lines = drawing.plain.split("\n")
    assert len(lines) == 12
    assert all(len(line) <= 70 for line in lines)
    lo = min(metrics.val_loss + metrics.train_loss)
    hi = max(metrics.val_loss + metrics.train_loss)
    assert lines[0].lstrip().startswith(f"{hi:.2f} ┤")
    assert lines[8].lstrip().startswith(f"{lo:.2f} ┤")
    assert lines[9].strip().startswith("└")
    assert lines[10].strip().startswith("100") and lines[10].rstrip().endswith("2,500")
    assert "validation" in lines[11] and "train" in lines[11] and "myrun" in lines[11]
    plot = "".join(lines[:9])
    assert sum(0x2800 < ord(c) <= 0x28FF for c in plot) > 40  # the curves are drawn
    # The falling validation curve starts in the top rows on the left and ends in the bottom rows on the right.
    assert any(0x2800 < ord(c) <= 0x28FF for c in lines[0][:20])
    assert any(0x2800 < ord(c) <= 0x28FF for c in lines[8][-20:])


def test_terminal_curve_colours_validation_over_train(tmp_path):
    drawing = terminal_curve(write_run(tmp_path / "r", curve(2.6, 1.5)), width=60, height=10)
    styles = {str(span.style) for span in drawing.spans}
    assert {"bold cyan", "magenta"} <= styles


def test_terminal_curve_survives_nan_and_a_single_evaluation(tmp_path):
    gap = terminal_curve(write_run(tmp_path / "gap", [record(10, 2.0), record(20, None), record(30, 1.5)]), 50, 8)
    assert len(gap.plain.split("\n")) == 8
    one = terminal_curve(write_run(tmp_path / "one", [record(10, 2.0, 2.0)]), 50, 8)
    assert len(one.plain.split("\n")) == 8


def test_val_sparkline_never_fails_on_crafted_losses(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "val_loss": 1.7e308, "train_loss": 1.0, "elapsed_s": 1.0}\n'
        '{"step": 2, "val_loss": -1.7e308, "train_loss": 1.0, "elapsed_s": 2.0}\n'
    )
    line = val_sparkline(tmp_path)
    assert line is None or len(line) == 40
