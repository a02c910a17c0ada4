"""The Typer app: flags -> config dataclasses -> one library call. The only module that prints or exits.

stdout carries data only (generated text; `train` prints the best checkpoint's path); everything else goes
to stderr.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import sys
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from charrnn.errors import CharRNNError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Character-level LSTM/GRU/RNN language models: train on any text, then stream new text in its style.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # log lines never wrap mid-line in files

DATA, MODEL, OPTIM, STOP, OUTPUT, RUNTIME = "Data", "Model", "Optimization", "Stopping", "Output", "Runtime"


# ---------------------------------------------------------------------------------------------------
# errors and signals


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """One sentence on stderr and the error's exit code, no traceback, for anything the user can fix."""
    try:
        yield
    except CharRNNError as e:
        err.print(f"[red]Error:[/red] {escape(str(e))}")
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:  # Ctrl-C outside the training loop, or a second signal inside it
        signum = getattr(e, "signum", signal.SIGINT)
        err.print(f"{signal.Signals(signum).name}: stopped; checkpoints already written are intact")
        raise typer.Exit(128 + signum) from None


class Aborted(KeyboardInterrupt):
    """A second SIGINT/SIGTERM while stopping: leave at once (writes are atomic), exiting 128 + signum."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum


class StopFlag:
    """SIGINT/SIGTERM set a flag the training loop polls once per step; a second signal aborts at once
    (checkpoint writes are atomic, so aborting mid-save leaves the previous checkpoint intact)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> int | None:
        return self.signum

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise Aborted(signum)
        self.signum = signum
        err.print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                  "(signal again to abort without saving)")

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopFlag"]:
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


