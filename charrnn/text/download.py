"""Downloading a named corpus: fetch, resume, verify, unpack, each step ending in an atomic rename (get).

While `charrnn corpus get NAME` runs, <cache>/corpora/<name>/ (text/corpora.py says where) holds:
  <name>.txt        the text; it exists only once verified (and unpacked)
  <file>.part       a download in progress: the next get() resumes it with an HTTP Range
  <file>            a verified archive not yet unpacked (a kill between the two steps)
  .lock             held by the one process downloading, so two never write one .part
Every step ends with an atomic rename, so whatever kills a download, the next get() carries on from a state that
is either verified or resumable, and the name <name>.txt never holds unverified bytes. Nothing a server sends
reaches a message unescaped (_outside).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from charrnn.display import printable
from charrnn.errors import CorpusError
from charrnn.text.cache import cache_error
from charrnn.text.corpora import NamedCorpus, file_size, is_present, locate, megabytes
from charrnn.version import __version__

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two simultaneous downloads then only waste bandwidth
    fcntl = None  # type: ignore[assignment]

Progress = Callable[[int, int | None], None]  # (bytes done, bytes in all or None when the server does not say)

DEFAULT_TIMEOUT = 30.0  # seconds to connect, and to wait for each read: a dead server fails instead of hanging
_CHUNK = 1 << 20  # bytes per read and per progress report
_HASH_CHUNK = 8 << 20
_SHOWN_CHARS = 200  # of text a server chose, in one message


def get(
    name: str,
    *,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
    cache_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download, verify and unpack `name` into the cache once, and return its text file.

    Already there: returns at once, without the network. A broken download resumes from its .part file. `progress`
    receives (bytes done, bytes in all) as the download streams; `warn` one sentence for an entry without a pin
    (warnings.warn when not given). `timeout` bounds the connection and every read, in seconds.
    """
    corpus, final, present = locate(name, cache_dir)
    if present:
        return final
    directory = final.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise cache_error(directory, err) from err
    with _exclusive(directory, name):
        if is_present(corpus, final):  # another process finished it just before we took the lock
            return final
        _remove_leftovers(directory, final)
        archive = directory / corpus.filename
        if corpus.member is None or not archive.is_file():  # a verified archive is left only by a kill while unpacking
            _download(corpus, directory, archive if corpus.member else final, timeout, progress or _quiet, warn)
        if corpus.member is not None:
            _unpack(corpus, archive, final)
            archive.unlink(missing_ok=True)
    return final


# ---- download ----------------------------------------------------------------------------------------------------


class _Restart(Exception):
    """The server will not continue the .part where it ends: discard it and download from the start."""


def _download(
    corpus: NamedCorpus, directory: Path, target: Path, timeout: float, progress: Progress,
    warn: Callable[[str], None] | None,
) -> None:  # fmt: skip
    """Fetch the URL into <file>.part, verify it, then rename it to `target`."""
    if corpus.sha256 is None:
        message = (
            f"the corpus {corpus.name} has no published SHA-256, so its download cannot be verified "
            f"({corpus.unpinned})."
        )
        if warn is not None:
            warn(message)
        else:
            warnings.warn(message, stacklevel=3)
    part = directory / f"{corpus.filename}.part"
    _check_space(corpus, directory, file_size(part))
    try:
        _fetch(corpus, part, timeout, progress)
    except _Restart:
        part.unlink(missing_ok=True)
        _fetch(corpus, part, timeout, progress)  # from byte 0 no Range is sent, so this cannot ask to restart again
    _verify(corpus, part)
    try:
        os.replace(part, target)
    except OSError as err:
        raise cache_error(directory, err) from err


def _fetch(corpus: NamedCorpus, part: Path, timeout: float, progress: Progress) -> None:
    """Bring `part` to the whole file: continue it with a Range request, or rewrite it when the server sends it all."""
    have = file_size(part)
    if corpus.size is not None and have > corpus.size:  # longer than the published file: not a prefix of it
        part.unlink()
        have = 0
    if corpus.size is not None and have == corpus.size:  # complete already (killed before verifying): verify it
        return
    with _open(corpus, have, timeout) as response:
        start = _start(response, have)
        total = _total(corpus, response, start, part)
        _stream(corpus, response, part, start, total, timeout, progress)


