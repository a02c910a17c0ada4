"""Corpus ingestion: sources -> strict UTF-8 -> Vocab -> ids on disk, cached by content hash.

A corpus is one or more sources concatenated in order: a text file, a directory (its UTF-8 text files,
recursively, in sorted path order), "-" for standard input, or a named corpus built at run time.

Ingestion streams the bytes in chunks and never holds the text as one str (char-rnn#19,
char-rnn-tensorflow#30: in-RAM preprocessing needed ~20x the file size):
  pass 1  sha256 + strict UTF-8 validation + the set of code points seen  -> Vocab
  pass 2  code points -> ids through a lookup table, appended to a temp file, renamed into the cache
Both passes vectorise with numpy: a chunk's str becomes a UTF-32 view of code points (no Python loop),
and `lut[cp]` maps them to ids (bincount/LUT is ~6x faster than a dict loop, research/performance.md).

The cache lives in <cache_dir>/encoded/: <sha256>.bin (the ids, smallest unsigned dtype) plus a
<sha256>.json sidecar written last, so a killed encode leaves at most a stray temp file, never an entry.
index.json maps (path, size, mtime_ns, inode) of each file to the sha256, so an unchanged corpus is
reopened without being read again; any stat change forces a re-hash, so an edited corpus is re-encoded.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from charrnn.errors import CorpusError

NAMED_CORPORA: dict[str, str] = {
    "pydocs": "Python's own help topics (pydoc_data.topics in the standard library), about 465,000 characters "
    "of English prose and code",
}

_CODE_POINTS = 0x110000  # every Unicode code point fits below this
_BOM = codecs.BOM_UTF8
_SNIFF_BYTES = 8192  # like git: a NUL in the first 8 KiB means binary
_PROGRESS_MIN_BYTES = 32 << 20  # smaller corpora encode in well under a second: no bar
_CACHE_FORMAT = 1
_INDEX_MAX_ENTRIES = 256  # the stat index only needs to remember recently used corpora
_MAX_LISTED = 20  # unknown characters named in one error message


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

    def unknown(self, text: str) -> list[str]:
        return [c for c in dict.fromkeys(text) if c not in self._stoi]

    def encode(self, text: str) -> np.ndarray:
        # surrogatepass: a lone surrogate (e.g. from surrogateescape'd input) is reported as unknown, not a crash.
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4").astype(np.int64)  # (N,)
        ids = np.searchsorted(self._codes, cps)
        known = ids < len(self)
        known[known] = self._codes[ids[known]] == cps[known]
        if not known.all():
            unknown = self.unknown(text)
            listed = ", ".join(repr(c) for c in unknown[:_MAX_LISTED]) + (" ..." if len(unknown) > _MAX_LISTED else "")
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
    def from_dict(cls, d: dict) -> "Vocab":
        chars = d.get("chars") if isinstance(d, dict) else None
        if not isinstance(chars, list) or any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise CorpusError("the stored vocabulary is not a list of single characters; it is corrupt or foreign.")
        vocab = cls(chars)
        if vocab.chars != chars:
            # Ids are positions, so re-sorting a foreign list would silently scramble every id.
            raise CorpusError("the stored vocabulary is not sorted and distinct; it is corrupt or foreign.")
        return vocab


@dataclass
class Corpus:
    name: str  # default run-dir name: file stem, directory name, "stdin" or the named corpus, joined by "+"
    ids: np.ndarray  # (N,) read-only np.memmap of vocab.dtype: the whole encoded text
    vocab: Vocab
    sha256: str  # of the UTF-8 bytes as ingested (BOMs stripped, sources concatenated)
    sources: list[str]  # absolute paths of files/directories, "-" for stdin, or the corpus name


def default_cache_dir() -> Path:
    if os.environ.get("CHARRNN_CACHE_DIR"):
        return Path(os.environ["CHARRNN_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "charrnn"
    return Path.home() / ".cache" / "charrnn"


def load_corpus(
    sources: Sequence[str],
    cache_dir: Path | None = None,
    show_progress: bool = False,
    chunk_bytes: int = 8 << 20,
) -> Corpus:
    """Read, validate and encode `sources` (concatenated in order), reusing the on-disk cache when possible."""
    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise CorpusError(
            f"no corpus was given; pass a text file, a directory, '-' for standard input, {_named_hint()}."
        )
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    resolved = [_resolve(source, cache_dir) for source in sources]
    inputs = [inp for r in resolved for inp in r.inputs]
    name = "+".join(r.name for r in resolved)
    described = " + ".join("standard input" if source == "-" else source for source in sources)
    corpus_sources = [r.source for r in resolved]
    encoded_dir = cache_dir / "encoded"

    signature = _stat_signature(inputs)
    if signature is not None:
        sha = _index_lookup(encoded_dir, signature)
        cached = _open_cached(encoded_dir, sha) if sha else None
        if cached is not None:
            return Corpus(name, cached[1], cached[0], sha, corpus_sources)

    spools: list[Path] = []
    try:
        sha, vocab, num_bytes, pass2_inputs = _scan_pass(
            inputs, name, described, cache_dir, chunk_bytes, show_progress, spools
        )
        cached = _open_cached(encoded_dir, sha)
        if cached is None:
            _encode_pass(pass2_inputs, vocab, sha, num_bytes, encoded_dir, name, chunk_bytes, show_progress)
            cached = _open_cached(encoded_dir, sha)
            if cached is None:
                raise CorpusError(
                    f"the encoded corpus in {encoded_dir} is unreadable right after writing it; check the disk."
                )
    finally:
        for spool in spools:
            spool.unlink(missing_ok=True)
    if signature is not None:
        _index_store(encoded_dir, signature, sha)
    return Corpus(name, cached[1], cached[0], sha, corpus_sources)


# ---- sources -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    label: str  # how error messages name it
    path: Path | None  # None: standard input
    stream: bool  # read once (stdin, FIFO): spooled to disk in pass 1 for pass 2
    strip_bom: bool = True
    sniff: bool = True  # refuse it if its first 8 KiB hold a NUL byte


@dataclass(frozen=True)
class _Resolved:
    name: str
    source: str
    inputs: list[_Input]


def _named_hint() -> str:
    return "or a named corpus: " + "; ".join(f"{name} ({text})" for name, text in NAMED_CORPORA.items())


def _resolve(source: str, cache_dir: Path) -> _Resolved:
    if source == "-":
        return _Resolved("stdin", "-", [_Input("standard input", None, stream=True)])
    path = Path(source)
    if not os.path.lexists(path):
        if source in NAMED_CORPORA:
            built = _build_named(source, cache_dir)
            return _Resolved(source, source, [_Input(source, built, stream=False)])
        raise CorpusError(
            f"{source!r} is not a file, a directory or a named corpus; give a path to a UTF-8 text file or "
            f"directory, '-' for standard input, {_named_hint()}."
        )
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise CorpusError(f"cannot read {source}: {err.strerror}; check the path and its permissions.") from err
    if stat.S_ISDIR(mode):
        return _Resolved(path.resolve().name or "corpus", str(path.resolve()), _directory_inputs(path))
    # Anything else that is not a regular file (a FIFO, /dev/stdin, <(command)) is read once as a stream.
    stream = not stat.S_ISREG(mode)
    return _Resolved(path.stem or path.name, str(path.absolute()), [_Input(source, path, stream=stream)])


def _directory_inputs(root: Path) -> list[_Input]:
    def fail(err: OSError) -> None:
        raise CorpusError(f"cannot list {err.filename}: {err.strerror}; check its permissions.") from err

    files = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden directories in place
        files += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    texts = [f for f in sorted(files) if f.is_file() and _looks_like_text(f)]
    if not texts:
        raise CorpusError(
            f"{root} contains no text files (hidden, binary and non-UTF-8 files are skipped); "
            "point at a directory of UTF-8 text files."
        )
    return [_Input(str(f), f, stream=False) for f in texts]


def _looks_like_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return False
    if b"\0" in head:
        return False
    try:
        # Unless the whole file fit in `head`, the cut may split a character: leave its last bytes pending.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < _SNIFF_BYTES)
    except UnicodeDecodeError:
        return False
    return True


def _build_named(name: str, cache_dir: Path) -> Path:
    """Materialise a named corpus once under <cache_dir>/corpora; nothing copied is shipped with charrnn."""
    path = cache_dir / "corpora" / f"{name}.txt"
    if path.is_file():
        return path
    from pydoc_data.topics import topics  # only pydocs exists; the import is lazy because it is 0.5 MB

    text = "\n\n".join(topics[key] for key in sorted(topics))
    _write_atomic(path, text.encode("utf-8"))
    return path


# ---- pass 1: hash, validate, collect the vocabulary -------------------------------------------------------


@contextmanager
def _open_input(inp: _Input) -> Iterator[BinaryIO]:
    if inp.path is None:
        yield sys.stdin.buffer  # not ours to close
        return
    try:
        f = open(inp.path, "rb")
    except OSError as err:
        raise CorpusError(f"cannot read {inp.label}: {err.strerror}; check that it exists and is readable.") from err
    with f:
        yield f


def _decoded_chunks(inp: _Input, f: BinaryIO, chunk_bytes: int) -> Iterator[tuple[bytes, str]]:
    """Yield (bytes, text) chunk by chunk, strictly decoded; the bytes are exactly what is ingested (no BOM)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of this input consumed before the current chunk, a stripped BOM included
    head = _read(inp, f, len(_BOM)) if inp.strip_bom else b""
    if head == _BOM:
        offset, head = len(_BOM), b""
    while True:
        chunk = _read(inp, f, chunk_bytes)
        if head:
            chunk, head = head + chunk, b""
        if inp.sniff and offset < _SNIFF_BYTES and b"\0" in chunk[: _SNIFF_BYTES - offset]:
            raise CorpusError(f"{inp.label} looks like a binary file (it contains NUL bytes); give a UTF-8 text file.")
        try:
            text = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as err:
            # err.start indexes the decoder's carried-over bytes (a character split by the last chunk) + chunk.
            carried = len(decoder.getstate()[0])
            bad = offset - carried + err.start
            target = f" {inp.label} > converted.txt" if inp.path is not None else " in the pipe"
            how = "iconv -f latin1 -t utf-8" + target
            raise CorpusError(
                f"{inp.label} is not valid UTF-8 at byte {bad} (0x{err.object[err.start]:02x}); "
                f"convert it to UTF-8 (e.g. {how})."
            ) from None
        if not chunk:
            return
        yield chunk, text
        offset += len(chunk)


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

    def __enter__(self) -> "_Helper":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


