"""`charrnn export`: a checkpoint as a .safetensors file for sharing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from charrnn.checkpoint.outputs import check_output
from charrnn.cli.console import reader_may_leave, say, write_out
from charrnn.cli.options import Force, resolve_checkpoint
from charrnn.cli.signals import user_errors

EXPORT_EPILOG = """Examples:\n
  charrnn export checkpoints/notes -o notes.safetensors\n
  charrnn export checkpoints/notes/best.pt -o notes-fp16.safetensors --dtype fp16"""


def export(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CHECKPOINT", help="A checkpoint (.pt or .safetensors) or a run directory.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .safetensors file to write.")],
    dtype: Annotated[str, typer.Option(help="fp32, or fp16 / bf16 for a file half the size.")] = "fp32",
    force: Force = False,
) -> None:
    """Write a model file that is safe to share: safetensors weights, with the config, vocabulary and provenance
    as metadata (no pickle, no optimizer state); sample, score, info and --init-from read it. Prints its path."""
    from charrnn.checkpoint.files import export_bundle, load_bundle
    from charrnn.checkpoint.safetensors import check_options

    with user_errors(), reader_may_leave():
        check_options(output, dtype)
        source = resolve_checkpoint(checkpoint)
        check_output(output, "--output", inputs=[checkpoint, source], force=force)
        bundle = load_bundle(source)
        written = export_bundle(bundle, output, dtype)
        say(f"{written.stat().st_size:,} bytes ({dtype})")
        write_out(f"{written}\n")
