"""Seeds: the range a new run or a sample may use, the wider one a recorded run may hold, and a drawn seed."""

from __future__ import annotations

import os

from charrnn.errors import UsageError

MIN_SEED, MAX_SEED = 0, 2**63 - 1  # torch.manual_seed takes 64 bits; stream i samples with seed + i
# Runs from before seeds started at 0 may hold a negative one (torch maps it to 64 bits), and still resume with it;
# older versions also took what torch takes at the top.
RECORDED_MIN_SEED, RECORDED_MAX_SEED = -(2**63), 2**64 - 1


def check_seed(seed: int, streams: int = 1, *, minimum: int = MIN_SEED) -> None:
    if not minimum <= seed <= MAX_SEED - (streams - 1):
        raise UsageError(f"--seed must be between {minimum:,} and {MAX_SEED - (streams - 1):,}, not {seed}.")


def draw_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
