"""The encoded-corpus cache: checksums, index claims, stat signatures, stale temporaries, unusable cache dirs."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from charrnn.errors import CorpusError
from charrnn.text import corpora, encoder, entries
from charrnn.text import corpus as corpus_mod
from charrnn.text.corpus import load_corpus

REPO = Path(__file__).resolve().parents[1]
TEXT = "some text worth caching, with a few words\n" * 50


def write(path: Path, data: bytes | str) -> str:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def load(path: str, cache: Path, **kwargs) -> tuple[corpus_mod.Corpus, list[str]]:
    warnings: list[str] = []
    corpus = load_corpus([path], cache_dir=cache, warn=warnings.append, **kwargs)
    return corpus, warnings


def decoded(corpus: corpus_mod.Corpus) -> str:
    return corpus.vocab.decode(corpus.ids)


def entry_paths(cache: Path, sha: str) -> tuple[Path, Path]:
    return cache / "encoded" / f"{sha}.bin", cache / "encoded" / f"{sha}.json"


def cached_once(tmp_path: Path, cache: Path, text: str = TEXT, name: str = "book") -> tuple[str, str]:
    """Encode `text` into the cache; returns (source path, sha) with no memmap of the entry left open."""
    path = write(tmp_path / f"{name}.txt", text)
    return path, load_corpus([path], cache_dir=cache).sha256


def count_encodes(monkeypatch) -> list[int]:
    encodes: list[int] = []
    real = encoder.encode_pass
    monkeypatch.setattr(encoder, "encode_pass", lambda *args: encodes.append(1) or real(*args))
    return encodes


# ---- checksums ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["stat index", "hash"])
@pytest.mark.parametrize("damage", ["zeros", "random bytes", "one flipped bit"])
def test_a_damaged_bin_of_the_same_size_is_re_encoded_with_a_warning(tmp_path, cache, damage, route):
    path, sha = cached_once(tmp_path, cache)
    bin_path, _ = entry_paths(cache, sha)
    data = bytearray(bin_path.read_bytes())
    if damage == "zeros":
        data = bytearray(len(data))
    elif damage == "random bytes":  # ids far outside the vocabulary: an IndexError deep in training before
        data = bytearray(random.Random(0).randbytes(len(data)))
    else:
        data[len(data) // 2] ^= 1
    bin_path.write_bytes(bytes(data))
    if route == "hash":
        (cache / "encoded" / "index.json").unlink()  # no stat index: the source is hashed, then the entry opened
    again, warnings = load(path, cache)
    assert decoded(again) == TEXT
    assert warnings == ["the cached encoding of book was damaged (checksum mismatch); re-encoding it."]
    del again
    assert load(path, cache)[1] == []  # the rebuilt entry is trusted again


def test_ids_outside_the_vocabulary_are_refused_even_with_a_matching_checksum(tmp_path, cache):
    path, sha = cached_once(tmp_path, cache)
    bin_path, json_path = entry_paths(cache, sha)
    data = bytearray(bin_path.read_bytes())
    data[7] = 200  # the vocabulary has fewer than 30 characters
    bin_path.write_bytes(bytes(data))
    meta = json.loads(json_path.read_text())
    meta["bin_crc32"] = zlib.crc32(bytes(data))
    meta["checksum"] = entries.meta_checksum(meta)
    json_path.write_text(json.dumps(meta))
    again, warnings = load(path, cache)
    assert decoded(again) == TEXT
    assert len(warnings) == 1 and "id 200 is outside its vocabulary" in warnings[0]


@pytest.mark.parametrize("edit", ["vocabulary", "bin_crc32", "signatures"])
def test_any_edit_of_the_sidecar_is_detected(tmp_path, cache, edit):
    text = "to be or not to be\n" * 20
    path, sha = cached_once(tmp_path, cache, text)
    _, json_path = entry_paths(cache, sha)
    meta = json.loads(json_path.read_text())
    if edit == "vocabulary":  # same count, still sorted: every 'e' would silently read back as 'd'
        assert meta["chars"] == ["\n", " ", "b", "e", "n", "o", "r", "t"]
        meta["chars"][3] = "d"
    elif edit == "bin_crc32":
        meta["bin_crc32"] ^= 1
    else:
        (signature,) = meta["signatures"]
        meta["signatures"][signature] = [["/elsewhere", "binary"]]
    json_path.write_text(json.dumps(meta))
    again, warnings = load(path, cache)
    assert decoded(again) == text and again.skipped == []
    assert warnings == ["the cached encoding of book was damaged (checksum mismatch in its metadata); re-encoding it."]


def test_format_1_entries_are_stale_and_re_encoded_silently(tmp_path, cache, monkeypatch):
    path, sha = cached_once(tmp_path, cache)
    _, json_path = entry_paths(cache, sha)
    meta = json.loads(json_path.read_text())
    old = {"format": 1, "sha256": sha, "dtype": meta["dtype"], "num_chars": meta["num_chars"], "chars": meta["chars"]}
    json_path.write_text(json.dumps(old))  # what charrnn wrote before checksums
    index_path = cache / "encoded" / "index.json"
    index_path.write_text(json.dumps({**json.loads(index_path.read_text()), "format": 1}))
    encodes = count_encodes(monkeypatch)
    again, warnings = load(path, cache)
    assert decoded(again) == TEXT and warnings == [] and encodes == [1]
    assert json.loads(json_path.read_text())["format"] == entries.CACHE_FORMAT == 2


# ---- the stat index -------------------------------------------------------------------------------------------


def test_an_index_entry_pointing_at_another_corpus_is_not_believed(tmp_path, cache):
    path_a, sha_a = cached_once(tmp_path, cache, "the first corpus\n" * 10, "a")
    _, sha_b = cached_once(tmp_path, cache, "a second, other corpus\n" * 10, "b")
    index_path = cache / "encoded" / "index.json"
    index = json.loads(index_path.read_text())
    assert sorted(index["entries"].values()) == sorted([sha_a, sha_b])
    index["entries"] = {signature: sha_b for signature in index["entries"]}  # a's files now claim b's entry
    index_path.write_text(json.dumps(index))
    again, warnings = load(path_a, cache)
    assert again.sha256 == sha_a and decoded(again) == "the first corpus\n" * 10 and warnings == []
    assert sha_a in json.loads(index_path.read_text())["entries"].values()  # the index is put right


def test_a_same_size_edit_with_its_mtime_put_back_is_re_encoded(tmp_path, cache):
    path = tmp_path / "book.txt"
    first = load_corpus([write(path, "to be or not to be\n")], cache_dir=cache)
    before = os.stat(path)
    write(path, "TO BE OR NOT TO BE\n")  # same inode, same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -d` or tar would
    while os.stat(path).st_ctime_ns == before.st_ctime_ns:  # file times tick coarsely (a jiffy)
        time.sleep(0.01)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    again = load_corpus([str(path)], cache_dir=cache)
    assert decoded(again) == "TO BE OR NOT TO BE\n" and again.sha256 != first.sha256


# ---- stale temporaries ------------------------------------------------------------------------------------------

# Loads argv[1] into the cache argv[2]; with argv[3], touches that file from pass 2's first write and stalls there.
STALLING_LOADER = """
import sys, time
from pathlib import Path
from charrnn.text import corpus, encoder

