"""What several commands share: flags built from the configs' declared settings, option builders, --max-time's
durations, whether a flag was given, the checkpoint a command uses, --force, and the one line that names a
checkpoint's progress."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charrnn.cli.console import say
from charrnn.config.settings import DATA, MODEL, OPTIM, OUTPUT, RUNTIME, SAME, STOP
from charrnn.errors import UsageError

PANELS = (None, DATA, MODEL, OPTIM, STOP, OUTPUT, RUNTIME)  # the order --help shows them in


def flags_of(*configs: type) -> list[inspect.Parameter]:
    """Each declared setting of the config classes that has a flag, as a Typer option: its type, default, help
    and panel from the one declaration, ordered by panel (then by declaration)."""
    params = [_flag(cls, field) for cls in configs for field in dataclasses.fields(cls)]
    flags = [p for p in params if p is not None]
    return sorted(flags, key=lambda p: PANELS.index(_panel_of(p)))


def _flag(cls: type, field: dataclasses.Field) -> inspect.Parameter | None:
    s = field.metadata.get("setting")
    if s is None or not s.is_flag:
        return None
    default = field.default if s.flag_default is SAME else s.flag_default
    kind = s.flag_type or typing.get_type_hints(cls)[field.name]
    if default is None and typing.get_origin(kind) is None:
        kind = Optional[kind]  # noqa: UP045 (Typer reads Optional[...] as "may be left out")
    show = s.show_default if s.show_default is not None else default is not None
    option = typer.Option(*s.flags, help=s.help, rich_help_panel=s.panel, show_default=show)
    return parameter(field.name, Annotated[kind, option], default)


def _panel_of(param: inspect.Parameter) -> str | None:
    return param.annotation.__metadata__[0].rich_help_panel


def parameter(name: str, kind: Any, default: Any) -> inspect.Parameter:
    """A command's own flag or argument (not a config's setting): `kind` is Annotated[type, typer.Option(...)]."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)


def placed(flags: list[inspect.Parameter], before: dict[str, list[inspect.Parameter]]) -> list[inspect.Parameter]:
    """`flags` with a command's own parameters placed before the flag each is keyed by ("" for the end)."""
    out: list[inspect.Parameter] = []
    for flag in flags:
        out += before.get(flag.name, []) + [flag]
    return out + before.get("", [])


def with_signature(command: Callable, params: list[inspect.Parameter]) -> Callable:
    """`command(ctx, **options)` given the signature Typer reads its options from."""
    ctx = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    command.__signature__ = inspect.Signature([ctx, *params], return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {}
    return command


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
    from charrnn.checkpoint.rundir import checkpoint_in, find_latest_run

    return find_latest_run() if path is None else checkpoint_in(path)


def option(panel: str | None, help: str, *names: str, show_default: bool = True) -> Any:
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
