"""corpus.py contracts: Vocab round trips, streaming == in-memory encoding, every refusal, the cache."""

from __future__ import annotations

import hashlib
import io
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn.errors import CorpusError
from charrnn.text import encoder, utf8
from charrnn.text.cache import default_cache_dir
from charrnn.text.corpora import REGISTRY as NAMED_CORPORA
from charrnn.text.corpus import Corpus, load_corpus
from charrnn.text.vocab import Vocab

# Code points from several scripts and widths: 1-byte ASCII, 2-byte Latin/Cyrillic, 3-byte CJK, 4-byte emoji.
ALPHABET = "ab c\n\r\tZ9é߷ж中文字😀🚀𝄞"


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


def code_point_range(start: int, count: int) -> list[str]:
    return [chr(cp) for cp in range(start, start + count + 2048) if not 0xD800 <= cp <= 0xDFFF][:count]


def write(path, data: bytes | str):
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return str(path)


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def decoded(corpus: Corpus) -> str:
    return corpus.vocab.decode(corpus.ids)


# ---- Vocab ---------------------------------------------------------------------------------------------------


def test_vocab_round_trips_any_unicode_and_sorts_by_code_point():
    text = "Hello, 世界! Ünïcödé 😀🚀 𝄞 tab\there\r\n" + "".join(code_point_range(0x4E00, 50))
    vocab = Vocab(text)
    assert vocab.chars == sorted(set(text), key=ord)
    ids = vocab.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.tolist()) == text


def test_vocab_to_dict_from_dict_is_plain_and_lossless():
    vocab = Vocab("zyx 中😀\n")
    d = vocab.to_dict()
    assert d == {"chars": ["\n", " ", "x", "y", "z", "中", "😀"]}
    assert all(type(c) is str for c in d["chars"])
    assert Vocab.from_dict(d) == vocab
    assert Vocab.from_dict(d).encode("x中").tolist() == vocab.encode("x中").tolist()


@pytest.mark.parametrize("bad", [{"chars": ["b", "a"]}, {"chars": ["a", "a"]}, {"chars": ["ab"]}, {"chars": "ab"}, {}])
def test_vocab_from_dict_refuses_unsorted_or_malformed(bad):
    with pytest.raises(CorpusError):
        Vocab.from_dict(bad)


@pytest.mark.parametrize(("size", "dtype"), [(2, np.uint8), (256, np.uint8), (257, np.uint16), (300, np.uint16),
                                             (65536, np.uint16), (70_000, np.uint32)])  # fmt: skip
def test_vocab_dtype_is_the_smallest_that_holds_the_ids(size, dtype):
    assert Vocab(code_point_range(0x20, size)).dtype == np.dtype(dtype)


def test_vocab_unknown_and_encode_errors_list_the_characters():
    vocab = Vocab("abc")
    assert vocab.unknown("abxcyx😀") == ["x", "y", "😀"]
    assert vocab.unknown("cab") == []
    with pytest.raises(CorpusError, match=r"'x', 'y', '😀'"):
        vocab.encode("abxcyx😀")
    with pytest.raises(CorpusError):
        vocab.decode([0, 3])
    with pytest.raises(CorpusError):
        vocab.decode([-1])


# ---- streaming encoding ----------------------------------------------------------------------------------------


def test_streaming_encoder_matches_in_memory_encoding_at_every_chunk_size(tmp_path):
    text = random_text(random.Random(0), 300)
    path = write(tmp_path / "mixed.txt", text)
    expected = Vocab(text).encode(text)
    for chunk_bytes in range(1, 8):  # splits 2-, 3- and 4-byte characters at every offset
        corpus = load_corpus([path], cache_dir=tmp_path / f"cache{chunk_bytes}", chunk_bytes=chunk_bytes)
        assert corpus.vocab == Vocab(text)
        np.testing.assert_array_equal(corpus.ids, expected)
        assert corpus.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("text", ["", "a", "a\0", "\0\0", "plain ascii", "café", "жук 中文", "😀", "x😀\0", ALPHABET])
def test_code_points_are_the_characters_as_uint32(text):
    cps = encoder._code_points(text)
    assert cps.dtype == np.uint32 and cps.tolist() == [ord(c) for c in text]  # trailing NULs included


