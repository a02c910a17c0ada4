"""The named corpora: the registry (URL, size, SHA-256, licence), where each is kept, and the built-in one built.

`charrnn train NAME` reads a named corpus from the corpus cache (text/cache.py's default_cache_dir()):
  <cache>/corpora/pydocs.txt               built on this machine from the standard library (build), no download
  <cache>/corpora/<name>/<name>.txt        a downloaded corpus; it exists only once verified (and unpacked)
download.py fetches the others (get) and owns what else that directory holds while it does.

A registry entry pins the SHA-256 and size of the file its URL serves. An entry may go without a pin only by saying
why (`unpinned`), and then every download of it warns that it cannot be verified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from charrnn.errors import CorpusError
from charrnn.text.cache import cache_error, default_cache_dir, write_atomic


@dataclass(frozen=True)
class NamedCorpus:
    """One entry of the registry: where the corpus comes from and how it becomes one UTF-8 text file."""

    name: str
    description: str  # one line, for `charrnn corpus list`
    licence: str  # who owns the text and on what terms it may be used
    url: str | None = None  # None: built on this machine (pydocs), nothing to download
    size: int | None = None  # bytes of the file `url` serves
    sha256: str | None = None  # of the file `url` serves, checked before it is kept
    member: str | None = None  # the zip archive's member that is the text; None: the download is the text itself
    text_size: int | None = None  # bytes of the text once unpacked: a quick check that the kept file is whole
    unpinned: str | None = None  # why an entry has no sha256; every download of it then warns

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", self.name):  # it names a directory in the cache
            raise ValueError(f"{self.name!r}: a corpus name is lowercase letters, digits and hyphens")
        if self.url is None:
            return
        if self.sha256 is None and not self.unpinned:
            raise ValueError(f"{self.name}: a downloadable corpus needs a sha256, or `unpinned` saying why not")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")

    @property
    def builtin(self) -> bool:
        return self.url is None

    @property
    def filename(self) -> str:
        """The downloaded file's name, as the URL gives it (the .part and the archive are named after it)."""
        return PurePosixPath(urlsplit(self.url or "").path).name or f"{self.name}.download"


# Provenance of every pin, so that a maintainer can check it again:
REGISTRY: dict[str, NamedCorpus] = {
    corpus.name: corpus
    for corpus in (
        NamedCorpus(
            "pydocs",
            "Python's own help topics (pydoc_data.topics in the standard library), about 465,000 characters of "
            "English prose and code",
            "the Python Software Foundation License, like the rest of the standard library",
        ),
        # Size and SHA-256 computed from the same file (../shared/corpora/tinyshakespeare.txt).
        NamedCorpus(
            "tiny-shakespeare",
            "40,000 lines from Shakespeare's plays, the classic char-rnn corpus: 1.1 million characters, 65 distinct",
            "public domain (Shakespeare); collected by Andrej Karpathy for char-rnn",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            size=1_115_394,
            sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            text_size=1_115_394,
        ),
        # Size and SHA-256: huggingface/datasets, datasets/enwik8/dataset_infos.json (download_checksums), and the
        # same pair in independent download scripts (e.g. Julia DataDeps registrations). The member's 10^8 bytes
        # are the Hutter Prize definition of enwik8. The host serves https too (public download scripts fetch these
        # URLs); the pin, not the transport, is what vouches for the bytes.
        NamedCorpus(
            "enwik8",
            "the first 100,000,000 bytes of the English Wikipedia XML dump of 3 March 2006 (the Hutter Prize file): "
            "prose, wiki markup and many scripts",
            "Wikipedia text (GNU FDL when dumped; CC BY-SA since 2009), from mattmahoney.net/dc/textdata.html",
            url="https://mattmahoney.net/dc/enwik8.zip",
            size=36_445_475,
            sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
            member="enwik8",
            text_size=100_000_000,
        ),
        # Size: TensorFlow's word2vec tutorial (maybe_download('text8.zip', 31344016)). SHA-256: pinned alike by
        # several independent public projects' download code, one of them next to that size.
        NamedCorpus(
            "text8",
            "enwik8's text cleaned to lowercase a-z and single spaces (27 characters), 100,000,000 characters",
            "Wikipedia text (GNU FDL when dumped; CC BY-SA since 2009), from mattmahoney.net/dc/textdata.html",
            url="https://mattmahoney.net/dc/text8.zip",
            size=31_344_016,
            sha256="a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232",
            member="text8",
            text_size=100_000_000,
        ),
        # A Japanese novel: thousands of distinct characters. Pinned to the commit that last changed the file, so
        # the URL's bytes never change; size and SHA-256 computed from that commit's blob.
        NamedCorpus(
            "soseki",
            "吾輩は猫である (I Am a Cat), Natsume Sōseki's novel in Japanese as typed by Aozora Bunko, ruby readings "
            "in 《》: 377,000 characters, 3,104 distinct",
            "public domain (Sōseki died in 1916); Aozora Bunko's text, as kept in google/sentencepiece's test data",
            url="https://raw.githubusercontent.com/google/sentencepiece/cff66162c3b7d5c4b0d0566cb951c4af59abd1c0/"
            "data/wagahaiwa_nekodearu.txt",
            size=1_120_576,
            sha256="c2f778906046fd19ee7be2525fc32d1e1bff806d013ee80798894054f3be2c26",
            text_size=1_120_576,
        ),
        # Source code. Pinned to the commit that last changed the file; size and SHA-256 from that commit's blob.
        NamedCorpus(
            "stb-image",
            "stb_image.h v2.30, Sean Barrett's single-file C image loader: 283,000 characters of C and comments",
            "public domain (Unlicense) or MIT, at your choice",
            url="https://raw.githubusercontent.com/nothings/stb/013ac3beddff3dbffafd5177e7972067cd2b5083/stb_image.h",
            size=283_010,
            sha256="594c2fe35d49488b4382dbfaec8f98366defca819d916ac95becf3e75f4200b3",
            text_size=283_010,
        ),
    )
}


