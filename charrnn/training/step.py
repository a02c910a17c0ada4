"""One training step and its divergence guard: forward, loss, backward, clip, update, on the device.

The guard never waits for the host: a non-finite loss or gradient norm becomes a 0/1 tensor that fused AdamW
takes as `found_inf` (it then leaves weights and moments untouched), resets the carried state, and feeds
counters read once per log window (`read_window`). Training and auto-sizing both run this class, so the
throughput auto-sizing measures is the real step's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charrnn import runtime
from charrnn.model import CharRNN, State, detach_state


def make_optimizer(model: CharRNN, cfg, device: torch.device) -> torch.optim.Optimizer:
    """AdamW as training runs it; `cfg` is a TrainConfig (its lr and weight_decay)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():  # weight matrices decay; biases and the embedding table do not
        (decay if p.dim() >= 2 and not name.startswith("embed") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for the whole update, and it honours `found_inf`, which lets us skip a bad step on
    # the device without a host sync. CPU and CUDA support it; MPS falls back to foreach.
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.99), fused=fused, foreach=None if fused else True)


def data_parallel(model: CharRNN, dist: runtime.Dist, device: torch.device, seed: int) -> torch.nn.Module | None:
    """The DDP wrapper under torchrun (what the step calls), else None: the model itself."""
    if not dist.enabled:
        return None
    from torch.nn.parallel import DistributedDataParallel  # lazy: only torchrun runs need it

    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    runtime.seed_everything(seed + 1_000_003 * dist.rank)  # distinct dropout masks per rank
    return net


@dataclass
class StepCounts:
    """What the steps since the last read did: the mean loss of the good ones, and the skipped count."""

    train_loss: float
    skipped: int
    longest_bad_streak: int


class TrainStep:
    """`step(x, y, state, lr) -> state` on a model (or its DDP wrapper `net`) with its optimizer.

    amp: fp16 autocast and a GradScaler (CUDA); the scaler skips overflowed steps itself, which are not
    divergence. distributed: one rank's bad step makes every rank skip, or their weights would drift apart.
    """

    def __init__(
        self,
        model: CharRNN,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        grad_clip: float,
        *,
        amp: bool = False,
        net: torch.nn.Module | None = None,
        distributed: bool = False,
    ) -> None:
        self.model, self.optimizer, self.device, self.grad_clip = model, optimizer, device, grad_clip
        self.net = net if net is not None else model
        self.amp, self.distributed = amp, distributed
        self.scaler = torch.amp.GradScaler("cuda") if amp else None
        self.fused = bool(optimizer.defaults.get("fused"))

        def zero(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros((), dtype=dtype, device=device)

        # Counters live on the device so the step never syncs: the current and longest run of bad steps, the
        # bad steps and the good steps' loss sum since the last read.
        self.streak, self.max_streak, self.bad_count = zero(torch.int64), zero(torch.int64), zero(torch.int64)
        self.loss_sum = zero(torch.float32)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, state: State, lr: float) -> State:
        """x, y (B, T) -> the carried state for the next batch (zeroed after a bad step)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with runtime.autocast(self.device, self.amp):
            logits, new_state = self.net(x, state)  # (B, T, V)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        bad = self._bad(loss, norm)
        self._update(bad)
        self.streak = (self.streak + 1) * bad
        self.max_streak = torch.maximum(self.max_streak, self.streak)
        self.bad_count += bad
        self.loss_sum += torch.where(bad, 0.0, loss.detach().float())
        return tuple(s.masked_fill_(bad, 0.0) for s in detach_state(new_state))

    def _bad(self, loss: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(loss)
        if self.scaler is None:
            bad = bad | ~torch.isfinite(norm)
        return runtime.any_rank(bad) if self.distributed else bad

    def _update(self, bad: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.fused:
            self.optimizer.found_inf = bad.float()  # type: ignore[attr-defined]  # fused AdamW leaves weights and moments untouched when 1
            self.optimizer.step()
        elif not bad.item():  # foreach AdamW (MPS) has no found_inf: a host check, on a device we do not tune for
            self.optimizer.step()

    def read_window(self, steps: int) -> StepCounts:
        """The one host sync per log window: the counters since the last read, which are then reset."""
        skipped = int(self.bad_count.item())
        good = steps - skipped
        window = StepCounts(self.loss_sum.item() / good if good else math.nan, skipped, int(self.max_streak.item()))
        self.loss_sum.zero_(), self.bad_count.zero_(), self.max_streak.copy_(self.streak)
        return window

    def synchronize(self) -> None:
        """Wait for the device: the steps queued so far have run (for timing them)."""
        self.loss_sum.item()
