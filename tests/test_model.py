import math

import pytest
import torch

import charrnn.model as model_mod
from charrnn.checkpoint.files import load_model, save_checkpoint
from charrnn.config.model import MAX_VOCAB, MAX_WIDTH, ModelConfig, weight_shapes
from charrnn.errors import CheckpointError, UsageError
from charrnn.model import CharRNN


def small_model(kind: str, vocab_size: int, hidden_size: int) -> CharRNN:
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=vocab_size, model=kind, hidden_size=hidden_size, num_layers=2)).eval()


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_shapes_and_state(kind):
    m = small_model(kind, 11, 16)
    x = torch.randint(0, 11, (3, 7))
    logits, state = m(x)
    assert logits.shape == (3, 7, 11)
    assert len(state) == (2 if kind == "lstm" else 1)
    assert all(s.shape == (2, 3, 16) for s in state)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_state_carry_equals_one_long_sequence(kind):
    m = small_model(kind, 9, 12)
    x = torch.randint(0, 9, (2, 10))
    whole, _ = m(x)
    first, state = m(x[:, :6])
    second, _ = m(x[:, 6:], state)
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-6)


def test_tied_weights_share_the_matrix():
    m = CharRNN(ModelConfig(vocab_size=9, hidden_size=8, tie_weights=True))
    assert m.head.weight is m.embed.weight
    with pytest.raises(UsageError):
        ModelConfig(vocab_size=9, hidden_size=8, embed_size=4, tie_weights=True)


def test_config_round_trip_and_validation():
    c = ModelConfig(vocab_size=30, model="gru", hidden_size=20, num_layers=3, dropout=0.2)
    assert ModelConfig.from_dict(c.to_dict()) == c
    assert c.embed_size == 20
    for bad in ({"model": "transformer"}, {"dropout": 1.0}, {"hidden_size": 0}):
        with pytest.raises(UsageError):
            ModelConfig(vocab_size=30, **bad)


# ---------------------------------------------------------------- configs and weights read from a checkpoint


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers, embed, tie", [(1, 0, False), (3, 5, False), (2, 0, True)])
def test_weight_shapes_match_the_built_model_without_building_it(kind, layers, embed, tie):
    c = ModelConfig(vocab_size=7, model=kind, hidden_size=6, num_layers=layers, embed_size=embed, tie_weights=tie)
    built = {k: tuple(v.shape) for k, v in CharRNN(c).state_dict().items()}
    assert list(weight_shapes(c).items()) == list(built.items())


GOOD = {
    "vocab_size": 30,
    "model": "gru",
    "hidden_size": 20,
    "num_layers": 3,
    "embed_size": 20,
    "dropout": 0.2,
    "tie_weights": False,
}

BAD_CONFIGS = [
    ({"hidden_size": "32"}, f"hidden_size is '32' (a str), but it must be an integer from 1 to {MAX_WIDTH}"),
    ({"hidden_size": [32]}, "hidden_size is [32] (a list)"),
    ({"hidden_size": 32.0}, "hidden_size is 32.0 (a float)"),
    ({"hidden_size": True}, "hidden_size is True (a bool)"),
    ({"hidden_size": 0}, "hidden_size is 0 (an int)"),
    ({"hidden_size": MAX_WIDTH + 1}, f"hidden_size is {MAX_WIDTH + 1} (an int)"),
    ({"vocab_size": 10**9}, f"vocab_size is 1000000000 (an int), but it must be an integer from 2 to {MAX_VOCAB}"),
    ({"vocab_size": 1e9}, "vocab_size is 1000000000.0 (a float)"),
    ({"vocab_size": 1}, "vocab_size is 1 (an int)"),
    ({"model": "transformer"}, "model is 'transformer' (a str), but it must be one of lstm, gru, rnn"),
    ({"model": 5}, "model is 5 (an int)"),
    ({"num_layers": 257}, "num_layers is 257 (an int)"),
    ({"embed_size": -1}, "embed_size is -1 (an int)"),
    ({"dropout": "0.1"}, "dropout is '0.1' (a str)"),
    ({"dropout": 1.0}, "dropout is 1.0 (a float), but it must be a finite number in [0, 1)"),
    ({"dropout": math.nan}, "dropout is nan (a float)"),
    ({"tie_weights": "yes"}, "tie_weights is 'yes' (a str), but it must be true or false"),
    ({"tie_weights": True, "embed_size": 8}, "tie_weights is true but embed_size differs from hidden_size"),
]


