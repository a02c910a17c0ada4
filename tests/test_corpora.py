"""Named corpora: the registry, and download / verify / resume / unpack against a local HTTP server.

Nothing here touches the internet: every corpus is a tiny registry entry pointing at a server on 127.0.0.1 that
serves bytes the test made, honours (or ignores) Range, and can cut a response short. Every get() is bounded by a
short timeout, so a broken server fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.server
import io
import re
import socket
import threading
import unicodedata
import zipfile
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from charrnn.errors import CorpusError
from charrnn.text import corpora, download
from charrnn.text.corpora import NamedCorpus
from charrnn.text.corpus import load_corpus
from tests.conftest import SHAKESPEARE

TIMEOUT = 3.0  # seconds: every get() here; the local server answers in milliseconds
TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 300).encode()


# ---- a local server ----------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    honour_range: bool = True
    cut_after: int | None = None  # the next response closes the connection after this many body bytes
    ranges: list[str | None] = field(default_factory=list)  # the Range header of every request, in order


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # Content-Length framing, so a short body is a cut, not the end

    def do_GET(self) -> None:
        state: Server = self.server.state  # type: ignore[attr-defined]
        asked = self.headers.get("Range")
        state.ranges.append(asked)
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked and state.honour_range else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if asked and state.honour_range:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if state.cut_after is not None:
            payload, state.cut_after = payload[: state.cut_after], None
            self.close_connection = True
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep the test output clean


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = state = Server(f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(path))
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def register(monkeypatch, server: Server, name: str, served: bytes, *, filename: str = "corpus.txt",
             member: str | None = None, text: bytes | None = None, **pins) -> NamedCorpus:  # fmt: skip
    """Serve `served` at /<filename> and add a registry entry for it (pins default to the served bytes)."""
    server.files[f"/{filename}"] = served
    fields = {"size": len(served), "sha256": sha256(served), "text_size": len(text if text is not None else served)}
    entry = NamedCorpus(name, "a test corpus", "made by the test", url=f"{server.url}/{filename}", member=member,
                        **{**fields, **pins})  # fmt: skip
    monkeypatch.setitem(corpora.REGISTRY, name, entry)
    return entry


def one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.endswith(".") and "Traceback" not in message
    return message


def leftovers(cache: Path, name: str) -> list[str]:
    directory = cache / "corpora" / name
    return sorted(p.name for p in directory.iterdir() if p.name != ".lock") if directory.exists() else []


# ---- the registry ------------------------------------------------------------------------------------------------


def test_every_entry_is_described_licensed_and_pinned():
    assert {"pydocs", "tiny-shakespeare", "enwik8", "text8"} <= set(corpora.REGISTRY)
    for name, entry in corpora.REGISTRY.items():
        assert entry.name == name and re.fullmatch(r"[a-z0-9-]+", name)
        assert entry.description and "\n" not in entry.description and entry.licence
        if entry.builtin:
            continue
        assert entry.url.startswith("https://") and entry.sha256 and not entry.unpinned  # the pin guards content
        assert entry.size > 0 and entry.text_size > 0
        assert (entry.member is None) == (entry.size == entry.text_size)  # a plain text file is its own text
    enwik8 = corpora.REGISTRY["enwik8"]
    assert (enwik8.size, enwik8.member, enwik8.text_size) == (36_445_475, "enwik8", 100_000_000)


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="needs ../shared/corpora/tinyshakespeare.txt")
def test_the_tiny_shakespeare_pin_matches_the_file():
    entry, data = corpora.REGISTRY["tiny-shakespeare"], SHAKESPEARE.read_bytes()
    assert (entry.size, entry.sha256) == (len(data), sha256(data))


def test_an_entry_without_a_pin_must_say_why():
    with pytest.raises(ValueError, match="sha256"):
        NamedCorpus("x", "d", "l", url="http://example.invalid/x.txt")
    with pytest.raises(ValueError, match="hex"):
        NamedCorpus("x", "d", "l", url="http://example.invalid/x.txt", sha256="ABC")
    NamedCorpus("x", "d", "l", url="http://example.invalid/x.txt", unpinned="the publisher gives no hash")


def test_an_unknown_name_lists_the_corpora(cache):
    with pytest.raises(CorpusError) as err:
        download.get("tiny-shakspeare", timeout=TIMEOUT)
    assert "'tiny-shakspeare'" in one_sentence(err) and "tiny-shakespeare" in str(err.value)


# ---- download ----------------------------------------------------------------------------------------------------


def test_a_text_corpus_downloads_verifies_and_reports_progress(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    seen: list[tuple[int, int | None]] = []
    path = download.get("tiny", progress=lambda done, total: seen.append((done, total)), timeout=TIMEOUT)
    assert path == cache / "corpora" / "tiny" / "tiny.txt" and path.read_bytes() == TEXT
    assert seen[0] == (0, len(TEXT)) and seen[-1] == (len(TEXT), len(TEXT))
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert leftovers(cache, "tiny") == ["tiny.txt"]  # no .part, no temp file
    assert corpora.path("tiny") == path


def test_a_zip_corpus_unpacks_its_member(server, cache, monkeypatch):
    archive = zipped({"README": b"not the text", "tiny8": TEXT})
    register(monkeypatch, server, "tiny8", archive, filename="tiny8.zip", member="tiny8", text=TEXT)
    path = download.get("tiny8", timeout=TIMEOUT)
    assert path.read_bytes() == TEXT
    assert leftovers(cache, "tiny8") == ["tiny8.txt"]  # the archive is deleted once unpacked


def test_a_verified_archive_left_by_a_kill_is_unpacked_without_the_network(server, cache, monkeypatch):
    archive = zipped({"tiny8": TEXT})
    register(monkeypatch, server, "tiny8", archive, filename="tiny8.zip", member="tiny8", text=TEXT)
    (cache / "corpora" / "tiny8").mkdir(parents=True)
    (cache / "corpora" / "tiny8" / "tiny8.zip").write_bytes(archive)  # renamed there only after verification
    (cache / "corpora" / "tiny8" / ".tiny8.txt.abc.tmp").write_bytes(b"a killed unpacking")
    assert download.get("tiny8", timeout=TIMEOUT).read_bytes() == TEXT
    assert server.ranges == [] and leftovers(cache, "tiny8") == ["tiny8.txt"]


def test_a_wrong_checksum_leaves_nothing_under_the_final_name(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT, sha256=sha256(b"something else"))
    with pytest.raises(CorpusError, match="does not match its published SHA-256") as err:
        download.get("tiny", timeout=TIMEOUT)
    assert "charrnn corpus get tiny" in one_sentence(err)
    assert leftovers(cache, "tiny") == []  # neither the text nor the .part


def test_a_cut_connection_leaves_a_part_and_the_next_get_resumes_it(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    server.cut_after = 5000
    with pytest.raises(CorpusError, match="broke off after") as err:
        download.get("tiny", timeout=TIMEOUT)
    assert "charrnn corpus get tiny` again to resume" in one_sentence(err)
    part = cache / "corpora" / "tiny" / "corpus.txt.part"
    assert part.read_bytes() == TEXT[:5000] and not (cache / "corpora" / "tiny" / "tiny.txt").exists()
    seen: list[tuple[int, int | None]] = []
    path = download.get("tiny", progress=lambda done, total: seen.append((done, total)), timeout=TIMEOUT)
    assert server.ranges == [None, "bytes=5000-"]
    assert path.read_bytes() == TEXT and not part.exists()
    assert seen[0] == (5000, len(TEXT))  # the bar starts where the last download stopped


def test_a_server_that_ignores_range_restarts_cleanly(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    server.honour_range = False
    part = cache / "corpora" / "tiny" / "corpus.txt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"#" * 3000)  # appended to, this would fail the checksum
    assert download.get("tiny", timeout=TIMEOUT).read_bytes() == TEXT
    assert server.ranges == ["bytes=3000-"]  # asked to resume, got the whole file, rewrote the .part


def test_a_part_that_the_server_cannot_continue_starts_over(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT, size=len(TEXT) + 10)  # the .part is already as long as the file
    server.files["/corpus.txt"] = TEXT
    part = cache / "corpora" / "tiny" / "corpus.txt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(TEXT)
    with pytest.raises(CorpusError):  # 416, then the whole file: its size is not the (wrong) pin
        download.get("tiny", timeout=TIMEOUT)
    assert server.ranges == [f"bytes={len(TEXT)}-", None]


def test_a_part_longer_than_the_file_is_discarded(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    part = cache / "corpora" / "tiny" / "corpus.txt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(TEXT + b"more")
    assert download.get("tiny", timeout=TIMEOUT).read_bytes() == TEXT
    assert server.ranges == [None]


def test_a_file_that_changed_upstream_is_refused_before_it_is_kept(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT, size=len(TEXT) - 1)
    with pytest.raises(CorpusError, match=f"serves {len(TEXT):,} bytes, not the {len(TEXT) - 1:,}") as err:
        download.get("tiny", timeout=TIMEOUT)
    one_sentence(err)
    assert leftovers(cache, "tiny") == []


def test_a_server_that_is_down_gives_one_sentence(cache, monkeypatch):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = NamedCorpus("tiny", "d", "l", url=f"http://127.0.0.1:{port}/x.txt", size=3, sha256=sha256(b"abc"))
    monkeypatch.setitem(corpora.REGISTRY, "tiny", entry)
    with pytest.raises(CorpusError, match=f"cannot reach 127.0.0.1:{port} to download tiny") as err:
        download.get("tiny", timeout=TIMEOUT)
    assert "refused" in one_sentence(err).lower()


def test_a_server_that_never_answers_times_out(cache, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()  # the kernel accepts the connection; nobody ever answers
        entry = NamedCorpus("tiny", "d", "l", url=f"http://127.0.0.1:{s.getsockname()[1]}/x", size=3,
                            sha256=sha256(b"abc"))  # fmt: skip
        monkeypatch.setitem(corpora.REGISTRY, "tiny", entry)
        with pytest.raises(CorpusError, match=r"no answer within 0\.3 s") as err:
            download.get("tiny", timeout=0.3)
    one_sentence(err)


def test_an_http_error_gives_one_sentence(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    server.files.clear()
    with pytest.raises(CorpusError, match="answered HTTP 404") as err:
        download.get("tiny", timeout=TIMEOUT)
    one_sentence(err)


def test_too_little_disk_space_is_refused_before_downloading(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(download.shutil, "disk_usage", lambda path: usage(100, 90, 10))
    with pytest.raises(CorpusError, match="only 0.0 MB is free; free some disk space") as err:
        download.get("tiny", timeout=TIMEOUT)
    one_sentence(err)
    assert server.ranges == []


def test_a_disk_that_fills_up_while_downloading_gives_one_sentence(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "open", lambda *args: Full(), raising=False)
    with pytest.raises(CorpusError, match="No space left on device; free some disk space") as err:
        download.get("tiny", timeout=TIMEOUT)
    one_sentence(err)
    assert not (cache / "corpora" / "tiny" / "tiny.txt").exists()


def test_an_unpinned_corpus_downloads_with_a_warning(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT, sha256=None, unpinned="the publisher gives no hash")
    warnings: list[str] = []
    assert download.get("tiny", warn=warnings.append, timeout=TIMEOUT).read_bytes() == TEXT
    assert len(warnings) == 1 and "cannot be verified (the publisher gives no hash)" in warnings[0]


def test_a_second_downloader_is_refused_while_the_first_holds_the_lock(server, cache, monkeypatch):
    import fcntl

    register(monkeypatch, server, "tiny", TEXT)
    (cache / "corpora" / "tiny").mkdir(parents=True)
    with open(cache / "corpora" / "tiny" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(CorpusError, match="another charrnn process is downloading tiny") as err:
            download.get("tiny", timeout=TIMEOUT)
    one_sentence(err)
    assert download.get("tiny", timeout=TIMEOUT).read_bytes() == TEXT  # the lock is free again


# ---- what is already there ---------------------------------------------------------------------------------------


def test_an_already_downloaded_corpus_needs_no_network(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    path = download.get("tiny", timeout=TIMEOUT)

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    assert download.get("tiny", timeout=TIMEOUT) == path and server.ranges == [None]


def test_a_damaged_download_is_reported_and_fetched_again(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    path = download.get("tiny", timeout=TIMEOUT)
    path.write_bytes(TEXT[:100])  # truncated behind our back
    with pytest.raises(CorpusError, match="is 100 bytes, not") as err:
        corpora.path("tiny")
    assert "charrnn corpus get tiny" in one_sentence(err)
    assert download.get("tiny", timeout=TIMEOUT).read_bytes() == TEXT


def test_list_corpora_says_what_is_downloaded(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    before = {status.corpus.name: status for status in corpora.list_corpora()}
    assert list(before) == list(corpora.REGISTRY) and not before["tiny"].present
    assert before["pydocs"].corpus.builtin and before["enwik8"].corpus.size == 36_445_475
    download.get("tiny", timeout=TIMEOUT)
    after = {status.corpus.name: status for status in corpora.list_corpora()}
    assert after["tiny"].present and after["tiny"].path == cache / "corpora" / "tiny" / "tiny.txt"


def test_path_of_a_corpus_not_downloaded_says_how_to_get_it(server, cache, monkeypatch):
    register(monkeypatch, server, "tiny", TEXT)
    with pytest.raises(CorpusError, match=r"not downloaded yet; run `charrnn corpus get tiny` first") as err:
        corpora.path("tiny")
    one_sentence(err)


def test_pydocs_is_built_not_downloaded(cache, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(download.urllib.request, "urlopen", no_network)
    path = download.get("pydocs")
    assert path == cache / "corpora" / "pydocs.txt" and path.stat().st_size > 100_000
    assert corpora.path("pydocs") == path


# ---- `charrnn train NAME`: corpus.load_corpus resolves the name --------------------------------------------------


def test_training_on_a_name_reads_the_downloaded_corpus(server, cache, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no file called "tiny" here
    register(monkeypatch, server, "tiny", TEXT)
    with pytest.raises(CorpusError, match=r"not downloaded yet; run `charrnn corpus get tiny` first") as err:
        load_corpus(["tiny"])
    one_sentence(err)
    download.get("tiny", timeout=TIMEOUT)
    corpus = load_corpus(["tiny"])
    assert corpus.name == "tiny" and corpus.sources == ["tiny"]
    assert corpus.vocab.decode(corpus.ids) == TEXT.decode() and corpus.sha256 == sha256(TEXT)


def test_training_on_a_zip_corpus_reads_its_member(server, cache, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    register(monkeypatch, server, "tiny8", zipped({"tiny8": TEXT}), filename="tiny8.zip", member="tiny8", text=TEXT)
    download.get("tiny8", timeout=TIMEOUT)
    assert load_corpus(["tiny8"]).vocab.decode(load_corpus(["tiny8"]).ids) == TEXT.decode()


def test_a_missing_file_names_the_corpora_and_how_to_list_them(tmp_path, cache):
    with pytest.raises(CorpusError) as err:
        load_corpus([str(tmp_path / "nope.txt")])
    message = one_sentence(err)
    assert "tiny-shakespeare" in message and "enwik8" in message and "charrnn corpus list" in message


# ---- bytes the server chooses (#19 item 8) -----------------------------------------------------------------------


@pytest.fixture
def raw_server():
    """A server on 127.0.0.1 that answers every request with the raw bytes the test gives it, whatever they are;
    yields a function that takes those bytes and returns the server's URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    reply: list[bytes] = [b""]
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    request = b""
                    while b"\r\n\r\n" not in request and (chunk := conn.recv(4096)):
                        request += chunk
                    conn.sendall(reply[0])

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()

    def serve(raw: bytes) -> str:
        reply[0] = raw
        return f"http://127.0.0.1:{listener.getsockname()[1]}/corpus.txt"

    yield serve
    stop.set()
    thread.join(timeout=5)
    listener.close()


