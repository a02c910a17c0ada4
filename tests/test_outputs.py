"""The one rule for every file a user names for charrnn to write (outputs.py: `score --html`, `plot -o`,
`export -o`), and the cleanup of its temp files when a signal stops the write (#19 items 1 and 2)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn.checkpoint.outputs import check_output, replace_atomically
from charrnn.errors import UsageError
from tests.conftest import cli, cli_env, word_text


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_files(run: Path) -> dict[str, str]:
    """What a run directory holds, by name and content: a command that wrote into it changes this."""
    return {p.name: digest(p) for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture
def work(tmp_path, trained_run) -> Path:
    """A scratch directory with a copy of the trained run (its hard links kept: best.pt, last.pt and the numbered
    checkpoint are one file, as in a real run) and a text to score."""
    run = tmp_path / "run"
    run.mkdir()
    inodes: dict[int, Path] = {}
    for p in sorted(trained_run.iterdir()):
        if p.is_file():
            first = inodes.setdefault(p.stat().st_ino, run / p.name)
            if first == run / p.name:
                shutil.copy2(p, run / p.name)
            else:
                os.link(first, run / p.name)
    (tmp_path / "text.txt").write_text(word_text(20, seed=3), encoding="utf-8")
    return tmp_path


def refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


# ---------------------------------------------------------------- score --html


def test_html_over_a_checkpoint_is_refused_and_the_run_survives(work):
    run = work / "run"
    before = run_files(run)
    for target in ("best.pt", "last.pt"):
        proc = cli(["score", run, "text.txt", "--html", run / target, "--force"], cwd=work)
        refused(proc, "checkpoint")
    assert run_files(run) == before
    assert cli(["sample", run, "--length", "20", "--seed", "1"], cwd=work).returncode == 0


def test_html_inside_a_run_directory_is_refused(work):
    run = work / "run"
    before = run_files(run)
    proc = cli(["score", run, "text.txt", "--html", run / "page.html"], cwd=work)
    refused(proc, "run directory")
    assert run_files(run) == before and not (run / "page.html").exists()


def test_html_over_the_text_being_scored_is_refused_even_with_force(work):
    text = work / "text.txt"
    before = digest(text)
    refused(cli(["score", "run", "text.txt", "--html", "text.txt", "--force"], cwd=work), "reads")
    os.link(text, work / "alias.html")  # the same inode under another name
    refused(cli(["score", "run", "text.txt", "--html", "alias.html", "--force"], cwd=work), "reads")
    assert digest(text) == before


def test_html_over_an_existing_file_needs_force_and_never_writes_through_its_inode(work):
    page = work / "page.html"
    page.write_text("my notes", encoding="utf-8")
    os.link(page, work / "backup.html")
    refused(cli(["score", "run", "text.txt", "--html", "page.html"], cwd=work), "--force")
    assert page.read_text(encoding="utf-8") == "my notes"
    proc = cli(["score", "run", "text.txt", "--html", "page.html", "--force"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "<html" in page.read_text(encoding="utf-8").lower()
    assert (work / "backup.html").read_text(encoding="utf-8") == "my notes"  # the old inode keeps its content


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (os.mkfifo, POSIX)")
def test_html_to_a_fifo_is_refused_without_blocking(work):
    os.mkfifo(work / "pipe.html")
    proc = cli(["score", "run", "text.txt", "--html", "pipe.html", "--force"], cwd=work, timeout=60)
    refused(proc, "not a regular file")
    assert (work / "pipe.html").is_fifo()


def test_a_checkpoint_under_another_name_is_refused_even_with_force(work):
    shutil.copy(work / "run" / "best.pt", work / "model.bin")
    before = digest(work / "model.bin")
    refused(cli(["score", "run", "text.txt", "--html", "model.bin", "--force"], cwd=work), "checkpoint")
    assert digest(work / "model.bin") == before


# ---------------------------------------------------------------- export -o, plot -o


def test_export_never_replaces_its_own_source(work):
    first = cli(["export", "run", "-o", "model.safetensors"], cwd=work)
    assert first.returncode == 0, first.stderr
    before = digest(work / "model.safetensors")
    proc = cli(["export", "model.safetensors", "-o", "model.safetensors", "--dtype", "fp16", "--force"], cwd=work)
    refused(proc, "reads")
    assert digest(work / "model.safetensors") == before


def test_export_over_another_file_needs_force(work):
    other = work / "other.safetensors"
    other.write_bytes(b"someone else's model")
    refused(cli(["export", "run", "-o", "other.safetensors"], cwd=work), "already exists", "--force")
    assert other.read_bytes() == b"someone else's model"
    proc = cli(["export", "run", "-o", "other.safetensors", "--force"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert cli(["info", "other.safetensors"], cwd=work).returncode == 0


def test_export_into_a_run_directory_is_refused(work):
    before = run_files(work / "run")
    refused(cli(["export", "run", "-o", "run/model.safetensors"], cwd=work), "run directory")
    assert run_files(work / "run") == before


def test_plot_follows_the_same_rule(work):
    pytest.importorskip("matplotlib")
    before = run_files(work / "run")
    refused(cli(["plot", "run", "-o", "run/loss.png"], cwd=work), "run directory")
    assert run_files(work / "run") == before
    (work / "loss.png").write_bytes(b"an older plot")
    refused(cli(["plot", "run", "-o", "loss.png"], cwd=work), "--force")
    assert (work / "loss.png").read_bytes() == b"an older plot"
    proc = cli(["plot", "run", "-o", "loss.png", "--force"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert (work / "loss.png").read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------- the rule itself, in-process


def test_check_output_accepts_a_new_file_and_refuses_a_missing_directory(tmp_path):
    check_output(tmp_path / "new.html", "--html")
    with pytest.raises(UsageError, match="does not exist"):
        check_output(tmp_path / "nowhere" / "new.html", "--html")
    with pytest.raises(UsageError, match="not a regular file"):
        check_output(tmp_path, "--html", force=True)


def test_a_symbolic_link_is_replaced_not_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me", encoding="utf-8")
    link = tmp_path / "out.html"
    link.symlink_to(target)
    check_output(link, "--html", force=True)
    replace_atomically(link, lambda f: f.write(b"new page"))
    assert not link.is_symlink() and link.read_bytes() == b"new page"
    assert target.read_text(encoding="utf-8") == "keep me"


def test_a_link_to_an_input_counts_as_the_input(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("abc", encoding="utf-8")
    (tmp_path / "out.html").symlink_to(text)
    with pytest.raises(UsageError, match="reads"):
        check_output(tmp_path / "out.html", "--html", inputs=[text], force=True)


# ---------------------------------------------------------------- a signal in the middle of the write

# The child stops itself with `signum` at the moment named by `hook` (a function every writer calls between
# creating its temp file and renaming it), then runs the charrnn command line given after the two.
SIGNAL_CHILD = """
import os, signal, sys
signum, hook = int(sys.argv[1]), sys.argv[2]
real = getattr(os, hook)
def stop_here(*args, **kw):
    os.kill(os.getpid(), signum)
    return real(*args, **kw)
