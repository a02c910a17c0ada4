"""`charrnn score`: how well a model predicts a text, whole, per line or as a heatmap.

The library is imported inside the command, lazily, for start-up speed: `charrnn --help` loads no torch.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn.checkpoint.outputs import check_output, replace_atomically
from charrnn.cli import heap
from charrnn.cli.console import reader_may_leave, rendered, say, shown, write_out
from charrnn.cli.options import Force, progress_line, resolve_checkpoint
from charrnn.cli.sample import SampleDevice, SampleQuiet
from charrnn.cli.signals import user_errors
from charrnn.errors import UsageError

SCORE_EPILOG = """Examples:\n
  charrnn score notes.txt                   (the newest run's best.pt: nats/char, bits/char, perplexity)\n
  charrnn score checkpoints/notes --per-line --independent candidates.txt | sort -n | head\n
  charrnn score checkpoints/notes server.log --per-line | sort -rn | head   (the least typical lines)\n
  charrnn score checkpoints/notes draft.txt --html draft.html"""

ScoreArgs = Annotated[
    list[str],
    typer.Argument(
        metavar="[CHECKPOINT] FILE",
        help="A checkpoint or run directory \\[default: the newest run], then the text to score ('-': stdin).",
        show_default=False,
    ),
]
ScorePerLine = Annotated[
    bool, typer.Option("--per-line", help="One TSV line per input line: bpc, nats, chars, the line.")
]
ScoreIndependent = Annotated[
    bool,
    typer.Option("--independent", help="Score each line from a fresh state (to rank candidates), not in context."),
]
ScoreSkipUnknown = Annotated[
    bool,
    typer.Option(
        "--skip-unknown", help="Leave characters the model never saw out, instead of charging each ln(V) nats."
    ),
]
ScoreJson = Annotated[bool, typer.Option("--json", help="JSON: one object, or one per line with --per-line.")]
ScoreHeatmap = Annotated[
    bool, typer.Option("--heatmap", help="Print the text coloured by each character's surprise (in a terminal).")
]
ScoreHtml = Annotated[
    Optional[Path],
    typer.Option(
        help="Write a page of the text coloured by surprise, each character's probability and the model's top "
        "choices on hover.",
        show_default=False,
    ),
]


def score(
    args: ScoreArgs,
    per_line: ScorePerLine = False,
    independent: ScoreIndependent = False,
    skip_unknown: ScoreSkipUnknown = False,
    json_out: ScoreJson = False,
    heatmap: ScoreHeatmap = False,
    html: ScoreHtml = None,
    force: Force = False,
    device: SampleDevice = "auto",
    quiet: SampleQuiet = False,
) -> None:
    """How well a model predicts a text: nats/char, bits/char and perplexity, per line, or as a heatmap."""
    from charrnn import runtime
    from charrnn.checkpoint.files import load_model
    from charrnn.generation.score import ScoreConfig
    from charrnn.text.utf8 import read_text

    with user_errors(), reader_may_leave():
        checkpoint, source = _score_args(args)
        if (heatmap or html is not None) and (per_line or independent):
            raise UsageError(
                "--heatmap and --html score the text in context as a whole; leave out --per-line and --independent."
            )
        cfg = ScoreConfig(skip_unknown=skip_unknown, independent=independent)
        chunks = read_text(source)
        # The first block decoded now: a missing, empty, binary or non-UTF-8 file fails before the model loads.
        chunks = itertools.chain([next(chunks)], chunks)
        dev = runtime.select_device(device)
        path = resolve_checkpoint(checkpoint)
        if html is not None:
            inputs = [path] + ([] if checkpoint is None else [checkpoint]) + ([] if source == "-" else [Path(source)])
            check_output(html, "--html", inputs=inputs, force=force)
        model, bundle = load_model(path, dev)
        heap.release()
        if not quiet:
            say(f"using {path} ({progress_line(bundle.facts)})")
        if heatmap or html is not None:
            _score_heatmap(model, bundle.vocab, chunks, dev, heatmap, html, source)
        elif per_line:
            _score_per_line(model, bundle.vocab, chunks, dev, cfg, json_out, quiet)
        else:
            _score_whole(model, bundle.vocab, chunks, dev, cfg, json_out)


def _score_args(args: list[str]) -> tuple[Path | None, str]:
    if len(args) == 1:
        return None, args[0]
    if len(args) == 2:
        return Path(args[0]), args[1]
    raise UsageError(
        f"score takes [CHECKPOINT] FILE, not {len(args)} arguments; e.g. charrnn score checkpoints/notes text.txt."
    )


def _score_whole(model, vocab, chunks, device, cfg, json_out: bool) -> None:
    import json

    from charrnn.generation.whole import score_text

    total = score_text(model, vocab, chunks, device, cfg)
    _unknown_note(total)
    write_out((json.dumps(total.to_dict()) if json_out else total.summary()) + "\n")


def _score_per_line(model, vocab, chunks, device, cfg, json_out: bool, quiet: bool) -> None:
    """A line out for each line in, as it is scored; the total and any unknown characters on stderr at the end."""
    import json

    from charrnn.generation.lines import score_lines
    from charrnn.generation.score import Score

    total = Score.empty(len(vocab), cfg.skip_unknown)
    for line in score_lines(model, vocab, chunks, device, cfg):
        total.add(line)
        if json_out:
            record = {
                "bpc": line.bits_per_char,
                "nats": line.nats,
                "chars": line.chars,
                "line": line.text.rstrip("\r\n"),
            }
            write_out(
                json.dumps(
                    {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
                )
                + "\n"
            )
        else:
            write_out(line.tsv() + "\n")
    _unknown_note(total)
    if not quiet:
        say(f"total: {total.summary()}")


def _score_heatmap(model, vocab, chunks, device, heatmap: bool, html: Path | None, source: str) -> None:
    from charrnn.generation.heatmap import char_scores, collect_text, heatmap_html, heatmap_text

    records = char_scores(model, vocab, collect_text(chunks), device)
    if html is not None:
        page = heatmap_html(records, title="standard input" if source == "-" else source).encode("utf-8")
        replace_atomically(html, lambda f: f.write(page))
        say(f"wrote {shown(str(html))}")
    if heatmap:
        end = "" if records and records[-1].char == "\n" else "\n"
        write_out(rendered(heatmap_text(records), end=end))


def _unknown_note(total) -> None:
    note = total.unknown_note()
    if note:
        say(f"warning: {note}")
