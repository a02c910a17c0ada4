"""Checkpoint field rules: every value resume, `info` and `sample` read from a checkpoint is checked for the type,
shape and range charrnn writes before any kernel, allocator or format string touches it (state.py, which owns
the checkpoint's schema, calls these while it reads one).

torch.load(weights_only=True) only guarantees plain types, and the CRC check only that the bytes are the ones
written: a file edited and re-saved with torch.save passes both. Unchecked, such a file turns into memory
corruption (an Adam moment of the wrong shape, or a stride-0 view, makes the fused AdamW kernel write past its
buffer), a multi-gigabyte allocation (a huge vocab_size), or a traceback (a string where an int belongs). Every
refusal is a CheckpointError of one sentence that names the file and the field.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch

from charrnn.errors import CheckpointError

if TYPE_CHECKING:  # model.py imports these rules, so the model type is for the checker only
    from charrnn.model import CharRNN

RESUME_ADVICE = "the file is damaged or was edited, so resume from another checkpoint or start a new run"
LOAD_ADVICE = "the file is damaged or was edited, so use another checkpoint"

_INT64_MAX = 2**63 - 1
_MT_WORDS = 624  # Mersenne Twister state words (Python's random and numpy's MT19937 alike)
_CUDA_RNG_BYTES = 16  # a Philox seed and offset, what torch.cuda.get_rng_state() returns per device
_OPT_FLAGS_MUST_MATCH = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")
_OPT_FLAGS_DEVICE = ("foreach", "fused")  # chosen per device, so a resume on another device may differ


# ---------------------------------------------------------------- messages


def field_error(path, field: str, problem: str, advice: str = LOAD_ADVICE) -> CheckpointError:
    where = f"checkpoint {path}: " if path is not None else "the checkpoint's "
    return CheckpointError(f"{where}{field} {problem}; {advice}.")


def show(value) -> str:
    """A short description of a value for a message: never the whole of a crafted megabyte string."""
    if isinstance(value, torch.Tensor):
        return f"a {_dtype_name(value.dtype)} tensor of shape {_shape(value.shape)}"
    kind = type(value).__name__
    return f"{reprlib.repr(value)} ({'an' if kind[0] in 'aeiou' else 'a'} {kind})"


def _shape(shape) -> str:
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

# Types and ranges as TrainConfig.validate() enforces them on the command line; the seed takes what torch takes,
# which older charrnn versions accepted on the command line too.
TRAIN_RULES: dict[str, Rule] = {
    "seq_len": int_in(1),
    "batch_size": int_in(1),
    "val_frac": FRACTION,
    "lr": POSITIVE,
    "min_lr_frac": UNIT,
    "decay_frac": UNIT,
    "warmup_steps": int_in(0),
    "weight_decay": NON_NEGATIVE,
    "grad_clip": POSITIVE,
    "max_steps": optional(int_in(1)),
    "max_epochs": optional(POSITIVE),
    "max_time": optional(POSITIVE),
    "eval_every": int_in(1),
    "eval_streams": int_in(1),
    "eval_chars": optional(int_in(1)),
    "log_every": int_in(1),
    "sample_every": optional(int_in(1)),
    "sample_length": int_in(0),
    "sample_prime": TEXT,
    "keep": int_in(0),
    "max_skips": int_in(1),
    "seed": int_in(-(2**63), 2**64 - 1),
    "device": TEXT,
    "threads": optional(int_in(1)),
    "amp": BOOL,
}

# What every train_config has held since format 1; later keys (decay_frac, the previews) may be missing from an
# older checkpoint and take their defaults, but a missing one of these means the file was edited.
TRAIN_REQUIRED = (
    "seq_len", "batch_size", "val_frac", "lr", "min_lr_frac", "warmup_steps", "weight_decay", "grad_clip",
    "max_steps", "max_epochs", "max_time", "eval_every", "eval_streams", "eval_chars", "log_every", "keep",
    "max_skips", "seed", "device", "threads", "amp",
)  # fmt: skip

# Top-level fields resume reads: (rule, required).
RESUME_FIELDS: dict[str, tuple[Rule, bool]] = {
    "step": (int_in(0), True),
    "elapsed_s": (NON_NEGATIVE, False),
    "best_val_loss": (LOSS, False),
    "best_step": (int_in(-1), False),
    "val_loss": (ANY_REAL, False),  # NaN until the first evaluation
    "skipped_steps": (int_in(0), False),
    "world_size": (int_in(1, 2**31 - 1), False),
}

SCALER_RULES: dict[str, Rule] = {
    "scale": POSITIVE,
    "growth_factor": POSITIVE,
    "backoff_factor": real_in(0.0, 1.0, lo_open=True),
    "growth_interval": int_in(1),
    "_growth_tracker": int_in(0),
}

GROUP_RULES: dict[str, Rule] = {
    "lr": NON_NEGATIVE,
    "eps": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "initial_lr": NON_NEGATIVE,
    "betas": (
        (
            lambda v: (
                isinstance(v, (tuple, list)) and len(v) == 2 and all(real_in(0.0, 1.0, hi_open=True)[0](b) for b in v)
            )
        ),
        "two numbers in [0, 1)",
    ),
    **{flag: BOOL for flag in _OPT_FLAGS_MUST_MATCH},
    **{flag: optional(BOOL) for flag in _OPT_FLAGS_DEVICE},
}


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
    if not isinstance(t, torch.Tensor):
        raise field_error(path, field, f"is {show(t)}, not a tensor", advice)
    if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
        raise field_error(path, field, f"is a {t.layout} tensor on {t.device}, not a dense CPU tensor", advice)
    if dtype is not None and t.dtype != dtype:
        raise field_error(path, field, f"has dtype {_dtype_name(t.dtype)}, not {_dtype_name(dtype)}", advice)
    if floating and not t.is_floating_point():
        raise field_error(path, field, f"has dtype {_dtype_name(t.dtype)}, not a floating-point one", advice)
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise field_error(path, field, f"has shape {_shape(t.shape)} but must have shape {_shape(shape)}", advice)
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


# ---------------------------------------------------------------- resume


def check_resume_header(ckpt: dict, path) -> None:
    """The fields resume reads before it builds anything: counters, data position, train_config, corpus.

    Call it as soon as the checkpoint is loaded: TrainConfig.from_dict and the corpus hash check read these.
    """
    a = RESUME_ADVICE
    for name, (rule, needed) in RESUME_FIELDS.items():
        if needed or name in ckpt:
            require(ckpt.get(name), rule, name, path, a)
    train_config = require_dict(ckpt.get("train_config"), "train_config", path, a)
    missing = next((name for name in TRAIN_REQUIRED if name not in train_config), None)
    if missing is not None:
        raise field_error(path, f"train_config.{missing}", "is missing", a)
    check_fields(train_config, TRAIN_RULES, "train_config.", path, a)
    corpus = require_dict(ckpt.get("corpus", {}), "corpus", path, a)
    check_fields(corpus, {"sha256": TEXT, "name": TEXT, "num_chars": int_in(0)}, "corpus.", path, a)
    _check_data_position(require_dict(ckpt.get("data"), "data", path, a), path)


def _check_data_position(data: dict, path) -> None:
    a = RESUME_ADVICE
    require(data.get("epoch"), int_in(0), "data.epoch", path, a)
    index = int_in(0)
    if "batches_per_epoch" in data:
        per_epoch = require(data["batches_per_epoch"], int_in(1), "data.batches_per_epoch", path, a)
        index = int_in(0, per_epoch - 1)
    require(data.get("batch_index"), index, "data.batch_index", path, a)


def check_resume_state(
    ckpt: dict,
    model: CharRNN,
    optimizer: torch.optim.Optimizer,
    path,
    *,
    batch_size: int,
    world_size: int,
    uses_scaler: bool,
    batches_per_epoch: int | None = None,
) -> None:
    """Everything resume hands to a kernel or a setter, checked against the live model and optimizer.

    batch_size: streams per process, the B of the carried (L, B, H) state;
    world_size: this run's process count (the batch position carries over only when it equals the saved one);
    uses_scaler: whether this run has a GradScaler (then a saved scaler state is loaded);
    batches_per_epoch: this run's, bounding data.batch_index when the saved world size is this run's.
    """
    a = RESUME_ADVICE
    check_resume_header(ckpt, path)
    saved_world = ckpt.get("world_size", 1)
    if batches_per_epoch is not None and saved_world == world_size:
        require(ckpt["data"]["batch_index"], int_in(0, batches_per_epoch - 1), "data.batch_index", path, a)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_weights(ckpt.get("model"), shapes, path, a)
    check_optimizer_state(ckpt.get("optimizer"), optimizer, path)
    if uses_scaler and ckpt.get("scaler"):
        check_scaler(ckpt["scaler"], path)
    hidden_shape = (model.config.num_layers, batch_size, model.config.hidden_size)
    tensors = 2 if model.config.model == "lstm" else 1
    check_hidden(ckpt.get("hidden"), hidden_shape, tensors, "hidden", path)
    check_rng(ckpt.get("rng"), "rng", path)
    if saved_world > 1:
        _check_ranks(ckpt, saved_world, hidden_shape, tensors, path)


def _check_ranks(ckpt: dict, saved_world: int, hidden_shape, tensors: int, path) -> None:
    rule: Rule = (lambda v: isinstance(v, (list, tuple)) and len(v) == saved_world), f"a list of {saved_world} entries"
    hidden_ranks = require(ckpt.get("hidden_ranks"), rule, "hidden_ranks", path, RESUME_ADVICE)
    rng_ranks = require(ckpt.get("rng_ranks"), rule, "rng_ranks", path, RESUME_ADVICE)
    for rank, (hidden, rng) in enumerate(zip(hidden_ranks, rng_ranks, strict=False)):
        check_hidden(hidden, hidden_shape, tensors, f"hidden_ranks[{rank}]", path)
        check_rng(rng, f"rng_ranks[{rank}]", path)


def check_hidden(hidden, shape: tuple[int, int, int], tensors: int, field: str, path) -> None:
    """The carried (L, B, H) state: (h, c) for an LSTM, (h,) otherwise; None or empty when not carried."""
    if hidden is None or (isinstance(hidden, (list, tuple)) and len(hidden) == 0):
        return
    if not isinstance(hidden, (list, tuple)) or len(hidden) != tensors:
        raise field_error(path, field, f"is {show(hidden)}, not a list of {tensors} tensor(s)", RESUME_ADVICE)
    for i, h in enumerate(hidden):
        check_tensor(h, f"{field}[{i}]", path, RESUME_ADVICE, shape=shape, floating=True, finite=True)


def check_optimizer_state(opt_state, optimizer: torch.optim.Optimizer, path) -> None:
    """AdamW's state dict against the live optimizer: same groups, sane hyperparameters, and per parameter
    a scalar step and moments shaped, typed and laid out exactly like the parameter (the fused kernel trusts it)."""
    a = RESUME_ADVICE
    opt_state = require_dict(opt_state, "optimizer", path, a)
    saved_groups = opt_state.get("param_groups")
    live_groups = optimizer.param_groups
    if not isinstance(saved_groups, list) or len(saved_groups) != len(live_groups):
        raise field_error(
            path,
            "optimizer.param_groups",
            f"is {show(saved_groups)}, not a list of {len(live_groups)} parameter groups",
            a,
        )
    params: dict[int, tuple[torch.Tensor, dict]] = {}
    for g, (saved, live) in enumerate(zip(saved_groups, live_groups, strict=False)):
        for pid, param in zip(_check_group(saved, live, g, path), live["params"], strict=False):
            if pid in params:
                raise field_error(path, f"optimizer.param_groups[{g}].params", f"repeats parameter {pid}", a)
            params[pid] = (param, saved)
    state = require_dict(opt_state.get("state"), "optimizer.state", path, a)
    for pid, entry in state.items():
        if pid not in params:
            raise field_error(path, "optimizer.state", f"has an entry for {show(pid)}, which no group lists", a)
        param, group = params[pid]
        _check_param_state(entry, param, group.get("amsgrad", False), pid, path)
    _check_no_aliasing(state, path)


def _check_no_aliasing(state: dict, path) -> None:
    # Two moments (or steps) sharing memory would each be updated twice per step: silently wrong training.
    owners: dict[int, str] = {}
    for pid, entry in state.items():
        for key, t in entry.items():
            if t.numel() == 0:
                continue
            where = f"optimizer state for parameter {pid} ({key})"
            other = owners.setdefault(t.untyped_storage().data_ptr(), where)
            if other != where:
                raise field_error(path, where, f"shares its memory with {other}", RESUME_ADVICE)


def _check_group(saved, live: dict, g: int, path) -> list[int]:
    a, field = RESUME_ADVICE, f"optimizer.param_groups[{g}]"
    require_dict(saved, field, path, a)
    n = len(live["params"])
    rule: Rule = (lambda v: isinstance(v, list) and len(v) == n and all(is_int(i) for i in v)), f"a list of {n} ids"
    ids = require(saved.get("params"), rule, f"{field}.params", path, a)
    check_fields(saved, GROUP_RULES, f"{field}.", path, a)
    for flag in _OPT_FLAGS_MUST_MATCH:
        if flag in saved and flag in live and saved[flag] != live[flag]:
            raise field_error(path, f"{field}.{flag}", f"is {saved[flag]} but charrnn's AdamW uses {live[flag]}", a)
    return ids


def _check_param_state(entry, param: torch.Tensor, amsgrad: bool, pid: int, path) -> None:
    a, field = RESUME_ADVICE, f"optimizer state for parameter {pid}"
    require_dict(entry, field, path, a)
    if not entry:
        return  # torch initialises an empty entry on the first step
    keys = ["step", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
    extra = [k for k in entry if k not in keys]
    missing = [k for k in keys if k not in entry]
    if missing or extra:
        what = f"lacks {', '.join(missing)}" if missing else f"has an unexpected entry {show(extra[0])}"
        raise field_error(path, field, what, a)
    step = check_tensor(entry["step"], f"{field} (step)", path, a, shape=(), floating=True, finite=True)
    if step.item() < 0:
        raise field_error(path, f"{field} (step)", f"is {step.item():g}, below 0", a)
    for key in keys[1:]:
        where = f"{field} ({key})"
        if isinstance(entry[key], torch.Tensor) and tuple(entry[key].shape) != tuple(param.shape):
            raise field_error(
                path,
                where,
                f"has shape {_shape(entry[key].shape)} but the parameter has shape {_shape(param.shape)}",
                a,
            )
        moment = check_tensor(entry[key], where, path, a, shape=param.shape, dtype=param.dtype, finite=True)
        if key != "exp_avg" and bool((moment < 0).any()):
            raise field_error(path, where, "holds negative values, which a mean of squares cannot", a)


def check_scaler(scaler, path) -> None:
    """GradScaler's state: the five numbers GradScaler.state_dict() writes."""
    scaler = require_dict(scaler, "scaler", path, RESUME_ADVICE)
    missing = [k for k in SCALER_RULES if k not in scaler]
    if missing:
        raise field_error(path, "scaler", f"lacks {', '.join(missing)}", RESUME_ADVICE)
    check_fields(scaler, SCALER_RULES, "scaler.", path, RESUME_ADVICE)