SERVER_CHOSEN = {
    "a reason phrase that clears the screen": (
        b"HTTP/1.1 503 Busy\x1b[2J\x1b]0;owned\x07 now\r\nContent-Length: 0\r\n\r\n"
    ),
    "a status line of garbage with a NUL": b"\x00\x1b[31mGARBAGE\r\nsecond line\r\n\r\n",
    "a redirect loop": b"HTTP/1.1 302 Found\x1b[2J\r\nLocation: /corpus.txt\r\nContent-Length: 0\r\n\r\n",
    "a very long reason phrase": b"HTTP/1.1 500 " + b"x\x1b[1m" * 4000 + b"\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("kind", SERVER_CHOSEN)
def test_what_a_server_sends_is_shown_escaped_on_one_line(raw_server, cache, monkeypatch, kind):
    url = raw_server(SERVER_CHOSEN[kind])
    entry = NamedCorpus("tiny", "d", "l", url=url, size=3, sha256=sha256(b"abc"))
    monkeypatch.setitem(corpora.REGISTRY, "tiny", entry)
    with pytest.raises(CorpusError) as err:
        download.get("tiny", timeout=TIMEOUT)
    message = one_sentence(err)
    assert not any(unicodedata.category(c) == "Cc" for c in message), repr(message)
    assert "\\x1b" in message  # shown, escaped: the reader can see what the server sent
    assert len(message) < 1000
    assert leftovers(cache, "tiny") == []


def test_the_cli_shows_a_server_reason_escaped(raw_server, cache, monkeypatch):
    """The whole path to the terminal: user_errors writes the CorpusError, and no raw byte survives it."""
    from typer.testing import CliRunner

    from charrnn.cli.app import app

    url = raw_server(SERVER_CHOSEN["a reason phrase that clears the screen"])
    monkeypatch.setitem(corpora.REGISTRY, "tiny", NamedCorpus("tiny", "d", "l", url=url, size=3, sha256=sha256(b"abc")))
    result = CliRunner().invoke(app, ["corpus", "get", "tiny"])
    assert result.exit_code == 1
    assert "answered HTTP 503" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "Busy\\x1b[2J" in result.stderr
    assert result.stdout == ""


def test_an_error_message_from_any_source_reaches_stderr_escaped(monkeypatch):
    """user_errors is the last guard: whatever text a CharRNNError carries, stderr gets it on one line, escaped."""
    from typer.testing import CliRunner

    from charrnn.cli import app as cli

    def crafted(name, **kwargs):
        raise CorpusError("the mirror said \x1b[2Jhello\nand \x00 more.")

    monkeypatch.setattr(download, "get", crafted)
    result = CliRunner().invoke(cli.app, ["corpus", "get", "tiny-shakespeare"])
    assert result.exit_code == 1
    assert "\x1b" not in result.stderr and "\x00" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "said \\x1b[2Jhello\\nand \\x00 more." in result.stderr