setattr(os, hook, stop_here)
sys.argv = ["charrnn", *sys.argv[3:]]
from charrnn.cli.app import main
main()
"""

SIGNALS = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]
WRITERS = {  # the command, and the os function its write calls mid-way
    "export": (["export", "run", "-o", "out/model.safetensors"], "fsync"),
    "score --html": (["score", "run", "text.txt", "--html", "out/page.html"], "chmod"),
    "plot -o": (["plot", "run", "-o", "out/loss.png"], "chmod"),
}


@pytest.mark.parametrize("name", SIGNALS)
@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_signal_during_a_write_leaves_no_temp_file(work, writer, name):
    if writer == "plot -o":
        pytest.importorskip("matplotlib")
    args, hook = WRITERS[writer]
    signum = getattr(signal, name)
    (work / "out").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_CHILD, str(signum), hook, *args],
        cwd=work,
        env=cli_env(work),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 128 + signum, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and name in proc.stderr, proc.stderr
    assert list((work / "out").iterdir()) == []  # neither the output nor a temp file


def test_the_signal_child_runs_charrnn_as_the_cli_does(work):
    """The harness itself: with a hook that sends no signal (signal 0 only checks the process exists) the
    command runs to its end."""
    (work / "out").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", SIGNAL_CHILD, "0", "fsync", *WRITERS["export"][0]],
        cwd=work,
        env=cli_env(work),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (work / "out").iterdir()] == ["model.safetensors"]
