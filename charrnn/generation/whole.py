"""The whole text's score (score_text): its known characters in blocks, each cut into streams as training's
evaluation cuts the validation text (score.py's docstring draws the cut); with ScoreConfig.independent, the sum of
its lines scored each from a fresh state (lines.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from charrnn.errors import CorpusError
from charrnn.generation.lines import score_lines
from charrnn.generation.score import Encoder, Score, ScoreConfig, streams_nats
from charrnn.model import CharRNN
from charrnn.text.vocab import Vocab


def score_text(
    model: CharRNN, vocab: Vocab, chunks: Iterable[str], device: torch.device, cfg: ScoreConfig | None = None
) -> Score:
    """The whole text's Score (see the module's docstring for how it is cut). With cfg.independent, the sum of
    its lines each scored from a fresh state. Raises CorpusError when nothing is left to score (a text of one
    character, or only unknown ones skipped), and UsageError for a bad config."""
    cfg = cfg or ScoreConfig()
    cfg.validate()
    if cfg.independent:
        total = Score.empty(len(vocab), cfg.skip_unknown)
        for line in score_lines(model, vocab, chunks, device, cfg):
            total.add(line)
    else:
        total = _score_blocks(model, vocab, chunks, device, cfg)
    if total.chars == 0:
        raise CorpusError(
            "the input has nothing to score: its first character is only context, so it needs at least two "
            "characters (in the model's vocabulary, when unknown ones are skipped)."
        )
    return total


def _score_blocks(model: CharRNN, vocab: Vocab, chunks: Iterable[str], device: torch.device, cfg: ScoreConfig) -> Score:
    enc = Encoder(vocab)
    nats, scored = 0.0, 0
    prev = np.empty(0, dtype=np.int64)  # the previous block's last character: the context of this block's first
    for block in _blocks(enc, chunks, cfg.block_chars):
        ids = np.concatenate([prev, block])  # (n + 1,)
        if len(ids) > 1:
            nats += streams_nats(model, ids, device, cfg)
            scored += len(ids) - 1
        prev = ids[-1:]
    return enc.score(nats, scored, len(vocab), cfg.skip_unknown)


def _blocks(enc: Encoder, chunks: Iterable[str], block_chars: int) -> Iterator[np.ndarray]:
    """The known characters' ids in blocks of exactly `block_chars` (the last may be shorter), however the text
    was chunked, so the score does not depend on how the input was read."""
    pending: list[np.ndarray] = []
    held = 0
    for chunk in chunks:
        ids, _ = enc.encode(chunk)
        pending.append(ids)
        held += len(ids)
        if held < block_chars:
            continue
        joined = np.concatenate(pending)  # one copy; the blocks are views of it
        while held >= block_chars:
            yield joined[:block_chars]
            joined, held = joined[block_chars:], held - block_chars
        pending = [joined]
    if held:
        yield np.concatenate(pending)