def _read(inp: _Input, f: BinaryIO, size: int) -> bytes:
    try:
        return f.read(size)
    except OSError as err:
        raise CorpusError(f"cannot read {inp.label}: {err.strerror}; check the file and the disk.") from err


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # (N,) one uint32 per character, no copy


def _progress(show: bool, total: int | None, desc: str) -> tqdm:
    large = total is None or total > _PROGRESS_MIN_BYTES
    # A stream's size is unknown: the bar only appears if reading it takes more than a couple of seconds.
    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
        disable=not (show and large), delay=2.0 if total is None else 0.0, leave=False,
    )  # fmt: skip


def _scan_pass(
    inputs: list[_Input], name: str, described: str, cache_dir: Path, chunk_bytes: int, show_progress: bool,
    spools: list[Path],
) -> tuple[str, Vocab, int, list[_Input]]:
    """Pass 1 -> (sha256, vocab, bytes ingested, inputs for pass 2 with streams replaced by their spools)."""
    digest = hashlib.sha256()
    seen = np.zeros(_CODE_POINTS, dtype=bool)  # seen[cp]: code point cp occurs somewhere in the corpus
    num_bytes = 0
    pass2: list[_Input] = []
    total = None if any(inp.stream for inp in inputs) else sum(_size(inp) for inp in inputs)
    with _progress(show_progress, total, f"reading {name}") as bar:
        for inp in inputs:
            before = num_bytes
            try:
                with _open_input(inp) as f, _spool_for(inp, cache_dir, spools) as spool, _Helper() as helper:
                    for chunk, text in _decoded_chunks(inp, f, chunk_bytes):
                        helper.submit(_absorb, digest, spool, chunk)
                        cps = _code_points(text)  # (n,)
                        if not seen[cps].all():  # a gather is ~2x faster than a scatter; new characters are rare
                            seen[cps] = True
                        num_bytes += len(chunk)
                        bar.update(len(chunk))
            except OSError as err:  # reads raise CorpusError already, so this is the spool's disk
                raise _cache_error(cache_dir / "tmp", err) from err
            if inp.path is None and num_bytes == before:
                raise CorpusError("standard input is empty; pipe a text corpus in, e.g. cat book.txt | charrnn train -")
            if spool is not None:
                inp = _Input(inp.label, Path(spool.name), stream=False, strip_bom=False, sniff=False)
            pass2.append(inp)
    return digest.hexdigest(), _checked_vocab(seen, described), num_bytes, pass2


