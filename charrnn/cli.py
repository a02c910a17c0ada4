"""The Typer app: flags -> config dataclasses -> one library call. The only module that prints or exits.

stdout carries data only (generated text; `train` prints the best checkpoint's path; `info` the description);
everything else goes to stderr. A stderr that cannot be written (a closed pipe, a full disk) goes quiet rather
than stopping the work; a stdout that cannot be written is one sentence and exit 1, except a reader that went
away (`| head`), which ends the command quietly with exit 0.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from charrnn import stdin
from charrnn.errors import CharRNNError, UsageError
from charrnn.outputs import check_output, replace_atomically
from charrnn.report import printable

app = typer.Typer(
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish and PowerShell
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Character-level LSTM/GRU/RNN language models: train on any text, then stream new text in its style.",
    epilog="Examples:\n\n  charrnn train notes.txt && charrnn sample -n 500\n\n"
    "  charrnn COMMAND --help   (each command's options)",
)
DATA, MODEL, OPTIM, STOP, OUTPUT, RUNTIME = "Data", "Model", "Optimization", "Stopping", "Output", "Runtime"
# SIGHUP: the terminal or SSH session closed (Windows has none).
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class QuietStream:
    """stderr that turns itself off when a write fails, so progress output can never stop training.

    It looks up sys.__stderr__-or-current lazily, so test runners that swap sys.stderr still capture it."""

    def __init__(self, get_stream) -> None:
        self._get = get_stream
        self.broken = False

    def write(self, text: str) -> int:
        stream = self._get()
        if not self.broken and stream is not None:
            try:
                stream.write(text)
            except (OSError, ValueError):  # EPIPE, ENOSPC, EIO, or a closed file object
                self.broken = True
        return len(text)

    def flush(self) -> None:
        stream = self._get()
        if not self.broken and stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                self.broken = True

    def isatty(self) -> bool:
        stream = self._get()
        try:
            return not self.broken and stream is not None and stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        stream = self._get()
        if stream is None:
            raise OSError("stderr is closed")
        return stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._get(), "encoding", None) or "utf-8"


def _current_stderr():
    """The stream under sys.stderr: a test runner's capture, or the process's own stderr. Never a QuietStream or
    a progress display's proxy (Rich's FileProxy writes back into the console, which writes here: a loop)."""
    stream = sys.stderr
    for _ in range(8):  # proxies nest at most a few deep; a cycle must not spin
        if isinstance(stream, QuietStream):
            return sys.__stderr__
        proxied = getattr(stream, "rich_proxied_file", None)
        if proxied is None:
            return stream
        stream = proxied
    return sys.__stderr__


_stderr = QuietStream(_current_stderr)
err = Console(file=_stderr, highlight=False, soft_wrap=True)  # type: ignore[arg-type]  # a file-like stream  # log lines never wrap mid-line in files


def shown(text: str) -> str:
    """A name or path from a file, on one line and safe to print: every control character as an escape."""
    return printable(text, keep="")


def rendered(renderable, *, end: str = "\n", width: int | None = None) -> str:
    """Rich output as text for write_out (so a closed or full stdout is one sentence, not a silent exit 0 or a
    traceback): coloured only when stdout is a terminal and NO_COLOR is unset."""
    terminal = sys.stdout is not None and sys.stdout.isatty()
    console = Console(file=io.StringIO(), force_terminal=terminal, highlight=False, soft_wrap=True, width=width)
    console.print(renderable, end=end)
    return console.file.getvalue()  # type: ignore[attr-defined]


def say(message: str) -> None:
    """A plain line on stderr (never Rich markup: paths and user text pass through as they are)."""
    err.print(escape(message))


def _print_version(value: bool) -> None:
    if value:
        from charrnn import __version__

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
# errors, output and signals


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """One sentence on stderr and the error's exit code, no traceback, for anything the user can fix; SIGTERM and
    SIGHUP stop the command as Ctrl-C does, so every writer's cleanup (its temp files) runs on the way out."""
    try:
        with _signals_interrupt():
            yield
    except CharRNNError as e:
        # Escaped once more here, newlines too: whatever text an error carries (a server's, a file's), the
        # terminal gets one line and no raw control character.
        err.print(f"[red]Error:[/red] {escape(printable(str(e), keep=''))}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:  # Ctrl-C outside the training loop
        signum = getattr(e, "signum", signal.SIGINT)
        say(f"{signal.Signals(signum).name}: stopped; checkpoints already written are intact")
        raise typer.Exit(128 + signum) from None


def _interrupt(signum: int, frame) -> None:
    interrupt = KeyboardInterrupt()
    interrupt.signum = signum  # type: ignore[attr-defined]  # user_errors exits with 128 + signum
    raise interrupt


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, as SIGINT does: by default they end the process at once, and a
    half-written temp file stays behind. (Training's StopFlag installs its own handlers inside this.)"""
    if threading.current_thread() is not threading.main_thread():  # signal.signal works in the main thread only
        yield
        return
    others = [s for s in STOP_SIGNALS if s != signal.SIGINT]
    previous = {s: signal.signal(s, _interrupt) for s in others}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class OutputError(CharRNNError):
    """stdout cannot be written (closed, or its disk is full)."""


def write_out(text: str) -> None:
    """Data to stdout, flushed; a failure other than a closed pipe becomes OutputError (exit 1)."""
    out = sys.stdout
    if out is None:
        raise OutputError(
            "standard output is closed, so there is nowhere to write; run the command with stdout "
            "open (redirect it to a file if you do not want to see it)."
        )
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:
        _silence_stdout()  # or the interpreter's final flush fails again, with a traceback
        reason = getattr(e, "strerror", None) or str(e)
        raise OutputError(
            f"cannot write to standard output ({reason}); free some space or redirect it elsewhere."
        ) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so what is still buffered goes nowhere instead of failing at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """The reader went away (`| head`): that ends the command quietly with exit 0, like any Unix filter."""
    try:
        yield
    except BrokenPipeError:
        _silence_stdout()


class StopFlag:
    """SIGINT, SIGTERM or SIGHUP asks the training loop (which polls this once per step) to save and stop;
    a second one exits at once, within milliseconds, even in the middle of a long step.

    Python runs signal handlers only between bytecodes, so a handler cannot interrupt a 10-second LSTM
    backward, and two signals that arrive during one are merged. The C-level handler does write every
    signal's number to the wakeup fd at once, so a watcher thread counts them there and, at the second,
    leaves with os._exit: checkpoint writes are atomic (temp file + rename), so no file is ever half-written.

    Until the loop first polls the flag (reading and encoding the corpus, setting up) there is nothing to save,
    so a first signal stops at once instead: it raises KeyboardInterrupt in the main thread, even from a read
    of a stdin that never ends, and the encoder's temporaries are removed on the way out.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._count = 0
        self._armed = False  # the loop has polled: from then on a first signal saves a checkpoint
        self._on_abort: Callable[[], None] = lambda: None

    def on_abort(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` before an abrupt exit (e.g. remove the temp file of a checkpoint write cut short)."""
        self._on_abort = cleanup

    def __call__(self) -> int | None:
        self._armed = True
        return self.signum

    def _handler(self, signum: int, frame) -> None:
        """The Python-level handler (main thread): before the loop, stop where we are."""
        if not self._armed:
            _interrupt(signum, frame)

    def _watch(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return  # uninstalled: the write end was closed
            for signum in data:
                if signum in STOP_SIGNALS:
                    self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count == 1:
            self.signum = signum
            if self._armed:  # before that the main thread's handler stops the command and says so
                say(f"\n{name}: finishing this step and saving a checkpoint ({AGAIN})")
            return
        try:
            self._on_abort()
        finally:
            _last_words(f"\n{name} again: stopped at once; checkpoints already written are intact\n")
            os._exit(128 + signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals are delivered to the main thread only
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        watcher = threading.Thread(target=self._watch, args=(read_fd,), name="charrnn-signals", daemon=True)
        watcher.start()
        # The wakeup fd before the handlers and after them on the way out: no signal falls in a gap unseen.
        previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        previous_handlers = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(previous_fd)
            os.close(write_fd)
            watcher.join(timeout=1.0)
            os.close(read_fd)


AGAIN = "signal again to stop at once without saving"


def _last_words(text: str) -> None:
    """A message on the way out through os._exit: a raw, non-blocking write, so a stderr that is stuck (a full
    pipe, a terminal paused with Ctrl-S) cannot keep the process from leaving; in a terminal it also shows the
    cursor again, which the progress bar had hidden and os._exit leaves no chance to restore."""
    try:
        fd = (sys.__stderr__ or sys.stderr).fileno()
        os.set_blocking(fd, False)
        os.write(fd, ((b"\x1b[?25h" if os.isatty(fd) else b"") + text.encode("utf-8", "replace")))
    except (OSError, ValueError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------------
# parsing helpers


def parse_duration(text: str | None) -> float | None:
    """report.parse_duration, a bad duration reported as Click reports a bad value."""
    from charrnn import report

    try:
        return report.parse_duration(text)
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None


def given(ctx: typer.Context, name: str) -> bool:
    """Whether the user gave option `name` on the command line (not its default)."""
    source = ctx.get_parameter_source(name)  # Click's (or Typer's vendored Click's) ParameterSource enum
    return source is not None and getattr(source, "name", "") not in ("DEFAULT", "DEFAULT_MAP")


def resolve_checkpoint(path: Path | None) -> Path:
    """A checkpoint file, or a run directory (its best.pt, else last.pt), or the newest run's."""
    from charrnn.checkpoint import checkpoint_in, find_latest_run

    return find_latest_run() if path is None else checkpoint_in(path)


# ---------------------------------------------------------------------------------------------------
# train

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


def option(panel: str, help: str, *names: str, show_default: bool = True) -> Any:
    """A `train` option in its help panel (Data, Model, ...): the flag names, if not the field's, then the help."""
    return typer.Option(*names, help=help, rich_help_panel=panel, show_default=show_default)


def maybe(panel: str, help: str) -> Any:
    """An option whose default is None ("choose for me"): its help says what is chosen, so no [default: None]."""
    return option(panel, help, show_default=False)


# Each option's type, help and help panel; the command's signature names them, one line each.
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


@app.command(epilog=TRAIN_EPILOG)
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
    from charrnn import job
    from charrnn.report import Reporter
    from charrnn.rundir import remove_temps

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
    """The `train` flags as the TrainJob that charrnn.training() builds too: each maps one-to-one onto a field of
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
        _say_curve(result.run_dir)


def _shell_quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


# ---------------------------------------------------------------------------------------------------
# sample

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


@app.command(epilog=SAMPLE_EPILOG)
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
    from charrnn.sample import BeamConfig, SampleConfig, check_precision_on, refuse_sampling_controls

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
        text = _read_prime(prime, model.bundle.vocab)
        if not quiet:
            _announce(path, model.bundle, cfg, seed_drawn=beam is None and not given(ctx, "seed"), device=dev)
        with torch.inference_mode():
            if isinstance(cfg, BeamConfig):
                stream_beams(model.beam_events(text, cfg), text, model.bundle.vocab, quiet)
            else:
                said = None if quiet else _say_precision
                stream_samples(model.sample_blocks(text, cfg, said), text, model.bundle.vocab, num_samples)


def _read_prime(prime: str | None, vocab) -> str:
    """--prime's text ('-': standard input), every character of it in the model's vocabulary."""
    from charrnn.api import check_prime_text

    text = stdin.read_text("--prime -") if prime == "-" else (prime or "")
    check_prime_text(text, vocab)
    return text


def _announce(path: Path, bundle, cfg, *, seed_drawn: bool, device) -> None:
    """stderr before sampling: the checkpoint used, a drawn seed, and a bf16 that will be slow here."""
    from charrnn.kernels import bf16_is_native

    say(f"using {path} ({_progress_line(bundle.facts)})")
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


def _progress_line(facts) -> str:
    """'step N, val X nats/char' for the checkpoint a command is about to use: its own evaluation, else (a
    checkpoint saved between evaluations) the run's best."""
    val = facts.val_loss if facts.val_loss is not None else facts.best_val_loss
    step = "?" if facts.step is None else facts.step
    return f"step {step}, " + (f"val {val:.4f} nats/char" if val is not None else "not evaluated yet")


def stream_beams(events, prime: str, vocab, quiet: bool) -> None:
    """Beam search's text: one result streams as its beams agree; several come best first, a blank line apart,
    each after its prime. Each result's mean log-probability goes to stderr (unless --quiet)."""
    from charrnn.sample import BeamPiece

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


# ---------------------------------------------------------------------------------------------------
# score

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


Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Replace the output file if it exists (never a checkpoint, a file in a run directory, or an input).",
    ),
]


@app.command(epilog=SCORE_EPILOG)
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
    from charrnn.checkpoint import load_model
    from charrnn.score import ScoreConfig, read_text

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
        if not quiet:
            say(f"using {path} ({_progress_line(bundle.facts)})")
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

    from charrnn.score import score_text

    total = score_text(model, vocab, chunks, device, cfg)
    _unknown_note(total)
    write_out((json.dumps(total.to_dict()) if json_out else total.summary()) + "\n")


def _score_per_line(model, vocab, chunks, device, cfg, json_out: bool, quiet: bool) -> None:
    """A line out for each line in, as it is scored; the total and any unknown characters on stderr at the end."""
    import json

    from charrnn.score import Score, score_lines

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
    from charrnn.score import char_scores, collect_text, heatmap_html, heatmap_text

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


# ---------------------------------------------------------------------------------------------------
# plot

PLOT_EPILOG = """Examples:\n
  charrnn plot checkpoints/notes                         (the curve in the terminal)\n
  charrnn plot checkpoints/a checkpoints/b -o loss.png   (two runs in one figure; .svg and .pdf too)\n
  charrnn plot checkpoints/a checkpoints/b -o loss.png --x time"""

PlotRuns = Annotated[
    list[Path], typer.Argument(metavar="RUN_DIR...", help="Run directories (each has a metrics.jsonl).")
]
PlotOutput = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Write the figure here (.png, .svg or .pdf; needs matplotlib: pip install 'charrnn[plot]') "
        "\\[default: draw it in the terminal].",
        show_default=False,
    ),
]
PlotX = Annotated[str, typer.Option("--x", help="step, or time (wall clock; with -o).")]


@app.command(epilog=PLOT_EPILOG)
def plot(runs: PlotRuns, output: PlotOutput = None, x: PlotX = "step", force: Force = False) -> None:
    """Train and validation loss against step (or time) for one or more runs."""
    from charrnn import plot as plots

    with user_errors(), reader_may_leave():
        if x not in ("step", "time"):
            raise UsageError(f"--x must be step or time, not {x!r}.")
        if output is not None:
            written = plots.plot_runs(runs, output, x="time" if x == "time" else "step", force=force)
            say(f"wrote {written}")
            return
        if x == "time":
            raise UsageError("the terminal curve is drawn against steps; give -o FILE for a plot against time.")
        width = max(40, min(err.width, 120))
        for run in plots.load_runs(runs):
            if run.skipped_lines:
                say(f"warning: {run.path / 'metrics.jsonl'}: {run.skipped_lines} unreadable line(s) skipped")
            write_out(rendered(plots.terminal_curve(run, width=width), width=width))


# ---------------------------------------------------------------------------------------------------
# export

EXPORT_EPILOG = """Examples:\n
  charrnn export checkpoints/notes -o notes.safetensors\n
  charrnn export checkpoints/notes/best.pt -o notes-fp16.safetensors --dtype fp16"""


@app.command(epilog=EXPORT_EPILOG)
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
    from charrnn.checkpoint import export_bundle, load_bundle
    from charrnn.export import check_options

    with user_errors(), reader_may_leave():
        check_options(output, dtype)
        source = resolve_checkpoint(checkpoint)
        check_output(output, "--output", inputs=[checkpoint, source], force=force)
        bundle = load_bundle(source)
        written = export_bundle(bundle, output, dtype)
        say(f"{written.stat().st_size:,} bytes ({dtype})")
        write_out(f"{written}\n")


# ---------------------------------------------------------------------------------------------------
# corpus

corpus_app = typer.Typer(
    no_args_is_help=True,
    help="The named corpora: list them, download one, print its path.",
    epilog="Examples:\n\n  charrnn corpus list\n\n"
    "  charrnn corpus get tiny-shakespeare && charrnn train tiny-shakespeare",
)
app.add_typer(corpus_app, name="corpus")
CorpusName = Annotated[str, typer.Argument(metavar="NAME", help="A corpus name from `charrnn corpus list`.")]


@corpus_app.command("list", epilog="Examples:\n\n  charrnn corpus list")
def corpus_list() -> None:
    """The known corpora: size, whether downloaded, licence and what they are (tab-separated on stdout)."""
    from charrnn.corpora import list_corpora

    with user_errors(), reader_may_leave():
        for status in list_corpora():
            c = status.corpus
            size = "built in" if c.url is None else f"{(c.text_size or c.size or 0) / 1e6:.1f} MB"
            here = "downloaded" if status.present else "-"
            write_out(f"{c.name}\t{size}\t{here}\t{c.licence}\t{c.description}\n")


@corpus_app.command("get", epilog="Examples:\n\n  charrnn corpus get enwik8")
def corpus_get(name: CorpusName) -> None:
    """Download a named corpus into the cache (resuming a broken download, checking its SHA-256, unpacking
    archives) and print its path."""
    from charrnn import corpora
    from charrnn.report import Reporter

    with user_errors(), reader_may_leave():
        corpora.lookup(name)
        reporter = Reporter(console=err)
        with reporter.transfer(f"downloading {name}") as progress:
            path = corpora.get(name, progress=progress, warn=reporter.warn)
        write_out(f"{path}\n")


@corpus_app.command("path", epilog="Examples:\n\n  wc -c $(charrnn corpus path tiny-shakespeare)")
def corpus_path(name: CorpusName) -> None:
    """Print the path of a downloaded corpus's text file (for pipelines)."""
    from charrnn import corpora

    with user_errors(), reader_may_leave():
        write_out(f"{corpora.path(name)}\n")


# ---------------------------------------------------------------------------------------------------
# info

INFO_EPILOG = """Examples:\n
  charrnn info checkpoints/notes/best.pt\n
  charrnn info checkpoints/notes           (a run directory: its best.pt)"""


@app.command(epilog=INFO_EPILOG)
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
    from charrnn.checkpoint import load_model

    with user_errors(), reader_may_leave():
        path = resolve_checkpoint(checkpoint)
        model, bundle = load_model(path, "cpu")
        write_out(_description(path, model, bundle))
        _say_curve(path.parent)


def _say_curve(run_dir: Path) -> None:
    """The validation loss so far as a sparkline on stderr, when the run directory has two evaluations or more."""
    from charrnn.plot import val_sparkline

    line = val_sparkline(run_dir)
    if line is not None:
        say(f"validation loss: {line}")


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


def main() -> None:
    """The console entry point: stderr that can fail quietly, and no traceback from a late Ctrl-C."""
    sys.stderr = QuietStream(lambda: sys.__stderr__)
    try:
        app()
    finally:
        # After the command, a Ctrl-C (or a burst of them) just ends the process: Python's default handler would
        # raise KeyboardInterrupt inside atexit hooks and print a traceback.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