# ---------------------------------------------------------------------------------------------------
# parsing helpers


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '2h', '1h30m' or plain seconds -> seconds."""
    if text is None:
        return None
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or "".join(n + u for n, u in parts) != s.replace(" ", ""):
        raise typer.BadParameter(f"{text!r} is not a duration; use e.g. 90s, 10m, 2h or 1h30m.")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def write_out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def quiet_broken_pipe() -> None:
    # The reader went away (`| head`): point stdout at devnull so the interpreter's final flush is silent.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


# ---------------------------------------------------------------------------------------------------
# train


@app.command()
def train(
    corpus: Annotated[list[str], typer.Argument(help="Text file(s), a directory, '-' for stdin, or a named corpus (pydocs).", show_default=False)],
    val_frac: Annotated[float, typer.Option(help="Last fraction of the text held out for validation.", rich_help_panel=DATA)] = 0.1,
    seq_len: Annotated[int, typer.Option(help="Characters per stream per step (truncated BPTT length).", rich_help_panel=DATA)] = 100,
    batch_size: Annotated[int, typer.Option(help="Parallel contiguous streams per step.", rich_help_panel=DATA)] = 64,
    model: Annotated[str, typer.Option(help="lstm, gru or rnn.", rich_help_panel=MODEL)] = "lstm",
    hidden_size: Annotated[Optional[int], typer.Option(help="Hidden units per layer \\[default: auto-sized under --max-time, else 512].", show_default=False, rich_help_panel=MODEL)] = None,
    num_layers: Annotated[Optional[int], typer.Option(help="Stacked recurrent layers \\[default: 2].", show_default=False, rich_help_panel=MODEL)] = None,
    embed_size: Annotated[int, typer.Option(help="Embedding size (0: same as --hidden-size).", rich_help_panel=MODEL)] = 0,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout on the embeddings, between layers and before the head \\[default: 0.1, or auto].", show_default=False, rich_help_panel=MODEL)] = None,
    tie_weights: Annotated[bool, typer.Option(help="Share the embedding matrix with the output layer.", rich_help_panel=MODEL)] = False,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).", rich_help_panel=OPTIM)] = 3e-3,
    min_lr_frac: Annotated[float, typer.Option(help="Cosine decay ends at lr * this.", rich_help_panel=OPTIM)] = 0.02,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.", rich_help_panel=OPTIM)] = 20,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay on weight matrices.", rich_help_panel=OPTIM)] = 0.1,
    grad_clip: Annotated[float, typer.Option(help="Clip the global gradient norm to this.", rich_help_panel=OPTIM)] = 1.0,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps.", show_default=False, rich_help_panel=STOP)] = None,
    max_epochs: Annotated[Optional[float], typer.Option(help="Stop after this many passes over the training text \\[default: 10 when no limit is given].", show_default=False, rich_help_panel=STOP)] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Stop after this long, e.g. 90s, 10m, 2h.", show_default=False, rich_help_panel=STOP)] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate and checkpoint every N steps.", rich_help_panel=OUTPUT)] = 200,
    eval_streams: Annotated[int, typer.Option(help="Validation text is scored as this many carried streams.", rich_help_panel=OUTPUT)] = 8,
    log_every: Annotated[int, typer.Option(help="Report progress every N steps.", rich_help_panel=OUTPUT)] = 20,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run directory \\[default: checkpoints/<corpus name>].", show_default=False, rich_help_panel=OUTPUT)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --run-dir from its last good checkpoint.", rich_help_panel=OUTPUT)] = False,
    init_from: Annotated[Optional[Path], typer.Option(help="Start a new run from this checkpoint's weights (fine-tuning).", show_default=False, rich_help_panel=OUTPUT)] = None,
    keep: Annotated[int, typer.Option(help="Older numbered checkpoints to keep besides best.pt and last.pt.", rich_help_panel=OUTPUT)] = 3,
    max_skips: Annotated[int, typer.Option(help="Stop as diverged after this many consecutive non-finite steps.", rich_help_panel=OPTIM)] = 5,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.", rich_help_panel=RUNTIME)] = "auto",
    seed: Annotated[Optional[int], typer.Option(help="Random seed \\[default: drawn and printed].", show_default=False, rich_help_panel=RUNTIME)] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads \\[default: torch's].", show_default=False, rich_help_panel=RUNTIME)] = None,
    amp: Annotated[bool, typer.Option(help="fp16 mixed precision on CUDA.", rich_help_panel=RUNTIME)] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=RUNTIME)] = False,
) -> None:
    """Train a character-level model on CORPUS and print the path of its best checkpoint."""
    from charrnn import runtime
    from charrnn.autosize import choose_model_size
    from charrnn.checkpoint import RunDir
    from charrnn.corpus import load_corpus
    from charrnn.model import ModelConfig
    from charrnn.report import Reporter
    from charrnn.train import TrainConfig, check_corpus_size, train as run_training

    dist = runtime.dist_from_env()
    reporter = Reporter(quiet=quiet, console=err, silent=not dist.is_main)  # under torchrun only rank 0 reports
    with user_errors():
        if seed is None:
            seed = runtime.draw_seed()
        max_time_s = parse_duration(max_time)
        if not resume and max_steps is None and max_epochs is None and max_time_s is None:
            max_epochs = 10.0
        cfg = TrainConfig(seq_len=seq_len, batch_size=batch_size, val_frac=val_frac, lr=lr, min_lr_frac=min_lr_frac,
                          warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
                          max_steps=max_steps, max_epochs=max_epochs, max_time=max_time_s, eval_every=eval_every,
                          eval_streams=eval_streams, log_every=log_every, keep=keep, max_skips=max_skips,
                          seed=seed, device=device, threads=threads, amp=amp)
        cfg.validate()
        data = load_corpus(corpus, show_progress=not quiet and dist.is_main)
        if not resume:
            check_corpus_size(len(data.ids), cfg)  # fail before any progress output
        reporter.info(f"corpus {data.name}: {len(data.ids):,} characters, {len(data.vocab)} distinct")
        if not resume:
            reporter.info(f"seed {seed}")
        model_cfg = None
        if not resume and init_from is None:
            sized = {"hidden_size": hidden_size, "num_layers": num_layers, "dropout": dropout}
            if max_time_s is not None and hidden_size is None and num_layers is None and dist.enabled:
                reporter.info("auto-sizing is off under torchrun (ranks would time it apart); using 2x512")
            elif max_time_s is not None and hidden_size is None and num_layers is None:
                sized = choose_model_size(len(data.ids), max_time_s, runtime.select_device(device), cfg,
                                          model, dropout, report=reporter.info, vocab_size=len(data.vocab))
            model_cfg = ModelConfig(vocab_size=len(data.vocab), model=model,
                                    hidden_size=sized["hidden_size"] or 512, num_layers=sized["num_layers"] or 2,
                                    embed_size=embed_size, dropout=0.1 if sized["dropout"] is None else sized["dropout"],
                                    tie_weights=tie_weights)
        elif init_from is not None and dropout is not None:
            model_cfg = ModelConfig(vocab_size=len(data.vocab), dropout=dropout)
        out_dir = RunDir(run_dir or Path("checkpoints") / data.name, keep=keep)
        with StopFlag().installed() as stop:
            result = run_training(data, model_cfg, cfg, out_dir, report=reporter, should_stop=stop,
                                  resume=resume, init_from=init_from)
    reporter.close()
    if result.signal is not None:
        who = f"rank {dist.rank}: " if dist.enabled else ""
        err.print(f"{who}stopped by {signal.Signals(result.signal).name} at step {result.step}; checkpoint saved in "
                  f"{escape(str(result.run_dir))}; continue with --resume --run-dir {escape(str(result.run_dir))}")
        raise typer.Exit(128 + result.signal)
    if not dist.is_main:
        return
    if math.isfinite(result.best_val_loss):
        err.print(f"best val loss {result.best_val_loss:.4f} nats ({result.best_val_loss / math.log(2):.4f} bpc)")
    write_out(f"{result.best_path}\n")


# ---------------------------------------------------------------------------------------------------
# sample


@app.command()
def sample(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint \\[default: best.pt of the newest run under ./checkpoints].", show_default=False)] = None,
    temp: Annotated[float, typer.Option("--temp", "--temperature", "-t", help="Sampling temperature; 0 is greedy.")] = 0.8,
    top_k: Annotated[Optional[int], typer.Option(help="Sample only from the k most likely characters.", show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling: the smallest set of characters with this much probability.", show_default=False)] = None,
    length: Annotated[int, typer.Option("--length", "-n", help="New characters per sample.")] = 2000,
    prime: Annotated[Optional[str], typer.Option(help="Text to start from ('-' reads it from stdin); printed before the sample.", show_default=False)] = None,
    num_samples: Annotated[int, typer.Option(help="Samples generated together as one batch, separated by a blank line.")] = 1,
    seed: Annotated[Optional[int], typer.Option(help="Random seed \\[default: drawn and printed to stderr].", show_default=False)] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="fp32, or bf16: faster with many --num-samples on CPUs with AVX512-BF16/AMX and on GPUs, slightly less accurate.")] = "fp32",
) -> None:
    """Stream text from a trained checkpoint to stdout."""
    import torch

    from charrnn import runtime
    from charrnn.checkpoint import find_latest_run
    from charrnn.errors import CorpusError
    from charrnn.model import load_model
    from charrnn.sample import SampleConfig, bf16_is_native, generate

    with user_errors():
        if seed is None:
            seed = runtime.draw_seed()
            err.print(f"seed {seed}")
        cfg = SampleConfig(temperature=temp, top_k=top_k, top_p=top_p, length=length, num_samples=num_samples,
                           seed=seed, precision=precision)
        cfg.validate()
        dev = runtime.select_device(device)
        if precision == "bf16" and dev.type == "cpu" and not bf16_is_native(dev):
            err.print("warning: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so --precision bf16 will be slower than fp32.")
        path = checkpoint if checkpoint is not None else find_latest_run()
        model, vocab, _ = load_model(path, dev)
        text = sys.stdin.read() if prime == "-" else (prime or "")
        unknown = vocab.unknown(text)
        if unknown:
            shown = " ".join(repr(c) for c in unknown[:20])
            raise CorpusError(f"--prime has character(s) the model never saw: {shown}; remove them or train on text that has them.")
        seed_text = text or ("\n" if "\n" in vocab.chars else vocab.chars[0])  # an unprinted start when no prime
        prime_ids = [int(i) for i in vocab.encode(seed_text)]
        chars = vocab.chars
        try:
            with torch.inference_mode():
                stream_samples(generate(model, prime_ids, cfg, dev), text, chars, num_samples)
        except BrokenPipeError:
            quiet_broken_pipe()


def stream_samples(blocks, prime: str, chars: list[str], num_samples: int) -> None:
    """Sample 0 streams live; the others (generated in the same batch) follow it, a blank line apart."""
    write_out(prime)
    rest: list[list[str]] = [[prime] for _ in range(num_samples - 1)]
    last = prime
    for block in blocks:  # (B, k) ids
        rows = block.tolist()
        piece = "".join(chars[i] for i in rows[0])
        if piece:
            write_out(piece)
            last = piece
        for r, row in zip(rest, rows[1:]):
            r.append("".join(chars[i] for i in row))
    for r in rest:
        write_out(("\n" if not last.endswith("\n") else "") + "\n")
        body = "".join(r)
        write_out(body)
        last = body or last
    if not last.endswith("\n"):
        write_out("\n")


# ---------------------------------------------------------------------------------------------------
# info


@app.command()
def info(checkpoint: Annotated[Path, typer.Argument(help="A charrnn checkpoint (.pt).", show_default=False)]) -> None:
    """Describe a checkpoint: model, size, vocabulary, corpus, training progress."""
    from charrnn.model import load_model

    with user_errors():
        model, vocab, ckpt = load_model(checkpoint, "cpu")
    c = model.config
    best = ckpt.get("best_val_loss", math.nan)
    corpus = ckpt.get("corpus", {})
    lines = [
        f"checkpoint:     {checkpoint}",
        f"model:          {c.model.upper()}, {c.num_layers} layers x {c.hidden_size} hidden, embed {c.embed_size}, "
        f"dropout {c.dropout}{', tied weights' if c.tie_weights else ''}",
        f"parameters:     {model.num_params():,}",
        f"vocabulary:     {len(vocab)} characters",
        f"corpus:         {corpus.get('name', '?')} ({corpus.get('num_chars', 0):,} characters)",
        f"steps:          {ckpt.get('step', '?')} (epoch {ckpt.get('epoch', 0):.2f})",
        f"best val loss:  {best:.4f} nats/char, {best / math.log(2):.4f} bits/char (step {ckpt.get('best_step', '?')})",
        f"trained on:     {ckpt.get('device', '?')} with torch {ckpt.get('torch_version', '?')}",
    ]
    write_out("\n".join(lines) + "\n")


def main() -> None:
    app()
