"""ModelConfig: the model's shape, each setting declared once (default, rule, help, panel), and the parameter
count and weight shapes it implies, without torch. model.py builds the CharRNN from it; a checkpoint stores it
and from_dict reads it back through the same rules."""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields

from charrnn.config.settings import (
    MODEL,
    Check,
    at_least,
    between,
    check_settings,
    one_of,
    rules_of,
    setting,
    settings_of,
)
from charrnn.errors import UsageError
from charrnn.fields import BOOL, LOAD_ADVICE, field_error, require

MODEL_TYPES = ("lstm", "gru", "rnn")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight rows per hidden unit: i, f, g, o | r, z, n | one

# Bounds on a model config read from a checkpoint. Far above anything a character-level model needs, low enough
# that a crafted config cannot ask for an absurd allocation. The weights' shapes are checked against the config
# before anything is built, so the real allocation is bounded by the tensors the file actually holds.
MAX_VOCAB = 0x110000  # every Unicode code point
MAX_WIDTH = 65_536  # hidden_size and embed_size
MAX_LAYERS = 256
# A new model to train: with its gradient and two Adam moments it needs 16 bytes a parameter (8 GiB here).
MAX_TRAIN_PARAMS = 1 << 29


@dataclass
class ModelConfig:
    vocab_size: int = setting(MISSING, at_least(2, MAX_VOCAB))  # from the corpus, not a flag
    model: str = setting("lstm", one_of(MODEL_TYPES), "lstm, gru or rnn.", MODEL)
    # None on the command line: chosen for you (training/autosize.py), as the help says
    hidden_size: int = setting(
        512,
        at_least(1, MAX_WIDTH),
        "Hidden units per layer \\[default: sized to the time budget; 512 under --max-steps/--max-epochs].",
        MODEL,
        flag_default=None,
    )
    num_layers: int = setting(
        2, at_least(1, MAX_LAYERS), "Stacked recurrent layers \\[default: 2].", MODEL, flag_default=None
    )
    embed_size: int = setting(
        0,
        at_least(0, MAX_WIDTH, says=f"between 0 and {MAX_WIDTH:,} (0: same as --hidden-size)"),
        "Embedding size (0: same as --hidden-size).",
        MODEL,
        since_v1=False,
    )
    dropout: float = setting(
        0.0,
        between(0.0, 1.0, "in [0, 1)", hi_open=True),
        "Dropout on the embeddings, between layers and before the head \\[default: by the planned passes "
        "over the text: 0 below 8, 0.1 below 16, else 0.2].",
        MODEL,
        flag_default=None,
        since_v1=False,
    )
    tie_weights: bool = setting(
        False,
        Check(BOOL, "true or false"),
        "Share the embedding matrix with the output layer.",
        MODEL,
        flags=("--tie-weights",),
        since_v1=False,
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if self.embed_size == 0:
            self.embed_size = self.hidden_size
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise UsageError("--tie-weights needs --embed-size equal to --hidden-size.")

    def check_trainable(self) -> None:
        """Refuse, before anything is allocated, a model too large to train here (an allocator traceback after
        minutes otherwise). Sampling a model from a checkpoint is bounded by the file instead."""
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
        missing = [k for k in CONFIG_REQUIRED if k not in d]
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


CONFIG_RULES = rules_of(ModelConfig)
CONFIG_REQUIRED = tuple(name for name, s in settings_of(ModelConfig).items() if s.since_v1)


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
