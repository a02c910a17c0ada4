"""Loss curves from a run's metrics.jsonl: a figure file (matplotlib, an optional extra) and terminal drawings
(a sparkline and a braille curve) that need nothing beyond Rich.

metrics.jsonl holds one JSON object per evaluation (report.append_metrics): step, epoch, train_loss, val_loss
(null when it was NaN), val_bpc, lr, chars_per_sec, elapsed_s. It is appended to by every run and every resume,
so a reader meets what crashes and resumes leave behind:
- a torn last line (killed mid-write), or a torn line in the middle once a resume has appended after it;
- steps that go back: a resume from an earlier checkpoint (the newest was damaged) evaluates the same steps again;
- a row that is not a flat object of finite numbers, which only damage or a crafted file can hold.
Unreadable lines are skipped and counted, and a step that goes back replaces the history from that step on, so
the curve is the one that led to the run's current checkpoints.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rich.text import Text

from charrnn.checkpoint.outputs import check_output, replace_atomically
from charrnn.checkpoint.rundir import METRICS_NAME
from charrnn.errors import CharRNNError, UsageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Larger than any step, loss, rate or time a run records, and far inside what float arithmetic and matplotlib
# draw: a value past it can only be crafted, and 1e308 - (-1e308) already overflows.
MAX_MAGNITUDE = 1e15
LN2 = math.log(2)
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
XAxis = Literal["step", "time"]
# matplotlib's default cycle ("tab10"), named here so each run's colour is known (the tests look for them).
COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
BLOCKS = "▁▂▃▄▅▆▇█"
VAL_STYLE, TRAIN_STYLE = "bold cyan", "magenta"
INSTALL_HINT = "install it with `pip install 'charrnn[plot]'` (or `pip install matplotlib`)"


# ---------------------------------------------------------------- reading metrics.jsonl


@dataclass(frozen=True)
class RunMetrics:
    """One run's evaluations in step order; NaN where a value was null or missing."""

    path: Path  # the run directory
    label: str  # what the legend calls it
    step: tuple[int, ...]
    elapsed_s: tuple[float, ...]
    train_loss: tuple[float, ...]
    val_loss: tuple[float, ...]
    skipped_lines: int = 0  # torn or unreadable lines left out

    def __len__(self) -> int:
        return len(self.step)


def read_metrics(run_dir: Path | str, label: str | None = None) -> RunMetrics:
    """The evaluations in `run_dir`/metrics.jsonl. Raises CharRNNError when there are none to read."""
    run_dir = Path(run_dir)
    records, skipped = _records(_metrics_text(run_dir))
    if not records:
        raise CharRNNError(
            f"{run_dir / METRICS_NAME} holds no complete evaluation yet; train the run until its first "
            "evaluation (every --eval-every steps, and at its end), then plot it."
        )
    return RunMetrics(
        path=run_dir,
        label=label if label is not None else run_dir.resolve().name or str(run_dir),
        step=tuple(r["step"] for r in records),
        elapsed_s=tuple(_number(r.get("elapsed_s")) for r in records),
        train_loss=tuple(_number(r.get("train_loss")) for r in records),
        val_loss=tuple(_number(r.get("val_loss")) for r in records),
        skipped_lines=skipped,
    )


