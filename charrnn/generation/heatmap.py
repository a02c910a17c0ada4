"""Per-character surprise (char_scores) and the heatmaps drawn from it: Rich text for a terminal, a standalone
HTML page. One stream in context, for at most MAX_HEATMAP_CHARS characters; every character shown is made safe
(_visible) and every one in HTML escaped."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rich.text import Text

from charrnn import runtime
from charrnn.errors import UsageError
from charrnn.generation.score import LINE_CHUNK, LN2, Encoder, evaluating, pass_len
from charrnn.model import CharRNN, State
from charrnn.text.vocab import Vocab

MAX_HEATMAP_CHARS = 200_000  # heatmaps: a page of ~100 bytes a character (20 MB); records of ~0.5 KB each
TOP_K = 5  # heatmaps: the model's choices shown at each character

# Heat levels: level k (1..7) is a surprise of k to k+1 bits (7: 7 bits or more, p < 1/128); below 1 bit
# (p > 1/2) a character is left uncoloured, so a page shows only where the model was surprised.
HEAT_COLOURS = ("", "#fff3b0", "#ffe08a", "#ffc46b", "#ffa154", "#f87a45", "#e8503a", "#c0282a")
HEAT_INK = ("", "#000000", "#000000", "#000000", "#000000", "#000000", "#ffffff", "#ffffff")
UNKNOWN_COLOURS = ("#ffffff", "#a020f0")  # ink, background: a character outside the vocabulary


@dataclass(frozen=True, slots=True)
class CharScore:
    char: str
    surprise: float | None  # bits, -log2 prob; log2(V) for an unknown character (its penalty); None: not scored
    prob: float | None  # p(char | the text before it); None for the first character (no context) and unknown ones
    top: tuple[tuple[str, float], ...]  # the model's most likely characters at this position, best first
    known: bool = True


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
    ids, known = Encoder(vocab).encode(text)
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
    T = pass_len(LINE_CHUNK, 1, V)
    state: State | None = None
    with evaluating(model):
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
