"""Vocab: a corpus's distinct characters and their ids. Ingestion builds it, training stores it in checkpoints,
sampling and scoring encode and decode with it; none of them needs the others' imports for that."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from charrnn.errors import CorpusError

MAX_LISTED = 20  # unknown characters named in one error message


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
            listed = ", ".join(repr(c) for c in unknown[:MAX_LISTED]) + (" ..." if len(unknown) > MAX_LISTED else "")
            raise CorpusError(
                f"{len(unknown)} character(s) are not in the model's vocabulary ({listed}); "
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
        chars = d.get("chars") if isinstance(d, dict) else None
        if not isinstance(chars, list) or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise CorpusError("the stored vocabulary is not a list of single characters; it is corrupt or foreign.")
        vocab = cls(chars)
        if vocab.chars != chars:
            # Ids are positions, so re-sorting a foreign list would silently scramble every id.
            raise CorpusError("the stored vocabulary is not sorted and distinct; it is corrupt or foreign.")
        return vocab
