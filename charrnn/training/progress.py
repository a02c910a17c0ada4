"""The stderr side of training: a Rich progress bar in a terminal, plain periodic lines otherwise, metrics.jsonl.

The Trainer (loop.py) reports events through a callback (`reporter(event, info)`); this module decides how they look.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from charrnn.display import format_duration, printable
from charrnn.errors import CheckpointWriteError


def append_metrics(path: Path, record: dict) -> None:
    """One JSON object per evaluation (metrics.jsonl) or preview (samples.jsonl); appended and flushed so a crash
    loses at most the line being written.
    Non-finite numbers become null: NaN and Infinity are not JSON, and jq and friends reject them.

    A failed write (disk full, no permission) is a CheckpointWriteError like a failed checkpoint save: the
    checkpoint of this step was written before the metrics, so everything up to it is kept."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean, allow_nan=False) + "\n")
            f.flush()
    except OSError as exc:
        raise CheckpointWriteError(
            f"could not append to {path} ({exc.strerror or exc}); the checkpoints written so "
            "far are kept; free some disk space or fix its permissions, then --resume."
        ) from None


def check_metrics_writable(path: Path) -> None:
    """Fail before the first step, not at the first evaluation, when metrics.jsonl cannot be appended to."""
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise CheckpointWriteError(
            f"cannot write {path} ({exc.strerror or exc}); fix its permissions or choose another --run-dir."
        ) from None


def chars_per_sec(steps: int, chars_per_step: int, seconds: float) -> float:
    return steps * chars_per_step / seconds if seconds > 0 else 0.0


def eta_seconds(
    step: int, total_steps: int | None, seconds_per_step: float, max_time: float | None, elapsed: float
) -> float | None:
    """Seconds left: the steps left at the latest pace when steps bound the run, the time left under --max-time,
    whichever is sooner; None when nothing bounds the run."""
    eta = (total_steps - step) * seconds_per_step if total_steps else None
    if max_time:
        eta = min(eta if eta is not None else math.inf, max(0.0, max_time - elapsed))
    return eta


def _done(info: dict) -> float:
    """Fraction of the budget used: of the steps when they bound the run, else of --max-time (0 when neither)."""
    if info.get("total_steps"):
        return min(1.0, info["step"] / info["total_steps"])
    if info.get("max_time"):
        return min(1.0, info.get("elapsed_s", 0.0) / info["max_time"])
    return 0.0


def _eta_text(eta: float | None) -> str:
    return "–" if eta is None else format_duration(eta)


