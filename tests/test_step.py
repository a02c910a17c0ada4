"""TrainStep (step.py): the step and its divergence guard as one unit, and auto-sizing timing that same step."""

from __future__ import annotations

import math

import torch

from charrnn.config.train import TrainConfig
from charrnn.model import CharRNN, ModelConfig
from charrnn.training import autosize
from charrnn.training.step import TrainStep, make_optimizer

CPU = torch.device("cpu")


def _step(**cfg) -> tuple[TrainStep, CharRNN, TrainConfig]:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=7, hidden_size=12, num_layers=1))
    cfg = TrainConfig(**cfg)
    return TrainStep(model, make_optimizer(model, cfg, CPU), CPU, cfg.grad_clip), model, cfg


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    xy = torch.randint(0, 7, (3, 9), generator=torch.Generator().manual_seed(1))  # (B, T+1)
    return xy[:, :-1], xy[:, 1:]


def test_a_good_step_updates_the_weights_and_carries_the_state():
    step, model, cfg = _step()
    before = [p.detach().clone() for p in model.parameters()]
    state = step(*_batch(), model.init_state(3), cfg.lr)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert state[0].abs().sum() > 0 and not state[0].requires_grad
    counts = step.read_window(1)
    assert counts.skipped == 0 and counts.longest_bad_streak == 0 and 0 < counts.train_loss < 3 * math.log(7)


def test_a_non_finite_step_leaves_weights_and_moments_alone_and_is_counted(monkeypatch):
    step, model, cfg = _step()
    x, y = _batch()
    state = step(x, y, model.init_state(3), cfg.lr)  # one good step, so Adam has moments to protect
    weights = [p.detach().clone() for p in model.parameters()]
    moments = [s["exp_avg"].clone() for s in step.optimizer.state.values()]
    real = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real(*a, **k) * math.nan)
    for _ in range(3):
        state = step(x, y, state, cfg.lr)
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters(), strict=True))
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, step.optimizer.state.values(), strict=True))
    assert all(bool((s == 0).all()) for s in state)  # the carried state is reset, not poisoned
    counts = step.read_window(4)
    assert counts.skipped == 3 and counts.longest_bad_streak == 3
    assert math.isfinite(counts.train_loss)  # the mean of the good step only
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", real)
    state = step(x, y, state, cfg.lr)
    # A streak still running when a window is read carries into the next one (so max_skips sees a streak that
    # spans windows); a good step ends it.
    assert step.read_window(1).longest_bad_streak == 3
    step(x, y, state, cfg.lr)
    after = step.read_window(1)
    assert after.skipped == 0 and after.longest_bad_streak == 0


def test_auto_sizing_times_the_training_step_itself(monkeypatch):
    calls = []
    real = TrainStep.__call__

    def counted(self, *args):
        calls.append(self)
        return real(self, *args)

    monkeypatch.setattr(TrainStep, "__call__", counted)
    config = ModelConfig(vocab_size=7, hidden_size=16, num_layers=1)
    rate = autosize.measure_chars_per_sec(config, TrainConfig(batch_size=4, seq_len=8), CPU, steps=3)
    assert rate > 0 and len(calls) == 4  # one warm-up and three timed steps, all through TrainStep
