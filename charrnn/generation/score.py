"""Likelihood of a text under a trained model: what a score is, and how the model is asked for one.

Three readings of the same text, all from the model's forward pass (`CharRNN(x, state) -> (logits, state)`):

  score_text    (whole.py) the whole text, in blocks of `block_chars` known characters, each block cut into S
                contiguous streams exactly as training's `evaluate` cuts the validation text (streams_nats, here:
                S = 8, 256 positions a pass):

                    block:  c | stream 0: L targets | stream 1: L | ... | stream S-1: L | tail: n - S*L
                            ^ the last character of the previous block: only context

                Each stream starts from an empty state; the tail (n mod S characters) continues the last stream,
                so every character but the text's first is scored once. Memory is bounded by the block.
  score_lines   (lines.py) one LineScore per input line, in input order, in context or independent.
  char_scores   (heatmap.py) per-character surprise, probability and the model's top choices, and the heatmaps
                drawn from them (Rich, or a standalone HTML page).

This module holds what they share: ScoreConfig, the results (Score, LineScore and their PerChar rates), the
Encoder that sets aside characters outside the vocabulary, and the model's passes, each bounded to EVAL_LOGITS
logits (pass_len, target_losses). Characters outside the vocabulary are never fed to the model (the state carries
past them). Each counts as a uniform guess over the vocabulary, ln(V) nats, unless ScoreConfig.skip_unknown
leaves them out of the count. Input is read by text/utf8.py's read_text: strict streaming UTF-8, a leading BOM
stripped, NUL bytes refused as binary.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from charrnn import runtime
from charrnn.errors import UsageError
from charrnn.model import CharRNN, State
from charrnn.text.vocab import Vocab, listed

EVAL_LOGITS = 1 << 24  # logits scored at a time at most (64 MiB), whatever the vocabulary (training's evaluation too)
BLOCK_CHARS = 1 << 20  # characters held and scored at a time (ids, streams, losses: ~25 MB): whole text, long lines
NUM_STREAMS = 8  # whole text: contiguous streams per block, as training's --eval-streams
SEQ_LEN = 256  # positions per forward pass, as training's evaluation: max(--seq-len, 256)
LINE_CHUNK = 4096  # per line in context and heatmaps: one stream, this many characters a forward pass
LINE_BATCH_CHARS = 1 << 16  # independent lines: padded positions per batch (the longest line times the lines)
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------------
# configuration and results


class PerChar:
    """nats_per_char, bits_per_char and perplexity of `nats` over `chars`: one definition for a whole text's Score
    and a line's LineScore."""

    nats: float
    chars: int

    @property
    def nats_per_char(self) -> float:
        return self.nats / self.chars if self.chars else math.nan

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / LN2

    @property
    def perplexity(self) -> float:
        npc = self.nats_per_char
        return math.exp(npc) if npc < 700 else math.inf  # exp overflows past ~709


@dataclass
class ScoreConfig:
    skip_unknown: bool = False  # leave characters outside the vocabulary out (else: ln(V) nats each)
    independent: bool = False  # score each line from a fresh state (score_text then sums the lines)
    num_streams: int = NUM_STREAMS
    seq_len: int = SEQ_LEN
    block_chars: int = BLOCK_CHARS  # also the longest line scored in one piece (see lines.py)
    line_chunk: int = LINE_CHUNK
    line_batch_chars: int = LINE_BATCH_CHARS
    amp: bool = False  # fp16 autocast on CUDA: faster, but scores move by about 1e-3; a no-op elsewhere

    def validate(self) -> None:
        for name in ("num_streams", "seq_len", "block_chars", "line_chunk", "line_batch_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a whole number of at least 1, not {value!r}.")


@dataclass
class Score(PerChar):
    """The negative log-likelihood of a text (or of a sum of lines) under a model: what `charrnn score` prints."""

    total_nats: float = 0.0
    chars: int = 0  # characters scored: unknown ones included unless skipped; the text's first is only context
    unknown: int = 0  # characters outside the vocabulary met (penalised, or skipped)
    unknown_chars: list[str] = field(default_factory=list)  # the distinct ones, in order of first appearance
    vocab_size: int = 0
    skip_unknown: bool = False

    @classmethod
    def empty(cls, vocab_size: int, skip_unknown: bool = False) -> Score:
        return cls(vocab_size=vocab_size, skip_unknown=skip_unknown)

    @property
    def unknown_penalty(self) -> float:
        """Nats charged for each unknown character: a uniform guess over the vocabulary, or 0 when skipped."""
        return 0.0 if self.skip_unknown or self.vocab_size < 1 else math.log(self.vocab_size)

    @property
    def nats(self) -> float:  # type: ignore[override]  # PerChar's numerator
        return self.total_nats

    def add(self, line: LineScore) -> None:
        """Count `line` in: the sum over a text's lines is its whole score."""
        self.total_nats += line.nats
        self.chars += line.chars
        self.unknown += line.unknown
        if line.unknown_chars:
            seen = set(self.unknown_chars)
            self.unknown_chars.extend(c for c in line.unknown_chars if c not in seen)

    def summary(self) -> str:
        return (
            f"{self.nats_per_char:.4f} nats/char, {self.bits_per_char:.4f} bits/char, "
            f"perplexity {self.perplexity:.3f}, {self.chars:,} characters"
        )

    def unknown_note(self) -> str | None:
        """One sentence on the characters outside the vocabulary and how they were scored; None without any."""
        if not self.unknown:
            return None
        head = f"{self.unknown:,} character(s) are not in the model's vocabulary ({listed(self.unknown_chars)})"
        if self.skip_unknown:
            return head + "; they were skipped: neither scored nor counted."
        return (
            f"{head}; each was scored as a uniform guess over its {self.vocab_size:,} characters, "
            f"ln {self.vocab_size:,} = {self.unknown_penalty:.4f} nats."
        )

    def to_dict(self) -> dict:
        """Plain JSON-ready values (--json); an undefined rate (nothing scored) is None."""
        finite = lambda x: x if math.isfinite(x) else None  # noqa: E731
        return {
            "nats_per_char": finite(self.nats_per_char),
            "bits_per_char": finite(self.bits_per_char),
            "perplexity": finite(self.perplexity),
            "total_nats": self.total_nats,
            "chars": self.chars,
            "unknown": self.unknown,
            "unknown_chars": list(self.unknown_chars),
            "unknown_penalty_nats": self.unknown_penalty,
            "skip_unknown": self.skip_unknown,
            "vocab_size": self.vocab_size,
        }


