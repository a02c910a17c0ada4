"""A corpus, read once and kept encoded: sources -> strict UTF-8 -> Vocab -> ids on disk, cached by content hash.

A corpus is one or more sources concatenated in order: a text file, a directory (its UTF-8 text files), "-" for
standard input, or a named corpus. load_corpus is the one entry point; the stages are each one module's:
  sources.py   what the sources are: files, a directory walked (what it skips and why), stdin, named corpora
  utf8.py      the strict streaming UTF-8 reader (BOM, NUL means binary, byte offsets in errors)
  encoder.py   the two passes: sha256 + validation + the characters seen -> Vocab; then ids into the cache
  entries.py   the cache's entries (<sha256>.bin + a checked sidecar) and the stat index that skips a re-read
  cache.py     where the cache is, atomic writes into it, and the lock that lets a load clean up killed writers'
An unchanged corpus is found by its files' stat signature and opened without being read again; otherwise it is
hashed (pass 1), and encoded (pass 2) only when no entry holds that hash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.errors import CorpusError
from charrnn.text import encoder, entries
from charrnn.text.cache import cache_lock, default_cache_dir
from charrnn.text.sources import check_directories, named_hint, resolve
from charrnn.text.vocab import Vocab


@dataclass
class Corpus:
    name: str  # default run-dir name: file stem, directory name, "stdin" or the named corpus, joined by "+"
    ids: np.ndarray  # (N,) read-only np.memmap of vocab.dtype: the whole encoded text
    vocab: Vocab
    sha256: str  # of the UTF-8 bytes as ingested (BOMs stripped, sources concatenated)
    sources: list[str]  # absolute paths of files/directories, "-" for stdin, or the corpus name
    # (absolute path, reason) for what directory walking left out, sorted; reasons: "hidden", "binary",
    # "not UTF-8 at byte N", "run directory", "unreadable: <why>", "not a regular file", "symbolic link"
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_corpus(
    sources: Sequence[str],
    cache_dir: Path | None = None,
    show_progress: bool = False,
    chunk_bytes: int = encoder.CHUNK_BYTES,
    *,
    warn: Callable[[str], None] | None = None,
    exclude: Sequence[Path] = (),
) -> Corpus:
    """Read, validate and encode `sources` (concatenated in order), reusing the on-disk cache when possible.

    `warn` receives one sentence when a damaged cache entry is re-encoded. Directory walking skips the
    directories in `exclude` (e.g. the run's own output directory) as run directories.
    """
    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise CorpusError(
            f"no corpus was given; pass a text file, a directory, '-' for standard input, {named_hint()}."
        )
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    excluded = frozenset(Path(path).resolve() for path in exclude)
    with cache_lock(cache_dir):
        return _load(list(sources), cache_dir, show_progress, chunk_bytes, warn or _ignore, excluded)


def _ignore(message: str) -> None:
    pass


def _load(
    sources: list[str], cache_dir: Path, show_progress: bool, chunk_bytes: int, warn: Callable[[str], None],
    excluded: frozenset[Path],
) -> Corpus:  # fmt: skip
    resolved = [resolve(source, cache_dir, excluded) for source in sources]
    inputs = [inp for r in resolved for inp in r.inputs]
    walked = [skip for r in resolved for skip in r.skipped]
    name = "+".join(r.name for r in resolved)
    described = " + ".join("standard input" if source == "-" else source for source in sources)
    corpus_sources = [r.source for r in resolved]
    encoded_dir = cache_dir / "encoded"

    signature = entries.stat_signature(inputs)
    if signature is not None:
        sha = entries.index_lookup(encoded_dir, signature)
        entry = entries.cached(encoded_dir, sha, name, warn, signature) if sha else None
        if entry is not None and sha is not None:
            skipped = [(path, reason) for path, reason in entry.meta["signatures"][signature]]
            return Corpus(name, entry.ids, entry.vocab, sha, corpus_sources, sorted(walked + skipped))

    spools: list[Path] = []
    try:
        scan, pass2_inputs, skipped = encoder.scan_pass(inputs, name, cache_dir, chunk_bytes, show_progress, spools)
        check_directories(resolved, pass2_inputs)
        vocab, sha = encoder.checked_vocab(scan.seen, described), scan.digest.hexdigest()
        entry = entries.cached(encoded_dir, sha, name, warn)
        if entry is None:
            signatures = {signature: skipped} if signature is not None else {}
            encoder.encode_pass(pass2_inputs, vocab, sha, scan.num_bytes, encoded_dir, name, chunk_bytes,
                                show_progress, signatures)  # fmt: skip
            entry = entries.just_written(encoded_dir, sha)
        elif signature is not None:
            entries.remember(encoded_dir, entry.meta, signature, skipped)
    finally:
        for spool in spools:
            spool.unlink(missing_ok=True)
    if signature is not None:
        entries.index_store(encoded_dir, signature, sha)
    return Corpus(name, entry.ids, entry.vocab, sha, corpus_sources, sorted(walked + skipped))
