"""Garbage collection at start-up: off while a command imports torch and loads its model, then on for good.

Importing torch makes about a million objects that live as long as the process. With the collector on, each time
the heap grew by a quarter a full collection scanned all of them again: ~0.15 s of `charrnn sample`'s ~1.4 s
start-up on our 2-core CPU (bench/bench_startup.py). So main() holds collection off, and a command that goes on
to long work releases it once its model is loaded: what exists then is frozen out of later collections (it lives
as long as the process anyway), and collection starts. A short command that never releases simply ends.
"""

from __future__ import annotations

import gc

_held = False


def hold() -> None:
    """No collection until release() (the console entry point, before the command runs)."""
    global _held
    if gc.isenabled():
        gc.disable()
        _held = True


def release() -> None:
    """Freeze what exists and collect from here on; a no-op unless hold() turned collection off (a command run
    in-process, as the tests run them, leaves the collector alone)."""
    global _held
    if _held:
        _held = False
        gc.freeze()
        gc.enable()