@pytest.mark.parametrize("changes, expected", BAD_CONFIGS)
def test_from_dict_names_the_file_and_the_field(changes, expected):
    with pytest.raises(CheckpointError) as info:
        ModelConfig.from_dict({**GOOD, **changes}, "runs/x/best.pt")
    message = str(info.value)
    assert message.startswith("checkpoint runs/x/best.pt: model_config.") and expected in message, message
    assert "--" not in message and message.endswith("so use another checkpoint.")


def test_from_dict_refuses_a_missing_field_or_a_non_dict():
    assert ModelConfig.from_dict(GOOD, "ck.pt") == ModelConfig(**GOOD)
    with pytest.raises(CheckpointError, match=r"^checkpoint ck.pt: model_config lacks hidden_size, num_layers; "):
        ModelConfig.from_dict({"vocab_size": 3, "model": "lstm"}, "ck.pt")
    with pytest.raises(CheckpointError, match=r"^checkpoint ck.pt: model_config is a list, not a dict"):
        ModelConfig.from_dict([1, 2], "ck.pt")
    with pytest.raises(CheckpointError, match=r"^the checkpoint's model_config.hidden_size is '8'"):
        ModelConfig.from_dict({**GOOD, "hidden_size": "8"})


def _write(path, config: dict, weights: dict, chars: str = "abcde") -> None:
    save_checkpoint(
        {
            "format": "charrnn",
            "format_version": 1,
            "model": weights,
            "model_config": config,
            "vocab": {"chars": list(chars)},
        },
        path,
    )


@pytest.fixture
def small_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=5, hidden_size=8, num_layers=1)
    return tmp_path / "ck.pt", config.to_dict(), CharRNN(config).state_dict()


def test_load_model_loads_a_good_checkpoint(small_checkpoint):
    path, config, weights = small_checkpoint
    _write(path, config, weights)
    model, bundle = load_model(path)
    vocab = bundle.vocab
    assert len(vocab) == 5 and torch.equal(model.head.bias, weights["head.bias"])


def test_load_model_checks_the_weights_before_building_the_model(small_checkpoint, monkeypatch):
    # A config 5000 times wider than its weights would cost gigabytes to build; nothing may be built before the
    # weights' shapes are compared with it.
    path, config, weights = small_checkpoint
    _write(path, {**config, "hidden_size": 40_000, "embed_size": 40_000}, weights)

    def build(*args, **kwargs):
        raise AssertionError("CharRNN was built before the weights were checked")

    monkeypatch.setattr(model_mod, "CharRNN", build)
    with pytest.raises(
        CheckpointError,
        match=r"model\['embed.weight'\] has shape \(5, 8\) but must have shape "
        r"\(5, 40000\)",
    ):
        load_model(path)


@pytest.mark.parametrize("name, index, value", [("rnn.weight_hh_l0", (0, 0), math.nan), ("head.bias", 1, math.inf)])
def test_load_model_refuses_non_finite_weights(small_checkpoint, name, index, value):
    path, config, weights = small_checkpoint
    weights[name][index] = value
    _write(path, config, weights)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path}: model\['{name}'\] holds NaN or infinite values"):
        load_model(path)


@pytest.mark.parametrize(
    "chars, expected",
    [
        ("abc", "vocab has 3 characters but model_config.vocab_size is 5"),
        ("edcba", "vocab is not a sorted list of distinct single characters"),
    ],
)
def test_load_model_names_a_bad_vocabulary(small_checkpoint, chars, expected):
    path, config, weights = small_checkpoint
    _write(path, config, weights, chars)
    with pytest.raises(CheckpointError, match=rf"^checkpoint {path}: {expected}; "):
        load_model(path)


def test_load_weights_refuses_a_stride_0_weight(small_checkpoint):
    path, config, weights = small_checkpoint
    weights["rnn.weight_hh_l0"] = torch.zeros(1, 8).expand(32, 8)  # 32 rows claimed, 8 floats stored
    _write(path, config, weights)
    with pytest.raises(CheckpointError, match=r"model\['rnn.weight_hh_l0'\] is a non-contiguous view"):
        load_model(path)
