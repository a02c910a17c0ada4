"""Likelihood of a text under a trained model: whole, per line (in context or independent), per character.

Three readings of the same text, all from the model's forward pass (`CharRNN(x, state) -> (logits, state)`):

  score_text    the whole text, in blocks of `block_chars` known characters, each block cut into S contiguous
                streams exactly as training's `evaluate` cuts the validation text (S = 8, 256 positions a pass):

                    block:  c | stream 0: L targets | stream 1: L | ... | stream S-1: L | tail: n - S*L
                            ^ the last character of the previous block: only context

                Each stream starts from an empty state; the tail (n mod S characters) continues the last stream,
                so every character but the text's first is scored once. Memory is bounded by the block.
  score_lines   one LineScore per input line, in input order. In context: one stream over the whole text, its
                state carried, each character's loss added to its line (the sum over lines is score_text with
                num_streams=1). Independent: each line from a fresh state primed with "\n" (so its first
                character is predicted as a line start), many lines a batch, padded at the end and masked.
                Either way a line longer than `block_chars` is one stream scored a piece of `block_chars` at a
                time, its state carried: memory holds the line's str and one piece's ids, whatever its length.
  char_scores   per-character surprise, probability and the model's top choices (one stream), rendered by
                heatmap_text (Rich) and heatmap_html (a standalone page), for at most MAX_HEATMAP_CHARS characters.

Characters outside the vocabulary are never fed to the model (the state carries past them). Each counts as a
uniform guess over the vocabulary, ln(V) nats, unless ScoreConfig.skip_unknown leaves them out of the count.
Input is read by read_text: strict streaming UTF-8, a leading BOM stripped, NUL bytes refused as binary.
"""

from __future__ import annotations

import codecs
import html
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from rich.text import Text

from charrnn import runtime
from charrnn.errors import CorpusError, UsageError
from charrnn.model import CharRNN, State
from charrnn.text import stdin
from charrnn.text.vocab import Vocab, listed

READ_BYTES = 1 << 20  # bytes decoded at a time
EVAL_LOGITS = 1 << 24  # logits scored at a time at most (64 MiB), whatever the vocabulary (training's evaluation too)
BLOCK_CHARS = 1 << 20  # characters held and scored at a time (ids, streams, losses: ~25 MB): whole text, long lines
NUM_STREAMS = 8  # whole text: contiguous streams per block, as training's --eval-streams
SEQ_LEN = 256  # positions per forward pass, as training's evaluation: max(--seq-len, 256)
LINE_CHUNK = 4096  # per line in context and heatmaps: one stream, this many characters a forward pass
LINE_BATCH_CHARS = 1 << 16  # independent lines: padded positions per batch (the longest line times the lines)
MAX_LINE_BATCH = 512  # independent lines: lines per batch at most
MAX_HEATMAP_CHARS = 200_000  # heatmaps: a page of ~100 bytes a character (20 MB); records of ~0.5 KB each
TOP_K = 5  # heatmaps: the model's choices shown at each character
LN2 = math.log(2.0)

# Heat levels: level k (1..7) is a surprise of k to k+1 bits (7: 7 bits or more, p < 1/128); below 1 bit
# (p > 1/2) a character is left uncoloured, so a page shows only where the model was surprised.
HEAT_COLOURS = ("", "#fff3b0", "#ffe08a", "#ffc46b", "#ffa154", "#f87a45", "#e8503a", "#c0282a")
HEAT_INK = ("", "#000000", "#000000", "#000000", "#000000", "#000000", "#ffffff", "#ffffff")
UNKNOWN_COLOURS = ("#ffffff", "#a020f0")  # ink, background: a character outside the vocabulary


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
    block_chars: int = BLOCK_CHARS  # also the longest line scored in one piece (see _stream_line)
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


@dataclass(frozen=True, slots=True)
class CharScore:
    char: str
    surprise: float | None  # bits, -log2 prob; log2(V) for an unknown character (its penalty); None: not scored
    prob: float | None  # p(char | the text before it); None for the first character (no context) and unknown ones
    top: tuple[tuple[str, float], ...]  # the model's most likely characters at this position, best first
    known: bool = True


