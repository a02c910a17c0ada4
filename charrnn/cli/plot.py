"""`charrnn plot`: loss curves of runs, in the terminal or to a figure file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn.cli.console import err, reader_may_leave, rendered, say, write_out
from charrnn.cli.options import Force
from charrnn.cli.signals import user_errors
from charrnn.errors import UsageError

PLOT_EPILOG = """Examples:\n
  charrnn plot checkpoints/notes                         (the curve in the terminal)\n
  charrnn plot checkpoints/a checkpoints/b -o loss.png   (two runs in one figure; .svg and .pdf too)\n
  charrnn plot checkpoints/a checkpoints/b -o loss.png --x time"""

PlotRuns = Annotated[
    list[Path], typer.Argument(metavar="RUN_DIR...", help="Run directories (each has a metrics.jsonl).")
]
PlotOutput = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Write the figure here (.png, .svg or .pdf; needs matplotlib: pip install 'charrnn[plot]') "
        "\\[default: draw it in the terminal].",
        show_default=False,
    ),
]
PlotX = Annotated[str, typer.Option("--x", help="step, or time (wall clock; with -o).")]


def plot(runs: PlotRuns, output: PlotOutput = None, x: PlotX = "step", force: Force = False) -> None:
    """Train and validation loss against step (or time) for one or more runs."""
    from charrnn.training import plot as plots

    with user_errors(), reader_may_leave():
        if x not in ("step", "time"):
            raise UsageError(f"--x must be step or time, not {x!r}.")
        if output is not None:
            written = plots.plot_runs(runs, output, x="time" if x == "time" else "step", force=force)
            say(f"wrote {written}")
            return
        if x == "time":
            raise UsageError("the terminal curve is drawn against steps; give -o FILE for a plot against time.")
        width = max(40, min(err.width, 120))
        for run in plots.load_runs(runs):
            if run.skipped_lines:
                say(f"warning: {run.path / 'metrics.jsonl'}: {run.skipped_lines} unreadable line(s) skipped")
            write_out(rendered(plots.terminal_curve(run, width=width), width=width))
