"""Shell polish: --version, completion, help that ends in examples, and no escape codes where they do not belong
(a stderr that is not a terminal, or NO_COLOR set)."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import tomllib

from charrnn.cli.app import app
from tests.conftest import REPO, TINY_TRAIN, charrnn_cmd, cli, cli_env, word_text
from tests.test_cli import run

COLOUR = re.compile(r"\x1b\[(?:3[0-7]|38;|9[0-7])")  # an SGR foreground colour


def test_version_is_the_packages():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    r = run(["--version"])
    assert r.exit_code == 0 and r.stdout == f"charrnn {version}\n"


def test_completion_script_for_bash():
    script = Path(sys.executable).parent / "charrnn"  # the installed console script, as a user's shell runs it
    # Typer detects the user's shell from the process tree, which a test runner's may not show; this variable
    # (Typer's own, for tests) makes --show-completion take the shell's name instead.
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    r = subprocess.run([script, "--show-completion", "bash"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "_CHARRNN_COMPLETE" in r.stdout and "complete" in r.stdout


def test_every_command_help_ends_with_examples():
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    names += [g.name for g in app.registered_groups]
    assert {"train", "sample", "score", "plot", "info"} <= set(names)
    for name in names:
        r = run([name, "--help"])
        assert r.exit_code == 0, (name, r.stdout)
        tail = r.stdout[r.stdout.rindex("Examples:") :]
        assert f"charrnn {name}" in tail, (name, tail)


def _corpus_dir(tmp_path: Path) -> Path:
    d = tmp_path / "texts"
    d.mkdir(exist_ok=True)
    (d / "a.txt").write_text(word_text())
    (d / "b.bin").write_bytes(b"\x00\x01binary")  # skipped with a warning: the one coloured line train writes
    return d


def test_a_log_file_gets_no_escape_codes(tmp_path):
    r = cli(["train", _corpus_dir(tmp_path), "--run-dir", tmp_path / "r", *TINY_TRAIN], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "skipped 1 file" in r.stderr and "\x1b" not in r.stderr


def _stderr_on_a_terminal(tmp_path: Path, env: dict) -> str:
    """train's stderr as a terminal sees it (a pseudo-terminal), stdout a pipe."""
    leader, follower = pty.openpty()
    args = ["train", _corpus_dir(tmp_path), "--run-dir", tmp_path / "r", *TINY_TRAIN, "--overwrite"]
    proc = subprocess.Popen(charrnn_cmd(*args), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    out, deadline = b"", time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(leader)
    assert proc.returncode == 0, out.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def test_no_color_is_respected_on_a_terminal(tmp_path):
    coloured = _stderr_on_a_terminal(tmp_path, cli_env(tmp_path))
    assert COLOUR.search(coloured)  # control: on a terminal the warning is yellow
    plain = _stderr_on_a_terminal(tmp_path, {**cli_env(tmp_path), "NO_COLOR": "1"})
    assert "skipped 1 file" in plain and not COLOUR.search(plain)


def test_paced_output_flushes_a_stream_of_steps_a_few_times_and_at_the_end(monkeypatch):
    """A sampler's character-a-step output reaches a pipe ~50 times a second, not at every step, and all of it
    once the stream ends."""
    import io

    from charrnn.cli import console

    class Pipe(io.StringIO):
        flushes = 0
        flushed = ""

        def flush(self) -> None:
            self.flushes += 1
            self.flushed = self.getvalue()

    pipe = Pipe()
    monkeypatch.setattr(sys, "stdout", pipe)
    out = console.PacedOut()
    for _ in range(2000):
        out.write("x")
    assert pipe.flushes < 50  # not one per step (2000), however loaded the machine is
    time.sleep(console.FLUSH_EVERY_S * 1.5)
    out.write("y")  # past due: this one goes out at once
    assert pipe.flushed.endswith("y")
    out.write("z")
    out.flush()
    assert pipe.flushed == "x" * 2000 + "yz"
