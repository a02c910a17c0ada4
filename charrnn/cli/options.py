"""What several commands share: option panels and builders, --max-time's durations, whether a flag was given,
the checkpoint a command uses, --force, and the one line that names a checkpoint's progress."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from charrnn.cli.console import say
from charrnn.errors import UsageError

DATA, MODEL, OPTIM, STOP, OUTPUT, RUNTIME = "Data", "Model", "Optimization", "Stopping", "Output", "Runtime"


def parse_duration(text: str | None) -> float | None:
    """display.parse_duration, a bad duration reported as Click reports a bad value."""
    from charrnn import display

    try:
        return display.parse_duration(text)
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option `name` on the command line (not its default)."""
    source = ctx.get_parameter_source(name)  # Click's (or Typer's vendored Click's) ParameterSource enum
    return source is not None and getattr(source, "name", "") not in ("DEFAULT", "DEFAULT_MAP")


def resolve_checkpoint(path: Path | None) -> Path:
    """A checkpoint file, or a run directory (its best.pt, else last.pt), or the newest run's."""
    from charrnn.checkpoint.files import checkpoint_in, find_latest_run

    return find_latest_run() if path is None else checkpoint_in(path)


def option(panel: str, help: str, *names: str, show_default: bool = True) -> Any:
    """A `train` option in its help panel (Data, Model, ...): the flag names, if not the field's, then the help."""
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=show_default)


def maybe(panel: str, help: str) -> Any:
    """An option whose default is None ("choose for me"): its help says what is chosen, so no [default: None]."""
    return option(panel, help, show_default=False)


# Each option's type, help and help panel; the command's signature names them, one line each.


Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace the output file if it exists (never a checkpoint, a file in a run directory, or an input).",
    ),
]


def progress_line(facts) -> str:
    """'step N, val X nats/char' for the checkpoint a command is about to use: its own evaluation, else (a
    checkpoint saved between evaluations) the run's best."""
    val = facts.val_loss if facts.val_loss is not None else facts.best_val_loss
    step = "?" if facts.step is None else facts.step
    return f"step {step}, " + (f"val {val:.4f} nats/char" if val is not None else "not evaluated yet")


def say_curve(run_dir: Path) -> None:
    """The validation loss so far as a sparkline on stderr, when the run directory has two evaluations or more."""
    from charrnn.training.plot import val_sparkline

    line = val_sparkline(run_dir)
    if line is not None:
        say(f"validation loss: {line}")
