"""The two-pass encoder: a corpus's inputs -> sha256, Vocab -> ids written into the cache, never the text whole.

Ingestion streams the bytes in chunks and never holds the text as one str (char-rnn#19,
char-rnn-tensorflow#30: in-RAM preprocessing needed ~20x the file size):
  pass 1  sha256 + strict UTF-8 validation (utf8.py) + the set of code points seen  -> Vocab
          (a directory file found unusable midway is rolled back out of the hash and the set)
  pass 2  code points -> ids through a lookup table, appended to a temp file, renamed into the cache
Both passes vectorise with numpy: a chunk's str becomes an array of its code points (no Python loop; a chunk
that is pure ASCII is its own code points and is not decoded), and `lut.take(cps)` maps them to ids (bincount/LUT
is ~6x faster than a dict loop, research/performance.md). Chunks are 512 KiB, so that a chunk's buffers stay in
cache and in memory that malloc keeps (_settle_allocator): with 8 MiB chunks every decoded string was page-faulted
in afresh, and decoding, the largest cost, ran at less than half the speed. Hashing and writing run on a helper
thread, one chunk behind the decoding. A stream (stdin, a FIFO) is read once: pass 1 spools it for pass 2.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from charrnn.errors import CorpusError
from charrnn.text import entries, stdin, utf8
from charrnn.text.cache import cache_error
from charrnn.text.sources import Input
from charrnn.text.vocab import Vocab, quoted

CHUNK_BYTES = 512 << 10  # measured: 256-512 KiB fastest, 1 MiB ~10% slower, 8 MiB ~2x slower
_CODE_POINTS = 0x110000  # every Unicode code point fits below this
_SNIFF_BYTES = 8192  # like git: a NUL in the first 8 KiB means binary
_PROGRESS_MIN_BYTES = 32 << 20  # smaller corpora encode in well under a second: no bar
_SETTLE_BYTES = (32 << 20) - (64 << 10)  # just under glibc's largest dynamic mmap threshold


# ---- pass 1: hash, validate, collect the vocabulary -------------------------------------------------------


@contextmanager
def _open_input(inp: Input) -> Iterator[BinaryIO]:
    if inp.path is None:
        yield stdin.binary("the corpus '-'")  # not ours to close
        return
    with utf8.open_binary(inp.path, inp.label) as f:
        yield f


def _code_point_chunks(inp: Input, f: BinaryIO, chunk_bytes: int) -> Iterator[tuple[bytes, np.ndarray]]:
    """Yield (bytes, code points) chunk by chunk, strictly decoded; the bytes are exactly what is ingested (no BOM).

    The code points are uint32, or the bytes themselves as uint8 for a chunk that is pure ASCII (nothing to decode).
    """
    wording = utf8.corpus_wording(inp.label, piped=inp.path is None)
    sniff = _SNIFF_BYTES if inp.sniff else 0
    for chunk, text in utf8.chunks(f, inp.label, wording, chunk_bytes, strip_bom=inp.strip_bom, sniff_bytes=sniff):
        yield chunk, np.frombuffer(chunk, dtype=np.uint8) if text is None else _code_points(text)


class _Helper:
    """One job at a time on a helper thread, overlapping the next chunk's decoding.

    Hashing and file writes release the GIL, so on two cores they cost almost nothing; waiting for the
    previous job before starting the next keeps the order of writes and at most one extra chunk in memory.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charrnn-corpus")
        self._pending: Future | None = None

    def submit(self, job: Callable[..., None], *args: object) -> None:
        self.wait()
        self._pending = self._pool.submit(job, *args)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # re-raises the job's exception here

    def __enter__(self) -> _Helper:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _code_points(text: str) -> np.ndarray:
    """(N,) one uint32 per character, native byte order.

    numpy's str dtype is UCS-4, so np.array copies the decoded text's code points straight in (a memcpy for text
    with a character above U+FFFF): ~2x faster than encoding to UTF-32 and viewing that.
    """
    if not text:
        return np.empty(0, dtype=np.uint32)
    return np.array(text).reshape(1).view(np.uint32)


