"""The CLI end to end: stdout carries only data, stderr the rest; every bad input gets one sentence and the
documented exit code, with no traceback and no damage to existing checkpoints."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from charrnn.cli.app import app
from charrnn.cli.options import parse_duration
from charrnn.config.sample import PRECISIONS
from charrnn.generation import kernels
from tests.conftest import TINY_TRAIN

runner = CliRunner()


def run(args, cwd=None, input=None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args], input=input)
    finally:
        os.chdir(old)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_error(result, code: int):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip() and not ln.startswith("seed ")]
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return result.stderr


# ---------------------------------------------------------------------------------------------------
# the happy path


def test_train_prints_only_the_checkpoint_path(tmp_path, small_corpus):
    r = run(["train", small_corpus, "--run-dir", tmp_path / "run", *TINY_TRAIN])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{tmp_path / 'run' / 'best.pt'}\n"
    assert "seed 7" in r.stderr and "val loss" in r.stderr
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"best.pt", "last.pt", "metrics.jsonl"}


def test_default_run_dir_is_corpus_name_and_sample_finds_it(tmp_path, small_corpus):
    r = run(["train", small_corpus, *TINY_TRAIN], cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(Path("checkpoints") / "small" / "best.pt")
    s = run(["sample", "-n", "50", "--seed", "3"], cwd=tmp_path)
    assert s.exit_code == 0, s.stderr
    assert len(s.stdout) >= 50
    assert s.stderr.startswith(f"using {Path('checkpoints') / 'small' / 'best.pt'} (step 20, val ")


def test_info_describes_the_checkpoint(trained_run):
    r = run(["info", trained_run / "best.pt"])
    assert r.exit_code == 0, r.stderr
    for expected in (
        "LSTM, 1 layer x 32 hidden",
        "parameters:",
        "vocabulary:",
        "corpus:         words",
        "steps:          20",
        "bits/char",
        "trained on:     cpu",
    ):
        assert expected in r.stdout


def test_sample_is_seeded_and_streams_prime_then_text(trained_run):
    ckpt = trained_run / "best.pt"
    a = run(["sample", ckpt, "-n", "80", "--seed", "5", "--prime", "the "])
    b = run(["sample", ckpt, "-n", "80", "--seed", "5", "--prime", "the "])
    c = run(["sample", ckpt, "-n", "80", "--seed", "6", "--prime", "the "])
    assert a.exit_code == 0 and len(a.stderr.splitlines()) == 1 and a.stderr.startswith("using ")
    assert a.stdout == b.stdout != c.stdout
    assert a.stdout.startswith("the ")
    assert len(a.stdout.rstrip("\n")) >= 84 - 1


def test_random_seed_is_printed_to_stderr(trained_run):
    r = run(["sample", trained_run / "best.pt", "-n", "5"])
    assert r.exit_code == 0 and r.stderr.splitlines()[1].startswith("seed ")
    seed = int(r.stderr.splitlines()[1].split()[1])
    again = run(["sample", trained_run / "best.pt", "-n", "5", "--seed", str(seed)])
    assert again.stdout == r.stdout


def test_num_samples_are_separated_by_a_blank_line(trained_run):
    r = run(
        [
            "sample",
            trained_run / "best.pt",
            "-n",
            "40",
            "--seed",
            "1",
            "--num-samples",
            "3",
            "--prime",
            "the",
            "-t",
            "0.5",
        ]
    )
    assert r.exit_code == 0, r.stderr
    parts = r.stdout.split("\n\nthe")
    assert len(parts) >= 3


@pytest.mark.parametrize("native", [True, False])
def test_bf16_sampling_streams_text_and_warns_where_it_is_emulated(native, trained_run, monkeypatch):
    monkeypatch.setattr("charrnn.generation.kernels.bf16_is_native", lambda device: native)
    r = run(["sample", trained_run / "best.pt", "-n", "60", "--seed", "2", "--num-samples", "2", "--precision", "bf16"])
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout) >= 2 * 60
    assert ("slower than fp32" in r.stderr) == (not native)


@pytest.mark.skipif(kernels.int8_engine() is None, reason="this torch build has no int8 CPU kernel")
def test_int8_and_auto_precision_sample_through_the_cli(trained_run):
    int8 = run(["sample", trained_run / "best.pt", "-n", "60", "--seed", "2", "--precision", "int8"])
    assert int8.exit_code == 0, int8.stderr
    assert len(int8.stdout) >= 60
    auto = run(["sample", trained_run, "-n", "60", "--seed", "2", "--num-samples", "2", "--precision", "auto"])
    assert auto.exit_code == 0, auto.stderr
    said = re.search(r"precision auto: (\w+) \(steps timed against fp32 here: fp32 1\.00x, ", auto.stderr)
    assert said and said.group(1) in PRECISIONS, auto.stderr
    assert len(auto.stdout) >= 2 * 60
    quiet = run(["sample", trained_run, "-n", "5", "--precision", "auto", "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    beam = run(["sample", trained_run, "-n", "5", "--beam", "2", "--precision", "auto", "-q"])
    assert beam.exit_code == 0 and len(beam.stdout) >= 5  # auto means fp32 for beams


def test_prime_from_stdin(trained_run):
    r = run(["sample", trained_run / "best.pt", "-n", "10", "--seed", "1", "--prime", "-"], input="the cat ")
    assert r.exit_code == 0 and r.stdout.startswith("the cat ")


def test_sample_into_a_closed_pipe_is_quiet(trained_run, tmp_path):
    env = dict(os.environ)
    ckpt, err = trained_run / "best.pt", tmp_path / "err"
    cmd = f"{sys.executable} -m charrnn sample {ckpt} -n 100000 --seed 1 2>{err} | head -c 10"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0
    assert len(proc.stdout) == 10
    assert (tmp_path / "err").read_text().startswith("using ")  # and nothing about the pipe
    assert len((tmp_path / "err").read_text().splitlines()) == 1


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "charrnn", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "train" in proc.stdout and "sample" in proc.stdout


@pytest.mark.parametrize("command", ["sample", "score", "train", "serve"])
def test_garbage_collection_waits_until_the_model_is_loaded(command, trained_run, small_corpus, tmp_path):
    """cli/heap.py: the console entry point holds the collector off while torch and the model load; every
    long-running command releases it once they have, and it then collects, with what was loaded frozen out of
    its scans."""
    if command == "serve":
        pytest.importorskip("uvicorn")
        pytest.importorskip("starlette")
    code = (
        "import gc, sys; from charrnn.cli import heap, app; real = heap.release\n"
        "def release():\n"
        "    print('before', gc.isenabled(), 'torch' in sys.modules, file=sys.stderr); real()\n"
        "    print('after', gc.isenabled(), gc.get_freeze_count() > 100000, file=sys.stderr, flush=True)\n"
        "heap.release = release; app.main()"
    )
    args = {
        "sample": ["sample", str(trained_run), "--length", "20", "--seed", "1", "--quiet"],
        "score": ["score", str(trained_run), str(small_corpus)],
        "train": ["train", str(small_corpus), "--run-dir", str(tmp_path / "run"), *TINY_TRAIN],
        "serve": ["serve", str(trained_run), "--port", "0"],
    }[command]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)  # fmt: skip
    if command == "serve":  # it runs until a signal: stop it once it listens
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("listening on "):
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        err = "".join(lines) + err
    else:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "before False True\nafter True True\n" in err and (command == "serve" or len(out) > 0)


def test_garbage_collection_is_left_alone_when_nothing_held_it():
    import gc

    from charrnn.cli import heap

    gc.disable()
    try:
        heap.release()  # never held in this process (the tests run commands in-process): left alone
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("45", 45)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


# ---------------------------------------------------------------------------------------------------
# bad input: train


def _make(tmp_path: Path, kind: str) -> list[str]:
    p = tmp_path / "corpus.txt"
    if kind == "missing":
        return [str(tmp_path / "nope.txt")]
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "whitespace":
        p.write_text("   \n\t \n")
    elif kind == "binary":
        p.write_bytes(b"abc\x00\x01\x02" * 100)
    elif kind == "invalid_utf8":
        p.write_bytes(b"hello world " * 10 + b"\xff\xfe" + b"more")
    elif kind == "single_char":
        p.write_text("a" * 5000)
    elif kind == "too_short":
        p.write_text("abcdefghij" * 3)
    elif kind == "empty_dir":
        d = tmp_path / "dir"
        d.mkdir()
        (d / ".hidden.txt").write_text("hidden text")
        (d / "blob.bin").write_bytes(b"\x00\x01" * 50)
        return [str(d)]
    elif kind == "fifo":
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        import threading

        threading.Thread(target=lambda: open(fifo, "wb").close(), daemon=True).start()
        return [str(fifo)]
    return [str(p)]


TRAIN_BAD = {
    "missing": (1, "nope.txt"),
    "empty": (1, "empty"),
    "whitespace": (1, "whitespace"),
    "binary": (1, "binary"),
    "invalid_utf8": (1, "byte 120"),
    "single_char": (1, "single distinct character"),
    "too_short": (1, "at least"),
    "empty_dir": (1, "no text files"),
    "fifo": (1, "empty"),
}


@pytest.mark.parametrize("kind", sorted(TRAIN_BAD))
def test_train_bad_corpus(kind, tmp_path, trained_run):
    before = digest(trained_run / "best.pt")
    code, needle = TRAIN_BAD[kind]
    # --overwrite, so the only thing between the bad corpus and the old model is the order of the checks
    r = run(["train", *_make(tmp_path, kind), "--run-dir", trained_run, "--overwrite", *TINY_TRAIN])
    err = assert_one_error(r, code)
    assert needle.lower() in err.lower()
    assert digest(trained_run / "best.pt") == before


def test_train_empty_stdin(tmp_path):
    r = run(["train", "-", "--run-dir", tmp_path / "r", *TINY_TRAIN], input="")
    assert "standard input is empty" in assert_one_error(r, 1).lower()


# Bad train options (exit 2, one sentence, nothing written): the table is in test_never_lose,
# test_bad_options_are_refused_before_the_corpus_is_read, which also checks that the corpus was never read.


# ---------------------------------------------------------------------------------------------------
# bad input: sample


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--temp", "-1"], "temperature"),
        (["--temp", "nan"], "temperature"),
        (["--top-p", "0"], "top-p"),
        (["--top-p", "1.5"], "top-p"),
        (["--top-k", "0"], "top-k"),
        (["--length", "-1"], "length"),
        (["--num-samples", "0"], "num-samples"),
        (["--precision", "fp16"], "precision"),
    ],
)
def test_sample_out_of_range_options(args, needle, trained_run):
    r = run(["sample", trained_run / "best.pt", "--seed", "1", *args])
    assert needle in assert_one_error(r, 2).lower()


def test_prime_with_unseen_characters_lists_them(trained_run):
    r = run(["sample", trained_run / "best.pt", "--seed", "1", "--prime", "the Zebra 猫"])
    err = assert_one_error(r, 1)
    assert "'Z'" in err and "'猫'" in err


class Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def _bad_checkpoint(tmp_path: Path, trained_run: Path, kind: str) -> Path:
    p = tmp_path / "bad.pt"
    if kind == "missing":
        return tmp_path / "absent.pt"
    if kind == "directory":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not a checkpoint\n")
    elif kind == "truncated":
        data = (trained_run / "best.pt").read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save({"weight": torch.zeros(3)}, p)
    elif kind == "pickle":
        with open(p, "wb") as f:
            pickle.dump({"x": 1}, f)
    elif kind == "malicious":
        torch.save({"format": "charrnn", "model": Payload(str(tmp_path / "pwned"))}, p)
    return p


@pytest.mark.parametrize(
    "kind", ["missing", "directory", "empty", "text", "truncated", "foreign", "pickle", "malicious"]
)
@pytest.mark.parametrize("command", ["sample", "info"])
def test_bad_checkpoints(kind, command, tmp_path, trained_run):
    path = _bad_checkpoint(tmp_path, trained_run, kind)
    args = [command, path] + (["--seed", "1"] if command == "sample" else [])
    r = run(args)
    err = assert_one_error(r, 1)
    assert path.name in err
    assert not (tmp_path / "pwned").exists()


def test_no_checkpoint_anywhere(tmp_path):
    r = run(["sample", "--seed", "1"], cwd=tmp_path)
    assert "no checkpoint" in assert_one_error(r, 1).lower()


def test_saved_weights_are_cpu_tensors(trained_run):
    ck = torch.load(trained_run / "best.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in ck["model"].values())


@pytest.mark.gpu
def test_gpu_trained_checkpoint_samples_on_cpu(trained_run, tmp_path):
    """A checkpoint whose tensors were saved from another device loads on CPU with no extra step."""
    dst = tmp_path / "gpu"
    shutil.copytree(trained_run, dst)
    ck = torch.load(dst / "best.pt", weights_only=True)
    ck["model"] = {k: v.cuda() for k, v in ck["model"].items()}
    torch.save(ck, dst / "best.pt")
    r = run(["sample", dst / "best.pt", "-n", "10", "--seed", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.stderr
