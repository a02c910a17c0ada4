"""Vocab: a corpus's distinct characters and their ids. Ingestion builds it, training stores it in checkpoints,
sampling and scoring encode and decode with it; none of them needs the others' imports for that."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from charrnn.display import printable
from charrnn.errors import CorpusError

MAX_LISTED = 20  # unknown characters named in one error message
NOT_SORTED = "is not a sorted list of distinct single characters"
SURROGATES = (0xD800, 0xDFFF)  # code points of lone surrogates: no UTF-8 text can hold one


class StoredVocabError(CorpusError):
    """A stored vocabulary that cannot be used. `problem` ("holds ...") is the short form that a checkpoint's
    load error puts after the file's name and field."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"the stored vocabulary {problem}; it is corrupt or foreign.")
        self.problem = problem


def quoted(c: str) -> str:
    """One character for a message on stderr, quoted, and escaped by display.printable: a vocabulary or a text may
    hold ESC, a C1 control or a bidi override, which must never reach a terminal raw."""
    mark = '"' if c == "'" else "'"
    return f"{mark}{printable(c, keep='')}{mark}"


def listed(chars: Sequence[str], sep: str = ", ") -> str:
    """The first MAX_LISTED of `chars`, each quoted(), and ' ...' when there are more."""
    return sep.join(quoted(c) for c in chars[:MAX_LISTED]) + (" ..." if len(chars) > MAX_LISTED else "")


def code_point(c: str) -> str:
    return f"U+{ord(c):04X}"


class Vocab:
    """The distinct characters of a corpus, sorted by code point; a character's id is its position."""

    def __init__(self, chars: Iterable[str]) -> None:
        distinct = set(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in distinct):
            raise CorpusError("a vocabulary must be made of single characters; rebuild it from the corpus.")
        self.chars: list[str] = sorted(distinct)
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)  # (V,) ascending

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab({len(self)} chars)"

    @property
    def dtype(self) -> np.dtype:
        for dtype in (np.uint8, np.uint16):
            if len(self) <= np.iinfo(dtype).max + 1:
                return np.dtype(dtype)
        return np.dtype(np.uint32)

    def start(self) -> str:
        """An unprinted first character to sample from when there is no prime: a newline where the text has one."""
        return "\n" if "\n" in self._stoi else self.chars[0]

    def unknown(self, text: str) -> list[str]:
        return [c for c in dict.fromkeys(text) if c not in self._stoi]

    def lookup(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """text (N chars) -> (ids (N,) int64, valid only where known; known (N,) bool; code points (N,) int64)."""
        # surrogatepass: a lone surrogate (e.g. from surrogateescape'd input) is reported as unknown, not a crash.
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)  # (N,)
        ids = np.searchsorted(self._codes, cps)
        known = ids < len(self)
        known[known] = self._codes[ids[known]] == cps[known]
        return ids, known, cps

    def encode(self, text: str) -> np.ndarray:
        """text -> ids (N,) int64; a character outside the vocabulary is a CorpusError naming it."""
        ids, known, _ = self.lookup(text)
        if not known.all():
            unknown = self.unknown(text)
            raise CorpusError(
                f"{len(unknown)} character(s) are not in the model's vocabulary ({listed(unknown)}); "
                "use only characters that occur in the training corpus."
            )
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        chars, size = self.chars, len(self.chars)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < size:
                raise CorpusError(f"id {i} is outside the vocabulary of {size} characters; decode the model's own ids.")
            out.append(chars[i])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"chars": list(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        """A stored vocabulary, refused (StoredVocabError) unless the model could read and write every character."""
        chars = d.get("chars") if isinstance(d, dict) else None
        if not isinstance(chars, list) or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise StoredVocabError(NOT_SORTED)
        vocab = cls(chars)
        if vocab.chars != chars:
            # Ids are positions, so re-sorting a foreign list would silently scramble every id.
            raise StoredVocabError(NOT_SORTED)
        vocab._refuse_surrogates()
        return vocab

    def _refuse_surrogates(self) -> None:
        """Checked on load: a lone surrogate sampled fails mid-stream at its first write to stdout, and a corpus
        read as strict UTF-8 never holds one, so such a vocabulary was edited in, not trained."""
        lo, hi = np.searchsorted(self._codes, SURROGATES[0]), np.searchsorted(self._codes, SURROGATES[1], "right")
        bad = self.chars[lo:hi]
        if bad:
            named = ", ".join(code_point(c) for c in bad[:MAX_LISTED]) + (" ..." if len(bad) > MAX_LISTED else "")
            what = "a lone surrogate" if len(bad) == 1 else f"{len(bad)} lone surrogates"
            raise StoredVocabError(f"holds {what} ({named}), which no UTF-8 text can carry")
