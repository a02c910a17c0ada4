"""Pick a model size for a time budget: under --max-time with no size flags, the best model is the largest one
that still sees the training text enough times. Throughput is measured, not guessed: a few real training steps
of each candidate on the chosen device.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from charrnn.config.model import ModelConfig
from charrnn.display import format_duration
from charrnn.model import CharRNN
from charrnn.training.step import TrainStep, make_optimizer

# (hidden_size, num_layers), smallest first. Char-level models on ~1 MB of text saturate around 2x512.
CANDIDATES = [(128, 2), (192, 2), (256, 2), (384, 2), (512, 2), (768, 2), (1024, 2), (1024, 3)]
# Passes over the training text a budget should allow. On tiny-shakespeare in 3 CPU minutes (bench/README.md,
# issue 9) 2x384 at 1.8 passes scored 1.607 and 2x512 at 1.2 passes 1.626; at 10 minutes 2x512 at ~3.5 passes
# beats the plain loop. Fewer passes than this and a smaller model learns more in the time.
TARGET_EPOCHS = 1.5
# Calibration may use at most this fraction of the budget, and evaluation about this much (train.EVAL_SHARE).
CALIBRATION_FRACTION = 0.03
EVAL_FRACTION = 0.05
# A model the text cannot support only overfits sooner: 2x512 (4.3 M parameters) suits tiny-shakespeare's 1 M
# training characters, not 2x768 (9.5 M); a 50 k-character file gets 2x128, not 2x1024's 17 M parameters.
PARAMS_PER_CHAR = 8


def measure_chars_per_sec(config: ModelConfig, cfg, device: torch.device, steps: int = 3) -> float:
    """Characters per second of training's own step (step.py: fused AdamW, the divergence guard, fp16 autocast
    and a GradScaler on CUDA) on a fresh model and random batches."""
    model = CharRNN(config).to(device)
    amp = cfg.amp and device.type == "cuda"
    step = TrainStep(model, make_optimizer(model, cfg, device), device, cfg.grad_clip, amp=amp)
    xy = torch.randint(0, config.vocab_size, (cfg.batch_size, cfg.seq_len + 1), device=device)  # (B, T+1)
    x, y = xy[:, :-1], xy[:, 1:]
    state = step(x, y, model.init_state(cfg.batch_size, device), cfg.lr)  # warm-up: allocator, kernel set-up
    step.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        state = step(x, y, state, cfg.lr)
    step.synchronize()
    return steps * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t)


def dropout_for(epochs: float) -> float:
    # Few passes cannot overfit, so dropout only slows learning (and costs CPU time): at ~6 passes of 2x384 on
    # tiny-shakespeare, dropout 0 / 0.1 / 0.2 scored 1.475 / 1.495 / 1.513 (bench/README.md). Many passes over
    # small text do overfit and need it.
    if epochs < 8:
        return 0.0
    if epochs < 16:
        return 0.1
    return 0.2


def choose_model_size(
    num_chars: int,
    max_time: float,
    device: torch.device,
    cfg,
    model_type: str = "lstm",
    dropout: float | None = None,
    report: Callable[[str], None] = lambda s: None,
    vocab_size: int = 96,
    world_size: int = 1,
) -> dict:
    """Largest candidate whose measured throughput allows TARGET_EPOCHS passes within max_time, and whose
    parameters the text can support (at most PARAMS_PER_CHAR per training character).

    world_size: processes training together under torchrun. One process measures; each of them steps its own
    batch in that time, so the job reads world_size times the characters (less the gradient all-reduce, which
    is not measured: the passes are an upper estimate)."""
    train_chars = num_chars * (1.0 - cfg.val_frac)
    train_time = max_time * (1.0 - CALIBRATION_FRACTION - EVAL_FRACTION)  # what the loop itself will get
    budget = CALIBRATION_FRACTION * max_time
    started = time.perf_counter()
    chosen, chosen_rate, capped = CANDIDATES[0], None, False
    for hidden, layers in CANDIDATES:
        if (
            chosen_rate is not None
            and ModelConfig(vocab_size, model_type, hidden, layers).num_params() > PARAMS_PER_CHAR * train_chars
        ):
            capped = True
            break
        config = ModelConfig(vocab_size=vocab_size, model=model_type, hidden_size=hidden, num_layers=layers)
        rate = measure_chars_per_sec(config, cfg, device) * world_size
        if rate * train_time / train_chars < TARGET_EPOCHS and chosen_rate is not None:
            break
        chosen, chosen_rate = (hidden, layers), rate
        if time.perf_counter() - started > budget:
            break
    assert chosen_rate is not None  # the smallest candidate is always measured
    epochs = chosen_rate * train_time / train_chars
    drop = dropout_for(epochs) if dropout is None else dropout
    why = f"; larger would exceed {PARAMS_PER_CHAR} parameters per training character" if capped else ""
    ranks = f" over {world_size} processes" if world_size > 1 else ""
    report(
        f"auto-sized for {format_duration(max_time)} on {device}: {layers_str(chosen)} {model_type.upper()}, "
        f"dropout {drop:g} (~{chosen_rate:,.0f} chars/s{ranks}, ~{epochs:.1f} passes{why}); set "
        "--hidden-size/--num-layers to choose"
    )
    return {"hidden_size": chosen[0], "num_layers": chosen[1], "dropout": drop}


def layers_str(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"