# ---------------------------------------------------------------- RNG states


def check_rng(rng, field: str, path) -> None:
    """What runtime.set_rng_state() hands to random, numpy and torch, in the shapes they produce."""
    rng = require_dict(rng, field, path, RESUME_ADVICE)
    for key in ("python", "numpy", "torch"):
        if key not in rng:
            raise field_error(path, field, f"lacks {key!r}", RESUME_ADVICE)
    check_tensor(
        rng["torch"],
        f"{field}['torch']",
        path,
        RESUME_ADVICE,
        dtype=torch.uint8,
        shape=(torch.get_rng_state().numel(),),
    )
    _check_cuda_rng(rng.get("cuda"), f"{field}['cuda']", path)
    _check_python_rng(rng["python"], f"{field}['python']", path)
    _check_numpy_rng(rng["numpy"], f"{field}['numpy']", path)


def _check_cuda_rng(states, field: str, path) -> None:
    if states is None:
        return
    if not isinstance(states, (list, tuple)):
        raise field_error(path, field, f"is {show(states)}, not a list of tensors", RESUME_ADVICE)
    for i, s in enumerate(states):
        check_tensor(s, f"{field}[{i}]", path, RESUME_ADVICE, dtype=torch.uint8, shape=(_CUDA_RNG_BYTES,))