@dataclass(frozen=True)
class CorpusStatus:
    corpus: NamedCorpus
    path: Path  # where its text is, or will be once fetched
    present: bool  # downloaded and verified (or, for a built-in one, built)


def lookup(name: str) -> NamedCorpus:
    try:
        return REGISTRY[name]
    except KeyError:
        raise CorpusError(f"there is no named corpus {name!r}; the named corpora are {', '.join(REGISTRY)}.") from None


def local_path(name: str, cache_dir: Path | None = None) -> Path:
    """Where the text of `name` is kept in the cache, whether or not it is there yet."""
    root = _cache_root(cache_dir) / "corpora"
    return root / f"{name}.txt" if lookup(name).builtin else root / name / f"{name}.txt"


def list_corpora(cache_dir: Path | None = None) -> list[CorpusStatus]:
    """Every named corpus, in registry order, with where it is kept and whether it is there."""
    statuses = []
    for corpus in REGISTRY.values():
        path = local_path(corpus.name, cache_dir)
        statuses.append(CorpusStatus(corpus, path, is_present(corpus, path)))
    return statuses


def locate(name: str, cache_dir: Path | None) -> tuple[NamedCorpus, Path, bool]:
    """The entry, its text file's path, and whether that file is there and whole (a built-in one is built now)."""
    corpus = lookup(name)
    if corpus.builtin:
        return corpus, _build(name, cache_dir), True
    final = local_path(name, cache_dir)
    return corpus, final, is_present(corpus, final)


def path(name: str, cache_dir: Path | None = None) -> Path:
    """The local text file of `name`; a built-in corpus is built, a downloadable one must have been fetched by get()."""
    corpus, final, present = locate(name, cache_dir)
    if present:
        return final
    if final.exists():
        raise _damaged(corpus, final)
    where = urlsplit(corpus.url or "").netloc
    raise CorpusError(
        f"the corpus {name} is not downloaded yet; run `charrnn corpus get {name}` first "
        f"({megabytes(corpus.size)} from {where})."
    )


def is_present(corpus: NamedCorpus, final: Path) -> bool:
    """The text is kept only once verified, so being there (at its pinned size) is the proof."""
    try:
        size = final.stat().st_size
    except OSError:
        return False
    return corpus.text_size is None or size == corpus.text_size


def _damaged(corpus: NamedCorpus, final: Path) -> CorpusError:
    return CorpusError(
        f"the downloaded corpus {final} is {file_size(final):,} bytes, not {corpus.text_size:,}, so it was changed or "
        f"damaged; run `charrnn corpus get {corpus.name}` to download it again."
    )


def file_size(file: Path) -> int:
    try:
        return file.stat().st_size
    except OSError:
        return 0


def megabytes(n: int | None) -> str:
    return "an unknown size" if n is None else f"{n / 1e6:.1f} MB"


def _cache_root(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def _build(name: str, cache_dir: Path | None) -> Path:
    return build(name, _cache_root(cache_dir))


def build(name: str, cache_dir: Path) -> Path:
    """Materialise a built-in corpus once in the cache; nothing copied is shipped with charrnn."""
    path = local_path(name, cache_dir)
    if path.is_file():
        return path
    from pydoc_data.topics import topics  # pydocs is the only built-in; the import is lazy because it is 0.5 MB

    text = "\n\n".join(topics[key] for key in sorted(topics))
    try:
        write_atomic(path, text.encode("utf-8"))
    except OSError as err:
        raise cache_error(path.parent, err) from err
    return path
