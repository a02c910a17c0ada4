"""Every progress display, run in a real pseudo-terminal: pipes alone never showed that `corpus get` hung in one.

A progress display behaves differently when stderr is a terminal (Rich draws and hides the cursor, tqdm redraws in
place), so each command that shows one runs here with stdin, stdout and stderr on a pty, and must end on its own,
within a deadline, with exit 0 and no traceback.
"""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_TRAIN, charrnn_cmd, cli_env, word_text

fcntl = pytest.importorskip("fcntl", reason="needs a pseudo-terminal (POSIX)")
termios = pytest.importorskip("termios", reason="needs a pseudo-terminal (POSIX)")


def run_in_pty(cmd: list[str], cwd: Path, deadline_s: float = 90.0) -> tuple[int | None, bytes]:
    """`cmd` with a pty for all three streams, read until it ends or the deadline passes (then killed with its
    process group, and None returned as its exit status): how it ended, and what it drew."""
    master, slave = os.openpty()
    # A real terminal has a size; a fresh pty is 0x0, in which tqdm draws nothing at all.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = dict(cli_env(cwd), TERM="xterm-256color", COLUMNS="100", LINES="30")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    drawn = bytearray()
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 1 << 16)
                except OSError:  # EIO: every writer closed the pty, the process is ending
                    chunk = b""
                if not chunk:
                    break
                drawn += chunk
            elif proc.poll() is not None:
                break
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, bytes(drawn)
        return proc.wait(timeout=max(1.0, end - time.monotonic())), bytes(drawn)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, bytes(drawn)
    finally:
        os.close(master)


def assert_clean(status: int | None, drawn: bytes) -> None:
    tail = drawn[-1500:].decode("utf-8", "replace")
    assert status is not None, f"still running at the deadline (a hang); it drew, last: {tail!r}"
    assert b"Traceback" not in drawn, tail
    assert status == 0, tail


def test_corpus_get_ends_in_a_terminal(tmp_path):
    # pydocs is built on this machine, no network; its progress display is the download's.
    status, drawn = run_in_pty(charrnn_cmd("corpus", "get", "pydocs"), tmp_path, deadline_s=60)
    assert_clean(status, drawn)
    assert b"pydocs.txt" in drawn  # the path, printed on stdout (the pty here)


def test_train_draws_its_bar_and_ends_in_a_terminal(tmp_path):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(200), encoding="utf-8")
    status, drawn = run_in_pty(charrnn_cmd("train", corpus, "--run-dir", tmp_path / "run", *TINY_TRAIN), tmp_path)
    assert_clean(status, drawn)
    assert b"step" in drawn  # Rich's live bar: this ran with a terminal's display, not the piped one
    assert (tmp_path / "run" / "best.pt").is_file()


def test_encoding_a_large_corpus_draws_its_bar_and_ends_in_a_terminal(tmp_path):
    corpus = tmp_path / "large.txt"
    block = word_text(2000).encode("utf-8")
    with corpus.open("wb") as f:  # past corpus.py's _PROGRESS_MIN_BYTES (32 MiB): the reading and encoding bars show
        for _ in range((40 << 20) // len(block) + 1):
            f.write(block)
    args = ["train", corpus, "--run-dir", tmp_path / "run", *TINY_TRAIN, "--max-steps", "1", "--eval-every", "1"]
    status, drawn = run_in_pty(charrnn_cmd(*args), tmp_path, deadline_s=240)
    assert_clean(status, drawn)
    assert b"reading large" in drawn and b"encoding large" in drawn, drawn[-1500:]


def test_the_pty_harness_reports_a_hang(tmp_path):
    """The harness itself: a command that never ends is killed at the deadline and reported, not waited on."""
    script = tmp_path / "hang.py"
    script.write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n", encoding="utf-8")
    t0 = time.monotonic()
    status, drawn = run_in_pty([sys.executable, str(script)], tmp_path, deadline_s=3)
    assert status is None and b"started" in drawn
    assert time.monotonic() - t0 < 20