@pytest.mark.parametrize("char", ["é", "中", "😀"])
def test_ascii_with_one_character_split_across_chunks_encodes_like_the_whole_text(tmp_path, char):
    text = "ascii one" + char + "ascii two\n"  # pure-ASCII chunks around the character, at every split of it
    path = write(tmp_path / "split.txt", text)
    for chunk_bytes in range(1, 14):
        corpus = load_corpus([path], cache_dir=tmp_path / f"cache{chunk_bytes}", chunk_bytes=chunk_bytes)
        np.testing.assert_array_equal(corpus.ids, Vocab(text).encode(text))
        assert corpus.vocab == Vocab(text)
        assert corpus.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()


@pytest.mark.parametrize("chunk_bytes", [1, 3, 4, 16, 4096])
def test_ascii_chunks_then_a_bad_byte_report_its_exact_offset(tmp_path, cache, chunk_bytes):
    good = b"plain ascii text, " * 20
    path = write(tmp_path / "late.txt", good + b"more\xff text")
    with pytest.raises(CorpusError, match=rf"late\.txt is not valid UTF-8 at byte {len(good) + 4} \(0xff\)"):
        load_corpus([path], cache_dir=cache, chunk_bytes=chunk_bytes)


@pytest.mark.parametrize("chunk_bytes", [1, 2, 5])
def test_an_ascii_chunk_after_a_split_lead_byte_is_still_checked(tmp_path, cache, chunk_bytes):
    lead = 2 + chunk_bytes  # the first chunk also holds the 3 bytes read to look for a BOM: it ends with the lead
    path = write(tmp_path / "lead.txt", b"a" * lead + b"\xe4" + b"defghijk")  # the chunk after it is pure ASCII
    with pytest.raises(CorpusError, match=rf"lead\.txt is not valid UTF-8 at byte {lead} \(0xe4\)"):
        load_corpus([path], cache_dir=cache, chunk_bytes=chunk_bytes)


def test_ids_are_a_read_only_memmap_of_the_vocab_dtype(tmp_path, cache):
    chars = code_point_range(0x100, 300)  # 300 distinct -> uint16
    text = "".join(chars) * 3
    corpus = load_corpus([write(tmp_path / "wide.txt", text)], cache_dir=cache)
    assert isinstance(corpus.ids, np.memmap) and corpus.ids.dtype == np.uint16 and corpus.ids.ndim == 1
    assert not corpus.ids.flags.writeable
    assert decoded(corpus) == text
    assert corpus.name == "wide" and corpus.sources == [str(tmp_path / "wide.txt")]


def test_more_than_65536_distinct_characters_encode_as_uint32(tmp_path, cache):
    text = "".join(code_point_range(0x4E00, 70_000))  # CJK onwards, surrogates skipped
    corpus = load_corpus([write(tmp_path / "huge_vocab.txt", text)], cache_dir=cache, chunk_bytes=4096)
    assert corpus.ids.dtype == np.uint32 and len(corpus.vocab) == 70_000
    assert decoded(corpus) == text


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 4096])
def test_invalid_utf8_names_the_file_and_the_absolute_byte_offset(tmp_path, cache, chunk_bytes):
    good = ("abc 中文 😀 " * 40).encode("utf-8")
    path = write(tmp_path / "latin1.txt", good + b"\xe9t\xe9")  # a Latin-1 'é' after a long valid prefix
    with pytest.raises(CorpusError, match=rf"latin1\.txt is not valid UTF-8 at byte {len(good)} .*iconv"):
        load_corpus([path], cache_dir=cache, chunk_bytes=chunk_bytes)


@pytest.mark.parametrize("chunk_bytes", [1, 2, 4096])
def test_truncated_multibyte_character_at_the_end_is_reported_where_it_starts(tmp_path, cache, chunk_bytes):
    data = "ab中".encode()[:-1]  # the last character lacks its final byte
    path = write(tmp_path / "cut.txt", data)
    with pytest.raises(CorpusError, match="cut.txt is not valid UTF-8 at byte 2 "):
        load_corpus([path], cache_dir=cache, chunk_bytes=chunk_bytes)


def test_invalid_utf8_offset_counts_a_stripped_bom(tmp_path, cache):
    path = write(tmp_path / "bom_bad.txt", b"\xef\xbb\xbfabcd\xff")
    with pytest.raises(CorpusError, match="at byte 7 "):
        load_corpus([path], cache_dir=cache, chunk_bytes=2)