def _open(corpus: NamedCorpus, have: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"charrnn/{__version__}", "Accept-Encoding": "identity"}  # identity: Range counts bytes
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(corpus.url or "", headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and have:  # our .part ends at or past the end of what the server has now
            raise _Restart from None
        raise CorpusError(
            f"the server answered HTTP {err.code} ({_outside(err.reason)}) for {corpus.url}; the corpus {corpus.name} "
            "may have moved, so try again later, and report it if it persists."
        ) from None
    except urllib.error.URLError as err:
        raise _unreachable(corpus, err.reason, timeout) from None
    except (OSError, http.client.HTTPException) as err:  # a timeout or reset before the status line arrived
        raise _unreachable(corpus, err, timeout) from None


def _start(response: http.client.HTTPResponse, have: int) -> int:
    """The offset the body starts at: `have` when the server continues the .part, 0 when it sends the whole file."""
    if response.status != 206:
        return 0  # 200: the server ignored Range, so the .part is rewritten from the start
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", response.headers.get("Content-Range", "").strip())
    if match is None or int(match.group(1)) != have:
        raise _Restart
    return have


def _total(corpus: NamedCorpus, response: http.client.HTTPResponse, start: int, part: Path) -> int | None:
    length = response.headers.get("Content-Length", "")
    served = start + int(length) if length.isdigit() else None
    if corpus.size is None:
        return served
    if served is not None and served != corpus.size:
        part.unlink(missing_ok=True)
        raise CorpusError(
            f"{corpus.url} now serves {served:,} bytes, not the {corpus.size:,} bytes published for {corpus.name}, "
            "so it cannot be verified; nothing was kept, and the registry entry needs updating (please report it)."
        )
    return corpus.size


def _stream(
    corpus: NamedCorpus, response: http.client.HTTPResponse, part: Path, start: int, total: int | None,
    timeout: float, progress: Progress,
) -> None:  # fmt: skip
    done = start
    progress(done, total)
    try:
        f = open(part, "ab" if start else "wb")  # "wb" also truncates a .part the server would not continue
    except OSError as err:
        raise cache_error(part.parent, err) from err
    with f:
        while chunk := _read(corpus, response, done, total, timeout):
            if corpus.size is not None and done + len(chunk) > corpus.size:
                f.close()
                part.unlink(missing_ok=True)
                raise CorpusError(
                    f"{corpus.url} sent more than the {corpus.size:,} bytes published for {corpus.name}, so it "
                    "cannot be verified; nothing was kept, and the registry entry needs updating (please report it)."
                )
            _write(f, chunk, part)
            done += len(chunk)
            progress(done, total)
        _write(f, b"", part, sync=True)
    if total is not None and done < total:
        raise _cut_off(corpus, done, total, "the server closed the connection")


def _read(
    corpus: NamedCorpus, response: http.client.HTTPResponse, done: int, total: int | None, timeout: float
) -> bytes:
    try:
        return response.read(_CHUNK)
    except TimeoutError:
        raise _cut_off(corpus, done, total, f"no data for {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as err:
        raise _cut_off(corpus, done, total, _reason(err)) from None


def _write(f: IO[bytes], data: bytes, part: Path, sync: bool = False) -> None:
    try:
        f.write(data)
        if sync:  # the .part is renamed into place next: its bytes must be on disk before its name is
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise cache_error(part.parent, err) from err


def _verify(corpus: NamedCorpus, part: Path) -> None:
    if corpus.sha256 is None:
        return
    digest = hashlib.sha256()
    try:
        with open(part, "rb") as f:
            while block := f.read(_HASH_CHUNK):
                digest.update(block)
    except OSError as err:
        raise cache_error(part.parent, err) from err
    if digest.hexdigest() != corpus.sha256:
        part.unlink(missing_ok=True)
        raise CorpusError(
            f"the download of {corpus.name} does not match its published SHA-256 ({digest.hexdigest()[:16]}… "
            f"instead of {corpus.sha256[:16]}…), so it was deleted; run `charrnn corpus get {corpus.name}` again, "
            "and report it if it happens twice."
        )


def _check_space(corpus: NamedCorpus, directory: Path, have: int) -> None:
    """Refuse before downloading what the disk cannot hold: the rest of the download, then the unpacked text."""
    need = max((corpus.size or 0) - have, 0) + ((corpus.text_size or 0) if corpus.member else 0)
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # writing will say what is wrong
    if need > free:
        raise CorpusError(
            f"the corpus {corpus.name} needs {megabytes(need)} in {directory} and only {megabytes(free)} is free; "
            "free some disk space or set CHARRNN_CACHE_DIR to a directory on a disk with room."
        )


def _unreachable(corpus: NamedCorpus, reason: object, timeout: float) -> CorpusError:
    host = urlsplit(corpus.url or "").netloc
    why = f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError) else _reason(reason)
    return CorpusError(
        f"cannot reach {host} to download {corpus.name} ({why}); check the internet connection and try again "
        "(a broken download resumes where it stopped)."
    )


def _cut_off(corpus: NamedCorpus, done: int, total: int | None, why: str) -> CorpusError:
    of = f" of {megabytes(total)}" if total is not None else ""
    return CorpusError(
        f"the download of {corpus.name} broke off after {megabytes(done)}{of} ({why}); run `charrnn corpus get "
        f"{corpus.name}` again to resume it."
    )


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return _outside(reason.strerror)
    return _outside(reason) or type(reason).__name__


def _outside(text: object) -> str:
    """Text from outside (a reason phrase, a garbage status line, urllib's three-line redirect-loop message) for
    a one-line message: every control character escaped by display.printable, newlines too, and cut to
    _SHOWN_CHARS, so no byte a server chooses reaches a terminal raw."""
    shown = printable(str(text).strip(), keep="")
    return shown if len(shown) <= _SHOWN_CHARS else shown[:_SHOWN_CHARS] + "…"


# ---- unpack ------------------------------------------------------------------------------------------------------


def _unpack(corpus: NamedCorpus, archive: Path, final: Path) -> None:
    """Copy the archive's member to `final` through a temp file and a rename; the archive was verified already."""
    try:
        with zipfile.ZipFile(archive) as z:
            info = z.getinfo(corpus.member or "")
            if corpus.text_size is not None and info.file_size != corpus.text_size:
                raise zipfile.BadZipFile(f"its member is {info.file_size:,} bytes, not {corpus.text_size:,}")
            with z.open(info) as member, _atomic(final) as out:
                _copy(member, out, info.file_size, final)
    except (zipfile.BadZipFile, KeyError, EOFError) as err:  # a pinned archive cannot get here; an unpinned one can
        archive.unlink(missing_ok=True)
        why = f"it has no member {corpus.member}" if isinstance(err, KeyError) else str(err)
        raise CorpusError(
            f"the archive of {corpus.name} cannot be unpacked ({why}), so it was deleted; run `charrnn corpus get "
            f"{corpus.name}` again, and report it if it happens twice."
        ) from None


def _copy(member: IO[bytes], out: IO[bytes], limit: int, final: Path) -> None:
    copied = 0
    while block := member.read(_CHUNK):  # zipfile checks the member's CRC-32 when it reaches the end
        copied += len(block)
        if copied > limit:  # more than the archive's directory declared: refuse rather than fill the disk
            raise zipfile.BadZipFile("its member is longer than the archive says")
        _write(out, block, final)


@contextmanager
def _atomic(final: Path) -> Iterator[IO[bytes]]:
    """A temp file next to `final` that becomes `final` only if the block completes."""
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    except OSError as err:
        raise cache_error(final.parent, err) from err
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            _write(out, b"", final, sync=True)
        os.replace(tmp, final)
    except OSError as err:
        raise cache_error(final.parent, err) from err
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---- the lock and leftovers --------------------------------------------------------------------------------------


def _remove_leftovers(directory: Path, final: Path) -> None:
    """Under the lock: a damaged text is downloaded again, and temp files of a killed unpacking are removed."""
    with suppress(OSError):
        final.unlink(missing_ok=True)  # only reached when it is not present at its pinned size
    with suppress(OSError):
        for tmp in directory.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


@contextmanager
def _exclusive(directory: Path, name: str) -> Iterator[None]:
    """Hold <directory>/.lock while downloading; a second process is refused rather than made to wait on a stall."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise cache_error(directory, err) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CorpusError(
                f"another charrnn process is downloading {name} into {directory}; wait for it to finish."
            ) from None
        except OSError:
            pass  # a filesystem without locks: go on unlocked
        yield
    finally:
        os.close(fd)  # releases the lock


def _quiet(done: int, total: int | None) -> None:
    pass
