"""Per-line scores (score_lines): one LineScore per input line, in input order, yielded as they are scored.

In context: one stream over the whole text, its state carried, each character's loss added to its line (the sum
over lines is score_text with num_streams=1). Independent: each line from a fresh state primed with "\n" (so its
first character is predicted as a line start), many lines a batch, padded at the end and masked. Either way a
line longer than `block_chars` is one stream scored a piece of `block_chars` at a time, its state carried: memory
holds the line's str and one piece's ids, whatever its length.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from charrnn.generation.score import EVAL_LOGITS, Encoder, LineScore, Score, ScoreConfig, pass_len, target_losses
from charrnn.model import CharRNN, State
from charrnn.text.vocab import Vocab

MAX_LINE_BATCH = 512  # independent lines: lines per batch at most


def score_lines(
    model: CharRNN, vocab: Vocab, chunks: Iterable[str], device: torch.device, cfg: ScoreConfig | None = None
) -> Iterator[LineScore]:
    """One LineScore per line of the text ("\\n"-terminated; the last may lack it), in input order, yielded as
    they are scored. In context (default): the first line's first character is only context, and the lines'
    sum is the whole text scored as one stream. cfg.independent: each line from a fresh state, primed with
    "\\n" when the vocabulary has it (every character scored), else from a zero state (its first only context).
    A bad config raises UsageError here; the input's errors come while iterating."""
    cfg = cfg or ScoreConfig()
    cfg.validate()
    lines = _split_lines(chunks)
    if cfg.independent:
        return _independent_lines(model, vocab, lines, device, cfg)
    return _lines_in_context(model, vocab, lines, device, cfg)


