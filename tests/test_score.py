"""Contracts of charrnn.generation.score and its siblings: a trained model prefers its own text, the whole-text score is
training's evaluate,
streaming in small blocks changes nothing but the cut, per-line scores add up (in context) or start fresh
(independent), unknown characters are counted, heatmaps show every character escaped, and bad input is one
sentence."""

from __future__ import annotations

import html
import io
import json
import math
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charrnn.errors import CorpusError, UsageError
from charrnn.generation.heatmap import char_scores, collect_text, heatmap_html, heatmap_text
from charrnn.generation.lines import score_lines
from charrnn.generation.score import LN2, LineScore, Score, ScoreConfig
from charrnn.generation.whole import score_text
from charrnn.model import CharRNN, ModelConfig
from charrnn.text.utf8 import decode_stream, read_text
from charrnn.text.vocab import Vocab
from charrnn.training.evaluation import evaluate
from tests.conftest import REPO, word_text

try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]

CPU = torch.device("cpu")
CAN_LIMIT_MEMORY = hasattr(resource, "RLIMIT_AS") and os.path.exists("/proc/self/status")  # the child reads VmSize
ONE_STREAM = ScoreConfig(num_streams=1)


def train_tiny(text: str, steps: int = 150, hidden: int = 48, seed: int = 0) -> tuple[CharRNN, Vocab]:
    """A 1-layer LSTM fitted to `text` for a few seconds: random windows of 32 characters, 16 a step."""
    torch.manual_seed(seed)
    vocab = Vocab(text)
    ids = torch.from_numpy(vocab.encode(text).astype(np.int64))
    model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=hidden, num_layers=1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    T = 32
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - T - 1, (16,)).tolist()
        x = torch.stack([ids[s : s + T] for s in starts])  # (B, T)
        y = torch.stack([ids[s + 1 : s + T + 1] for s in starts])
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), vocab


def untrained(vocab: Vocab, kind: str = "lstm", num_layers: int = 2, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=len(vocab), model=kind, hidden_size=32, num_layers=num_layers))
    with torch.no_grad():
        model.head.weight.mul_(4.0)  # peaked distributions, so differences between paths would show
    return model.eval()


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread is as fast, and a second one spin-waits when another process holds a core
    (a 2-second fixture took two minutes beside a running test suite)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def words() -> tuple[CharRNN, Vocab]:
    return train_tiny(word_text(200))


@pytest.fixture(scope="module")
def pingpong() -> tuple[CharRNN, Vocab]:
    """A model of alternating lines: which line comes next is known only from the line before."""
    return train_tiny("ping\npong\n" * 300, steps=250, hidden=64)


# ---- the whole text ---------------------------------------------------------------------------------


