"""`charrnn info`: what a checkpoint is and how its run went."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from charrnn.cli.console import reader_may_leave, shown, write_out
from charrnn.cli.options import resolve_checkpoint, say_curve
from charrnn.cli.signals import user_errors

INFO_EPILOG = """Examples:\n
  charrnn info checkpoints/notes/best.pt\n
  charrnn info checkpoints/notes           (a run directory: its best.pt)"""


def info(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT",
            help="A charrnn checkpoint (.pt or .safetensors), or a run directory (its best.pt).",
            show_default=False,
        ),
    ],
) -> None:
    """Describe a checkpoint: model, size, vocabulary, corpus, training progress."""
    from charrnn.checkpoint.files import load_model

    with user_errors(), reader_may_leave():
        path = resolve_checkpoint(checkpoint)
        model, bundle = load_model(path, "cpu")
        write_out(_description(path, model, bundle))
        say_curve(path.parent)


def _description(path: Path, model, bundle) -> str:
    """What `info` prints; '?' where the checkpoint does not say, and text from the file shown safely."""
    c, f = model.config, bundle.facts

    def text(value) -> str:
        return "?" if value is None else shown(value) if isinstance(value, str) else str(value)

    best = "not evaluated yet"
    if f.best_val_loss is not None:
        bpc = f.best_val_loss / math.log(2)
        best = f"{f.best_val_loss:.4f} nats/char, {bpc:.4f} bits/char (step {text(f.best_step)})"
    corpus = text(f.corpus_name) + (f" ({f.corpus_chars:,} characters)" if f.corpus_chars is not None else "")
    epoch = f" (epoch {f.epoch:.2f})" if f.epoch is not None else ""
    lines = [
        f"checkpoint:     {path}",
        f"model:          {c.model.upper()}, {c.num_layers} layer{'s' if c.num_layers != 1 else ''} x "
        f"{c.hidden_size} hidden, embed {c.embed_size}, dropout {c.dropout}"
        f"{', tied weights' if c.tie_weights else ''}",
        f"parameters:     {model.num_params():,}",
        f"vocabulary:     {len(bundle.vocab)} characters",
        f"corpus:         {corpus}",
        f"steps:          {text(f.step)}{epoch}",
        f"best val loss:  {best}",
        f"trained on:     {text(f.device)} with torch {text(f.torch_version)}",
    ]
    return "\n".join(lines) + "\n"