def _absorb(digest: "hashlib._Hash", out: BinaryIO | None, chunk: bytes, ids: np.ndarray | None = None) -> None:
    """Hash the ingested bytes and write either them (a stream's spool) or their ids (the cache)."""
    digest.update(chunk)
    if out is not None:
        out.write(chunk if ids is None else memoryview(ids))


@contextmanager
def _spool_for(inp: _Input, cache_dir: Path, spools: list[Path]) -> Iterator[BinaryIO | None]:
    """A temp file in the cache dir that keeps a stream's bytes for pass 2 (the caller deletes it)."""
    if not inp.stream:
        yield None
        return
    spool_dir = cache_dir / "tmp"
    try:
        spool_dir.mkdir(parents=True, exist_ok=True)
        spool = tempfile.NamedTemporaryFile(dir=spool_dir, prefix=".spool-", suffix=".txt", delete=False)
    except OSError as err:
        raise _cache_error(spool_dir, err) from err
    spools.append(Path(spool.name))
    with spool:
        yield spool


def _size(inp: _Input) -> int:
    try:
        return inp.path.stat().st_size
    except OSError as err:
        raise CorpusError(f"cannot read {inp.label}: {err.strerror}; check that it exists and is readable.") from err


def _checked_vocab(seen: np.ndarray, described: str) -> Vocab:
    chars = [chr(cp) for cp in np.flatnonzero(seen)]
    if not chars:
        raise CorpusError(f"the corpus ({described}) is empty; give it some text to learn from.")
    if all(c.isspace() for c in chars):
        raise CorpusError(f"the corpus ({described}) contains only whitespace; give it some text to learn from.")
    if len(chars) == 1:
        raise CorpusError(
            f"the corpus ({described}) has a single distinct character ({chars[0]!r}), so there is nothing to "
            "learn; give it real text."
        )
    return Vocab(chars)


