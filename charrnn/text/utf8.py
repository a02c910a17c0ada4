"""Strict streaming UTF-8: the one reader of text bytes, for a corpus (encoder.py) and for a text to score.

An input is read in chunks and never held whole:
  - a leading UTF-8 BOM is stripped (and still counted in byte offsets);
  - a NUL byte means the input is binary: within its first `sniff_bytes` (a corpus: 8 KiB, like git) or anywhere
    (a text to score);
  - bytes that are not UTF-8 are refused at their byte offset in the input; a character split between two reads
    is carried over, so where the reads fall changes nothing;
  - a chunk of pure ASCII is passed on undecoded (its bytes are its code points), the encoder's fast path.
What is wrong is an `Unusable` (a CorpusError): its message is the sentence the user reads, its `reason` the short
form a directory walk lists in Corpus.skipped. How a sentence ends is the caller's `Wording`, so each command
keeps its own advice word for word.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charrnn.errors import CorpusError
from charrnn.text import stdin

BOM = codecs.BOM_UTF8
READ_BYTES = 1 << 20  # a text to score: bytes decoded at a time
EVERYWHERE = sys.maxsize  # sniff_bytes: a NUL anywhere in the input means binary


class Unusable(CorpusError):
    """An input that cannot be read as UTF-8 text; `reason` is the short form kept in Corpus.skipped."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Wording:
    """The caller's ends of the sentences: what follows "LABEL looks like a binary file " ({offset}: the NUL's
    byte offset), and the example in "convert it to UTF-8 (e.g. ...)."."""

    binary: str
    convert: str


SCORING = Wording("(byte {offset} is NUL); give a UTF-8 text file to score.", "with iconv -f latin1 -t utf-8")


def corpus_wording(label: str, piped: bool) -> Wording:
    """A corpus's sentences: the conversion is spelled out for its file (or for the pipe it came through)."""
    target = " in the pipe" if piped else f" {label} > converted.txt"
    return Wording("(it contains NUL bytes); give a UTF-8 text file.", "iconv -f latin1 -t utf-8" + target)


def open_binary(path: Path, label: str) -> BinaryIO:
    """`path` opened for reading bytes; Unusable naming `label` when it cannot be."""
    try:
        return open(path, "rb")
    except OSError as err:
        raise Unusable(
            f"cannot read {label}: {err.strerror}; check that it exists and is readable.",
            f"unreadable: {err.strerror}",
        ) from err


def chunks(
    f: BinaryIO, label: str, wording: Wording, chunk_bytes: int, *, strip_bom: bool = True, sniff_bytes: int = 0
) -> Iterator[tuple[bytes, str | None]]:
    """(bytes, text) for each non-empty chunk of `f`, strictly decoded: the bytes exactly as ingested (a stripped
    BOM left out) and their text, or None for a chunk of pure ASCII (its bytes are its text). A NUL within the
    first `sniff_bytes` bytes (0: not looked for; EVERYWHERE) and bytes that are not UTF-8 raise Unusable.
    With `sniff_bytes`, the first read is at most that long, so a binary input costs one small read."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of this input consumed before the current chunk, a stripped BOM included
    head = _read(f, label, len(BOM)) if strip_bom else b""  # on its own, so a BOM is found whatever chunk_bytes is
    if head == BOM:
        offset, head = len(BOM), b""
    size = min(chunk_bytes, sniff_bytes) if sniff_bytes else chunk_bytes
    while True:
        chunk, size = _read(f, label, size), chunk_bytes
        if head:
            chunk, head = head + chunk, b""
        nul = chunk.find(b"\0", 0, sniff_bytes - offset) if offset < sniff_bytes else -1
        if nul >= 0:
            raise Unusable(f"{label} looks like a binary file {wording.binary.format(offset=offset + nul)}", "binary")
        if chunk and chunk.isascii() and not decoder.getstate()[0]:  # valid as it is: no character split before it
            yield chunk, None
            offset += len(chunk)
            continue
        try:
            text = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as err:
            # err.start indexes the decoder's carried-over bytes (a character split by the last read) + chunk.
            bad = offset - len(decoder.getstate()[0]) + err.start
            raise Unusable(
                f"{label} is not valid UTF-8 at byte {bad} (0x{err.object[err.start]:02x}); "
                f"convert it to UTF-8 (e.g. {wording.convert}).",
                f"not UTF-8 at byte {bad}",
            ) from None
        if not chunk:
            return
        yield chunk, text
        offset += len(chunk)


def _read(f: BinaryIO, label: str, size: int) -> bytes:
    try:
        return f.read(size)
    except OSError as err:
        raise Unusable(
            f"cannot read {label}: {err.strerror}; check the file and the disk.", f"unreadable: {err.strerror}"
        ) from err


# ---- a text to score ----------------------------------------------------------------------------------------


def read_text(source: str | Path, chunk_bytes: int = READ_BYTES) -> Iterator[str]:
    """The text of a file, or of standard input for "-", as str chunks: strict UTF-8 decoded as it streams, a
    leading BOM stripped. Opening fails at once (CorpusError); an empty, binary (NUL) or non-UTF-8 input raises
    CorpusError while iterating, at the chunk where it shows."""
    if str(source) == "-":
        return decode_stream(stdin.binary("the text '-'"), "standard input", chunk_bytes)
    label = str(source)
    f = open_binary(Path(source), label)  # now, so a missing file fails before a model is loaded; _closing closes it
    return _closing(f, decode_stream(f, label, chunk_bytes))


def _closing(f: BinaryIO, texts: Iterator[str]) -> Iterator[str]:
    with f:
        yield from texts


def decode_stream(f: BinaryIO, label: str, chunk_bytes: int = READ_BYTES) -> Iterator[str]:
    """Non-empty str chunks of binary stream `f` (a NUL anywhere refused); `label` names it in errors."""
    empty = True
    for chunk, text in chunks(f, label, SCORING, chunk_bytes, sniff_bytes=EVERYWHERE):
        text = chunk.decode("ascii") if text is None else text
        if text:
            empty = False
            yield text
    if empty:
        raise CorpusError(f"{label} is empty; give it some text to score.")