def _split_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines ending in "\\n" (only "\\n": a CR stays inside its line), whatever the chunk boundaries."""
    pending: list[str] = []  # the start of a line that an earlier chunk did not finish
    for chunk in chunks:
        parts = chunk.split("\n")
        if len(parts) == 1:
            pending.append(chunk)
            continue
        yield "".join([*pending, parts[0]]) + "\n"
        for part in parts[1:-1]:
            yield part + "\n"
        pending = [parts[-1]] if parts[-1] else []
    tail = "".join(pending)
    if tail:
        yield tail


def _groups(lines: Iterable[str], min_chars: int, max_line: int | None = None) -> Iterator[list[str]]:
    """Consecutive lines gathered until they hold at least `min_chars` characters (the last group may hold fewer).
    A line longer than `max_line` is a group of its own, the lines before it yielded first, so that its caller can
    stream it in pieces instead of encoding it whole."""
    group: list[str] = []
    held = 0
    for line in lines:
        if max_line is not None and len(line) > max_line:
            if group:
                yield group
            yield [line]
            group, held = [], 0
            continue
        group.append(line)
        held += len(line)
        if held >= min_chars:
            yield group
            group, held = [], 0
    if group:
        yield group


def _lines_in_context(
    model: CharRNN, vocab: Vocab, lines: Iterable[str], device: torch.device, cfg: ScoreConfig
) -> Iterator[LineScore]:
    """One stream through the whole text, a group of lines of about cfg.line_chunk characters at a time; a line
    longer than cfg.block_chars streamed alone, in pieces."""
    T = pass_len(cfg.line_chunk, 1, len(vocab))
    penalty = Score.empty(len(vocab), cfg.skip_unknown).unknown_penalty
    state: State | None = None
    prev = np.empty(0, dtype=np.int64)  # the last known character before this group: the first input
    enc = Encoder(vocab)
    for group in _groups(lines, cfg.line_chunk, cfg.block_chars):
        if len(group[0]) > cfg.block_chars:  # a group of its own
            scored, prev, state = _stream_line(model, vocab, group[0], prev, state, device, cfg, T)
            yield scored
            continue
        ids, known = enc.encode("".join(group))  # (M,), (N,)
        line_of = np.repeat(np.arange(len(group)), [len(line) for line in group])  # (N,) each character's line
        seq = np.concatenate([prev, ids])  # inputs seq[:-1], targets seq[1:]
        targets = max(len(seq) - 1, 0)
        target_line = line_of[known][len(ids) - targets :]  # (targets,) the line of each scored character
        nats = np.zeros(len(group))
        chars = np.bincount(target_line, minlength=len(group))
        for a in range(0, targets, T):  # one pass at a time: a line of any length holds T losses on the device
            losses, state = target_losses(model, seq[None, a : a + T + 1], state, device, T, cfg.amp)  # (1, t)
            nats += np.bincount(target_line[a : a + T], weights=losses[0].double().cpu().numpy(), minlength=len(group))
        prev = seq[-1:]
        unknown = np.bincount(line_of[~known], minlength=len(group))
        for line, n, c, u in zip(group, nats.tolist(), chars.tolist(), unknown.tolist(), strict=True):
            yield _line_score(line, n, c, u, vocab, penalty, cfg.skip_unknown)


def _independent_lines(
    model: CharRNN, vocab: Vocab, lines: Iterable[str], device: torch.device, cfg: ScoreConfig
) -> Iterator[LineScore]:
    """Lines from a fresh state, batched by length within windows of about cfg.block_chars characters (memory
    stays bounded), then yielded in input order; a line longer than cfg.block_chars streamed alone, in pieces.

        batch (B lines, longest first)        padded at the end: a row's real positions never see its padding
          \\n t h e   c a t \\n                 mask  1 1 1 1 1 1 1 1
          \\n a   d o g \\n . .                 mask  1 1 1 1 1 1 0 0
    """
    V = len(vocab)
    prime = np.array([vocab.chars.index("\n")] if "\n" in vocab.chars else [], dtype=np.int64)
    penalty = Score.empty(V, cfg.skip_unknown).unknown_penalty
    enc = Encoder(vocab)
    for window in _groups(lines, cfg.block_chars, cfg.block_chars):
        if len(window[0]) > cfg.block_chars:  # a window of its own
            T = pass_len(cfg.seq_len, 1, V)  # as _batched_nats scores a batch of one
            yield _stream_line(model, vocab, window[0], prime, None, device, cfg, T)[0]
            continue
        ids, known = enc.encode("".join(window))
        line_of = np.repeat(np.arange(len(window)), [len(line) for line in window])  # (N,)
        per_line = np.split(ids, np.cumsum(np.bincount(line_of[known], minlength=len(window)))[:-1])
        seqs = [np.concatenate([prime, line_ids]) for line_ids in per_line]  # inputs and targets of each line
        nats, chars = _batched_nats(model, seqs, device, cfg)
        unknown = np.bincount(line_of[~known], minlength=len(window))
        for line, n, c, u in zip(window, nats.tolist(), chars.tolist(), unknown.tolist(), strict=True):
            yield _line_score(line, n, c, u, vocab, penalty, cfg.skip_unknown)


def _batched_nats(
    model: CharRNN, seqs: Sequence[np.ndarray], device: torch.device, cfg: ScoreConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence scored from a zero state: (nats of seq[1:] (K,), characters scored (K,))."""
    V = model.config.vocab_size
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)  # (K,)
    chars = np.maximum(lengths - 1, 0)
    nats = np.zeros(len(seqs))
    order = np.argsort(-lengths, kind="stable")  # longest first: similar lengths share a batch
    start = 0
    while start < len(order) and lengths[order[start]] >= 2:
        width = int(lengths[order[start]])
        B = max(1, min(MAX_LINE_BATCH, cfg.line_batch_chars // width, EVAL_LOGITS // V))
        rows = order[start : start + B]
        batch = np.zeros((len(rows), width), dtype=np.int64)  # (B, W) padded with id 0 after each line
        for r, k in enumerate(rows.tolist()):
            batch[r, : lengths[k]] = seqs[k]
        scored = torch.from_numpy(chars[rows]).to(device)[:, None]  # (B, 1) real targets of each row
        T = pass_len(cfg.seq_len, len(rows), V)
        state: State | None = None  # fresh: what the line says is all the model knows
        total = torch.zeros(len(rows), dtype=torch.float64, device=device)  # (B,)
        for a in range(0, width - 1, T):
            losses, state = target_losses(model, batch[:, a : a + T + 1], state, device, T, cfg.amp)  # (B, t)
            mask = torch.arange(a, a + losses.shape[1], device=device)[None, :] < scored  # (B, t) not padding
            total += (losses.double() * mask).sum(dim=1)
        nats[rows] = total.cpu().numpy()
        start += len(rows)
    return nats, chars


def _stream_line(
    model: CharRNN,
    vocab: Vocab,
    line: str,
    prev: np.ndarray,
    state: State | None,
    device: torch.device,
    cfg: ScoreConfig,
    T: int,
) -> tuple[LineScore, np.ndarray, State | None]:
    """`line` as one stream, encoded and scored cfg.block_chars characters at a time with the state carried, so
    memory holds one piece's ids (~30 bytes a character) whatever the line's length, not the whole line's.
    `prev` (0 or 1 ids): the known character before it, its first input; `state`: the state before `prev`.
    Returns its score, its last known id (else `prev`) for the next line, and the state before that id."""
    enc = Encoder(vocab)  # counts this line's unknown characters
    nats = torch.zeros((), dtype=torch.float64, device=device)
    scored = 0
    for a in range(0, len(line), cfg.block_chars):
        ids, _ = enc.encode(line[a : a + cfg.block_chars])  # (M,)
        seq = np.concatenate([prev, ids])  # inputs seq[:-1], targets seq[1:]
        for b in range(0, len(seq) - 1, T):  # T losses on the device at a time
            losses, state = target_losses(model, seq[None, b : b + T + 1], state, device, T, cfg.amp)  # (1, t)
            nats += losses.sum(dtype=torch.float64)
        scored += max(len(seq) - 1, 0)
        prev = seq[-1:]
    penalty = Score.empty(len(vocab), cfg.skip_unknown).unknown_penalty
    return _line_score(line, float(nats.item()), scored, enc.unknown, vocab, penalty, cfg.skip_unknown), prev, state


def _line_score(
    line: str, nats: float, chars: int, unknown: int, vocab: Vocab, penalty: float, skip_unknown: bool
) -> LineScore:
    if not unknown:
        return LineScore(line, nats, chars)
    extra = 0 if skip_unknown else unknown
    return LineScore(line, nats + extra * penalty, chars + extra, unknown, tuple(vocab.unknown(line)))
