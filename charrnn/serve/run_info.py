"""A served model's training run, for the playground's curve: its evaluations (metrics.jsonl) and previews
(samples.jsonl), read from the directory its checkpoint lies in, never from a path a client names.

Both files are appended to while the run trains, and outlive crashes and resumes (charrnn.training.plot says
what that leaves behind), so a reader here meets torn lines (a last line half written is normal), steps that go
back (a resume: the newer history replaces the older from that step on), and, in a crafted or damaged file,
anything at all. Every unusable line is skipped and counted; nothing in a file can make an answer unbounded:
at most the last MAX_READ_BYTES of a file are read, lines past MAX_LINE_BYTES are skipped unread, and the rows
kept are thinned to at most MAX_POINTS evaluations and MAX_SAMPLES previews (each cut to MAX_SAMPLE_CHARS).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from charrnn.checkpoint.rundir import METRICS_NAME, SAMPLES_NAME
from charrnn.training.plot import MAX_MAGNITUDE, is_finite_number, refuse_constant

MAX_READ_BYTES = 32 << 20  # a file's tail read at most: ~150,000 evaluations, parsed in well under a second
MAX_LINE_BYTES = 64 << 10  # an evaluation is ~200 bytes, a preview its text; a longer line is damage or crafted
MAX_POINTS = 1000  # evaluations in an answer: a curve on a page is at most ~1000 pixels wide
MAX_SAMPLES = 50  # previews in an answer, spread over the run
MAX_SAMPLE_CHARS = 2000  # of each preview's text
METRIC_FIELDS = ("step", "train_loss", "val_loss", "elapsed_s")


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint file lies in, or None when its folder holds neither file of a run
    (an exported .safetensors copied elsewhere, say)."""
    folder = checkpoint.parent
    return folder if any((folder / name).is_file() for name in (METRICS_NAME, SAMPLES_NAME)) else None


def run_info(checkpoint: Path) -> dict[str, Any]:
    """The curve and previews of the run `checkpoint` belongs to, as the run endpoint answers them: `metrics`
    (step, train_loss, val_loss, in nats/char, null where unknown; elapsed_s) and `samples` (step, val_loss,
    temperature, prime, text), both in step order, with how many lines were skipped and whether rows were left
    out. A model with no run answers empty lists."""
    folder = run_dir_of(checkpoint)
    metrics, m_notes = _read(folder / METRICS_NAME if folder else None, _evaluation, MAX_POINTS)
    samples, s_notes = _read(folder / SAMPLES_NAME if folder else None, _preview, MAX_SAMPLES)
    return {
        "object": "run", "has_run": folder is not None, "metrics": metrics, "samples": samples,
        "skipped_lines": m_notes["skipped"] + s_notes["skipped"],
        "thinned": m_notes["thinned"] or s_notes["thinned"], "truncated": m_notes["truncated"] or s_notes["truncated"],
    }  # fmt: skip


def _read(path: Path | None, parse: Callable[[dict], dict | None], cap: int) -> tuple[list[dict], dict]:
    """The usable rows of a jsonl file in step order, at most `cap` of them, and what was left out."""
    notes = {"skipped": 0, "thinned": False, "truncated": False}
    if path is None:
        return [], notes
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            notes["truncated"] = size > MAX_READ_BYTES
            f.seek(max(0, size - MAX_READ_BYTES))
            if notes["truncated"]:
                f.readline()  # the cut fell inside a line: it starts at the next one
            rows = Thinned(cap)
            for line in _lines(f, notes):
                row = _row(line, parse)
                if row is None:
                    notes["skipped"] += 1
                else:
                    rows.add(row)
    except OSError:  # missing, unreadable, or a directory: no run to show, which the page says
        return [], notes
    notes["thinned"] = rows.stride > 1
    return rows.rows, notes


def _lines(f: BinaryIO, notes: dict) -> Iterator[bytes]:
    """The file's non-blank lines, each at most MAX_LINE_BYTES; a longer one is skipped (counted) unread."""
    while line := f.readline(MAX_LINE_BYTES + 1):
        if len(line) > MAX_LINE_BYTES:
            notes["skipped"] += 1
            while line and not line.endswith(b"\n"):  # the rest of it, a piece at a time
                line = f.readline(MAX_LINE_BYTES)
            continue
        if line.strip():
            yield line


def _row(line: bytes, parse: Callable[[dict], dict | None]) -> dict | None:
    try:
        record = json.loads(line.decode("utf-8"), parse_constant=refuse_constant)
    except (ValueError, RecursionError):  # torn (a run writing it now), invalid UTF-8, or crafted
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_MAGNITUDE:
        return None
    return parse(record)


def _evaluation(record: dict) -> dict | None:
    values = {k: record.get(k) for k in METRIC_FIELDS}
    if not all(v is None or is_finite_number(v) for v in values.values()):
        return None
    return values


def _preview(record: dict) -> dict | None:
    text, prime = record.get("text"), record.get("prime")
    val, temperature = record.get("val_loss"), record.get("temperature")
    if not isinstance(text, str) or not (prime is None or isinstance(prime, str)):
        return None
    if not all(v is None or is_finite_number(v) for v in (val, temperature)):
        return None
    return {
        "step": record["step"], "val_loss": val, "temperature": temperature,
        "prime": None if prime is None else prime[:MAX_SAMPLE_CHARS], "text": text[:MAX_SAMPLE_CHARS],
    }  # fmt: skip


class Thinned:
    """Rows in step order, at most `cap` kept whatever their number: every `stride`-th row is kept, and each time
    the kept rows pass the cap every other one is dropped and the stride doubles, so the rows kept stay spread
    evenly over the whole file (and the newest row is always kept, as the curve's end). A row whose step goes
    back (a resume) replaces the history from that step on, as charrnn plot reads it."""

    def __init__(self, cap: int) -> None:
        self.cap, self.stride, self.seen = cap, 1, 0
        self.kept: list[dict] = []
        self.newest: dict | None = None  # the latest row, kept apart when the stride passes it over

    def add(self, row: dict) -> None:
        """One more row from the file."""
        if self.newest is not None and self.newest["step"] >= row["step"]:
            self.kept = [r for r in self.kept if r["step"] < row["step"]]
            self.seen = len(self.kept) * self.stride
        if self.seen % self.stride == 0:
            self.kept.append(row)
            if len(self.kept) > self.cap:
                self.kept, self.stride = self.kept[::2], self.stride * 2
        self.seen += 1
        self.newest = row

    @property
    def rows(self) -> list[dict]:
        """The kept rows, ending with the newest one."""
        if self.newest is None:
            return []
        rows = self.kept if self.kept and self.kept[-1] is self.newest else [*self.kept, self.newest]
        return rows[-self.cap :] if len(rows) > self.cap else rows
