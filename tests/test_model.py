import pytest
import torch

from charrnn.errors import UsageError
from charrnn.model import CharRNN, ModelConfig


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