def _settle_allocator() -> None:
    """Make malloc keep the per-chunk buffers, instead of mapping and page-faulting fresh ones for every chunk.

    glibc serves a block above its mmap threshold (128 KiB at first) with a fresh mapping, and raises the threshold
    to the size of any such block that is freed, up to 32 MiB. Decoding a chunk allocates 4 bytes per byte and then
    shrinks the string to its length, so freeing those strings never lifts the threshold past the next one's size:
    every chunk's text was faulted in afresh, and decoding was 2x slower. Freeing one block just under 32 MiB lifts
    the threshold once; the block is never touched, so it costs no memory. With another malloc it does nothing.
    """
    np.empty(_SETTLE_BYTES, dtype=np.uint8)  # freed at once; never touched, so never resident


def _progress(show: bool, total: int | None, desc: str) -> tqdm:
    large = total is None or total > _PROGRESS_MIN_BYTES
    # A stream's size is unknown: the bar only appears if reading it takes more than a couple of seconds.
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
        disable=not (show and large), delay=2.0 if total is None else 0.0, leave=False,
    )  # fmt: skip


class Scan:
    """Pass 1's running totals; the input being read can be rolled back out of them when it proves unusable."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.seen = np.zeros(_CODE_POINTS, dtype=bool)  # seen[cp]: code point cp occurs somewhere in the corpus
        self.num_bytes = 0
        self._mark: tuple[hashlib._Hash, int, np.ndarray | None] = (self.digest.copy(), 0, None)

    def see(self, cps: np.ndarray) -> None:
        # A gather is ~2x faster than a scatter and new characters are rare; take() gathers ~2x faster than
        # indexing with an array that is not intp.
        if not self.seen.take(cps).all():
            digest, num_bytes, seen = self._mark
            if seen is None:  # the first new character since the mark: keep the set as it was (1.1 MB)
                self._mark = (digest, num_bytes, self.seen.copy())
            self.seen[cps] = True

    def mark(self) -> None:
        self._mark = (self.digest.copy(), self.num_bytes, None)

    def rollback(self) -> None:
        self.digest, self.num_bytes, seen = self._mark
        if seen is not None:
            self.seen = seen


def scan_pass(
    inputs: list[Input],
    name: str,
    cache_dir: Path,
    chunk_bytes: int,
    show_progress: bool,
    spools: list[Path],
) -> tuple[Scan, list[Input], list[tuple[str, str]]]:
    """Pass 1 -> (what was ingested, inputs for pass 2, the directory files skipped for their contents).

    Pass 2 reads a stream's spool in its place.
    """
    _settle_allocator()
    scan = Scan()
    pass2: list[Input] = []
    skipped: list[tuple[str, str]] = []
    total = None if any(inp.stream for inp in inputs) else sum(_size(inp) for inp in inputs)
    with _progress(show_progress, total, f"reading {name}") as bar:
        for inp in inputs:
            scan.mark()
            try:
                pass2.append(_scan_input(inp, scan, cache_dir, chunk_bytes, bar, spools))
            except utf8.Unusable as err:
                if not inp.skippable:
                    raise
                scan.rollback()
                skipped.append((os.path.abspath(inp.file), err.reason))
    return scan, pass2, skipped


def _scan_input(inp: Input, scan: Scan, cache_dir: Path, chunk_bytes: int, bar: tqdm, spools: list[Path]) -> Input:
    """Read one input into `scan`; returns the input pass 2 reads (a stream's spool, else the input itself)."""
    before = scan.num_bytes
    try:
        with _open_input(inp) as f, _spool_for(inp, cache_dir, spools) as spool, _Helper() as helper:
            for chunk, cps in _code_point_chunks(inp, f, chunk_bytes):
                helper.submit(_absorb, scan.digest, spool, chunk)
                scan.see(cps)
                scan.num_bytes += len(chunk)
                bar.update(len(chunk))
    except OSError as err:  # reads raise CorpusError already, so this is the spool's disk
        raise cache_error(cache_dir / "tmp", err) from err
    if inp.path is None and scan.num_bytes == before:
        raise CorpusError("standard input is empty; pipe a text corpus in, e.g. cat book.txt | charrnn train -")
    if spool is not None:
        return Input(inp.label, Path(spool.name), stream=False, strip_bom=False, sniff=False)
    return inp


def _absorb(digest: hashlib._Hash, spool: BinaryIO | None, chunk: bytes) -> None:
    """Hash the ingested bytes and keep a stream's bytes for pass 2."""
    digest.update(chunk)
    if spool is not None:
        spool.write(chunk)


def _store_ids(digest: hashlib._Hash, crc: _Crc32, out: BinaryIO, chunk: bytes, ids: np.ndarray) -> None:
    """Hash the ingested bytes (to catch a corpus edited between the passes) and write and checksum their ids."""
    digest.update(chunk)
    data = memoryview(ids).cast("B")  # type: ignore[arg-type]  # numpy arrays export the buffer protocol
    crc.update(data)
    out.write(data)


class _Crc32:
    """A running crc32 with hashlib's update(), so a helper job can advance it."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | memoryview) -> None:
        self.value = zlib.crc32(data, self.value)


@contextmanager
def _spool_for(inp: Input, cache_dir: Path, spools: list[Path]) -> Iterator[BinaryIO | None]:
    """A temp file in the cache dir that keeps a stream's bytes for pass 2 (the caller deletes it)."""
    if not inp.stream:
        yield None
        return
    spool_dir = cache_dir / "tmp"
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        spool = tempfile.NamedTemporaryFile(dir=spool_dir, prefix=".spool-", suffix=".txt", delete=False)
    except OSError as err:
        raise cache_error(spool_dir, err) from err
    spools.append(Path(spool.name))
    with spool:
        yield spool  # type: ignore[misc]  # a NamedTemporaryFile is a BinaryIO in all but name


def _size(inp: Input) -> int:
    try:
        return inp.file.stat().st_size
    except OSError as err:
        raise CorpusError(f"cannot read {inp.label}: {err.strerror}; check that it exists and is readable.") from err


def checked_vocab(seen: np.ndarray, described: str) -> Vocab:
    chars = [chr(cp) for cp in np.flatnonzero(seen)]
    if not chars:
        raise CorpusError(f"the corpus ({described}) is empty; give it some text to learn from.")
    if all(c.isspace() for c in chars):
        raise CorpusError(f"the corpus ({described}) contains only whitespace; give it some text to learn from.")
    if len(chars) == 1:
        raise CorpusError(
            f"the corpus ({described}) has a single distinct character ({quoted(chars[0])}), so there is nothing to "
            "learn; give it real text."
        )
    return Vocab(chars)


# ---- pass 2: encode into the cache ---------------------------------------------------------------------------


def encode_pass(
    inputs: list[Input], vocab: Vocab, sha: str, num_bytes: int, encoded_dir: Path, name: str,
    chunk_bytes: int, show_progress: bool, signatures: dict[str, list[tuple[str, str]]],
) -> None:  # fmt: skip
    """Write <sha>.bin then its <sha>.json sidecar, each through a temp file and an atomic rename."""
    lut = np.zeros(_CODE_POINTS, dtype=vocab.dtype)  # lut[cp] = id; 1-4 bytes per code point, <= 4.4 MB
    lut[[ord(c) for c in vocab.chars]] = np.arange(len(vocab))
    digest, crc = hashlib.sha256(), _Crc32()
    num_chars = 0
    try:
        encoded_dir.mkdir(parents=True, exist_ok=True)
        out = tempfile.NamedTemporaryFile(dir=encoded_dir, prefix=f".{sha}.", suffix=".bin.tmp", delete=False)
    except OSError as err:
        raise cache_error(encoded_dir, err) from err
    try:
        with out, _progress(show_progress, num_bytes, f"encoding {name}") as bar:
            for inp in inputs:
                with _open_input(inp) as f, _Helper() as helper:
                    for chunk, cps in _code_point_chunks(inp, f, chunk_bytes):
                        ids = lut.take(cps)  # (n,) vocab.dtype
                        helper.submit(_store_ids, digest, crc, out, chunk, ids)
                        num_chars += len(ids)
                        bar.update(len(chunk))
        if digest.hexdigest() != sha:
            raise CorpusError(
                f"the corpus {name} changed while it was being read; run again once nothing is writing to it."
            )
        os.replace(out.name, encoded_dir / f"{sha}.bin")
        meta = {"format": entries.CACHE_FORMAT, "sha256": sha, "dtype": vocab.dtype.name, "num_chars": num_chars,
                "chars": vocab.chars, "bin_crc32": crc.value, "signatures": signatures}  # fmt: skip
        entries.write_sidecar(encoded_dir, meta)
    except OSError as err:
        raise cache_error(encoded_dir, err) from err
    finally:
        Path(out.name).unlink(missing_ok=True)