def load_runs(run_dirs: Sequence[Path | str]) -> list[RunMetrics]:
    """read_metrics for each directory, labelled by its name, made unique when two names are the same."""
    paths = [Path(p) for p in run_dirs]
    return [read_metrics(path, label) for path, label in zip(paths, run_labels(paths), strict=True)]


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Directory names; where two clash, as many parent folders as tell them apart ("a/run", "b/run"), and a
    counter for the same directory given twice."""
    parts = [path.resolve().parts for path in paths]
    labels = [p[-1] if p else "/" for p in parts]
    for depth in range(2, max(len(p) for p in parts) + 1 if parts else 0):
        owners: dict[str, set[tuple[str, ...]]] = {}
        for p, label in zip(parts, labels, strict=True):
            owners.setdefault(label, set()).add(p)
        # Only different directories under one name clash: the same one twice gets its counter below.
        clashing = {label for label, directories in owners.items() if len(directories) > 1}
        if not clashing:
            break
        labels = ["/".join(p[-depth:]) if label in clashing else label for p, label in zip(parts, labels, strict=True)]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def _metrics_text(run_dir: Path) -> str:
    if not run_dir.exists():
        raise CharRNNError(f"run directory {run_dir} does not exist; give a run directory such as checkpoints/NAME.")
    if not run_dir.is_dir():
        raise CharRNNError(
            f"{run_dir} is not a directory; give a run directory such as checkpoints/NAME, which holds {METRICS_NAME}."
        )
    path = run_dir / METRICS_NAME
    if not path.is_file():
        raise CharRNNError(
            f"{run_dir} has no {METRICS_NAME}: it is not a charrnn run directory, or its run has not started; "
            "give a directory such as checkpoints/NAME."
        )
    try:
        # Invalid UTF-8 can only be damage; replaced, it fails to parse and is skipped like any torn line.
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CharRNNError(f"cannot read {path} ({exc.strerror or exc}); check its permissions.") from None


def _records(text: str) -> tuple[list[dict], int]:
    """The usable records in step order, and how many non-blank lines were not usable."""
    records: list[dict] = []
    skipped = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            skipped += 1
            continue
        # A resume from an earlier checkpoint evaluates steps again: the newer history replaces the older.
        while records and records[-1]["step"] >= record["step"]:
            records.pop()
        records.append(record)
    return records, skipped


def _parse(line: str) -> dict | None:
    """One evaluation, or None for a line that is not one: torn, or not a flat object of finite numbers (null
    where training wrote a NaN) with a whole step. Whatever a crafted line holds (nesting deep enough to exhaust
    the stack, 1e308, a 4000-digit step, Infinity) it is skipped here, so no drawing ever overflows."""
    try:
        record = json.loads(line, parse_constant=refuse_constant)
    except (ValueError, RecursionError):  # a torn line, one appended onto a torn line, or a crafted one
        return None
    if not isinstance(record, dict) or not all(v is None or is_finite_number(v) for v in record.values()):
        return None
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None
    return record


def refuse_constant(constant: str) -> float:
    """json.loads' parse_constant: NaN and Infinity are refused (ValueError), as damage or a crafted line."""
    raise ValueError(f"{constant} is not a finite number")


