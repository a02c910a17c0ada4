"""CharRNN: embedding -> multi-layer LSTM | GRU | RNN -> linear head over the vocabulary, built from a
ModelConfig (config/model.py).

Training runs the fused nn.LSTM/GRU/RNN over whole sequences (cuDNN on GPU, oneDNN on CPU);
step-by-step generation uses sample.py's cell-math stepper, which reads these same weights.
"""

from __future__ import annotations

import torch
from torch import nn

from charrnn.config.model import ModelConfig, weight_shapes
from charrnn.fields import LOAD_ADVICE, check_weights, field_error

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}  # config/model.py's MODEL_TYPES

# State is always a tuple of (L, B, H) tensors: (h, c) for an LSTM, (h,) for GRU/RNN,
# so every caller can carry, detach and reset it the same way.
State = tuple[torch.Tensor, ...]


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_size)
        self.rnn = RNN_TYPES[c.model](
            c.embed_size,
            c.hidden_size,
            num_layers=c.num_layers,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        if c.tie_weights:
            self.head.weight = self.embed.weight

    @property
    def is_lstm(self) -> bool:
        return self.config.model == "lstm"

    def init_state(self, batch_size: int, device=None, dtype=torch.float32) -> State:
        c = self.config
        zeros = lambda: torch.zeros(c.num_layers, batch_size, c.hidden_size, device=device, dtype=dtype)  # noqa: E731
        return (zeros(), zeros()) if self.is_lstm else (zeros(),)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: (B, T) int ids -> logits (B, T, V) and the state after the last step."""
        emb = self.drop(self.embed(x))  # (B, T, E)
        if state is None:
            out, new = self.rnn(emb)
        else:
            out, new = self.rnn(emb, state if self.is_lstm else state[0])
        new_state = tuple(new) if self.is_lstm else (new,)
        logits = self.head(self.drop(out))  # (B, T, V)
        return logits, new_state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    # Truncated BPTT: keep the values, cut the graph at the batch boundary.
    return tuple(s.detach() for s in state)


def load_weights(model: CharRNN, weights: dict, source, advice: str = LOAD_ADVICE) -> None:
    """Copy checked weights into `model`: exact names and shapes, floating point, finite (else CheckpointError)."""
    check_weights(weights, weight_shapes(model.config), source, advice)
    copy_weights(model, weights, source, advice)


def copy_weights(model: CharRNN, weights: dict, source, advice: str = LOAD_ADVICE) -> None:
    """Copy weights already checked against the model's config (check_weights) into it."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as e:  # checked above, so only a torch that reads state dicts differently
        first = str(e).strip().splitlines()[0][:200]
        raise field_error(source, "model (the weights)", f"does not fit its model_config ({first})", advice) from None
