"""Standard input, for every command that reads it ('-'): a corpus, a text to score, a prime.

A shell can start a command with stdin closed (`<&-`, some daemons, cron): Python then has no sys.stdin at all,
or one whose descriptor is not open. Each reader asks here, so that is one sentence, never an AttributeError.
"""

from __future__ import annotations

import codecs
import os
import sys
from typing import BinaryIO

from charrnn.errors import CorpusError


def binary(what: str) -> BinaryIO:
    """sys.stdin's byte stream; CorpusError (exit 1) naming `what` (e.g. "--prime -") when stdin is closed."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None or stream.closed or not _descriptor_open(stream):
        raise CorpusError(
            f"{what} is standard input, which is closed; pipe the text in, or redirect it (e.g. < file.txt)."
        )
    return stream


def _descriptor_open(stream: BinaryIO) -> bool:
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # an in-memory stand-in (a test runner's): no descriptor, yet readable
        return True
    try:
        os.fstat(fd)
    except OSError:  # EBADF: descriptor 0 was closed under a live sys.stdin
        return False
    return True


def read_text(what: str) -> str:
    """All of standard input as strict UTF-8 (a leading BOM dropped); CorpusError with the byte offset of the first
    byte that is not UTF-8, as corpora say it."""
    raw = binary(what).read()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"{what}: standard input is not valid UTF-8 at byte {e.start} (0x{raw[e.start]:02x}); "
            "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None