# ---------------------------------------------------------------------------------------------------
# reading input


def read_text(source: str | Path, chunk_bytes: int = READ_BYTES) -> Iterator[str]:
    """The text of a file, or of standard input for "-", as str chunks: strict UTF-8 decoded as it streams, a
    leading BOM stripped. Opening fails at once (CorpusError); an empty, binary (NUL) or non-UTF-8 input raises
    CorpusError while iterating, at the chunk where it shows."""
    if str(source) == "-":
        return decode_stream(stdin.binary("the text '-'"), "standard input", chunk_bytes)
    label = str(source)
    try:
        f = open(source, "rb")  # opened now, so a missing file fails before a model is loaded; _closing closes it
    except OSError as err:
        raise CorpusError(f"cannot read {label}: {err.strerror}; check that it exists and is readable.") from None
    return _closing(f, decode_stream(f, label, chunk_bytes))


def _closing(f: BinaryIO, chunks: Iterator[str]) -> Iterator[str]:
    with f:
        yield from chunks


def decode_stream(f: BinaryIO, label: str, chunk_bytes: int = READ_BYTES) -> Iterator[str]:
    """Non-empty str chunks of binary stream `f`, decoded incrementally (a character split between two reads is
    carried over); `label` names it in errors."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    head = _read(f, label, len(codecs.BOM_UTF8))  # on its own, so a BOM is found whatever chunk_bytes is
    offset = 0  # bytes of the input before `chunk`, a stripped BOM included
    if head == codecs.BOM_UTF8:
        offset, head = len(head), b""
    chunk = head + _read(f, label, chunk_bytes)
    empty = True
    while True:
        nul = chunk.find(b"\0")
        if nul >= 0:
            raise CorpusError(
                f"{label} looks like a binary file (byte {offset + nul} is NUL); give a UTF-8 text file to score."
            )
        try:
            text = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as err:
            # err.start indexes the decoder's carried-over bytes (a character split by the last read) + chunk.
            bad = offset - len(decoder.getstate()[0]) + err.start
            raise CorpusError(
                f"{label} is not valid UTF-8 at byte {bad} (0x{err.object[err.start]:02x}); convert it to UTF-8 "
                "(e.g. with iconv -f latin1 -t utf-8)."
            ) from None
        if text:
            empty = False
            yield text
        if not chunk:
            break
        offset += len(chunk)
        chunk = _read(f, label, chunk_bytes)
    if empty:
        raise CorpusError(f"{label} is empty; give it some text to score.")


def _read(f: BinaryIO, label: str, size: int) -> bytes:
    try:
        return f.read(size)
    except OSError as err:
        raise CorpusError(f"cannot read {label}: {err.strerror}; check the file and the disk.") from None


class _Encoder:
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
# the whole text


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
    enc = _Encoder(vocab)
    nats, scored = 0.0, 0
    prev = np.empty(0, dtype=np.int64)  # the previous block's last character: the context of this block's first
    for block in _blocks(enc, chunks, cfg.block_chars):
        ids = np.concatenate([prev, block])  # (n + 1,)
        if len(ids) > 1:
            nats += streams_nats(model, ids, device, cfg)
            scored += len(ids) - 1
        prev = ids[-1:]
    return enc.score(nats, scored, len(vocab), cfg.skip_unknown)


def _blocks(enc: _Encoder, chunks: Iterable[str], block_chars: int) -> Iterator[np.ndarray]:
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


def streams_nats(model: CharRNN, ids: np.ndarray, device: torch.device, cfg: ScoreConfig) -> float:
    """Negative log-likelihood (nats) of ids[1:], cut as training's evaluate cuts it, plus the tail it drops."""
    n = len(ids) - 1  # characters to score
    V = model.config.vocab_size
    # The same bounds as evaluate: fewer streams first, then shorter passes, so (S, T, V) logits stay bounded.
    S = max(1, min(cfg.num_streams, n, EVAL_LOGITS // V))
    T = _pass_len(cfg.seq_len, S, V)
    L = n // S  # targets per stream
    rows = ids[np.arange(S, dtype=np.int64)[:, None] * L + np.arange(L + 1, dtype=np.int64)]  # (S, L + 1)
    losses, state = _losses(model, rows, None, device, T, cfg.amp)  # (S, L)
    total = losses.sum(dtype=torch.float64)
    if S * L < n:  # the last n - S*L characters continue the last stream, from its state
        assert state is not None
        last = tuple(s[:, -1:].contiguous() for s in state)  # (layers, 1, H) each
        tail, _ = _losses(model, ids[None, S * L :], last, device, _pass_len(cfg.seq_len, 1, V), cfg.amp)
        total = total + tail.sum(dtype=torch.float64)
    return float(total.item())


# ---------------------------------------------------------------------------------------------------
# per line


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
    T = _pass_len(cfg.line_chunk, 1, len(vocab))
    penalty = Score.empty(len(vocab), cfg.skip_unknown).unknown_penalty
    state: State | None = None
    prev = np.empty(0, dtype=np.int64)  # the last known character before this group: the first input
    enc = _Encoder(vocab)
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
            losses, state = _losses(model, seq[None, a : a + T + 1], state, device, T, cfg.amp)  # (1, t)
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
    enc = _Encoder(vocab)
    for window in _groups(lines, cfg.block_chars, cfg.block_chars):
        if len(window[0]) > cfg.block_chars:  # a window of its own
            T = _pass_len(cfg.seq_len, 1, V)  # as _batched_nats scores a batch of one
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
        T = _pass_len(cfg.seq_len, len(rows), V)
        state: State | None = None  # fresh: what the line says is all the model knows
        total = torch.zeros(len(rows), dtype=torch.float64, device=device)  # (B,)
        for a in range(0, width - 1, T):
            losses, state = _losses(model, batch[:, a : a + T + 1], state, device, T, cfg.amp)  # (B, t)
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
    enc = _Encoder(vocab)  # counts this line's unknown characters
    nats = torch.zeros((), dtype=torch.float64, device=device)
    scored = 0
    for a in range(0, len(line), cfg.block_chars):
        ids, _ = enc.encode(line[a : a + cfg.block_chars])  # (M,)
        seq = np.concatenate([prev, ids])  # inputs seq[:-1], targets seq[1:]
        for b in range(0, len(seq) - 1, T):  # T losses on the device at a time
            losses, state = _losses(model, seq[None, b : b + T + 1], state, device, T, cfg.amp)  # (1, t)
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


# ---------------------------------------------------------------------------------------------------
# per character: heatmaps


def collect_text(chunks: Iterable[str], max_chars: int = MAX_HEATMAP_CHARS) -> str:
    """The text of `chunks` as one str, refused (UsageError) as soon as it passes `max_chars` characters."""
    parts: list[str] = []
    held = 0
    for chunk in chunks:
        held += len(chunk)
        _check_heatmap_size(held, max_chars)
        parts.append(chunk)
    return "".join(parts)


def _check_heatmap_size(n: int, max_chars: int) -> None:
    if n > max_chars:
        raise UsageError(
            f"--heatmap and --html show at most {max_chars:,} characters and this input has more; "
            f"give them an excerpt (e.g. head -c {max_chars} FILE)."
        )


def char_scores(
    model: CharRNN,
    vocab: Vocab,
    text: str,
    device: torch.device,
    top_k: int = TOP_K,
    max_chars: int = MAX_HEATMAP_CHARS,
    amp: bool = False,
) -> list[CharScore]:
    """One CharScore per character of `text`, scored in context as one stream: the first character is only
    context (prob None); an unknown one gets its penalty, log2(V) bits, and the model's choices at its position
    (the distribution after the known characters before it). UsageError past `max_chars` characters."""
    _check_heatmap_size(len(text), max_chars)
    ids, known = _Encoder(vocab).encode(text)
    target_logp, top_p, top_i = _distributions(model, ids, device, min(top_k, len(vocab)), amp)
    chars = vocab.chars
    choices = [
        tuple((chars[i], p) for i, p in zip(row_i, row_p, strict=True))
        for row_i, row_p in zip(top_i.tolist(), top_p.tolist(), strict=True)
    ]
    before = (np.cumsum(known) - known).tolist()  # (N,) known characters before each one
    penalty_bits = math.log2(len(vocab))
    out = []
    for ch, j, is_known in zip(text, before, known.tolist(), strict=True):
        at = j - 1  # the distribution this character was drawn from: after the j-th known character
        top = choices[at] if at >= 0 else ()
        if not is_known:
            out.append(CharScore(ch, penalty_bits, None, top, known=False))
        elif at < 0:
            out.append(CharScore(ch, None, None, ()))
        else:
            lp = float(target_logp[at])
            out.append(CharScore(ch, -lp / LN2, math.exp(lp), top))
    return out


def _distributions(
    model: CharRNN, ids: np.ndarray, device: torch.device, k: int, amp: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stream over ids (M,): ln p(ids[j+1] | ids[:j+1]) (M-1,), and the k likeliest ids after each ids[:j+1]
    with their probabilities ((M, k) each). Only k values a position leave the device, never (M, V)."""
    M, V = len(ids), model.config.vocab_size
    target_logp = np.zeros(max(M - 1, 0))
    top_p = np.zeros((M, k), dtype=np.float32)
    top_i = np.zeros((M, k), dtype=np.int64)
    T = _pass_len(LINE_CHUNK, 1, V)
    state: State | None = None
    with _evaluating(model):
        for a in range(0, M, T):
            x = torch.from_numpy(ids[None, a : a + T]).to(device)  # (1, t)
            with runtime.autocast(device, amp):
                logits, state = model(x, state)  # (1, t, V)
            logp = torch.log_softmax(logits[0].float(), dim=-1)  # (t, V)
            values, indices = logp.topk(k, dim=-1)  # (t, k)
            t = x.shape[1]
            top_p[a : a + t] = values.exp().cpu().numpy()
            top_i[a : a + t] = indices.cpu().numpy()
            nxt = torch.from_numpy(ids[a + 1 : a + t + 1]).to(device)  # the next characters: one fewer at the end
            target_logp[a : a + len(nxt)] = logp[torch.arange(len(nxt), device=device), nxt].double().cpu().numpy()
    return target_logp, top_p, top_i


def heat_level(surprise: float | None) -> int:
    """0 (uncoloured: not scored, or under 1 bit) to 7 (7 bits or more)."""
    if surprise is None or not surprise >= 1.0:
        return 0
    return min(len(HEAT_COLOURS) - 1, int(surprise))


def heatmap_text(records: Sequence[CharScore]) -> Text:
    """The text coloured by surprise for a terminal; characters of one colour in a row share one span."""
    out = Text()
    run: list[str] = []
    run_style: str | None = None
    for r in records:
        style = _terminal_style(r)
        if style != run_style and run:
            out.append("".join(run), run_style)
            run = []
        run_style = style
        run.append(_visible(r.char))
    if run:
        out.append("".join(run), run_style)
    return out


def _terminal_style(r: CharScore) -> str | None:
    if not r.known:
        return f"bold {UNKNOWN_COLOURS[0]} on {UNKNOWN_COLOURS[1]}"
    level = heat_level(r.surprise)
    return f"{HEAT_INK[level]} on {HEAT_COLOURS[level]}" if level else None


def heatmap_html(records: Sequence[CharScore], title: str = "charrnn score") -> str:
    """A standalone HTML page (no external resources): the text coloured by surprise, each character's
    probability and the model's top choices in its hover title. All text is escaped."""
    spans = []
    for r in records:
        shown = _visible(r.char)
        if not shown:
            continue
        level = heat_level(r.surprise)
        cls = ' class="u"' if not r.known else f' class="h{level}"' if level else ""
        spans.append(f'<span{cls} title="{html.escape(_tooltip(r))}">{html.escape(shown)}</span>')
    scored = [r.surprise for r in records if r.surprise is not None]
    mean = f"{sum(scored) / len(scored):.4f} bits/char over {len(scored):,} characters" if scored else "nothing scored"
    css = "\n".join(f".h{k}{{background:{HEAT_COLOURS[k]};color:{HEAT_INK[k]}}}" for k in range(1, len(HEAT_COLOURS)))
    legend = " ".join(
        f'<span class="h{k}">&nbsp;{k}{"+" if k == len(HEAT_COLOURS) - 1 else ""}&nbsp;</span>'
        for k in range(1, len(HEAT_COLOURS))
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>\n"
        "body{font-family:sans-serif;margin:2em;color:#222}\n"
        "pre{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;overflow-wrap:anywhere;"
        "line-height:1.45}\n"
        f"{css}\n"
        f".u{{background:{UNKNOWN_COLOURS[1]};color:{UNKNOWN_COLOURS[0]};font-weight:bold}}\n"
        "</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f"<p>{html.escape(mean)}. Surprise in bits: {legend} "
        '<span class="u">&nbsp;not in the vocabulary&nbsp;</span>. '
        "Hover over a character for its probability and the model's top choices there.</p>\n"
        f"<pre>{''.join(spans)}</pre>\n"
        "</body></html>\n"
    )


def _tooltip(r: CharScore) -> str:
    choices = ", ".join(f"{c!r} {_percent(p)}" for c, p in r.top)
    top = f"; top: {choices}" if choices else ""
    if not r.known:
        return f"{r.char!r}: not in the model's vocabulary, scored as a uniform guess ({r.surprise:.2f} bits){top}"
    if r.prob is None or r.surprise is None:
        return f"{r.char!r}: not scored (the first character is only context)"
    return f"{r.char!r}: p = {_percent(r.prob)}, {r.surprise:.2f} bits{top}"


def _percent(p: float) -> str:
    return f"{p:.2%}" if p >= 1e-4 else f"{p:.1e}"


def _visible(ch: str) -> str:
    """What to show for `ch`: control characters as their Unicode pictures (an ESC from the input must not reach
    the terminal as an escape sequence), a carriage return as nothing (it would move the cursor, and in HTML
    break the line a second time)."""
    cp = ord(ch)
    if ch in "\n\t":
        return ch
    if ch == "\r":
        return ""
    if cp < 0x20:
        return chr(0x2400 + cp)  # ␛ for ESC, ␇ for BEL, ...
    if cp == 0x7F:
        return "\u2421"  # ␡
    if 0x80 <= cp < 0xA0 or 0xD800 <= cp < 0xE000:  # C1 controls; lone surrogates cannot be written out
        return "\ufffd"
    return ch


# ---------------------------------------------------------------------------------------------------
# the model


def _pass_len(wanted: int, batch: int, vocab_size: int) -> int:
    """Positions per forward pass: `wanted`, fewer when (batch, T, V) logits would pass EVAL_LOGITS."""
    return max(1, min(wanted, EVAL_LOGITS // (batch * vocab_size)))


@contextmanager
def _evaluating(model: CharRNN) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for a bounded stretch of work, the model's mode restored after.
    Never held across a generator's yield: inference mode is thread-wide state the caller would inherit."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _losses(
    model: CharRNN, ids: np.ndarray, state: State | None, device: torch.device, seq_len: int, amp: bool
) -> tuple[torch.Tensor, State | None]:
    """-ln p(ids[:, t+1] | ids[:, :t+1], state) for every row: ids (B, N+1) int64 -> losses (B, N) float32 on the
    device, and the state after ids[:, N-1]. `seq_len` positions a pass bound the (B, T, V) logits."""
    B, N = ids.shape[0], ids.shape[1] - 1
    pieces = []
    with _evaluating(model):
        for a in range(0, N, seq_len):
            chunk = torch.from_numpy(np.ascontiguousarray(ids[:, a : a + seq_len + 1])).to(device)  # (B, t+1)
            with runtime.autocast(device, amp):
                logits, state = model(chunk[:, :-1], state)  # (B, t, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten(), reduction="none")  # (B*t,)
            pieces.append(loss.view(B, -1))
    if not pieces:
        return torch.zeros(B, 0, device=device), state
    return torch.cat(pieces, dim=1), state
