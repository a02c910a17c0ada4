"""Field rules: the type, range and shape every stored value must have (a Rule is a test and what it asks for),
and one sentence naming the file and the field when it does not. model.py states ModelConfig's rules with them,
checkpoint/state.py reads every checkpoint field through them, and checkpoint/rules.py builds resume's checks on
them. Every value resume, `info` and `sample` read from a checkpoint is checked before any kernel, allocator or
format string touches it.

torch.load(weights_only=True) only guarantees plain types, and the CRC check only that the bytes are the ones
written: a file edited and re-saved with torch.save passes both. Unchecked, such a file turns into memory
corruption (an Adam moment of the wrong shape, or a stride-0 view, makes the fused AdamW kernel write past its
buffer), a multi-gigabyte allocation (a huge vocab_size), or a traceback (a string where an int belongs). Every
refusal is a CheckpointError of one sentence that names the file and the field.
"""

from __future__ import annotations

import math
import reprlib
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from charrnn.errors import CheckpointError

if TYPE_CHECKING:
    import torch

RESUME_ADVICE = "the file is damaged or was edited, so resume from another checkpoint or start a new run"
LOAD_ADVICE = "the file is damaged or was edited, so use another checkpoint"

_INT64_MAX = 2**63 - 1


# ---------------------------------------------------------------- messages


def field_error(path, field: str, problem: str, advice: str = LOAD_ADVICE) -> CheckpointError:
    where = f"checkpoint {path}: " if path is not None else "the checkpoint's "
    return CheckpointError(f"{where}{field} {problem}; {advice}.")


def show(value) -> str:
    """A short description of a value for a message: never the whole of a crafted megabyte string."""
    torch = sys.modules.get("torch")  # a value can only be a tensor once torch is loaded
    if torch is not None and isinstance(value, torch.Tensor):
        return f"a {_dtype_name(value.dtype)} tensor of shape {shape_text(value.shape)}"
    kind = type(value).__name__
    return f"{reprlib.repr(value)} ({'an' if kind[0] in 'aeiou' else 'a'} {kind})"


def shape_text(shape) -> str:
    return str(tuple(shape))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------- scalars

Rule = tuple[Callable[[object], bool], str]


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def int_in(lo: int, hi: int = _INT64_MAX) -> Rule:
    return (lambda v: is_int(v) and lo <= v <= hi), f"an integer from {lo} to {hi}"


def real_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    def ok(v) -> bool:
        return is_real(v) and math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    return ok, f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def optional(rule: Rule) -> Rule:
    return (lambda v: v is None or rule[0](v)), f"None or {rule[1]}"


def require(value, rule: Rule, field: str, path, advice: str = LOAD_ADVICE):
    if not rule[0](value):
        raise field_error(path, field, f"is {show(value)}, but it must be {rule[1]}", advice)
    return value


def require_dict(value, field: str, path, advice: str = LOAD_ADVICE) -> dict:
    if not isinstance(value, dict):
        raise field_error(path, field, f"is {show(value)}, not a dict", advice)
    return value


NON_NEGATIVE = real_in(0.0, math.inf)
POSITIVE = real_in(0.0, math.inf, lo_open=True)
FRACTION = real_in(0.0, 1.0, lo_open=True, hi_open=True)
UNIT = real_in(0.0, 1.0)
BOOL: Rule = (lambda v: isinstance(v, bool)), "true or false"
MAX_TEXT = 1 << 16
# Any string this code itself writes (a corpus named with a non-breaking space or an emoji is fine); commands
# that print one escape its control characters, so a crafted name cannot drive the terminal.
TEXT: Rule = (lambda v: isinstance(v, str) and len(v) <= MAX_TEXT), f"a string of at most {MAX_TEXT:,} characters"
ANY_REAL: Rule = is_real, "a number"
FINITE: Rule = (lambda v: is_real(v) and math.isfinite(v)), "a finite number"  # type: ignore[arg-type]
LOSS: Rule = (
    (lambda v: is_real(v) and v >= 0 and not math.isnan(v)),  # type: ignore[operator, arg-type]
    "a number of at least 0 (inf: none yet)",
)


def check_fields(values: Mapping, rules: Mapping[str, Rule], prefix: str, path, advice: str) -> None:
    for name, rule in rules.items():
        if name in values:
            require(values[name], rule, f"{prefix}{name}", path, advice)


# ---------------------------------------------------------------- tensors


def check_tensor(
    t,
    field: str,
    path,
    advice: str = LOAD_ADVICE,
    *,
    shape=None,
    dtype=None,
    floating: bool = False,
    finite: bool = False,
) -> torch.Tensor:
    """A dense, contiguous CPU tensor (charrnn writes no other kind) with the given shape and dtype.

    Contiguity also rules out stride-0 views, which claim more elements than their storage (and the file) holds.
    """
    import torch  # lazy: the scalar rules above load with the CLI's flags, which must not wait for torch

    if not isinstance(t, torch.Tensor):
        raise field_error(path, field, f"is {show(t)}, not a tensor", advice)
    if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
        raise field_error(path, field, f"is a {t.layout} tensor on {t.device}, not a dense CPU tensor", advice)
    if dtype is not None and t.dtype != dtype:
        raise field_error(path, field, f"has dtype {_dtype_name(t.dtype)}, not {_dtype_name(dtype)}", advice)
    if floating and not t.is_floating_point():
        raise field_error(path, field, f"has dtype {_dtype_name(t.dtype)}, not a floating-point one", advice)
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise field_error(
            path, field, f"has shape {shape_text(t.shape)} but must have shape {shape_text(shape)}", advice
        )
    if not t.is_contiguous():
        raise field_error(path, field, f"is a non-contiguous view (strides {t.stride()})", advice)
    if finite and not bool(torch.isfinite(t).all()):
        raise field_error(path, field, "holds NaN or infinite values", advice)
    return t


def check_weights(weights, shapes: Mapping[str, tuple[int, ...]], path, advice: str = LOAD_ADVICE) -> None:
    """The model's state dict: exactly the expected names, each a finite float tensor of the expected shape."""
    require_dict(weights, "model", path, advice)
    missing = [k for k in shapes if k not in weights]
    unexpected = [k for k in weights if k not in shapes]
    if missing or unexpected:
        what = f"lacks {', '.join(missing[:5])}" if missing else f"has unexpected {show(unexpected[0])}"
        raise field_error(path, "model (the weights)", f"{what}, so it does not fit its model_config", advice)
    for name, shape in shapes.items():
        check_tensor(weights[name], f"model[{name!r}]", path, advice, shape=shape, floating=True, finite=True)