# ---- pass 2: encode into the cache ---------------------------------------------------------------------------


def _encode_pass(
    inputs: list[_Input], vocab: Vocab, sha: str, num_bytes: int, encoded_dir: Path, name: str,
    chunk_bytes: int, show_progress: bool,
) -> None:  # fmt: skip
    """Write <sha>.bin then its <sha>.json sidecar, each through a temp file and an atomic rename."""
    lut = np.zeros(_CODE_POINTS, dtype=vocab.dtype)  # lut[cp] = id; 1-4 bytes per code point, <= 4.4 MB
    lut[[ord(c) for c in vocab.chars]] = np.arange(len(vocab))
    digest = hashlib.sha256()
    num_chars = 0
    try:
        encoded_dir.mkdir(parents=True, exist_ok=True)
        out = tempfile.NamedTemporaryFile(dir=encoded_dir, prefix=f".{sha}.", suffix=".bin.tmp", delete=False)
    except OSError as err:
        raise _cache_error(encoded_dir, err) from err
    try:
        with out, _progress(show_progress, num_bytes, f"encoding {name}") as bar:
            for inp in inputs:
                with _open_input(inp) as f, _Helper() as helper:
                    for chunk, text in _decoded_chunks(inp, f, chunk_bytes):
                        ids = lut[_code_points(text)]  # (n,) vocab.dtype
                        helper.submit(_absorb, digest, out, chunk, ids)
                        num_chars += len(ids)
                        bar.update(len(chunk))
        if digest.hexdigest() != sha:
            raise CorpusError(
                f"the corpus {name} changed while it was being read; run again once nothing is writing to it."
            )
        os.replace(out.name, encoded_dir / f"{sha}.bin")
        meta = {"format": _CACHE_FORMAT, "sha256": sha, "dtype": vocab.dtype.name, "num_chars": num_chars}
        meta.update(vocab.to_dict())
        _write_atomic(encoded_dir / f"{sha}.json", json.dumps(meta).encode("ascii"))
    except OSError as err:
        raise _cache_error(encoded_dir, err) from err
    finally:
        Path(out.name).unlink(missing_ok=True)


