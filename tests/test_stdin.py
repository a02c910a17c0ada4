"""Standard input as a source (stdin.py): closed (`<&-`), or not UTF-8, is one sentence and exit 1 (#19 items 4, 10),
and seeds start at 0 as docs/limits-and-errors.md says."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import charrnn_cmd, cli, cli_env

FORMAT1 = Path(__file__).resolve().parent / "fixtures" / "format1"
POSIX = pytest.mark.skipif(os.name != "posix", reason="closes the child's descriptor 0 (POSIX)")


def run_with_stdin_closed(args, cwd: Path) -> subprocess.CompletedProcess:
    """`charrnn ARGS` started as a shell's `<&-` starts it: no descriptor 0 at all."""
    return subprocess.run(
        charrnn_cmd(*args),
        cwd=cwd,
        env=cli_env(cwd),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.close(0),
    )


def one_sentence(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@POSIX
@pytest.mark.parametrize(
    "args",
    [
        ["sample", FORMAT1, "--prime", "-", "--length", "5"],
        ["score", FORMAT1, "-"],
        ["train", "-", "--run-dir", "run", "--max-steps", "1", "--device", "cpu"],
    ],
    ids=["sample --prime -", "score -", "train -"],
)
def test_a_closed_stdin_is_one_sentence(tmp_path, args):
    proc = run_with_stdin_closed(args, tmp_path)
    one_sentence(proc, 1, "standard input", "closed")
    assert proc.stdout == "" and not (tmp_path / "run").exists()


def test_a_prime_on_stdin_that_is_not_utf8_names_the_byte(tmp_path):
    proc = cli(
        ["sample", FORMAT1, "--prime", "-", "--length", "5"],
        cwd=tmp_path,
        input="the\udcffcat",
        errors="surrogateescape",
    )
    line = one_sentence(proc, 1, "not valid UTF-8", "byte 3", "0xff")
    assert "never saw" not in line and "\\udc" not in line


def test_a_utf8_prime_on_stdin_still_primes(tmp_path):
    proc = cli(["sample", FORMAT1, "--prime", "-", "--length", "5", "--seed", "0"], cwd=tmp_path, input="the ")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("the ")


@pytest.mark.parametrize("command", ["sample", "train"])
def test_a_negative_seed_is_refused(tmp_path, command):
    corpus = tmp_path / "words.txt"
    corpus.write_text("the cat sat on the mat\n" * 200, encoding="utf-8")
    args = ["sample", FORMAT1] if command == "sample" else ["train", corpus, "--run-dir", tmp_path / "run"]
    proc = cli([*args, "--seed", "-1"], cwd=tmp_path)
    one_sentence(proc, 2, "--seed", "between 0 and")
    assert not (tmp_path / "run").exists()
    assert (
        cli([*args, "--seed", "0", "--max-steps" if command == "train" else "--length", "2"], cwd=tmp_path).returncode
        == 0
    )
