import math

import numpy as np
import pytest
import torch

from charrnn.checkpoint.files import load_checkpoint, load_model
from charrnn.config.train import TrainConfig
from charrnn.generation.sample import SampleConfig, generate
from charrnn.model import ModelConfig
from charrnn.text.corpus import load_corpus
from charrnn.training.evaluation import evaluate
from charrnn.training.job import train
from charrnn.training.schedule import budget_progress, lr_at
from tests.conftest import tiny_train_config

PHRASE = "hello world, hello there, hello charrnn.\n"


def quick_cfg(**kw) -> TrainConfig:
    return tiny_train_config(**{"lr": 1e-2, "eval_every": 50, "log_every": 5, "max_steps": 50, "seed": 1, **kw})


def test_memorises_text_and_greedy_sampling_reproduces_it(tmp_path):
    path = tmp_path / "phrase.txt"
    path.write_text(PHRASE * 120)
    corpus = load_corpus([str(path)])
    result = train(
        corpus,
        ModelConfig(vocab_size=len(corpus.vocab), hidden_size=64, num_layers=1, dropout=0.0),
        quick_cfg(max_steps=300, seq_len=32, eval_every=100, lr=1e-2),
        tmp_path / "run",
    )
    assert result.best_val_loss < 0.05  # nats/char: the text is memorised
    model, bundle = load_model(result.best_path)
    vocab = bundle.vocab
    prime = "hello world, "
    ids = [int(i) for i in vocab.encode(prime)]
    out = torch.cat(
        list(generate(model, ids, SampleConfig(temperature=0.0, length=len(PHRASE) * 2), torch.device("cpu"))), 1
    )
    text = vocab.decode(out[0].tolist())
    assert (prime + text).startswith((PHRASE * 3)[: len(prime) + len(text)])


def test_lr_schedule_warms_up_then_decays():
    cfg = quick_cfg(lr=1.0, warmup_steps=10, min_lr_frac=0.1, max_steps=100)
    lrs = [lr_at(s, budget_progress(s, 0.0, cfg, 1000), cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1, rel=0.02)  # 1/10 of the peak at the first step
    assert max(lrs) == pytest.approx(lrs[9], rel=1e-6)  # peak right at the end of warm-up
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # then monotone decay
    assert lr_at(100, 1.0, cfg) == pytest.approx(0.1)  # ends at lr * min_lr_frac
    # warm-up, stable, decay: with decay_frac 0.2 the rate holds its peak until 80 % of the budget
    wsd = quick_cfg(lr=1.0, warmup_steps=10, min_lr_frac=0.1, max_steps=100, decay_frac=0.2)
    assert [lr_at(s, s / 100, wsd) for s in (9, 50, 80)] == [pytest.approx(1.0)] * 3
    assert lr_at(90, 0.9, wsd) == pytest.approx(0.55) and lr_at(100, 1.0, wsd) == pytest.approx(0.1)
    assert lr_at(50, 0.5, quick_cfg(lr=1.0, warmup_steps=0, decay_frac=0.0)) == pytest.approx(1.0)  # no decay
    # a checkpoint saved before decay_frac existed keeps the schedule it was trained with
    assert TrainConfig.from_dict({k: v for k, v in wsd.to_dict().items() if k != "decay_frac"}).decay_frac == 1.0
    # under --max-time alone, the decay follows the wall clock
    timed = quick_cfg(max_steps=None, max_time=60.0)
    assert budget_progress(5, 30.0, timed, 1000) == pytest.approx(0.5)
    # a step bound makes the schedule deterministic even when a time limit is also given
    both = quick_cfg(max_steps=100, max_time=60.0)
    assert budget_progress(10, 59.0, both, 1000) == pytest.approx(0.1)


def test_stops_at_max_epochs_and_writes_metrics(tmp_path, small_corpus):
    corpus = load_corpus([str(small_corpus)])
    cfg = quick_cfg(max_steps=None, max_epochs=0.05, eval_every=10)
    result = train(corpus, ModelConfig(vocab_size=len(corpus.vocab), hidden_size=16, num_layers=1), cfg, tmp_path / "r")
    assert result.stop_reason == "max_epochs"
    ck = load_checkpoint(result.last_path)
    assert ck["epoch"] >= 0.05 and ck["step"] == result.step
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    import json

    rec = json.loads(lines[-1])
    assert set(rec) == {"step", "epoch", "train_loss", "val_loss", "val_bpc", "lr", "chars_per_sec", "elapsed_s"}
    assert rec["val_bpc"] == pytest.approx(rec["val_loss"] / math.log(2))


def test_evaluate_scores_every_char_once_with_one_stream():
    torch.manual_seed(0)
    from charrnn.model import CharRNN

    m = CharRNN(ModelConfig(vocab_size=7, hidden_size=8, num_layers=1)).eval()
    ids = np.random.default_rng(0).integers(0, 7, 301).astype(np.uint8)
    got = evaluate(m, ids, num_streams=1, seq_len=32, device=torch.device("cpu"))
    x = torch.from_numpy(ids.astype(np.int64))
    with torch.no_grad():
        logits, _ = m(x[None, :-1])
    want = torch.nn.functional.cross_entropy(logits[0], x[1:]).item()
    assert got == pytest.approx(want, rel=1e-5)