def test_bom_is_stripped_and_crlf_kept(tmp_path, cache):
    path = write(tmp_path / "win.txt", b"\xef\xbb\xbfline one\r\nline two\r\n")
    corpus = load_corpus([path], cache_dir=cache, chunk_bytes=2)  # the BOM spans chunks
    assert decoded(corpus) == "line one\r\nline two\r\n"
    assert "\ufeff" not in corpus.vocab.chars and "\r" in corpus.vocab.chars
    assert corpus.sha256 == hashlib.sha256(b"line one\r\nline two\r\n").hexdigest()


def test_sources_concatenate_in_order_with_each_bom_stripped(tmp_path, cache):
    a = write(tmp_path / "a.txt", b"\xef\xbb\xbfhello ")
    b = write(tmp_path / "b.txt", b"\xef\xbb\xbfworld")
    corpus = load_corpus([b, a], cache_dir=cache)
    assert decoded(corpus) == "worldhello "
    assert corpus.name == "b+a" and corpus.sources == [b, a]


# ---- refusals ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"\xef\xbb\xbf", "is empty"), (b" \n\t\r\n  ", "only whitespace"),
     (b"aaaaaaaa", "single distinct character")],
)  # fmt: skip
def test_unlearnable_corpora_are_refused(tmp_path, cache, content, message):
    with pytest.raises(CorpusError, match=message):
        load_corpus([write(tmp_path / "x.txt", content)], cache_dir=cache)


