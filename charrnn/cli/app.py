"""The Typer app: the commands (one module each: train, sample, score, plot, export, corpus, info, serve) registered
in the order --help lists them, --version, and the console entry point.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from charrnn.cli import corpus, export, heap, info, plot, sample, score, serve, train
from charrnn.cli.console import QuietStream, write_out

app = typer.Typer(
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish and PowerShell
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Character-level LSTM/GRU/RNN language models: train on any text, then stream new text in its style.",
    epilog="Examples:\n\n  charrnn train notes.txt && charrnn sample -n 500\n\n"
    "  charrnn COMMAND --help   (each command's options)",
)


def _print_version(value: bool) -> None:
    if value:
        from charrnn.version import __version__

        write_out(f"charrnn {__version__}\n")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Character-level LSTM/GRU/RNN language models: train on any text, then stream new text in its style."""


# ---------------------------------------------------------------------------------------------------
# help: Click-style types (TEXT, INTEGER, PATH) and nothing on flags


def _click_style_help_types() -> None:
    """Typer 0.2x prints <int>, <bool>, <list[str]> in help; show what Typer apps normally show instead."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:
        return
    names = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "Path": "PATH", "list[str]": "TEXT"}
    for cls in (TyperOption, TyperArgument):
        original = getattr(cls, "display_type_rich", None)
        if original is None or getattr(original, "_charrnn", False):
            continue

        def display(self, ctx, _original=original):
            if getattr(self, "is_flag", False) or getattr(self, "param_type_name", "") == "argument":
                return None  # a flag takes no value; an argument's name column already says what it is
            if self.metavar is not None:
                return self.metavar
            text = _original(self, ctx)
            return names.get(text[1:-1], text[1:-1].upper()) if text and text.startswith("<") else text

        display._charrnn = True  # type: ignore[attr-defined]
        cls.display_type_rich = display  # type: ignore[method-assign]


_click_style_help_types()


# ---------------------------------------------------------------------------------------------------
# the commands, in the order --help lists them

app.command(epilog=train.TRAIN_EPILOG)(train.train)
app.command(epilog=sample.SAMPLE_EPILOG)(sample.sample)
app.command(epilog=score.SCORE_EPILOG)(score.score)
app.command(epilog=plot.PLOT_EPILOG)(plot.plot)
app.command(epilog=export.EXPORT_EPILOG)(export.export)
app.add_typer(corpus.corpus_app, name="corpus")
app.command(epilog=info.INFO_EPILOG)(info.info)
app.command(epilog=serve.SERVE_EPILOG)(serve.serve)


def main() -> None:
    """The console entry point: stderr that can fail quietly, and no traceback from a late Ctrl-C."""
    sys.stderr = QuietStream(lambda: sys.__stderr__)
    heap.hold()  # until the command has loaded torch and its model (cli/heap.py)
    try:
        app()
    finally:
        # After the command, a Ctrl-C (or a burst of them) just ends the process: Python's default handler would
        # raise KeyboardInterrupt inside atexit hooks and print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
