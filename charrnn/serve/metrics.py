"""What /metrics reports, in Prometheus's text format (version 0.0.4): requests by status, active and queued
streams, characters generated, time to first character, request duration and the step's batch size.

Written by the event loop and the scheduler threads alike, so every update holds one lock; a scrape renders
under it too. The format is a few lines of text, so it is written here rather than adding a dependency.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Histogram:
    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)  # per bucket, not cumulative
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            out.append(f'{name}_bucket{{{labels}{sep}le="{_number(bound)}"}} {running}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        braces = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{braces} {_number(self.sum)}", f"{name}_count{braces} {self.total}"]


class Metrics:
    """The server's counters, gauges and histograms, per model where a model is known."""

    def __init__(self, models: Sequence[str]) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}  # (method, path, status) -> count
        self.active = dict.fromkeys(models, 0)
        self.queued = dict.fromkeys(models, 0)
        self.chars = dict.fromkeys(models, 0)
        self.ttfc = {m: Histogram(SECONDS) for m in models}
        self.duration = {m: Histogram(SECONDS) for m in models}
        self.batch = {m: Histogram(BATCH) for m in models}

    def request(self, method: str, path: str, status: int) -> None:
        with self.lock:
            key = (method, path, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def step(self, model: str, batch: int, chars: int, active: int, queued: int) -> None:
        with self.lock:
            self.batch[model].observe(batch)
            self.chars[model] += chars
            self.active[model], self.queued[model] = active, queued

    def streams(self, model: str, active: int, queued: int) -> None:
        with self.lock:
            self.active[model], self.queued[model] = active, queued

    def first_char(self, model: str, seconds: float) -> None:
        with self.lock:
            self.ttfc[model].observe(seconds)

    def completed(self, model: str, seconds: float) -> None:
        with self.lock:
            self.duration[model].observe(seconds)

    def render(self) -> str:
        with self.lock:
            out = ["# HELP charrnn_requests_total HTTP requests answered, by method, path and status.",
                   "# TYPE charrnn_requests_total counter"]  # fmt: skip
            for (method, path, status), n in sorted(self.requests.items()):
                out.append(f'charrnn_requests_total{{method="{method}",path="{_label(path)}",status="{status}"}} {n}')
            for name, kind, help, values in (
                ("charrnn_active_streams", "gauge", "Streams in the model's batch now.", self.active),
                ("charrnn_queued_streams", "gauge", "Streams waiting for a place in the batch.", self.queued),
                ("charrnn_generated_chars_total", "counter", "Characters sampled.", self.chars),
            ):
                out += [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
                out += [f'{name}{{model="{_label(m)}"}} {v}' for m, v in values.items()]
            for name, help, hists in (
                ("charrnn_time_to_first_char_seconds", "From request to its first character.", self.ttfc),
                ("charrnn_request_duration_seconds", "From request to its last character.", self.duration),
                ("charrnn_batch_size", "Streams stepped together, per step.", self.batch),
            ):
                out += [f"# HELP {name} {help}", f"# TYPE {name} histogram"]
                for m, h in hists.items():
                    out += h.lines(name, f'model="{_label(m)}"')
            return "\n".join(out) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return repr(float(x)) if not float(x).is_integer() else str(int(x)) if abs(x) < 1e15 else repr(float(x))
