"""What a run measures of its model as it trains: the validation loss (score.py's whole-text scoring, so `charrnn
score` on the validation text gives the same number) and previews of its text."""

from __future__ import annotations

import time

import numpy as np
import torch

from charrnn.config.sample import SampleConfig
from charrnn.config.train import PREVIEW_TEMPERATURE, TrainConfig
from charrnn.generation.sample import generate
from charrnn.generation.score import ScoreConfig, streams_nats
from charrnn.model import CharRNN
from charrnn.text.vocab import Vocab


def evaluate(
    model: CharRNN,
    ids: np.ndarray,
    num_streams: int,
    seq_len: int,
    device: torch.device,
    amp: bool = False,
    max_chars: int | None = None,
) -> float:
    """Mean cross-entropy (nats/char) over `ids` (at most max_chars + 1 of them): score.py's whole-text scoring,
    so `charrnn score` on the validation text gives the validation loss. The text is cut into `num_streams`
    contiguous streams scored with their hidden state carried, so every character but the first is scored."""
    if max_chars is not None:
        ids = ids[: max_chars + 1]
    cfg = ScoreConfig(num_streams=num_streams, seq_len=seq_len, amp=amp)
    return streams_nats(model, np.asarray(ids, dtype=np.int64), device, cfg) / (len(ids) - 1)


def preview_seed(seed: int) -> int:
    """The run's seed as a sampling seed (sampling takes 0 .. 2^63 - 2; a run's seed may be any 64-bit value)."""
    return seed % (2**63 - 1)


def preview_text(model: CharRNN, vocab: Vocab, cfg: TrainConfig, device: torch.device) -> str:
    """`sample_length` characters at temperature 0.8 from the run's seed, after `sample_prime` (not repeated).

    The model runs in eval mode, so no dropout mask is drawn from the global RNG the training step uses, and
    sampling draws from its own seeded generator: a preview never changes what training does next."""
    was_training = model.training
    model.eval()
    try:
        sampling = SampleConfig(
            temperature=PREVIEW_TEMPERATURE, length=cfg.sample_length, seed=preview_seed(cfg.seed), precision="fp32"
        )
        prime_ids = [int(i) for i in vocab.encode(cfg.sample_prime or vocab.start())]
        with torch.no_grad():
            return "".join(vocab.decode(block[0].tolist()) for block in generate(model, prime_ids, sampling, device))
    finally:
        model.train(was_training)


def preview_record(model: CharRNN, vocab: Vocab, cfg: TrainConfig, device: torch.device, step: int, val: float) -> dict:
    """A preview of the model's text as samples.jsonl records it, with the time it took."""
    t = time.perf_counter()
    text = preview_text(model, vocab, cfg, device)
    return {
        "step": step, "val_loss": val, "temperature": PREVIEW_TEMPERATURE, "seed": preview_seed(cfg.seed),
        "prime": cfg.sample_prime, "text": text, "seconds": round(time.perf_counter() - t, 4),
    }  # fmt: skip