@dataclass(frozen=True)
class LineScore(PerChar):
    text: str  # the line as read, its newline included (the text's last line may lack one)
    nats: float  # its negative log-likelihood, unknown characters' penalties included
    chars: int  # characters scored in it, its newline included
    unknown: int = 0
    unknown_chars: tuple[str, ...] = ()

    def tsv(self) -> str:
        """`bpc<TAB>nats<TAB>chars<TAB>line`, the line without its line break, and no newline at the end."""
        line = self.text[:-1] if self.text.endswith("\n") else self.text
        line = line[:-1] if line.endswith("\r") else line
        return f"{self.bits_per_char:.4f}\t{self.nats:.4f}\t{self.chars}\t{line}"


class Encoder:
    """Characters -> ids of those in the vocabulary; the others are counted, remembered and left out."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.unknown = 0
        self.unknown_chars: dict[str, None] = {}  # distinct, in order of first appearance

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """text (N chars) -> (ids of its known characters (M,) int64, known (N,) bool)."""
        ids, known, cps = self.vocab.lookup(text)
        if not known.all():
            bad = cps[~known]
            self.unknown += len(bad)
            distinct, first = np.unique(bad, return_index=True)
            for cp in distinct[np.argsort(first)].tolist():
                self.unknown_chars.setdefault(chr(cp))
        return ids[known], known

    def score(self, nats: float, scored: int, vocab_size: int, skip_unknown: bool) -> Score:
        """The Score of `scored` known characters costing `nats`, with this encoder's unknown characters added."""
        out = Score(
            unknown=self.unknown,
            unknown_chars=list(self.unknown_chars),
            vocab_size=vocab_size,
            skip_unknown=skip_unknown,
        )
        out.total_nats = nats + self.unknown * out.unknown_penalty
        out.chars = scored + (0 if skip_unknown else self.unknown)
        return out


# ---------------------------------------------------------------------------------------------------
# the model


def streams_nats(model: CharRNN, ids: np.ndarray, device: torch.device, cfg: ScoreConfig) -> float:
    """Negative log-likelihood (nats) of ids[1:], cut as training's evaluate cuts it, plus the tail it drops."""
    n = len(ids) - 1  # characters to score
    V = model.config.vocab_size
    # The same bounds as evaluate: fewer streams first, then shorter passes, so (S, T, V) logits stay bounded.
    S = max(1, min(cfg.num_streams, n, EVAL_LOGITS // V))
    T = pass_len(cfg.seq_len, S, V)
    L = n // S  # targets per stream
    rows = ids[np.arange(S, dtype=np.int64)[:, None] * L + np.arange(L + 1, dtype=np.int64)]  # (S, L + 1)
    losses, state = target_losses(model, rows, None, device, T, cfg.amp)  # (S, L)
    total = losses.sum(dtype=torch.float64)
    if S * L < n:  # the last n - S*L characters continue the last stream, from its state
        assert state is not None
        last = tuple(s[:, -1:].contiguous() for s in state)  # (layers, 1, H) each
        tail, _ = target_losses(model, ids[None, S * L :], last, device, pass_len(cfg.seq_len, 1, V), cfg.amp)
        total = total + tail.sum(dtype=torch.float64)
    return float(total.item())


def pass_len(wanted: int, batch: int, vocab_size: int) -> int:
    """Positions per forward pass: `wanted`, fewer when (batch, T, V) logits would pass EVAL_LOGITS."""
    return max(1, min(wanted, EVAL_LOGITS // (batch * vocab_size)))


@contextmanager
def evaluating(model: CharRNN) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for a bounded stretch of work, the model's mode restored after.
    Never held across a generator's yield: inference mode is thread-wide state the caller would inherit."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def target_losses(
    model: CharRNN, ids: np.ndarray, state: State | None, device: torch.device, seq_len: int, amp: bool
) -> tuple[torch.Tensor, State | None]:
    """-ln p(ids[:, t+1] | ids[:, :t+1], state) for every row: ids (B, N+1) int64 -> losses (B, N) float32 on the
    device, and the state after ids[:, N-1]. `seq_len` positions a pass bound the (B, T, V) logits."""
    B, N = ids.shape[0], ids.shape[1] - 1
    pieces = []
    with evaluating(model):
        for a in range(0, N, seq_len):
            chunk = torch.from_numpy(np.ascontiguousarray(ids[:, a : a + seq_len + 1])).to(device)  # (B, t+1)
            with runtime.autocast(device, amp):
                logits, state = model(chunk[:, :-1], state)  # (B, t, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="none")  # (B*t,)
            pieces.append(loss.view(B, -1))
    if not pieces:
        return torch.zeros(B, 0, device=device), state
    return torch.cat(pieces, dim=1), state
