"""CharRNN: embedding -> multi-layer LSTM | GRU | RNN -> linear head over the vocabulary.

Training runs the fused nn.LSTM/GRU/RNN over whole sequences (cuDNN on GPU, oneDNN on CPU);
step-by-step generation uses sample.py's cell-math stepper, which reads these same weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from charrnn.errors import CheckpointError, UsageError

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

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
            raise UsageError("--hidden-size and --num-layers must be at least 1 and the vocabulary at least 2 characters.")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"--dropout must be in [0, 1), not {self.dropout}.")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise UsageError("--tie-weights needs --embed-size equal to --hidden-size.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        missing = {"vocab_size", "model", "hidden_size", "num_layers"} - d.keys()
        if missing:
            raise CheckpointError(f"the checkpoint's model config lacks {', '.join(sorted(missing))}.")
        return cls(**{k: v for k, v in d.items() if k in known})


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


def load_weights(model: CharRNN, weights: dict, source) -> None:
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{source}: its weights do not fit the model it describes ({first}).") from None


def load_model(path, device: torch.device | str = "cpu"):
    """A checkpoint -> (model in eval mode on `device`, Vocab, the checkpoint dict). Works for GPU-trained
    checkpoints on CPU-only machines: everything is loaded to CPU first."""
    from charrnn.checkpoint import load_checkpoint
    from charrnn.corpus import Vocab

    ckpt = load_checkpoint(path)
    config = ModelConfig.from_dict(ckpt["model_config"])
    model = CharRNN(config)
    load_weights(model, ckpt["model"], path)
    vocab = Vocab.from_dict(ckpt["vocab"])
    if len(vocab) != config.vocab_size:
        raise CheckpointError(f"{path}: its vocabulary has {len(vocab)} characters but the model expects {config.vocab_size}.")
    model.to(device).eval()
    return model, vocab, ckpt
