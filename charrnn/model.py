"""CharRNN: embedding -> multi-layer LSTM | GRU | RNN -> linear head over the vocabulary.

Training runs the fused nn.LSTM/GRU/RNN over whole sequences (cuDNN on GPU, oneDNN on CPU);
step-by-step generation uses sample.py's cell-math stepper, which reads these same weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from charrnn.errors import UsageError
from charrnn.fields import BOOL, LOAD_ADVICE, Rule, check_weights, field_error, int_in, real_in, require

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight rows per hidden unit: i, f, g, o | r, z, n | one

# Bounds on a model config read from a checkpoint. Far above anything a character-level model needs, low enough
# that a crafted config cannot ask for an absurd allocation. The weights' shapes are checked against the config
# before anything is built, so the real allocation is bounded by the tensors the file actually holds.
MAX_VOCAB = 0x110000  # every Unicode code point
MAX_WIDTH = 65_536  # hidden_size and embed_size
MAX_LAYERS = 256
# A new model to train: with its gradient and two Adam moments it needs 16 bytes a parameter (8 GiB here).
MAX_TRAIN_PARAMS = 1 << 29

# State is always a tuple of (L, B, H) tensors: (h, c) for an LSTM, (h,) for GRU/RNN,
# so every caller can carry, detach and reset it the same way.
State = tuple[torch.Tensor, ...]


@dataclass
class ModelConfig:
    vocab_size: int
    model: str = "lstm"  # lstm | gru | rnn
    hidden_size: int = 512
    num_layers: int = 2
    embed_size: int = 0  # 0 means "same as hidden_size"
    dropout: float = 0.0
    tie_weights: bool = False  # share the embedding matrix with the output head (needs embed_size == hidden_size)

    def __post_init__(self) -> None:
        if self.model not in RNN_TYPES:
            raise UsageError(f"--model must be one of {', '.join(RNN_TYPES)}, not {self.model!r}.")
        if self.embed_size < 0:
            raise UsageError(f"--embed-size must be at least 0 (0: same as --hidden-size), not {self.embed_size}.")
        if self.embed_size == 0:
            self.embed_size = self.hidden_size
        if self.hidden_size < 1 or self.num_layers < 1 or self.vocab_size < 2:
            raise UsageError(
                "--hidden-size and --num-layers must be at least 1 and the vocabulary at least 2 characters."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), not {self.dropout}.")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise UsageError("--tie-weights needs --embed-size equal to --hidden-size.")

    def check_trainable(self) -> None:
        """Refuse, before anything is allocated, a model too large to train here (an allocator traceback after
        minutes otherwise). Sampling a model from a checkpoint is bounded by the file instead."""
        if self.hidden_size > MAX_WIDTH or self.embed_size > MAX_WIDTH or self.num_layers > MAX_LAYERS:
            raise UsageError(
                f"--hidden-size and --embed-size must be at most {MAX_WIDTH:,} and --num-layers at most {MAX_LAYERS}."
            )
        params = self.num_params()
        if params > MAX_TRAIN_PARAMS:
            raise UsageError(
                f"a {self.num_layers}x{self.hidden_size} {self.model.upper()} over {self.vocab_size:,} "
                f"characters has {params:,} parameters, more than the {MAX_TRAIN_PARAMS:,} charrnn "
                "trains (16 bytes each with gradients and Adam's moments); use a smaller --hidden-size "
                "or --num-layers."
            )

    def num_params(self) -> int:
        """Parameters of CharRNN(self), counted from the shapes alone: nothing is allocated."""
        return sum(math.prod(shape) for shape in weight_shapes(self).values())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source=None) -> ModelConfig:
        """The config stored in checkpoint `source`, every field type- and range-checked (CheckpointError
        naming the file and the field), so a crafted file cannot reach the constructor's allocations."""
        if not isinstance(d, dict):
            raise field_error(source, "model_config", f"is a {type(d).__name__}, not a dict", LOAD_ADVICE)
        missing = [k for k in ("vocab_size", "model", "hidden_size", "num_layers") if k not in d]
        if missing:
            raise field_error(source, "model_config", f"lacks {', '.join(missing)}", LOAD_ADVICE)
        for name, rule in CONFIG_RULES.items():
            if name in d:
                require(d[name], rule, f"model_config.{name}", source)
        embed = d.get("embed_size", 0) or d["hidden_size"]
        if d.get("tie_weights") and embed != d["hidden_size"]:
            raise field_error(
                source,
                "model_config.tie_weights",
                "is true but embed_size differs from hidden_size, so no weights can be shared",
                LOAD_ADVICE,
            )
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


CONFIG_RULES: dict[str, Rule] = {
    "vocab_size": int_in(2, MAX_VOCAB),
    "model": ((lambda v: isinstance(v, str) and v in RNN_TYPES), f"one of {', '.join(RNN_TYPES)}"),
    "hidden_size": int_in(1, MAX_WIDTH),
    "num_layers": int_in(1, MAX_LAYERS),
    "embed_size": int_in(0, MAX_WIDTH),  # 0: same as hidden_size
    "dropout": real_in(0.0, 1.0, hi_open=True),
    "tie_weights": BOOL,
}


def weight_shapes(c: ModelConfig) -> dict[str, tuple[int, ...]]:
    """CharRNN(c).state_dict()'s names and shapes, from the config alone: nothing is allocated.

    Memory in fp32: 4 * (V*E + G*H*(E + H + 2) + (L - 1)*G*H*(2*H + 2) + V*(H + 1)) bytes, G = GATES[model]
    (V*H less with tie_weights, whose head.weight is embed.weight).
    """
    gh = GATES[c.model] * c.hidden_size
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (c.vocab_size, c.embed_size)}
    for k in range(c.num_layers):
        shapes |= {
            f"rnn.weight_ih_l{k}": (gh, c.embed_size if k == 0 else c.hidden_size),
            f"rnn.weight_hh_l{k}": (gh, c.hidden_size),
            f"rnn.bias_ih_l{k}": (gh,),
            f"rnn.bias_hh_l{k}": (gh,),
        }
    return shapes | {"head.weight": (c.vocab_size, c.hidden_size), "head.bias": (c.vocab_size,)}


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