_WORD: Rule = int_in(0, 2**32 - 1)


def _words(n: int, last: Rule | None = None) -> Rule:
    def ok(v) -> bool:
        if not isinstance(v, (list, tuple)) or len(v) != n:
            return False
        body = v[:-1] if last else v
        return all(_WORD[0](w) for w in body) and (last is None or last[0](v[-1]))

    return ok, f"a list of {n} integers from 0 to {2**32 - 1}" + (f" (the last: {last[1]})" if last else "")


def _check_python_rng(py, field: str, path) -> None:
    a = RESUME_ADVICE
    rule: Rule = (lambda v: isinstance(v, (list, tuple)) and len(v) == 3), "a (version, state, gauss) triple"
    version, words, gauss = require(py, rule, field, path, a)
    require(version, ((lambda v: is_int(v) and v == 3), "3"), f"{field}[0]", path, a)
    require(words, _words(_MT_WORDS + 1, int_in(0, _MT_WORDS)), f"{field}[1]", path, a)
    gauss_rule: Rule = (lambda v: v is None or (isinstance(v, float) and math.isfinite(v))), "None or a finite float"
    require(gauss, gauss_rule, f"{field}[2]", path, a)


def _check_numpy_rng(state, field: str, path) -> None:
    """The dict np.random.get_state(legacy=False) returns: MT19937, 624 key words, a position, a cached gauss."""
    a = RESUME_ADVICE
    state = require_dict(state, field, path, a)
    require(state.get("bit_generator"), ((lambda v: v == "MT19937"), "'MT19937'"), f"{field}['bit_generator']", path, a)
    inner = require_dict(state.get("state"), f"{field}['state']", path, a)
    require(inner.get("key"), _words(_MT_WORDS), f"{field}['state']['key']", path, a)
    require(inner.get("pos"), int_in(0, _MT_WORDS), f"{field}['state']['pos']", path, a)
    require(state.get("has_gauss"), int_in(0, 1), f"{field}['has_gauss']", path, a)
    require(state.get("gauss"), FINITE, f"{field}['gauss']", path, a)
