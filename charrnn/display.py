"""Text for people: strings from outside made safe for a terminal, and durations read and written.

Used by every stage (vocabulary listings, a server's reason phrase, progress lines, --max-time), so it sits at
the ground with errors.py and imports nothing of charrnn's but errors.
"""

from __future__ import annotations

import re
import unicodedata

from charrnn.errors import UsageError

# Not control characters, yet they change what a terminal shows: bidi embeddings, overrides and isolates reorder
# the text after them (U+202E shows "txt.exe" as "exe.txt"), and the line and paragraph separators break a line.
_DISGUISING = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


def printable(text: str, keep: str = "\n\t") -> str:
    """Text safe for a terminal: control characters, C0 and C1 (a crafted ESC or CSI sequence could drive it),
    bidi and line-separator characters, and lone surrogates (no UTF-8 stream can carry one), but those in `keep`,
    written as escapes; everything else, non-breaking spaces and emoji included, as it is."""
    return "".join(_escaped(c) if c not in keep and _unsafe(c) else c for c in text)


def _unsafe(c: str) -> bool:
    return c in _DISGUISING or unicodedata.category(c) in ("Cc", "Cs")


def _escaped(c: str) -> str:
    return c.encode("unicode_escape").decode("ascii")


def parse_duration(text: str | None) -> float | None:
    """'90s', '10m', '2h', '1h30m' or plain seconds -> seconds (None: None)."""
    if text is None:
        return None
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", s)
    if not parts or "".join(n + u for n, u in parts) != s.replace(" ", ""):
        raise UsageError(f"{text!r} is not a duration; use e.g. 90s, 10m, 2h or 1h30m (a bare number is seconds).")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
