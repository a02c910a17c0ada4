"""`charrnn sample`: text from a checkpoint streamed to stdout (sampled, or by beam search)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charrnn.cli import heap
from charrnn.cli.console import PacedOut, reader_may_leave, say, write_out
from charrnn.cli.options import flags_of, given, parameter, placed, progress_line, resolve_checkpoint, with_signature
from charrnn.cli.signals import user_errors
from charrnn.config.sample import SampleConfig
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
SamplePrime = Annotated[
    Optional[str],
    typer.Option(help="Text to start from ('-' reads it from stdin); printed before the sample.", show_default=False),
]
SampleDevice = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
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


def sample(ctx: typer.Context, **options: Any) -> None:
    """Stream text from a trained checkpoint to stdout."""
    import torch

    from charrnn import api, runtime
    from charrnn.config.seed import draw_seed
    from charrnn.generation.beam import BeamConfig, refuse_sampling_controls
    from charrnn.generation.stepper import check_precision_on

    checkpoint, prime, device, beam, quiet = (options[k] for k in ("checkpoint", "prime", "device", "beam", "quiet"))
    sampling = {name: options[name] for name in SETTINGS}
    with user_errors(), reader_may_leave():
        cfg: SampleConfig | BeamConfig
        if beam is not None:
            temperature = sampling["temperature"] if given(ctx, "temperature") else None
            refuse_sampling_controls(temperature, sampling["top_k"], sampling["top_p"])
            if sampling["seed"] is not None:
                raise UsageError("--beam is deterministic, so --seed does nothing with it; leave --seed out.")
            n, precision = sampling["num_samples"], sampling["precision"]
            cfg = BeamConfig(beam_size=beam, length=sampling["length"], num_results=n, precision=precision)
        else:
            cfg = SampleConfig(**sampling | {"seed": draw_seed() if sampling["seed"] is None else sampling["seed"]})
        cfg.validate()
        dev = runtime.select_device(device)
        check_precision_on(cfg.precision, dev)
        path = resolve_checkpoint(checkpoint)
        model = api.Model.from_file(path, dev, cfg.precision)
        heap.release()
        text = stdin.read_text("--prime -") if prime == "-" else (prime or "")
        prime_ids = model.prime_ids(text)  # characters the model never saw: one sentence, before anything prints
        if not quiet:
            _announce(path, model.bundle, cfg, seed_drawn=beam is None and not given(ctx, "seed"), device=dev)
        with torch.inference_mode():
            if isinstance(cfg, BeamConfig):
                stream_beams(model.beam_events(prime_ids, cfg), text, model.bundle.vocab, quiet)
            else:
                said = None if quiet else _say_precision
                stream_samples(model.sample_blocks(prime_ids, cfg, said), text, model.bundle.vocab, cfg.num_samples)


# SampleConfig's settings are sample's flags, one each, declared there; around them, the command's own.
SETTINGS = tuple(p.name for p in flags_of(SampleConfig))
with_signature(
    sample,
    [
        parameter("checkpoint", SampleCheckpoint, None),
        *placed(
            flags_of(SampleConfig),
            {
                "num_samples": [parameter("prime", SamplePrime, None)],
                "precision": [parameter("device", SampleDevice, "auto")],
                "": [parameter("beam", SampleBeam, None), parameter("quiet", SampleQuiet, False)],
            },
        ),
    ],
)


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
    """Sample 0 streams live (paced flushes); the others (generated in the same batch) follow it, a blank line
    apart, decoded once at the end from their ids (int32: half the memory of a list of characters)."""
    import torch

    out = PacedOut()
    out.write(prime)
    rest: list[torch.Tensor] = []  # (B - 1, k) blocks of ids
    last = prime
    for block in blocks:  # (B, k) ids
        piece = vocab.decode(block[0].tolist())
        if piece:
            out.write(piece)
            last = piece
        if num_samples > 1:
            rest.append(block[1:].to(torch.int32))
    ids = torch.cat(rest, dim=1).tolist() if rest else [[] for _ in range(num_samples - 1)]  # (B - 1, length)
    for row in ids:
        out.write(("\n" if not last.endswith("\n") else "") + "\n")
        body = prime + vocab.decode(row)
        out.write(body)
        last = body or last
    if not last.endswith("\n"):
        out.write("\n")
    out.flush()
