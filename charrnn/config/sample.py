"""SampleConfig: how to sample, each setting declared once (default, rule, help); `charrnn sample`'s flags,
Model.generate()'s keywords and the server's request fields come from these declarations."""

from __future__ import annotations

import math
from dataclasses import dataclass

from charrnn.config.seed import MAX_SEED, MIN_SEED, check_seed
from charrnn.config.settings import Check, at_least, between, check_settings, maybe, one_of, setting
from charrnn.errors import UsageError
from charrnn.fields import is_real

PRECISIONS = ("fp32", "bf16", "int8")  # what a Stepper runs; --precision auto picks one of them
SAMPLE_PRECISIONS = (*PRECISIONS, "auto")
MIN_TEMPERATURE = 1e-4  # below this 1/T overflows float32 logits; 0 (greedy) is what such a T means anyway
MAX_NUM_SAMPLES = 1024  # streams in one batch: each has its own generator and state
MAX_HELD_CHARS = 50_000_000  # samples 1.. are held in memory until sample 0 has streamed: (N - 1) * length


def _temperature_ok(v: object) -> bool:
    return is_real(v) and (v == 0 or MIN_TEMPERATURE <= float(v) < math.inf)  # type: ignore[arg-type]


TEMPERATURE = Check(
    (_temperature_ok, f"0 or a finite number of at least {MIN_TEMPERATURE}"),
    f"a finite number >= 0 (0 means greedy), and 0 or at least {MIN_TEMPERATURE}",
)


@dataclass
class SampleConfig:
    temperature: float = setting(
        0.8, TEMPERATURE, "Sampling temperature; 0 is greedy.", flags=("--temp", "--temperature", "-t")
    )
    # keep the k most likely chars (clamped to V)
    top_k: int | None = setting(None, maybe(at_least(1)), "Sample only from the k most likely characters.")
    # nucleus: the smallest set with cumulative prob >= top_p
    top_p: float | None = setting(
        None,
        maybe(between(0.0, 1.0, "in (0, 1]", lo_open=True)),
        "Nucleus sampling: the smallest set of characters with this much probability.",
    )
    length: int = setting(2000, at_least(0), "New characters per sample.", flags=("--length", "-n"))
    num_samples: int = setting(
        1, at_least(1, MAX_NUM_SAMPLES), "Samples generated together as one batch, separated by a blank line."
    )
    seed: int = setting(  # stream i uses seed + i
        0,
        at_least(MIN_SEED, MAX_SEED, says=f"between {MIN_SEED:,} and {MAX_SEED:,}"),
        "Random seed \\[default: drawn and printed to stderr].",
        flag_default=None,
    )
    # "bf16": bfloat16 recurrent weights, faster with many streams on CPUs that have it; "int8": int8 recurrent
    # weights on CPU, faster for all but small models; "auto": the fastest here within MAX_AUTO_COST_BPC
    precision: str = setting(
        "fp32",
        one_of(SAMPLE_PRECISIONS),
        "fp32 (exact); int8: int8 weights on the CPU, about 2x faster for 2x512 models, less for small ones; "
        "bf16: faster with many --num-samples on CPUs with AVX512-BF16/AMX and on GPUs; auto: the fastest here "
        "(timed at start) of those measured to cost at most 0.01 bits/char.",
    )

    def validate(self) -> None:
        check_settings(self)
        if (self.num_samples - 1) * self.length > MAX_HELD_CHARS:
            raise UsageError(
                f"--num-samples {self.num_samples} x --length {self.length} would hold "
                f"{(self.num_samples - 1) * self.length:,} characters in memory while sample 0 streams "
                f"(the limit is {MAX_HELD_CHARS:,}); ask for fewer or shorter samples, or run several "
                "commands with different --seed."
            )
        check_seed(self.seed, self.num_samples)  # stream i's seed + i must be a seed too