def test_a_trained_model_scores_its_text_better_than_a_shuffled_copy(words):
    model, vocab = words
    text = word_text(60, seed=1)
    chars = list(text)
    random.Random(0).shuffle(chars)
    own = score_text(model, vocab, [text], CPU)
    shuffled = score_text(model, vocab, ["".join(chars)], CPU)
    assert own.chars == shuffled.chars == len(text) - 1  # every character but the first, tail included
    assert own.bits_per_char < shuffled.bits_per_char - 0.5
    assert own.bits_per_char == pytest.approx(own.nats_per_char / LN2)
    assert own.perplexity == pytest.approx(math.exp(own.nats_per_char))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_one_block_is_trainings_evaluate(words, kind):
    model, vocab = words
    if kind != "lstm":
        model = untrained(vocab, kind)
    text = word_text(100, seed=2)  # ~3.5 k characters: 8 streams of more than one 256-character pass
    text = text[: 1 + 8 * ((len(text) - 1) // 8)]  # evaluate drops the (n mod 8) tail; leave none
    ids = vocab.encode(text)
    got = score_text(model, vocab, pieces(text, 1000), CPU)
    assert got.nats_per_char == pytest.approx(evaluate(model, ids, 8, 256, CPU), abs=1e-4)
    assert got.chars == len(text) - 1


def reference_nats(model: CharRNN, ids: np.ndarray, num_streams: int) -> float:
    """ids[1:] as S streams from an empty state, one forward pass each, the tail continuing the last stream."""
    n = len(ids) - 1
    S = min(num_streams, n)
    L = n // S
    x = torch.from_numpy(ids.astype(np.int64))
    V = model.config.vocab_size
    with torch.no_grad():
        rows = torch.stack([x[k * L : k * L + L + 1] for k in range(S)])  # (S, L + 1)
        logits, state = model(rows[:, :-1])
        total = F.cross_entropy(logits.reshape(-1, V), rows[:, 1:].reshape(-1), reduction="sum").item()
        if S * L < n:
            tail = x[S * L :][None]
            logits, _ = model(tail[:, :-1], tuple(s[:, -1:].contiguous() for s in state))
            total += F.cross_entropy(logits.reshape(-1, V), tail[0, 1:], reduction="sum").item()
    return total


def test_small_blocks_score_each_block_as_streams_whatever_the_chunks(words):
    model, vocab = words
    text = word_text(60, seed=3)  # ~2 k characters: 7 blocks of 300, the last one short, tails everywhere
    ids = vocab.encode(text).astype(np.int64)
    cfg = ScoreConfig(block_chars=300)
    expected, prev = 0.0, ids[:0]
    for a in range(0, len(ids), 300):
        block = np.concatenate([prev, ids[a : a + 300]])  # the previous block's last character is its context
        expected += reference_nats(model, block, 8)
        prev = block[-1:]
    for size in (77, 300, 1, len(text)):  # the input's chunking does not move the blocks
        got = score_text(model, vocab, pieces(text, size), CPU, cfg)
        assert got.total_nats == pytest.approx(expected, rel=1e-5)
        assert got.chars == len(text) - 1
    whole = score_text(model, vocab, [text], CPU)  # one block: fewer cold starts, nearly the same
    assert got.nats_per_char == pytest.approx(whole.nats_per_char, rel=0.03)


def test_one_stream_ignores_the_pass_length(words):
    model, vocab = words
    text = word_text(30, seed=4)
    a = score_text(model, vocab, [text], CPU, ScoreConfig(num_streams=1, seq_len=7))
    b = score_text(model, vocab, [text], CPU, ScoreConfig(num_streams=1, seq_len=4096))
    assert a.total_nats == pytest.approx(b.total_nats, rel=1e-5)
    assert b.total_nats == pytest.approx(reference_nats(model, vocab.encode(text), 1), rel=1e-5)


# ---- per line ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_lines_in_context_add_up_to_the_whole_text_as_one_stream(words, kind):
    model, vocab = words
    if kind != "lstm":
        model = untrained(vocab, kind)
    text = word_text(40, seed=5)[:-1] + " tail without newline"
    cfg = ScoreConfig(line_chunk=50)  # many groups: the state is carried between them
    lines = list(score_lines(model, vocab, pieces(text, 33), CPU, cfg))
    assert [line.text for line in lines] == text.splitlines(keepends=True)
    assert lines[0].chars == len(lines[0].text) - 1  # the text's first character is only context
    assert all(line.chars == len(line.text) for line in lines[1:])
    total = Score.empty(len(vocab))
    for line in lines:
        total.add(line)
    whole = score_text(model, vocab, [text], CPU, ONE_STREAM)
    assert total.total_nats == pytest.approx(whole.total_nats, rel=1e-5)
    assert total.chars == whole.chars == len(text) - 1
    default = score_text(model, vocab, [text], CPU)  # 8 streams: 7 more cold starts, about the same
    assert default.nats_per_char == pytest.approx(whole.nats_per_char, rel=0.03)
    one_group = list(score_lines(model, vocab, [text], CPU))
    assert [x.nats for x in one_group] == pytest.approx([x.nats for x in lines], rel=1e-4, abs=1e-5)


def test_independent_lines_start_fresh_and_lose_what_the_previous_line_told(pingpong):
    model, vocab = pingpong
    text = "ping\npong\n" * 20
    context = list(score_lines(model, vocab, [text], CPU))
    alone = list(score_lines(model, vocab, [text], CPU, ScoreConfig(independent=True)))
    assert [line.text for line in alone] == text.splitlines(keepends=True)
    assert all(line.chars == len(line.text) for line in alone)  # primed with "\n": the first is scored too
    # "i" or "o" is a coin toss without the line before: about ln 2 nats a line more.
    extra = sum(line.nats for line in alone) - sum(line.nats for line in context)
    assert extra > 0.3 * len(alone)
    assert score_text(model, vocab, [text], CPU, ScoreConfig(independent=True)).total_nats == pytest.approx(
        sum(line.nats for line in alone)
    )


def test_an_independent_line_scores_the_same_alone_as_in_a_padded_batch(words):
    model, vocab = words
    rng = random.Random(6)
    text = "".join(word_text(1, seed=s)[: rng.randrange(2, 40)] + "\n" for s in range(30)) + "a"
    # several batches of several lengths, each in passes of 7 positions with the state carried
    cfg = ScoreConfig(independent=True, line_batch_chars=200, seq_len=7)
    batched = list(score_lines(model, vocab, pieces(text, 17), CPU, cfg))
    assert [line.text for line in batched] == text.splitlines(keepends=True)  # input order, not batch order
    for line in batched:
        (single,) = score_lines(model, vocab, [line.text], CPU, ScoreConfig(independent=True))
        assert line.nats == pytest.approx(single.nats, rel=1e-5, abs=1e-6)
        assert line.chars == single.chars == len(line.text)


def test_independent_lines_without_a_newline_in_the_vocabulary_start_from_a_zero_state():
    vocab = Vocab("ab ")
    model = untrained(vocab, num_layers=1)
    lines = list(score_lines(model, vocab, ["ab a\nb b\nx"], CPU, ScoreConfig(independent=True)))
    assert [line.text for line in lines] == ["ab a\n", "b b\n", "x"]
    # the first known character is only context; the unknown "\n" and "x" each count as ln 3 nats
    assert [(line.chars, line.unknown) for line in lines] == [(4, 1), (3, 1), (1, 1)]
    assert lines[2].nats == pytest.approx(math.log(3))
    assert lines[0].unknown_chars == ("\n",)


def long_line(seed: int) -> str:
    """~5 k characters without a break, unknown ones inside and one run of them longer than a 700-character piece."""
    words = word_text(150, seed=seed).replace("\n", " ")
    return words[:1500] + "€" + words[1500:3000] + "ß" * 800 + words[3000:4200] + "é" + words[4200:] + "\n"


def encoded_at_once(monkeypatch) -> list[int]:
    """The length of every text that Vocab.lookup encodes from now on: what one step of scoring holds."""
    sizes: list[int] = []
    lookup = Vocab.lookup

    def recording(self: Vocab, text: str):
        sizes.append(len(text))
        return lookup(self, text)

    monkeypatch.setattr(Vocab, "lookup", recording)
    return sizes


def test_a_long_line_in_context_is_one_stream_scored_in_pieces(words, monkeypatch):
    model, vocab = words
    line = long_line(11)
    text = word_text(3, seed=12) + line + word_text(3, seed=13)
    whole_line = list(score_lines(model, vocab, [text], CPU))  # the long line encoded at once
    sizes = encoded_at_once(monkeypatch)
    cfg = ScoreConfig(block_chars=700, line_chunk=50)  # the long line: 8 pieces, the state carried across them
    pieced = list(score_lines(model, vocab, pieces(text, 333), CPU, cfg))
    assert max(sizes) <= 700 + 50  # never the long line whole: a piece, or a group of short lines
    assert [x.text for x in pieced] == [x.text for x in whole_line] == text.splitlines(keepends=True)
    assert [x.nats for x in pieced] == pytest.approx([x.nats for x in whole_line], rel=1e-6)
    assert [(x.chars, x.unknown, x.unknown_chars) for x in pieced] == [
        (x.chars, x.unknown, x.unknown_chars) for x in whole_line
    ]
    long = pieced[3]
    assert (long.text, long.chars, long.unknown, long.unknown_chars) == (line, len(line), 802, ("€", "ß", "é"))
    # first in the text, the line is the whole text scored as one stream
    (first,) = score_lines(model, vocab, pieces(line, 333), CPU, cfg)
    alone = score_text(model, vocab, [line], CPU, ONE_STREAM)
    assert first.nats == pytest.approx(alone.total_nats, rel=1e-6)
    assert first.chars == alone.chars == len(line) - 1


def test_a_long_independent_line_is_one_stream_scored_in_pieces(words, monkeypatch):
    model, vocab = words
    line = long_line(14)
    text = "the cat\n" + line + "a dog\n"
    sizes = encoded_at_once(monkeypatch)
    cfg = ScoreConfig(independent=True, block_chars=700)
    got = list(score_lines(model, vocab, pieces(text, 333), CPU, cfg))
    assert max(sizes) <= 2 * 700  # a piece of the long line, or a window of short lines
    assert [x.text for x in got] == text.splitlines(keepends=True)
    # from a fresh state primed with "\n": the line after a newline, scored as a whole text in one stream
    alone = score_text(model, vocab, ["\n" + line], CPU, ONE_STREAM)
    assert got[1].nats == pytest.approx(alone.total_nats, rel=1e-6)
    assert (got[1].chars, got[1].unknown, got[1].unknown_chars) == (len(line), 802, ("€", "ß", "é"))
    for short in (got[0], got[2]):  # the lines around it start fresh, untouched by it
        (single,) = score_lines(model, vocab, [short.text], CPU, ScoreConfig(independent=True))
        assert short.nats == pytest.approx(single.nats, rel=1e-6)


# A child that scores one long line under an address-space limit: what it holds past its warmed-up size.
# Measured (3 M characters, 64 kB reads, 256 k blocks): the whole text needs ~40 MB, a line in pieces ~35 MB,
# and the line encoded at once (~37 bytes a character) ~115 MB.
LONG_LINE_CHARS = 3_000_000
HEADROOM = 72 << 20
MEMORY_CHILD = """
import json, resource, sys
import torch
torch.set_num_threads(1)
from charrnn.model import CharRNN, ModelConfig
from charrnn.generation.lines import score_lines
from charrnn.generation.score import ScoreConfig
from charrnn.generation.whole import score_text
from charrnn.text.utf8 import read_text
from charrnn.text.vocab import Vocab

path, headroom, independent = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "independent"
cpu = torch.device("cpu")
vocab = Vocab("ab \\n")
torch.manual_seed(0)
model = CharRNN(ModelConfig(vocab_size=len(vocab), hidden_size=8, num_layers=1)).eval()
cfg = ScoreConfig(block_chars=1 << 18, seq_len=1024, independent=independent)  # 1024: fewer passes, faster
whole_cfg = ScoreConfig(block_chars=1 << 18, seq_len=1024)
for _ in range(2):  # warm up: the first passes' lazy allocations come before the limit
    score_text(model, vocab, ["ab a\\nb ba\\n" * 50], cpu, whole_cfg)
    list(score_lines(model, vocab, ["ab a\\nb ba\\n" * 50], cpu, cfg))
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
out = {}
try:
    out["whole"] = score_text(model, vocab, read_text(path, 1 << 16), cpu, whole_cfg).total_nats
    out["lines"] = [x.nats for x in score_lines(model, vocab, read_text(path, 1 << 16), cpu, cfg)]
except MemoryError:
    out["error"] = "MemoryError"
print(json.dumps(out))
"""


@pytest.mark.skipif(
    not CAN_LIMIT_MEMORY,
    reason="needs resource.RLIMIT_AS and /proc/self/status (Linux) to bound the address space",
)
@pytest.mark.parametrize("mode", ["in-context", "independent"])
def test_a_long_line_scores_in_the_memory_that_the_whole_text_needs(tmp_path, mode):
    path = tmp_path / "long.txt"
    path.write_text("ab " * (LONG_LINE_CHARS // 3) + "\n", encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(path), str(HEADROOM), mode],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "MALLOC_ARENA_MAX": "1"},  # one malloc arena: less reserved address space to limit
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert "error" not in out, "the long line ran out of memory where the whole text did not"
    (nats,) = out["lines"]
    assert nats == pytest.approx(out["whole"], rel=0.01)  # one stream, or 8 streams a block: about the same


# ---- unknown characters -----------------------------------------------------------------------------


def test_unknown_characters_cost_a_uniform_guess_or_are_skipped(words):
    model, vocab = words
    text = word_text(20, seed=7)
    odd = "€" + text[:50] + "€" + text[50:120] + "ßé€" + text[120:]
    clean = score_text(model, vocab, [text], CPU)
    penalised = score_text(model, vocab, pieces(odd, 64), CPU)
    # Unknown characters are not fed to the model, so the known characters are scored exactly as without them.
    assert penalised.total_nats == pytest.approx(clean.total_nats + 5 * math.log(len(vocab)), rel=1e-9)
    assert penalised.chars == clean.chars + 5
    assert (penalised.unknown, penalised.unknown_chars) == (5, ["€", "ß", "é"])
    note = penalised.unknown_note()
    assert note is not None and "'€'" in note and f"ln {len(vocab)}" in note
    skipped = score_text(model, vocab, [odd], CPU, ScoreConfig(skip_unknown=True))
    assert skipped.total_nats == pytest.approx(clean.total_nats, rel=1e-9)
    assert (skipped.chars, skipped.unknown, skipped.unknown_penalty) == (clean.chars, 5, 0.0)
    assert "skipped" in (skipped.unknown_note() or "")
    assert clean.unknown_note() is None

    lines = list(score_lines(model, vocab, [odd], CPU))
    total = Score.empty(len(vocab))
    for line in lines:
        total.add(line)
    assert (total.unknown, total.unknown_chars) == (5, ["€", "ß", "é"])
    assert total.chars == penalised.chars
    assert total.total_nats == pytest.approx(score_text(model, vocab, [odd], CPU, ONE_STREAM).total_nats, rel=1e-5)


# ---- heatmaps ---------------------------------------------------------------------------------------


def test_char_scores_are_the_one_stream_score_character_by_character(words):
    model, vocab = words
    text = "the cat <script>alert('x')</script> & \"dog\"\n" + word_text(3, seed=8)
    records = char_scores(model, vocab, text, CPU)
    assert "".join(r.char for r in records) == text
    assert records[0].prob is None and records[0].surprise is None  # the first character is only context
    for r in records[1:]:
        if r.known:
            assert r.prob == pytest.approx(2.0**-r.surprise, rel=1e-6)
        else:  # "<", "(", "'", "&", '"' ... are not in the word corpus
            assert r.prob is None and r.surprise == pytest.approx(math.log2(len(vocab)))
        probs = [p for _, p in r.top]
        assert len(r.top) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
    bits = sum(r.surprise for r in records if r.surprise is not None)
    assert bits * LN2 == pytest.approx(score_text(model, vocab, [text], CPU, ONE_STREAM).total_nats, rel=1e-5)


def test_heatmaps_show_every_character_escaped_with_the_top_choices(words):
    model, vocab = words
    text = "the cat <script>alert('x')</script> & \"dog\"\n" + word_text(3, seed=8)
    records = char_scores(model, vocab, text, CPU)
    rich_text = heatmap_text(records)
    assert rich_text.plain == text
    assert rich_text.spans  # coloured somewhere

    page = heatmap_html(records, title="<b>words</b>")
    assert "<script" not in page and '">&lt;</span>' in page  # one span a character
    assert "<b>" not in page and "&lt;b&gt;words&lt;/b&gt;" in page
    assert "http" not in page and "src=" not in page  # standalone: nothing to fetch
    body = page.split("<pre>", 1)[1].split("</pre>", 1)[0]
    assert html.unescape(re.sub(r"<[^>]*>", "", body)) == text
    r = records[5]
    best, p = r.top[0]
    assert html.escape(f"{best!r} ") in page and r.prob is not None
    assert len(re.findall(r'<span[^>]* title="', body)) == len(text)


def test_control_characters_never_reach_the_terminal(words):
    model, vocab = words
    shown = heatmap_text(char_scores(model, vocab, "the \x1b[31mcat\r\n", CPU)).plain
    assert "\x1b" not in shown and "\r" not in shown and "\u241b[31mcat\n" in shown


def test_heatmaps_are_bounded(words):
    model, vocab = words
    assert collect_text(["abc", "de"], max_chars=5) == "abcde"
    with pytest.raises(UsageError, match="at most 5 characters"):
        collect_text(iter(["abc", "def", "never read"]), max_chars=5)
    with pytest.raises(UsageError, match="at most 10 characters"):
        char_scores(model, vocab, "x" * 11, CPU, max_chars=10)


# ---- input and errors -------------------------------------------------------------------------------


def decoded(data: bytes, chunk_bytes: int = 1 << 20) -> str:
    return "".join(decode_stream(io.BytesIO(data), "in.txt", chunk_bytes))


def test_decoding_streams_utf8_and_strips_a_bom():
    text = "héllo wörld €𝄞\r\n" * 3
    for size in (1, 2, 3, 5, 1 << 20):  # characters split between reads are carried over
        assert decoded(text.encode(), size) == text
        assert decoded(b"\xef\xbb\xbf" + text.encode(), size) == text


@pytest.mark.parametrize(
    ("data", "chunk", "message"),
    [
        (b"", 16, "in.txt is empty"),
        (b"\xef\xbb\xbf", 16, "in.txt is empty"),
        (b"ab\x00c", 16, r"binary file \(byte 2 is NUL\)"),
        (b"abcdefgh\x00", 4, r"byte 8 is NUL"),
        (b"abc\xffdef", 16, "not valid UTF-8 at byte 3 \\(0xff\\)"),
        (b"ab\xe2\x82\xacdef\xff", 4, "at byte 8"),
        (b"\xef\xbb\xbfab\xe2\x82\xacdef\xff", 4, "at byte 11"),
        (b"ab\xe2\x82", 16, "at byte 2"),
    ],
)
def test_bad_input_is_one_sentence(data, chunk, message):
    with pytest.raises(CorpusError, match=message) as err:
        decoded(data, chunk)
    assert "\n" not in str(err.value) and str(err.value).endswith(".")


def test_read_text_reads_files_and_standard_input(tmp_path, monkeypatch, words):
    model, vocab = words
    text = word_text(10, seed=9)
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert "".join(read_text(path, chunk_bytes=7)) == text
    assert score_text(model, vocab, read_text(path, 7), CPU).total_nats == pytest.approx(
        score_text(model, vocab, [text], CPU).total_nats, rel=1e-9
    )
    with pytest.raises(CorpusError, match="cannot read .*missing.txt"):
        read_text(tmp_path / "missing.txt")  # at once, before any model work
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\xff")))
    with pytest.raises(CorpusError, match="standard input is not valid UTF-8 at byte 2"):
        list(read_text("-"))


def test_nothing_to_score_is_an_error(words):
    model, vocab = words
    with pytest.raises(CorpusError, match="nothing to score"):
        score_text(model, vocab, ["a"], CPU)
    with pytest.raises(CorpusError, match="nothing to score"):
        score_text(model, vocab, ["€€€"], CPU, ScoreConfig(skip_unknown=True))
    (line,) = score_lines(model, vocab, ["\n"], CPU)
    assert line.chars == 0 and math.isnan(line.bits_per_char) and line.tsv().startswith("nan\t0.0000\t0\t")


def test_a_bad_config_is_refused_before_any_work(words):
    model, vocab = words
    for bad in (ScoreConfig(num_streams=0), ScoreConfig(block_chars=0), ScoreConfig(seq_len=-1)):
        with pytest.raises(UsageError, match="at least 1"):
            score_text(model, vocab, ["never read"], CPU, bad)
        with pytest.raises(UsageError, match="at least 1"):
            score_lines(model, vocab, ["never read"], CPU, bad)


def test_scores_print_as_tsv_and_json():
    line = LineScore("hello\tworld\r\n", 3.0, 13)
    assert line.tsv() == f"{3 / 13 / LN2:.4f}\t3.0000\t13\thello\tworld"
    score = Score(total_nats=10.0, chars=5, unknown=1, unknown_chars=["€"], vocab_size=8)
    d = json.loads(json.dumps(score.to_dict()))
    assert d["nats_per_char"] == 2.0 and d["bits_per_char"] == pytest.approx(2 / LN2)
    assert d["perplexity"] == pytest.approx(math.exp(2.0)) and d["unknown_penalty_nats"] == pytest.approx(math.log(8))
    assert d["unknown_chars"] == ["€"]
    assert Score().to_dict()["nats_per_char"] is None  # nothing scored: undefined, and still valid JSON
    assert "2.0000 nats/char" in score.summary()


@pytest.mark.gpu
def test_cuda_scores_match_the_cpu(words):
    model, vocab = words
    cuda = torch.device("cuda")
    gpu_model = CharRNN(model.config).to(cuda).eval()
    gpu_model.load_state_dict(model.state_dict())
    text = word_text(50, seed=10) + "€"
    for cfg in (ScoreConfig(), ScoreConfig(block_chars=500), ScoreConfig(independent=True)):
        on_cpu = score_text(model, vocab, [text], CPU, cfg)
        on_gpu = score_text(gpu_model, vocab, [text], cuda, cfg)
        assert on_gpu.total_nats == pytest.approx(on_cpu.total_nats, rel=1e-3)
        assert on_gpu.chars == on_cpu.chars
    lines_cpu = [x.nats for x in score_lines(model, vocab, [text], CPU)]
    lines_gpu = [x.nats for x in score_lines(gpu_model, vocab, [text], cuda)]
    assert lines_gpu == pytest.approx(lines_cpu, rel=1e-3, abs=1e-3)
    probs_cpu = [r.prob for r in char_scores(model, vocab, text[:500], CPU) if r.prob is not None]
    probs_gpu = [r.prob for r in char_scores(gpu_model, vocab, text[:500], cuda) if r.prob is not None]
    assert probs_gpu == pytest.approx(probs_cpu, rel=1e-3, abs=1e-4)
    amp = score_text(gpu_model, vocab, [text], cuda, ScoreConfig(amp=True))  # fp16: close, not equal
    assert amp.nats_per_char == pytest.approx(score_text(model, vocab, [text], CPU).nats_per_char, rel=1e-2)