def is_finite_number(value: object) -> bool:
    """A number (not a bool) a run could have recorded: finite and at most MAX_MAGNITUDE."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return abs(value) <= MAX_MAGNITUDE  # False for NaN too


def _number(value: object) -> float:
    """A float, or NaN for null or a missing key (_parse let nothing else through)."""
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


# ---------------------------------------------------------------- figure files (matplotlib)


def plot_runs(run_dirs: Sequence[Path | str], output: Path | str, *, x: XAxis = "step", force: bool = False) -> Path:
    """Draw train (dashed) and validation (solid) loss of each run against step or wall-clock time into
    `output` (.png, .svg or .pdf), nats/char on the left axis and bits/char on the right. Returns `output`.

    Everything a user can get wrong (the output path, the runs, matplotlib missing) is checked before anything
    is drawn, and the file is written atomically: a failed plot leaves no file and no half file behind."""
    if x not in ("step", "time"):
        raise UsageError(f"cannot plot against {x!r}; use step or time.")
    output = Path(output)
    fmt = _output_format(output)
    check_output(output, "--output", inputs=[Path(r) for r in run_dirs], force=force)  # README: files charrnn writes
    runs = load_runs(run_dirs)
    if not runs:
        raise UsageError("no run directory to plot; give at least one, such as checkpoints/NAME.")
    if x == "time":
        _check_times(runs)
    fig = _new_figure()
    _draw(fig.add_subplot(), runs, x)
    _save_atomically(fig, output, fmt)
    return output


def _output_format(output: Path) -> str:
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise UsageError(f"cannot write a plot to {output}: name a .png, .svg or .pdf file.")
    if output.is_dir():
        raise UsageError(f"{output} is a directory; name a .png, .svg or .pdf file to write the plot to.")
    if not output.parent.is_dir():
        raise UsageError(f"cannot write {output}: the directory {output.parent} does not exist; create it first.")
    return fmt


def _new_figure() -> Figure:
    """matplotlib's Figure, imported only when a figure is wanted: it is an optional extra and slow to import.

    A bare Figure on an Agg canvas, not pyplot: no backend is chosen globally, and no window can ever open."""
    try:
        import matplotlib  # noqa: F401  # first: a package that is absent fails here, not halfway through
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CharRNNError(f"plotting to a file needs matplotlib, which is not installed; {INSTALL_HINT}.") from None
    figure = Figure(figsize=(9, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: savefig renders with Agg (and switches to the SVG/PDF writers)
    return figure


def _check_times(runs: list[RunMetrics]) -> None:
    for run in runs:
        if not any(math.isfinite(t) for t in run.elapsed_s):
            raise CharRNNError(f"{run.path / METRICS_NAME} records no elapsed_s; plot it against step instead.")


def _draw(ax: Axes, runs: list[RunMetrics], x: XAxis) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import StrMethodFormatter

    scale, xlabel = (1.0, "step") if x == "step" else time_unit(max(_finite_max(r.elapsed_s) for r in runs))
    handles = []
    for i, run in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        xs = [s / scale for s in run.elapsed_s] if x == "time" else list(run.step)
        ax.plot(xs, run.train_loss, color=colour, linestyle="--", linewidth=1.2, alpha=0.55)
        # Markers only when there are few evaluations: they show where the curve was measured.
        marker = "o" if len(run) <= 40 else None
        ax.plot(xs, run.val_loss, color=colour, linewidth=2.0, marker=marker, markersize=3.5)
        handles.append(Line2D([], [], color=colour, linewidth=2.0, label=run.label))
    handles += [
        Line2D([], [], color="0.3", linewidth=2.0, label="validation"),
        Line2D([], [], color="0.3", linewidth=1.2, linestyle="--", alpha=0.7, label="train"),
    ]
    ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (nats/char)")
    if x == "step":
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    # The same loss in bits: bits = nats / ln 2. secondary_yaxis keeps the two scales in step when zoomed.
    bits = ax.secondary_yaxis("right", functions=(_nats_to_bits, _bits_to_nats))
    bits.set_ylabel("loss (bits/char)")
    ax.grid(True, alpha=0.3)
    ax.set_title("Training and validation loss")


def _nats_to_bits(nats: Any) -> Any:  # a number or a numpy array, whichever matplotlib passes
    return nats / LN2


def _bits_to_nats(bits: Any) -> Any:
    return bits * LN2


def time_unit(max_seconds: float) -> tuple[float, str]:
    """Seconds per unit and the axis label for wall-clock time: seconds up to two minutes, minutes up to two
    hours, hours beyond."""
    if max_seconds > 2 * 3600:
        return 3600.0, "wall-clock time (hours)"
    if max_seconds > 120:
        return 60.0, "wall-clock time (minutes)"
    return 1.0, "wall-clock time (seconds)"


def _finite_max(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else 0.0


def _save_atomically(fig: Figure, output: Path, fmt: str) -> None:
    """Readers see the old file or the whole new one, never half (outputs.replace_atomically)."""
    replace_atomically(output, lambda f: fig.savefig(f, format=fmt))


# ---------------------------------------------------------------- terminal drawings (Rich only)


def sparkline(values: Sequence[float | None], width: int = 40) -> str:
    """`width` block characters, low block = low value (for a loss: better), one per equal share of `values`
    (its mean; values are repeated when there are fewer than `width`). A share with no finite value is a space.
    A series with one distinct value is drawn at mid height."""
    if width < 1:
        raise ValueError(f"sparkline width must be at least 1, not {width}")
    points = _resample(values, width)
    finite = [p for p in points if p is not None]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    top = len(BLOCKS) - 1

    def block(p: float | None) -> str:
        if p is None:
            return " "
        if hi == lo:
            return BLOCKS[top // 2]
        return BLOCKS[round((p - lo) / (hi - lo) * top)]

    return "".join(block(p) for p in points)


def _resample(values: Sequence[float | None], width: int) -> list[float | None]:
    """The mean of the finite values in each of `width` equal shares of `values` (None when it has none)."""
    n = len(values)
    out: list[float | None] = []
    for i in range(width):
        start = i * n // width
        share = [v for v in values[start : max(start + 1, (i + 1) * n // width)] if v is not None and math.isfinite(v)]
        out.append(math.fsum(share) / len(share) if share else None)
    return out


def val_sparkline(run_dir: Path | str, width: int = 40) -> str | None:
    """The sparkline of a run's validation loss; None when it has fewer than 2 evaluations with a finite
    validation loss, or no readable metrics at all: it decorates `train` and `info`, so it never fails them."""
    try:
        run = read_metrics(run_dir)
    except CharRNNError:
        return None
    if sum(1 for v in run.val_loss if math.isfinite(v)) < 2:
        return None
    try:
        return sparkline(run.val_loss, width)
    except (ArithmeticError, ValueError):  # a crafted metrics.jsonl (losses near float's limits): no decoration
        return None


# Braille cells are 2 dots wide and 4 high: bit of the dot at (column dx, row dy) of a cell.
_BRAILLE_BASE = 0x2800
_BRAILLE_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
_MIN_COLUMNS = 8
_AXIS_LINES = 3  # below the plot: the x axis, its step labels, the legend


def terminal_curve(run: RunMetrics | Path | str, width: int = 80, height: int = 12) -> Text:
    """Validation (bold cyan) and train (magenta) loss against step in braille: `height` lines in all, of which
    the last three are the x axis, its first and last step, and a legend with the run's name; the y axis is
    labelled with the highest and lowest loss. The plot fits in `width` columns (the terminal's), down to a plot
    8 cells wide; the legend may be longer than a very narrow terminal.
    The Text's .plain is the same drawing without colour."""
    if height < _AXIS_LINES + 2:
        raise ValueError(f"terminal_curve needs a height of at least {_AXIS_LINES + 2} lines, not {height}")
    metrics = run if isinstance(run, RunMetrics) else read_metrics(run)
    rows = height - _AXIS_LINES
    lo, hi = _loss_range(metrics)
    labels = _y_labels(lo, hi)
    margin = max(len(label) for label in labels)
    columns = max(_MIN_COLUMNS, width - margin - 2)
    grid = _BrailleGrid(columns, rows)
    span = (metrics.step[0], metrics.step[-1])
    grid.plot(metrics.step, metrics.train_loss, span, (lo, hi), series=1)
    grid.plot(metrics.step, metrics.val_loss, span, (lo, hi), series=0)  # drawn last: it wins shared cells
    out = Text()
    for r in range(rows):
        label = labels[0] if r == 0 else labels[1] if r == rows - 1 else ""
        out.append(label.rjust(margin) + (" ┤" if label else " │"))
        for char, series in grid.row(r):
            out.append(char, style=(VAL_STYLE, TRAIN_STYLE)[series] if series is not None else "")
        out.append("\n")
    out.append(" " * margin + " └" + "─" * columns + "\n")
    out.append(" " * (margin + 2) + _x_labels(span, columns) + "\n")
    out.append(" " * (margin + 2))
    out.append("⠤⠤ validation", style=VAL_STYLE)
    out.append("  ")
    out.append("⠤⠤ train", style=TRAIN_STYLE)
    out.append("  nats/char by step")
    room = width - len(out.plain.rsplit("\n", 1)[-1]) - 2
    if room >= 4:  # the run's name, cut to fit the line
        out.append("  " + (metrics.label if len(metrics.label) <= room else metrics.label[: room - 1] + "…"))
    return out


def _loss_range(run: RunMetrics) -> tuple[float, float]:
    finite = [v for v in run.val_loss + run.train_loss if math.isfinite(v)]
    if not finite:
        raise CharRNNError(f"{run.path} has no finite loss to draw; its evaluations all diverged.")
    lo, hi = min(finite), max(finite)
    return (lo, hi) if hi > lo else (lo - 0.5, hi + 0.5)


def _y_labels(lo: float, hi: float) -> tuple[str, str]:
    """Highest and lowest loss, with enough decimals (2 to 6) that they read differently."""
    decimals = max(2, min(6, math.ceil(-math.log10(hi - lo)) + 1))
    return f"{hi:.{decimals}f}", f"{lo:.{decimals}f}"


def _x_labels(span: tuple[int, int], columns: int) -> str:
    first, last = f"{span[0]:,}", f"{span[1]:,}"
    if span[0] == span[1]:
        return first
    return first + last.rjust(columns - len(first)) if len(first) + len(last) < columns else last.rjust(columns)


class _BrailleGrid:
    """A canvas of `columns` x `rows` braille cells, that is 2*columns x 4*rows dots, for two series."""

    def __init__(self, columns: int, rows: int) -> None:
        self.columns, self.rows = columns, rows
        self.bits = [[[0] * columns for _ in range(rows)] for _ in range(2)]  # [series][row][column]

    def plot(
        self,
        steps: Sequence[int],
        losses: Sequence[float],
        span: tuple[int, int],
        loss_range: tuple[float, float],
        series: int,
    ) -> None:
        """Straight lines between consecutive finite points; a NaN breaks the line."""
        previous: tuple[int, int] | None = None
        for step, loss in zip(steps, losses, strict=True):
            if not math.isfinite(loss):
                previous = None
                continue
            point = self._dot(step, loss, span, loss_range)
            for dot in _segment(previous or point, point):
                self._set(dot, series)
            previous = point

    def _dot(self, step: int, loss: float, span: tuple[int, int], loss_range: tuple[float, float]) -> tuple[int, int]:
        (s0, s1), (lo, hi) = span, loss_range
        x = (step - s0) / (s1 - s0) if s1 > s0 else 0.0
        y = (hi - loss) / (hi - lo)  # 0 at the top: the highest loss
        return round(x * (2 * self.columns - 1)), round(y * (4 * self.rows - 1))

    def _set(self, dot: tuple[int, int], series: int) -> None:
        x, y = dot
        self.bits[series][y // 4][x // 2] |= _BRAILLE_BITS[y % 4][x % 2]

    def row(self, r: int) -> list[tuple[str, int | None]]:
        """Each cell's character and the series that owns its colour (series 0 wins; None when empty)."""
        cells = []
        for c in range(self.columns):
            val, train = self.bits[0][r][c], self.bits[1][r][c]
            # An empty cell is a space, not the blank braille pattern, which some fonts draw as faint dots.
            char = chr(_BRAILLE_BASE + (val | train)) if val | train else " "
            cells.append((char, 0 if val else 1 if train else None))
        return cells


def _segment(a: tuple[int, int], b: tuple[int, int]) -> list[tuple[int, int]]:
    """The dots on the straight line from a to b, one per step along its longer side, so it has no holes."""
    n = max(abs(b[0] - a[0]), abs(b[1] - a[1]))
    if n == 0:
        return [a]
    return [(round(a[0] + (b[0] - a[0]) * k / n), round(a[1] + (b[1] - a[1]) * k / n)) for k in range(n + 1)]