def _cache_error(where: Path, err: OSError) -> CorpusError:
    return CorpusError(
        f"cannot write the corpus cache in {where}: {err.strerror}; free some disk space or set CHARRNN_CACHE_DIR "
        "to a writable directory."
    )


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---- the cache ---------------------------------------------------------------------------------------------------


def _open_cached(encoded_dir: Path, sha: str) -> tuple[Vocab, np.memmap] | None:
    """The cached ids for `sha`, or None when the entry is missing, corrupt or truncated (it is then rebuilt)."""
    bin_path = encoded_dir / f"{sha}.bin"
    try:
        meta = json.loads((encoded_dir / f"{sha}.json").read_text("utf-8"))
        vocab = Vocab.from_dict(meta)
        num_chars = meta["num_chars"]
        valid = (
            meta["format"] == _CACHE_FORMAT and meta["sha256"] == sha and meta["dtype"] == vocab.dtype.name
            and isinstance(num_chars, int) and num_chars > 0
            and bin_path.stat().st_size == num_chars * vocab.dtype.itemsize
        )  # fmt: skip
        if not valid:
            return None
        return vocab, np.memmap(bin_path, dtype=vocab.dtype, mode="r", shape=(num_chars,))
    except (OSError, ValueError, KeyError, TypeError, CorpusError):
        return None


def _stat_signature(inputs: list[_Input]) -> str | None:
    """A digest of every file's (path, size, mtime_ns, inode); None when a stream makes the corpus unknowable."""
    if any(inp.stream for inp in inputs):
        return None
    stats = []
    for inp in inputs:
        try:
            st = os.stat(inp.path)
        except OSError:
            return None  # reading it will say what is wrong
        stats.append([str(inp.path.absolute()), st.st_size, st.st_mtime_ns, st.st_ino])
    return hashlib.sha256(json.dumps(stats).encode("utf-8")).hexdigest()


def _read_index(encoded_dir: Path) -> dict[str, str]:
    try:
        index = json.loads((encoded_dir / "index.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    entries = index.get("entries") if isinstance(index, dict) and index.get("format") == _CACHE_FORMAT else None
    return entries if isinstance(entries, dict) else {}


def _index_lookup(encoded_dir: Path, signature: str) -> str | None:
    sha = _read_index(encoded_dir).get(signature)
    return sha if isinstance(sha, str) else None


def _index_store(encoded_dir: Path, signature: str, sha: str) -> None:
    entries = _read_index(encoded_dir)
    entries.pop(signature, None)
    entries[signature] = sha  # most recent last, so trimming drops the oldest
    kept = dict(list(entries.items())[-_INDEX_MAX_ENTRIES:])
    try:
        index = {"format": _CACHE_FORMAT, "entries": kept}
        _write_atomic(encoded_dir / "index.json", json.dumps(index).encode("ascii"))
    except OSError:
        pass  # the index only saves a re-hash next time; the corpus itself is already cached
