"""Resume's checks: everything resume hands to a kernel or a setter (the carried state, the optimizer's moments,
the scaler, every RNG state, the data position) checked against the live model and optimizer, on the field rules
of charrnn.fields. Unchecked, an Adam moment of the wrong shape, or a stride-0 view, makes the fused AdamW kernel
write past its buffer.
"""

from __future__ import annotations

import math

import torch

from charrnn.config.train import TRAIN_REQUIRED, TRAIN_RULES
from charrnn.fields import (
    ANY_REAL,
    BOOL,
    FINITE,
    LOSS,
    NON_NEGATIVE,
    POSITIVE,
    RESUME_ADVICE,
    TEXT,
    Rule,
    check_fields,
    check_tensor,
    check_weights,
    field_error,
    int_in,
    is_int,
    optional,
    real_in,
    require,
    require_dict,
    shape_text,
    show,
)
from charrnn.model import CharRNN

_MT_WORDS = 624  # Mersenne Twister state words (Python's random and numpy's MT19937 alike)
_CUDA_RNG_BYTES = 16  # a Philox seed and offset, what torch.cuda.get_rng_state() returns per device
_OPT_FLAGS_MUST_MATCH = ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")
_OPT_FLAGS_DEVICE = ("foreach", "fused")  # chosen per device, so a resume on another device may differ

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
                f"has shape {shape_text(entry[key].shape)} but the parameter has shape {shape_text(param.shape)}",
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