class Reporter:
    """Turns training events into stderr output; never writes to stdout."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        """quiet: no progress or info, warnings still shown. (Under torchrun, job.py sends ranks > 0 no events.)"""
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.interactive = self.console.is_terminal and not self.quiet
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_val = math.nan

    # -- plain messages -------------------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(escape(message))

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {escape(message)}")

    @contextlib.contextmanager
    def transfer(self, label: str) -> Iterator[Callable[[int, int | None], None]]:
        """A progress callback (bytes done, total or None) for a download: a Rich bar in a terminal, a line at
        each tenth otherwise, nothing when quiet."""
        if self.quiet:
            yield lambda done, total: None
            return
        if not self.interactive:
            said = [-1]

            def line(done: int, total: int | None) -> None:
                tenth = done * 10 // total if total else -1
                if tenth > said[0]:
                    said[0] = tenth
                    self.console.print(f"{label}: {done / 1e6:,.1f} of {total / 1e6:,.1f} MB" if total else label)

            yield line
            return
        with Progress(
            TextColumn(escape(label)),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self.console,
            redirect_stdout=False,  # our stderr writes through to the terminal; a proxy there loops (#19)
            redirect_stderr=False,
        ) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)

    # -- training events ------------------------------------------------------------------------
    def __call__(self, event: str, info: dict) -> None:
        getattr(self, f"_on_{event}")(info)

    def _on_message(self, info: dict) -> None:
        self.info(info["text"])

    def _on_warning(self, info: dict) -> None:
        self.warn(info["text"])

    def _on_start(self, info: dict) -> None:
        if info.get("plan"):
            self.info(info["plan"])
        if self.interactive:
            self._progress = Progress(
                TextColumn("step {task.fields[step]:,}"),
                BarColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("eta {task.fields[eta]}"),
                console=self.console,
                redirect_stdout=False,
                redirect_stderr=False,
                transient=False,
            )
            self._progress.start()
            # The bar runs over the budget, steps or wall clock, and its ETA is the trainer's: Rich's own needs
            # many updates before it shows anything, and updates come once a log window.
            self._task = self._progress.add_task(
                "train",
                total=1.0,
                completed=_done(info),  # type: ignore[arg-type]  # rich takes a float
                step=info["step"],
                stats="",
                eta=_eta_text(info.get("eta_s")),
            )

    def _on_log(self, info: dict) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            val = f"{self._last_val:.3f}" if math.isfinite(self._last_val) else "–"  # no evaluation yet
            stats = (
                f"epoch {info['epoch']:.2f}  loss {info['train_loss']:.3f}  val {val}  "
                f"{info['chars_per_sec']:,.0f} char/s"
            )
            assert self._task is not None  # added with the bar
            self._progress.update(
                self._task, completed=_done(info), step=info["step"], stats=stats, eta=_eta_text(info.get("eta_s"))
            )
            return
        eta = info.get("eta_s")
        line = (
            f"step {info['step']:>6}  epoch {info['epoch']:6.2f}  loss {info['train_loss']:.4f}  "
            f"lr {info['lr']:.2e}  {info['chars_per_sec']:>8,.0f} char/s  elapsed {format_duration(info['elapsed_s'])}"
        )
        if eta is not None:
            line += f"  eta {format_duration(eta)}"
        if info.get("skipped"):
            line += f"  skipped {info['skipped']}"
        self.console.print(line)

    def _on_eval(self, info: dict) -> None:
        self._last_val = info["val_loss"]
        if self.quiet:
            return
        line = (
            f"step {info['step']:>6}  val loss {info['val_loss']:.4f} nats  {info['val_bpc']:.4f} bpc"
            f"{'  (best)' if info.get('is_best') else ''}"
        )
        self.console.print(line)

    def _on_sample(self, info: dict) -> None:
        """A preview of the model's text under the progress output: plain text, never markup, with control
        characters (a crafted corpus could teach the model escape sequences) shown as escapes."""
        if self.quiet:
            return
        val = f", val {info['val_loss']:.4f}" if math.isfinite(info["val_loss"]) else ""
        self.console.print(Text(f"sample at step {info['step']:,}{val}:", style="dim"))
        self.console.print(Text(printable(info["text"]), style="italic"), highlight=False)

    def _on_end(self, info: dict) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def plan_line(model, cfg, batches_per_epoch: int, step: int, elapsed: float, device) -> str:
    """One line before the first step: the model, the batch, the device and the budget, so a user knows what
    is about to run and for how long before any progress line."""
    c = model.config
    limits = []
    if cfg.max_time:
        ends = time.strftime("%H:%M", time.localtime(time.time() + max(0.0, cfg.max_time - elapsed)))
        limits.append(f"{format_duration(cfg.max_time)} (ends about {ends})")
    if cfg.max_steps:
        limits.append(f"{cfg.max_steps:,} steps")
    if cfg.max_epochs:
        limits.append(f"{cfg.max_epochs:g} passes ({math.ceil(cfg.max_epochs * batches_per_epoch):,} steps)")
    start = f"from step {step:,} " if step else ""
    return (
        f"training {c.num_layers}x{c.hidden_size} {c.model.upper()} ({model.num_params():,} parameters, "
        f"dropout {c.dropout:g}) on {device}, batch {cfg.batch_size}x{cfg.seq_len}, {start}for "
        f"{' or '.join(limits)}{', whichever comes first' if len(limits) > 1 else ''}"
    )