if len(sys.argv) > 3:
    real = encoder._store_ids

    def stall(*args):
        real(*args)
        Path(sys.argv[3]).touch()
        time.sleep(120)

    encoder._store_ids = stall
loaded = corpus.load_corpus([sys.argv[1]], cache_dir=Path(sys.argv[2]), chunk_bytes=64)
print(len(loaded.ids))
"""


def start_loader(*args: object) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", STALLING_LOADER, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the loader exited before {what}: {proc.communicate()[1]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def temporaries(cache: Path) -> list[str]:
    found = [*(cache / "encoded").glob(".*.tmp"), *(cache / "tmp").glob(".spool-*")]
    return sorted(p.name for p in found)


def test_a_bin_temp_left_by_an_encoder_killed_with_sigkill_is_removed_by_the_next_load(tmp_path, cache):
    source = write(tmp_path / "book.txt", TEXT)
    ready = tmp_path / "ready"
    proc = start_loader(source, cache, ready)
    wait_for(ready.exists, proc, "pass 2 started")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    leaked = temporaries(cache)
    assert len(leaked) == 1 and leaked[0].endswith(".bin.tmp")
    other, _ = load(write(tmp_path / "other.txt", "something else entirely\n"), cache)
    assert temporaries(cache) == []
    assert decoded(load(source, cache)[0]) == TEXT


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("writer", ["killed", "alive"])
def test_a_spool_is_removed_once_its_writer_is_dead_but_never_while_it_lives(tmp_path, cache, writer):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = start_loader(fifo, cache)
    with open(fifo, "wb") as feed:  # opens once the loader opens the other end
        feed.write(TEXT[:100].encode("utf-8"))
        feed.flush()
        wait_for(lambda: temporaries(cache) != [], proc, "the spool to appear")
        spooled = temporaries(cache)
        if writer == "killed":
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        load(write(tmp_path / "other.txt", "a corpus loaded meanwhile\n"), cache)
        if writer == "killed":
            assert temporaries(cache) == []
            return
        assert temporaries(cache) == spooled  # the live writer's spool was left alone
        feed.write(TEXT[100:].encode("utf-8"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert int(out) == len(TEXT) and temporaries(cache) == []


def test_stale_temporaries_of_every_kind_are_removed_and_nothing_else(tmp_path, cache):
    _, sha = cached_once(tmp_path, cache)
    stale = [cache / "encoded" / f".{sha}.abc123.bin.tmp", cache / "encoded" / f".{sha}.json.x1.tmp",
             cache / "encoded" / ".index.json.y2.tmp", cache / "tmp" / ".spool-z3.txt",
             cache / "corpora" / ".pydocs.txt.w4.tmp"]  # fmt: skip
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left by a killed run")
    kept = sorted(p.name for p in (cache / "encoded").iterdir() if not p.name.endswith(".tmp"))
    load(write(tmp_path / "other.txt", "another corpus\n"), cache)
    assert [path for path in stale if path.exists()] == []
    assert set(kept) <= {p.name for p in (cache / "encoded").iterdir()}


def test_a_held_lock_keeps_temporaries_and_loading_still_works(tmp_path, cache):
    import fcntl

    stale = cache / "tmp" / ".spool-held.txt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"being written")
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)  # what a live encoder in another process holds
        corpus, _ = load(write(tmp_path / "book.txt", TEXT), cache)
    assert decoded(corpus) == TEXT and stale.exists()


# ---- an unusable cache directory -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["file", "pydocs"])
def test_a_cache_dir_that_is_a_file_gives_one_sentence(tmp_path, monkeypatch, source):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a regular file")
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(blocker))
    monkeypatch.chdir(tmp_path)  # no file called "pydocs" here
    name = write(tmp_path / "book.txt", TEXT) if source == "file" else "pydocs"
    with pytest.raises(CorpusError) as info:
        load_corpus([name])
    message = str(info.value)
    assert f"{blocker} is a file, not a directory; set CHARRNN_CACHE_DIR to a directory." in message
    assert "\n" not in message and "free some disk space" not in message


ADVICE = [(errno.ENOSPC, "free some disk space"), (errno.EDQUOT, "free some disk space"),
          (errno.EACCES, "set CHARRNN_CACHE_DIR to a writable directory"),
          (errno.EPERM, "set CHARRNN_CACHE_DIR to a writable directory"),
          (errno.EROFS, "set CHARRNN_CACHE_DIR to a writable directory"),
          (errno.EIO, "check the disk")]  # fmt: skip


@pytest.mark.parametrize(("code", "advice"), ADVICE)
def test_building_a_named_corpus_in_an_unwritable_cache_advises_by_errno(tmp_path, cache, monkeypatch, code, advice):
    def fail(path, data):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(corpora, "write_atomic", fail)  # the built-in corpus is built by corpora.build
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CorpusError) as info:
        load_corpus(["pydocs"], cache_dir=cache)
    message = str(info.value)
    assert message.startswith(f"cannot write the corpus cache in {cache / 'corpora'}: {os.strerror(code)}; {advice}")
    assert message.count(";") == 1 and "\n" not in message


@pytest.mark.parametrize(("code", "advice"), ADVICE[:3])
def test_a_write_error_while_encoding_advises_by_errno_and_leaves_no_temp(tmp_path, cache, monkeypatch, code, advice):
    def fail(*args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(encoder, "_store_ids", fail)
    with pytest.raises(CorpusError, match=f"{os.strerror(code)}; {advice}"):
        load_corpus([write(tmp_path / "book.txt", TEXT)], cache_dir=cache)
    assert temporaries(cache) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_a_read_only_cache_dir_is_reported_not_raised(tmp_path, cache, monkeypatch):
    cache.mkdir()
    cache.chmod(0o555)
    monkeypatch.chdir(tmp_path)
    try:
        for source in ["pydocs", write(tmp_path / "book.txt", TEXT)]:
            with pytest.raises(CorpusError, match="Permission denied; set CHARRNN_CACHE_DIR to a writable directory"):
                load_corpus([source], cache_dir=cache)
    finally:
        cache.chmod(0o755)


def test_the_cache_lock_is_released_after_loading(tmp_path, cache):
    import fcntl

    load(write(tmp_path / "book.txt", TEXT), cache)
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if a load still held it


def test_loading_from_threads_at_once_gives_the_same_corpus(tmp_path, cache):
    path = write(tmp_path / "book.txt", TEXT)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(decoded(load(path, cache)[0]))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [TEXT] * 3 and temporaries(cache) == []
