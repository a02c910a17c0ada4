"""`charrnn train`: its flags, as the TrainJob charrnn.train() builds too, and its result on stdout."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn.cli.console import err, reader_may_leave, say, write_out
from charrnn.cli.options import (
    DATA,
    MODEL,
    OPTIM,
    OUTPUT,
    RUNTIME,
    STOP,
    given,
    maybe,
    option,
    parse_duration,
    say_curve,
)
from charrnn.cli.signals import StopFlag, user_errors

TRAIN_EPILOG = """Examples:\n
  charrnn train notes.txt                  (a budget from its size; checkpoints/notes)\n
  charrnn train pydocs --max-time 10m      (the model is sized to fit 10 min)\n
  charrnn train --resume --run-dir checkpoints/notes --max-steps 5000\n
A run directory that holds a run is never reused silently: a new run goes to
checkpoints/<name>-2, -3, ...; a --run-dir that holds a run needs --resume
(continue it) or --overwrite (replace it)."""

# TrainConfig fields that are also `train` options under the same name (flags map one-to-one onto the config).
TRAIN_FIELDS = (
    "seq_len",
    "batch_size",
    "val_frac",
    "lr",
    "min_lr_frac",
    "decay_frac",
    "warmup_steps",
    "weight_decay",
    "grad_clip",
    "max_steps",
    "max_epochs",
    "max_time",
    "eval_every",
    "eval_streams",
    "log_every",
    "sample_every",
    "sample_length",
    "sample_prime",
    "keep",
    "max_skips",
    "seed",
    "device",
    "threads",
    "amp",
)


TrainCorpus = Annotated[
    Optional[list[str]],
    typer.Argument(
        metavar="CORPUS",
        help="Text file(s), a directory, '-' for stdin, or a named corpus (charrnn corpus list). "
        "Not needed with --resume.",
        show_default=False,
    ),
]
TrainValFrac = Annotated[float, option(DATA, "Last fraction of the text held out for validation.")]
TrainSeqLen = Annotated[int, option(DATA, "Characters per stream per step (truncated BPTT length).")]
TrainBatchSize = Annotated[int, option(DATA, "Parallel contiguous streams per step.")]
TrainVerbose = Annotated[
    bool,
    option(DATA, "List the files a directory corpus skipped, and why.", "--verbose", "-v"),
]
TrainModel = Annotated[str, option(MODEL, "lstm, gru or rnn.")]
TrainHiddenSize = Annotated[
    Optional[int],
    maybe(MODEL, "Hidden units per layer \\[default: sized to the time budget; 512 under --max-steps/--max-epochs]."),
]
TrainNumLayers = Annotated[
    Optional[int],
    maybe(MODEL, "Stacked recurrent layers \\[default: 2]."),
]
TrainEmbedSize = Annotated[int, option(MODEL, "Embedding size (0: same as --hidden-size).")]
TrainDropout = Annotated[
    Optional[float],
    maybe(
        MODEL,
        "Dropout on the embeddings, between layers and before the head \\[default: by the planned passes "
        "over the text: 0 below 8, 0.1 below 16, else 0.2].",
    ),
]
TrainTieWeights = Annotated[
    bool,
    option(MODEL, "Share the embedding matrix with the output layer.", "--tie-weights"),
]
TrainLr = Annotated[float, option(OPTIM, "Peak learning rate (AdamW).")]
TrainMinLrFrac = Annotated[float, option(OPTIM, "The decay ends at lr * this.")]
TrainDecayFrac = Annotated[
    float,
    option(OPTIM, "The cosine decay takes the last this fraction of the budget; the lr is constant before it."),
]
TrainWarmupSteps = Annotated[int, option(OPTIM, "Linear warm-up steps.")]
TrainWeightDecay = Annotated[float, option(OPTIM, "AdamW weight decay on weight matrices.")]
TrainGradClip = Annotated[float, option(OPTIM, "Clip the global gradient norm to this.")]
TrainMaxSkips = Annotated[int, option(OPTIM, "Stop as diverged after this many consecutive non-finite steps.")]
TrainMaxSteps = Annotated[Optional[int], maybe(STOP, "Stop after this many steps.")]
TrainMaxEpochs = Annotated[
    Optional[float],
    maybe(STOP, "Stop after this many passes over the training text."),
]
TrainMaxTime = Annotated[
    Optional[str],
    maybe(
        STOP,
        "The whole command ends within this long: 90s, 10m, 2h, 1h30m; a bare number is seconds "
        "\\[default, when no limit is given: 10m per million characters, 2m to 1h].",
    ),
]
TrainEvalEvery = Annotated[int, option(OUTPUT, "Evaluate and checkpoint every N steps.")]
TrainEvalStreams = Annotated[int, option(OUTPUT, "Validation text is scored as this many carried streams.")]
TrainLogEvery = Annotated[int, option(OUTPUT, "Report progress every N steps.")]
TrainSampleEvery = Annotated[
    Optional[int], maybe(OUTPUT, "Preview the model's text every N steps \\[default: at each evaluation].")
]
TrainSampleLength = Annotated[
    int,
    option(
        OUTPUT, "Characters in each preview (temperature 0.8, the run's seed), on stderr and in samples.jsonl; 0: none."
    ),
]
TrainSamplePrime = Annotated[
    str, option(OUTPUT, "Text each preview starts from (not shown) \\[default: a newline].", show_default=False)
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
TrainKeep = Annotated[
    int,
    option(OUTPUT, "Older numbered checkpoints to keep besides best.pt and last.pt."),
]
TrainDevice = Annotated[str, option(RUNTIME, "auto, cpu, cuda, cuda:N or mps.")]
TrainSeed = Annotated[
    Optional[int],
    maybe(RUNTIME, "Random seed \\[default: drawn and printed]."),
]
TrainThreads = Annotated[
    Optional[int],
    maybe(RUNTIME, "CPU threads \\[default: torch's]."),
]
TrainAmp = Annotated[bool, option(RUNTIME, "fp16 mixed precision on CUDA.")]
TrainQuiet = Annotated[bool, option(RUNTIME, "No progress output.", "--quiet", "-q")]


def train(
    ctx: typer.Context,
    corpus: TrainCorpus = None,
    val_frac: TrainValFrac = 0.1,
    seq_len: TrainSeqLen = 50,
    batch_size: TrainBatchSize = 50,
    verbose: TrainVerbose = False,
    model: TrainModel = "lstm",
    hidden_size: TrainHiddenSize = None,
    num_layers: TrainNumLayers = None,
    embed_size: TrainEmbedSize = 0,
    dropout: TrainDropout = None,
    tie_weights: TrainTieWeights = False,
    lr: TrainLr = 2e-3,
    min_lr_frac: TrainMinLrFrac = 0.1,
    decay_frac: TrainDecayFrac = 0.2,
    warmup_steps: TrainWarmupSteps = 20,
    weight_decay: TrainWeightDecay = 0.1,
    grad_clip: TrainGradClip = 1.0,
    max_skips: TrainMaxSkips = 5,
    max_steps: TrainMaxSteps = None,
    max_epochs: TrainMaxEpochs = None,
    max_time: TrainMaxTime = None,
    eval_every: TrainEvalEvery = 200,
    eval_streams: TrainEvalStreams = 8,
    log_every: TrainLogEvery = 20,
    sample_every: TrainSampleEvery = None,
    sample_length: TrainSampleLength = 200,
    sample_prime: TrainSamplePrime = "",
    run_dir: TrainRunDir = None,
    resume: TrainResume = False,
    overwrite: TrainOverwrite = False,
    init_from: TrainInitFrom = None,
    keep: TrainKeep = 3,
    device: TrainDevice = "auto",
    seed: TrainSeed = None,
    threads: TrainThreads = None,
    amp: TrainAmp = True,
    quiet: TrainQuiet = False,
) -> None:
    """Train a character-level model on CORPUS and print the path of its best checkpoint."""
    started = time.perf_counter()  # --max-time is the user's wall clock: it counts from here, before torch loads
    from charrnn.checkpoint.rundir import remove_temps
    from charrnn.training import job
    from charrnn.training.progress import Reporter

    options = locals()
    reporter = Reporter(quiet=quiet, console=err)
    with user_errors(), reader_may_leave():
        train_job = _train_job(ctx, options, started)
        stop = StopFlag()
        with stop.installed():
            result = job.run(train_job, reporter, stop, on_claim=lambda path: stop.on_abort(lambda: remove_temps(path)))
        reporter.close()
        _report_result(result, train_job)


def _train_job(ctx: typer.Context, options: dict, started: float):
    """The `train` flags as the TrainJob that charrnn.training.loop() builds too: each maps one-to-one onto a field of
    its config; a seed left out is drawn there, so the run can print it."""
    from charrnn import api

    names = TRAIN_FIELDS + api.MODEL_OPTIONS
    return api.train_job(
        options["corpus"] or None,
        options["run_dir"],
        options["resume"],
        options["overwrite"],
        options["init_from"],
        {name: options[name] for name in names} | {"max_time": parse_duration(options["max_time"])},
        given={name for name in names if given(ctx, name)},
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
