"""`charrnn train`: its flags (TrainConfig's and ModelConfig's declared settings, and its own), as the TrainJob
charrnn.train() builds too, and its result on stdout."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from charrnn.cli import heap
from charrnn.cli.console import err, reader_may_leave, say, write_out
from charrnn.cli.options import flags_of, given, maybe, option, parameter, placed, say_curve, with_signature
from charrnn.cli.signals import StopFlag, user_errors
from charrnn.config.model import ModelConfig
from charrnn.config.settings import DATA, OUTPUT, RUNTIME, parsed
from charrnn.config.train import TrainConfig
from charrnn.errors import UsageError

TRAIN_EPILOG = """Examples:\n
  charrnn train notes.txt                  (a budget from its size; checkpoints/notes)\n
  charrnn train pydocs --max-time 10m      (the model is sized to fit 10 min)\n
  charrnn train --resume --run-dir checkpoints/notes --max-steps 5000\n
A run directory that holds a run is never reused silently: a new run goes to
checkpoints/<name>-2, -3, ...; a --run-dir that holds a run needs --resume
(continue it) or --overwrite (replace it)."""

TrainCorpus = Annotated[
    Optional[list[str]],
    typer.Argument(
        metavar="CORPUS",
        help="Text file(s), a directory, '-' for stdin, or a named corpus (charrnn corpus list). "
        "Not needed with --resume.",
        show_default=False,
    ),
]
TrainVerbose = Annotated[
    bool,
    option(DATA, "List the files a directory corpus skipped, and why.", "--verbose", "-v"),
]
TrainRunDir = Annotated[
    Optional[Path],
    maybe(OUTPUT, "Run directory \\[default: checkpoints/<corpus name>, or <name>-2, -3, ... when that holds a run]."),
]
TrainResume = Annotated[
    bool,
    option(
        OUTPUT,
        "Continue the run in --run-dir from its last good checkpoint (the corpus is found from the checkpoint).",
        "--resume",
    ),
]
TrainOverwrite = Annotated[
    bool,
    option(OUTPUT, "Replace the run in --run-dir: its checkpoints and metrics are deleted.", "--overwrite"),
]
TrainInitFrom = Annotated[
    Optional[Path],
    maybe(OUTPUT, "Start a new run from this checkpoint's weights (fine-tuning)."),
]
TrainQuiet = Annotated[bool, option(RUNTIME, "No progress output.", "--quiet", "-q")]


def train(ctx: typer.Context, **options: Any) -> None:
    """Train a character-level model on CORPUS and print the path of its best checkpoint."""
    started = time.perf_counter()  # --max-time is the user's wall clock: it counts from here, before torch loads
    from charrnn.checkpoint.rundir import remove_temps
    from charrnn.training import job
    from charrnn.training.progress import Reporter

    reporter = Reporter(quiet=options["quiet"], console=err)
    with user_errors(), reader_may_leave():
        train_job = _train_job(ctx, options, started)
        heap.release()
        stop = StopFlag()
        with stop.installed():
            result = job.run(train_job, reporter, stop, on_claim=lambda path: stop.on_abort(lambda: remove_temps(path)))
        reporter.close()
        _report_result(result, train_job)


# The settings of TrainConfig and ModelConfig are train's flags, one each, declared there; around them, the
# command's own: the corpus, where the run goes, and how it speaks.
SETTINGS = flags_of(TrainConfig, ModelConfig)
with_signature(
    train,
    [
        parameter("corpus", TrainCorpus, None),
        *placed(
            SETTINGS,
            {
                "model": [parameter("verbose", TrainVerbose, False)],
                "keep": [
                    parameter("run_dir", TrainRunDir, None),
                    parameter("resume", TrainResume, False),
                    parameter("overwrite", TrainOverwrite, False),
                    parameter("init_from", TrainInitFrom, None),
                ],
                "": [parameter("quiet", TrainQuiet, False)],
            },
        ),
    ],
)


def _train_job(ctx: typer.Context, options: dict, started: float):
    """The `train` flags as the TrainJob charrnn.train() builds too (api.train_job): each setting's flag maps
    onto its config field; a seed left out is drawn there, so the run can print it."""
    from charrnn import api

    settings = {p.name: options[p.name] for p in SETTINGS}
    try:
        settings = parsed(TrainConfig, settings)  # --max-time's duration, reported as Click reports a bad value
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None
    return api.train_job(
        options["corpus"] or None,
        options["run_dir"],
        options["resume"],
        options["overwrite"],
        options["init_from"],
        settings,
        given={name for name in settings if given(ctx, name)},
        started=started,
        verbose=options["verbose"],
        show_progress=not options["quiet"],
    )


def _report_result(result, train_job) -> None:
    """stdout: the best checkpoint's path (rank 0 only); stderr: the best loss, or how to continue after a signal."""
    if result.signal is not None:
        who = f"rank {result.rank}: " if result.world_size > 1 else ""
        resume_hint = "charrnn train --resume --run-dir " + _shell_quote(result.run_dir)
        if "-" in train_job.sources:
            resume_hint = "the same text piped to " + resume_hint.replace("train --", "train - --", 1)
        say(
            f"{who}stopped by {signal.Signals(result.signal).name} at step {result.step}; checkpoint saved in "
            f"{result.run_dir}; continue with: {resume_hint}"
        )
        raise typer.Exit(128 + result.signal)
    if result.rank != 0:
        return
    if math.isfinite(result.best_val_loss):
        say(f"best val loss {result.best_val_loss:.4f} nats ({result.best_val_loss / math.log(2):.4f} bpc)")
    write_out(f"{result.best_path}\n")
    if math.isfinite(result.best_val_loss) and train_job.show_progress:  # not --quiet
        say_curve(result.run_dir)


def _shell_quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))
