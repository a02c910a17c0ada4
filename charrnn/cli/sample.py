"""`charrnn sample`: text from a checkpoint streamed to stdout (sampled, or by beam search)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn.cli.console import reader_may_leave, say, write_out
from charrnn.cli.options import given, progress_line, resolve_checkpoint
from charrnn.cli.signals import user_errors
from charrnn.errors import UsageError
from charrnn.text import stdin

SAMPLE_EPILOG = """Examples:\n
  charrnn sample --temp 0.8                (the newest run's best.pt)\n
  charrnn sample checkpoints/notes --prime "ROMEO:" | head -c 500\n
  charrnn sample checkpoints/notes -n 300 --num-samples 8 --top-p 0.9"""


# Each option's type, help and help panel; the command's signature names them, one line each.
SampleCheckpoint = Annotated[
    Optional[Path],
    typer.Argument(
        metavar="CHECKPOINT",
        help="A checkpoint (.pt or .safetensors), or a run directory (its best.pt) "
        "\\[default: the newest run under ./checkpoints].",
        show_default=False,
    ),
]
SampleTemp = Annotated[float, typer.Option("--temp", "--temperature", "-t", help="Sampling temperature; 0 is greedy.")]
SampleTopK = Annotated[
    Optional[int], typer.Option(help="Sample only from the k most likely characters.", show_default=False)
]
SampleTopP = Annotated[
    Optional[float],
    typer.Option(
        help="Nucleus sampling: the smallest set of characters with this much probability.", show_default=False
    ),
]
SampleLength = Annotated[int, typer.Option("--length", "-n", help="New characters per sample.")]
SamplePrime = Annotated[
    Optional[str],
    typer.Option(help="Text to start from ('-' reads it from stdin); printed before the sample.", show_default=False),
]
SampleNumSamples = Annotated[
    int, typer.Option(help="Samples generated together as one batch, separated by a blank line.")
]
SampleSeed = Annotated[
    Optional[int], typer.Option(help="Random seed \\[default: drawn and printed to stderr].", show_default=False)
]
SampleDevice = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
SamplePrecision = Annotated[
    str,
    typer.Option(
        help="fp32 (exact); int8: int8 weights on the CPU, about 2x faster for 2x512 models, less for small ones; "
        "bf16: faster with many --num-samples on CPUs with AVX512-BF16/AMX and on GPUs; auto: the fastest here "
        "(timed at start) of those measured to cost at most 0.01 bits/char."
    ),
]
SampleBeam = Annotated[
    Optional[int],
    typer.Option(
        help="Beam search: the most likely continuation (or --num-samples best) kept over this many beams; "
        "deterministic, so no temperature, top-k, top-p or seed.",
        show_default=False,
    ),
]
SampleQuiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Say nothing on stderr but errors (not the checkpoint used, nor the seed)."),
]


def sample(
    ctx: typer.Context,
    checkpoint: SampleCheckpoint = None,
    temp: SampleTemp = 0.8,
    top_k: SampleTopK = None,
    top_p: SampleTopP = None,
    length: SampleLength = 2000,
    prime: SamplePrime = None,
    num_samples: SampleNumSamples = 1,
    seed: SampleSeed = None,
    device: SampleDevice = "auto",
    precision: SamplePrecision = "fp32",
    beam: SampleBeam = None,
    quiet: SampleQuiet = False,
) -> None:
    """Stream text from a trained checkpoint to stdout."""
    import torch

    from charrnn import api, runtime
    from charrnn.generation.beam import BeamConfig, refuse_sampling_controls
    from charrnn.generation.sample import SampleConfig
    from charrnn.generation.stepper import check_precision_on

    with user_errors(), reader_may_leave():
        cfg: SampleConfig | BeamConfig
        if beam is not None:
            refuse_sampling_controls(temp if given(ctx, "temp") else None, top_k, top_p)
            if seed is not None:
                raise UsageError("--beam is deterministic, so --seed does nothing with it; leave --seed out.")
            cfg = BeamConfig(beam_size=beam, length=length, num_results=num_samples, precision=precision)
        else:
            seed = runtime.draw_seed() if seed is None else seed
            cfg = SampleConfig(temp, top_k, top_p, length, num_samples, seed, precision)
        cfg.validate()
        dev = runtime.select_device(device)
        check_precision_on(cfg.precision, dev)
        path = resolve_checkpoint(checkpoint)
        model = api.Model.from_file(path, dev, cfg.precision)
        text = stdin.read_text("--prime -") if prime == "-" else (prime or "")
        prime_ids = model.prime_ids(text)  # characters the model never saw: one sentence, before anything prints
        if not quiet:
            _announce(path, model.bundle, cfg, seed_drawn=beam is None and not given(ctx, "seed"), device=dev)
        with torch.inference_mode():
            if isinstance(cfg, BeamConfig):
                stream_beams(model.beam_events(prime_ids, cfg), text, model.bundle.vocab, quiet)
            else:
                said = None if quiet else _say_precision
                stream_samples(model.sample_blocks(prime_ids, cfg, said), text, model.bundle.vocab, num_samples)


def _announce(path: Path, bundle, cfg, *, seed_drawn: bool, device) -> None:
    """stderr before sampling: the checkpoint used, a drawn seed, and a bf16 that will be slow here."""
    from charrnn.generation.kernels import bf16_is_native

    say(f"using {path} ({progress_line(bundle.facts)})")
    if seed_drawn:
        say(f"seed {cfg.seed}")
    if cfg.precision == "bf16" and device.type == "cpu" and not bf16_is_native(device):
        say(
            "warning: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), "
            "so --precision bf16 will be slower than fp32."
        )


def _say_precision(choice) -> None:
    """What --precision auto picked on this machine for this model and batch, with the timings behind it."""
    rates = choice.steps_per_sec
    timed = ", ".join(f"{p} {rates[p] / rates['fp32']:.2f}x" for p in rates)
    say(f"precision auto: {choice.precision} (steps timed against fp32 here: {timed})")


def stream_beams(events, prime: str, vocab, quiet: bool) -> None:
    """Beam search's text: one result streams as its beams agree; several come best first, a blank line apart,
    each after its prime. Each result's mean log-probability goes to stderr (unless --quiet)."""
    from charrnn.generation.beam import BeamPiece

    write_out(prime)
    last, streamed = prime, False
    for event in events:
        if isinstance(event, BeamPiece):
            piece = vocab.decode(event.ids)
            write_out(piece)
            last, streamed = (last + piece)[-1:] or last, True
            continue
        text = vocab.decode(event.ids)
        if event.rank > 0:
            write_out(("\n" if not last.endswith("\n") else "") + "\n" + prime + text)
            last = (prime + text)[-1:]
        elif not streamed:
            write_out(text)
            last = (prime + text)[-1:]
        if not quiet:
            say(f"beam result {event.rank + 1}: mean log-probability {event.score:.4f} nats/char")
    if not last.endswith("\n"):
        write_out("\n")


def stream_samples(blocks, prime: str, vocab, num_samples: int) -> None:
    """Sample 0 streams live; the others (generated in the same batch) follow it, a blank line apart."""
    write_out(prime)
    rest: list[list[str]] = [[prime] for _ in range(num_samples - 1)]
    last = prime
    for block in blocks:  # (B, k) ids
        rows = block.tolist()
        piece = vocab.decode(rows[0])
        if piece:
            write_out(piece)
            last = piece
        for r, row in zip(rest, rows[1:], strict=False):
            r.append(vocab.decode(row))
    for r in rest:
        write_out(("\n" if not last.endswith("\n") else "") + "\n")
        body = "".join(r)
        write_out(body)
        last = body or last
    if not last.endswith("\n"):
        write_out("\n")
