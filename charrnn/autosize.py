"""Pick a model size for a time budget: under --max-time with no size flags, the best model is the largest one
that still sees the training text enough times. Throughput is measured, not guessed: a few real training steps
of each candidate on the chosen device.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

from charrnn import runtime
from charrnn.model import CharRNN, ModelConfig

# (hidden_size, num_layers), smallest first. Char-level models on ~1 MB of text saturate around 2x512.
CANDIDATES = [(128, 2), (192, 2), (256, 2), (384, 2), (512, 2), (768, 2), (1024, 2), (1024, 3)]
# Passes over the training text a budget should allow. On tiny-shakespeare in 10 CPU minutes (bench/README.md)
# 2x512 at 3.7 passes scored 1.533 and 2x384 at 5.8 passes 1.495: below ~5 passes a bigger model loses.
TARGET_EPOCHS = 5.0
# Calibration may use at most this fraction of the budget.
CALIBRATION_FRACTION = 0.03


def measure_chars_per_sec(config: ModelConfig, cfg, device: torch.device, steps: int = 3) -> float:
    """Forward + backward + optimizer steps per second of a fresh model, times the characters per step, with
    training's own optimizer and precision (fused AdamW; fp16 autocast and a GradScaler on CUDA)."""
    from charrnn.train import make_optimizer

    model = CharRNN(config).to(device)
    opt = make_optimizer(model, cfg, device)
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    x = torch.randint(0, config.vocab_size, (cfg.batch_size, cfg.seq_len + 1), device=device)
    state = None

    def one_step():
        nonlocal state
        with runtime.autocast(device, amp):
            logits, state = model(x[:, :-1], state)
            loss = F.cross_entropy(logits.float().reshape(-1, config.vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        state = tuple(s.detach() for s in state)
        return loss

    one_step()  # warm-up: allocator, oneDNN/cuDNN primitive creation
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    loss.item()  # wait for the device
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


def choose_model_size(num_chars: int, max_time: float, device: torch.device, cfg, model_type: str = "lstm",
                      dropout: float | None = None, report: Callable[[str], None] = lambda s: None,
                      vocab_size: int = 96) -> dict:
    """Largest candidate whose measured throughput allows TARGET_EPOCHS passes within max_time."""
    train_chars = num_chars * (1.0 - cfg.val_frac)
    budget = CALIBRATION_FRACTION * max_time
    runtime.set_threads(cfg.threads)  # time it the way training will run
    runtime.configure_backends(device)
    started = time.perf_counter()
    chosen, chosen_rate = CANDIDATES[0], None
    for hidden, layers in CANDIDATES:
        config = ModelConfig(vocab_size=vocab_size, model=model_type, hidden_size=hidden, num_layers=layers)
        rate = measure_chars_per_sec(config, cfg, device)
        epochs = rate * max_time / train_chars
        if epochs < TARGET_EPOCHS and chosen_rate is not None:
            break
        chosen, chosen_rate = (hidden, layers), rate
        if time.perf_counter() - started > budget:
            break
    epochs = chosen_rate * max_time / train_chars
    drop = dropout_for(epochs) if dropout is None else dropout
    report(f"auto-sized for {max_time:.0f}s on {device}: {layers_str(chosen)} {model_type.upper()}, dropout {drop} "
           f"(~{chosen_rate:,.0f} chars/s, ~{epochs:.1f} passes); set --hidden-size/--num-layers to override")
    return {"hidden_size": chosen[0], "num_layers": chosen[1], "dropout": drop}


def layers_str(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"