def test_binary_file_given_explicitly_is_refused(tmp_path, cache):
    path = write(tmp_path / "image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(CorpusError, match=r"image\.png looks like a binary file"):
        load_corpus([path], cache_dir=cache)


def test_missing_file_lists_the_named_corpora(tmp_path, cache):
    with pytest.raises(CorpusError, match="nope.txt.*pydocs") as info:
        load_corpus([str(tmp_path / "nope.txt")], cache_dir=cache)
    assert "\n" not in str(info.value)


def test_directory_without_text_files_is_refused(tmp_path, cache):
    (tmp_path / "d").mkdir()
    with pytest.raises(CorpusError, match="contains no text files"):
        load_corpus([str(tmp_path / "d")], cache_dir=cache)
    write(tmp_path / "d" / ".hidden.txt", "hidden text")
    write(tmp_path / "d" / "blob.bin", b"ab\x00cd")
    with pytest.raises(CorpusError, match="contains no text files"):
        load_corpus([str(tmp_path / "d")], cache_dir=cache)


def test_directory_reads_text_files_in_sorted_order_skipping_hidden_and_binary(tmp_path, cache):
    root = tmp_path / "books"
    (root / "b_part").mkdir(parents=True)
    (root / ".git").mkdir()
    write(root / "c.txt", "C")
    write(root / "a.txt", "A")
    write(root / "b_part" / "2.md", "B2")
    write(root / "b_part" / "1.md", "B1")
    write(root / ".git" / "config", "SECRET")
    write(root / ".notes.txt", "HIDDEN")
    write(root / "blob.dat", b"xx\x00yy")
    write(root / "latin1.txt", b"caf\xe9")
    corpus = load_corpus([str(root)], cache_dir=cache)
    assert decoded(corpus) == "AB1B2C"
    assert corpus.name == "books" and corpus.sources == [str(root.resolve())]
    assert corpus.skipped == [
        (str(root / ".git"), "hidden"),
        (str(root / ".notes.txt"), "hidden"),
        (str(root / "blob.dat"), "binary"),
        (str(root / "latin1.txt"), "not UTF-8 at byte 3"),
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_and_linked_directories_are_listed_as_skipped(tmp_path, cache):
    root = tmp_path / "books"
    (root / "sub").mkdir(parents=True)
    write(root / "sub" / "a.txt", "some text\n")
    os.mkfifo(root / "pipe")
    (root / "link").symlink_to(root / "sub")
    corpus = load_corpus([str(root)], cache_dir=cache)
    assert decoded(corpus) == "some text\n"
    assert corpus.skipped == [(str(root / "link"), "symbolic link"), (str(root / "pipe"), "not a regular file")]


def test_a_directory_file_with_one_bad_byte_at_its_end_is_skipped_and_leaves_no_trace(tmp_path, cache):
    root = tmp_path / "books"
    root.mkdir()
    write(root / "a.txt", "first book\n")
    big = ("Ωmega ∑ only here. " * 150_000).encode("utf-8")  # ~2.9 MB
    write(root / "b.txt", big + b"\xff")
    write(root / "c.txt", "second book\n")
    if os.path.isfile("/bin/ls"):
        write(root / "ls", open("/bin/ls", "rb").read())
    corpus = load_corpus([str(root)], cache_dir=cache, chunk_bytes=64 << 10)
    assert decoded(corpus) == "first book\nsecond book\n"
    assert "Ω" not in corpus.vocab.chars and "∑" not in corpus.vocab.chars  # rolled back out of the vocabulary
    assert corpus.sha256 == hashlib.sha256(b"first book\nsecond book\n").hexdigest()  # and the hash
    expected = [(str(root / "b.txt"), f"not UTF-8 at byte {len(big)}")]
    if os.path.isfile("/bin/ls"):
        expected.append((str(root / "ls"), "binary"))
    assert corpus.skipped == expected
    with pytest.raises(CorpusError, match=rf"b\.txt is not valid UTF-8 at byte {len(big)} "):
        load_corpus([str(root / "b.txt")], cache_dir=cache)  # named explicitly it is still an error


def test_a_directory_file_that_is_ascii_until_a_late_bad_byte_is_rolled_back(tmp_path, cache):
    root = tmp_path / "books"
    root.mkdir()
    write(root / "a.txt", "first book\n")
    ascii_part = b"QUIZ JAX " * 1000  # pure-ASCII chunks with characters no other file has
    write(root / "b.txt", ascii_part + b"\xc0\xaf")  # an overlong '/'
    write(root / "c.txt", "second book\n")
    corpus = load_corpus([str(root)], cache_dir=cache, chunk_bytes=64)
    assert decoded(corpus) == "first book\nsecond book\n"
    assert not set("QUIZJAX") & set(corpus.vocab.chars)
    assert corpus.sha256 == hashlib.sha256(b"first book\nsecond book\n").hexdigest()
    assert corpus.skipped == [(str(root / "b.txt"), f"not UTF-8 at byte {len(ascii_part)}")]


def test_a_large_binary_file_in_a_directory_costs_one_small_read(tmp_path, cache, monkeypatch):
    root = tmp_path / "mixed"
    root.mkdir()
    write(root / "a.txt", "some text\n")
    write(root / "weights.bin", b"\x00" * (20 << 20))
    read = {}
    real_read = utf8._read
    monkeypatch.setattr(utf8, "_read", lambda f, label, size: read.setdefault(label, []).append(size)
                        or real_read(f, label, size))  # fmt: skip
    corpus = load_corpus([str(root)], cache_dir=cache)
    assert corpus.skipped == [(str(root / "weights.bin"), "binary")]
    assert sum(read[str(root / "weights.bin")]) <= 3 + 8192  # a BOM's worth, then the 8 KiB sniffed


def test_the_skipped_list_survives_the_stat_index(tmp_path, cache, monkeypatch):
    root = tmp_path / "books"
    root.mkdir()
    write(root / "a.txt", "some text\n")
    write(root / "b.txt", b"bad \xff byte")
    write(root / ".hidden", "hidden\n")
    first = load_corpus([str(root)], cache_dir=cache)
    forbid_reading(monkeypatch)
    second = load_corpus([str(root)], cache_dir=cache)
    expected = [(str(root / ".hidden"), "hidden"), (str(root / "b.txt"), "not UTF-8 at byte 4")]
    assert second.skipped == first.skipped == expected


def test_a_skipped_file_that_is_fixed_is_read_next_time(tmp_path, cache):
    root = tmp_path / "books"
    root.mkdir()
    write(root / "a.txt", "some text\n")
    write(root / "b.txt", b"caf\xe9\n")
    assert decoded(load_corpus([str(root)], cache_dir=cache)) == "some text\n"
    write(root / "b.txt", "café\n")
    fixed = load_corpus([str(root)], cache_dir=cache)
    assert decoded(fixed) == "some text\ncafé\n" and fixed.skipped == []


def test_files_skipped_in_a_directory_are_still_refused_when_named(tmp_path, cache):
    root = tmp_path / "books"
    root.mkdir()
    write(root / "a.txt", "some text\n")
    write(root / "b.txt", b"caf\xe9\n")
    load_corpus([str(root)], cache_dir=cache)
    with pytest.raises(CorpusError, match=r"b\.txt is not valid UTF-8 at byte 3 "):
        load_corpus([str(root / "a.txt"), str(root / "b.txt")], cache_dir=cache)


def test_a_directory_of_only_unusable_files_is_refused(tmp_path, cache):
    root = tmp_path / "d"
    root.mkdir()
    write(root / "latin1.txt", b"caf\xe9")
    write(root / "late.txt", b"x" * 20_000 + b"\xff")
    with pytest.raises(CorpusError, match="contains no text files"):
        load_corpus([str(root)], cache_dir=cache)


def test_run_directories_are_not_read(tmp_path, cache, monkeypatch):
    root = tmp_path / "project"
    for sub in ["checkpoints/run1", "runs/r", "marked", "out", "docs"]:
        (root / sub).mkdir(parents=True)
    write(root / "a.txt", "A")
    write(root / "docs" / "b.txt", "B")
    write(root / "checkpoints" / "run1" / "metrics.jsonl", '{"step": 1}\n')
    write(root / "runs" / "r" / "metrics.jsonl", '{"step": 1}\n')
    write(root / "runs" / "r" / "last.pt", b"PK\x03\x04")
    write(root / "marked" / ".charrnn-run", "")
    write(root / "marked" / "notes.txt", "run notes")
    write(root / "out" / "samples.jsonl", '{"text": "x"}\n')
    monkeypatch.chdir(root)  # as `charrnn train .`
    corpus = load_corpus(["."], cache_dir=cache, exclude=[Path("out")])
    assert decoded(corpus) == "AB"
    runs = ["checkpoints", "marked", "out", "runs/r"]
    assert corpus.skipped == [(str(root / name), "run directory") for name in runs]
    assert load_corpus([str(root)], cache_dir=cache, exclude=[root / "out"]).skipped == corpus.skipped


# ---- standard input ----------------------------------------------------------------------------------------------


def fake_stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_stdin_is_read_as_a_stream_and_spooled_away(monkeypatch, cache):
    text = "from a pipe: 中文 😀\n" * 20
    fake_stdin(monkeypatch, b"\xef\xbb\xbf" + text.encode("utf-8"))
    corpus = load_corpus(["-"], cache_dir=cache, chunk_bytes=5)
    assert decoded(corpus) == text and corpus.name == "stdin" and corpus.sources == ["-"]
    assert list((cache / "tmp").iterdir()) == []  # the spool is gone


def test_empty_stdin_is_refused(monkeypatch, cache):
    fake_stdin(monkeypatch, b"")
    with pytest.raises(CorpusError, match="standard input is empty"):
        load_corpus(["-"], cache_dir=cache)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_path_is_read_as_a_stream(tmp_path, cache):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    text = "through a named pipe\n" * 50

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(text.encode("utf-8"))

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    corpus = load_corpus([str(fifo)], cache_dir=cache, chunk_bytes=64)
    writer.join(timeout=10)
    assert decoded(corpus) == text


# ---- the cache ---------------------------------------------------------------------------------------------------


def forbid_reading(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was read again instead of coming from the cache")

    monkeypatch.setattr(encoder, "scan_pass", refuse)
    monkeypatch.setattr(encoder, "encode_pass", refuse)


def test_second_load_comes_from_the_cache(tmp_path, cache, monkeypatch):
    path = write(tmp_path / "book.txt", "to be or not to be\n")
    first = load_corpus([path], cache_dir=cache)
    forbid_reading(monkeypatch)
    second = load_corpus([path], cache_dir=cache)
    assert second.sha256 == first.sha256 and second.vocab == first.vocab
    np.testing.assert_array_equal(second.ids, first.ids)


def test_an_edited_file_is_re_encoded_with_a_new_sha(tmp_path, cache, monkeypatch):
    path = tmp_path / "book.txt"
    write(path, "to be or not to be\n")
    first = load_corpus([str(path)], cache_dir=cache)
    write(path, "TO BE OR NOT TO BE\n")  # same size: only the stat change reveals the edit
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    encodes = []
    real_encode = encoder.encode_pass
    monkeypatch.setattr(encoder, "encode_pass", lambda *args: encodes.append(1) or real_encode(*args))
    second = load_corpus([str(path)], cache_dir=cache)
    assert encodes == [1]
    assert second.sha256 != first.sha256 and decoded(second) == "TO BE OR NOT TO BE\n"


def test_touched_but_unchanged_file_is_rehashed_but_not_re_encoded(tmp_path, cache, monkeypatch):
    path = tmp_path / "book.txt"
    write(path, "to be or not to be\n")
    first = load_corpus([str(path)], cache_dir=cache)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    monkeypatch.setattr(encoder, "encode_pass", lambda *a: pytest.fail("re-encoded unchanged content"))
    assert load_corpus([str(path)], cache_dir=cache).sha256 == first.sha256


DAMAGES = ["truncate_bin", "extend_bin", "delete_bin", "garble_json", "delete_json", "garble_index"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_cache_entries_are_rebuilt_not_trusted(tmp_path, cache, damage):
    text = "some text worth caching\n" * 10
    path = write(tmp_path / "book.txt", text)
    first = load_corpus([path], cache_dir=cache)
    entry = cache / "encoded" / first.sha256
    bin_path, json_path = entry.with_suffix(".bin"), entry.with_suffix(".json")
    del first  # release the memmap before damaging its file
    if damage == "truncate_bin":
        bin_path.write_bytes(bin_path.read_bytes()[:-1])
    elif damage == "extend_bin":
        bin_path.write_bytes(bin_path.read_bytes() + b"\x01")
    elif damage == "delete_bin":
        bin_path.unlink()
    elif damage == "garble_json":
        json_path.write_text("{not json")
    elif damage == "delete_json":
        json_path.unlink()
    else:
        (cache / "encoded" / "index.json").write_text("[]")
    again = load_corpus([path], cache_dir=cache)
    assert decoded(again) == text
    assert bin_path.stat().st_size == len(text)


def test_no_temp_files_are_left_after_encoding_or_a_failure(tmp_path, cache):
    load_corpus([write(tmp_path / "ok.txt", "fine text\n")], cache_dir=cache)
    with pytest.raises(CorpusError):
        load_corpus([write(tmp_path / "bad.txt", b"fine\xff")], cache_dir=cache)
    assert [p.name for p in (cache / "encoded").iterdir() if p.name.startswith(".")] == []


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CHARRNN_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "charrnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "charrnn"


# ---- named corpora ------------------------------------------------------------------------------------------------


def test_pydocs_is_built_once_into_the_cache_and_loads(cache, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no file called "pydocs" here
    assert "pydocs" in NAMED_CORPORA
    corpus = load_corpus(["pydocs"], cache_dir=cache)
    assert len(corpus.ids) > 100_000 and len(corpus.vocab) > 50
    assert corpus.name == "pydocs" and corpus.sources == ["pydocs"]
    assert (cache / "corpora" / "pydocs.txt").is_file()
    from pydoc_data.topics import topics

    assert decoded(corpus) == "\n\n".join(topics[key] for key in sorted(topics))
    forbid_reading(monkeypatch)
    assert load_corpus(["pydocs"], cache_dir=cache).sha256 == corpus.sha256


def test_a_file_named_like_a_corpus_wins(tmp_path, cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "pydocs", "my own pydocs file\n")
    assert decoded(load_corpus(["pydocs"], cache_dir=cache)) == "my own pydocs file\n"


def test_progress_goes_to_stderr_only_when_asked(tmp_path, cache, capsys, monkeypatch):
    monkeypatch.setattr(encoder, "_PROGRESS_MIN_BYTES", 0)  # every corpus counts as large
    path = write(tmp_path / "book.txt", "some text\n" * 100)
    load_corpus([path], cache_dir=cache / "quiet")
    assert capsys.readouterr() == ("", "")
    load_corpus([path], cache_dir=cache / "loud", show_progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "encoding book" in err


def test_invalid_utf8_on_stdin_gives_the_offset_in_the_stream(monkeypatch, cache):
    fake_stdin(monkeypatch, b"\xef\xbb\xbfok so far \xff")
    with pytest.raises(CorpusError, match=r"standard input is not valid UTF-8 at byte 13 .*iconv"):
        load_corpus(["-"], cache_dir=cache, chunk_bytes=4)
