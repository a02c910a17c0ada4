"""Ordinary use never loses a model and never leaves the user guessing (issue: never lose a trained model).

Each test drives the real CLI: in-process through CliRunner where only exit codes and streams matter, and in a
subprocess where pipes, signals, closed descriptors and a second process are the point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from charrnn.checkpoint.files import load_checkpoint
from charrnn.config.train import TrainConfig
from tests.conftest import REPO, TINY_TRAIN, cli, cli_env, cli_start, flags, wait_for_line, word_text
from tests.test_cli import assert_one_error, digest, run

# TINY_TRAIN without its step limit and seed, logging every step: a run that goes on until it is stopped.
ENDLESS = [*TINY_TRAIN[:-6], "--max-steps", "100000", "--log-every", "1", "--device", "cpu"]


# ---------------------------------------------------------------------------------------------------
# 1. a second run never replaces the first


def test_a_second_run_goes_to_a_fresh_directory_and_keeps_the_first_best(tmp_path, small_corpus):
    first = run(["train", small_corpus, *TINY_TRAIN], cwd=tmp_path)
    assert first.exit_code == 0, first.stderr
    best = tmp_path / "checkpoints" / "small" / "best.pt"
    before = digest(best)
    metrics_before = (tmp_path / "checkpoints" / "small" / "metrics.jsonl").read_text()

    second = run(["train", small_corpus, *TINY_TRAIN[:-6], "--max-steps", "2", "--device", "cpu"], cwd=tmp_path)
    assert second.exit_code == 0, second.stderr
    assert digest(best) == before
    assert (tmp_path / "checkpoints" / "small" / "metrics.jsonl").read_text() == metrics_before
    assert second.stdout.strip() == str(Path("checkpoints") / "small-2" / "best.pt")
    assert "checkpoints/small-2" in second.stderr and "--resume" in second.stderr and "--overwrite" in second.stderr
    steps = {p.name for p in (tmp_path / "checkpoints" / "small").glob("ckpt-*.pt")}
    assert steps == {"ckpt-000000010.pt", "ckpt-000000020.pt"}  # no file of the second run mixed in


def test_two_stdin_runs_never_share_checkpoints_stdin(tmp_path):
    first = run(["train", "-", *TINY_TRAIN], cwd=tmp_path, input=word_text())
    assert first.exit_code == 0, first.stderr
    before = digest(tmp_path / "checkpoints" / "stdin" / "best.pt")
    second = run(["train", "-", *TINY_TRAIN], cwd=tmp_path, input=word_text(seed=1))
    assert second.exit_code == 0, second.stderr
    assert second.stdout.strip() == str(Path("checkpoints") / "stdin-2" / "best.pt")
    assert digest(tmp_path / "checkpoints" / "stdin" / "best.pt") == before


def test_an_explicit_run_dir_holding_a_run_is_refused_with_the_three_choices(tmp_path, small_corpus):
    d = tmp_path / "run"
    assert run(["train", small_corpus, "--run-dir", d, *TINY_TRAIN]).exit_code == 0
    before = digest(d / "best.pt")
    r = run(["train", small_corpus, "--run-dir", d, *TINY_TRAIN])
    err = assert_one_error(r, 2)
    assert "--resume" in err and "--overwrite" in err and "--run-dir" in err
    assert digest(d / "best.pt") == before


def test_an_overwrite_that_is_refused_keeps_the_old_model(tmp_path, small_corpus):
    d = tmp_path / "run"
    assert run(["train", small_corpus, "--run-dir", d, *TINY_TRAIN]).exit_code == 0
    before = {p.name: digest(p) for p in d.glob("*.pt")}
    for bad in (
        ["--init-from", tmp_path / "typo.pt"],
        ["--hidden-size", "20000", "--num-layers", "4"],
        ["--batch-size", "100000"],
    ):
        r = run(["train", small_corpus, "--run-dir", d, "--overwrite", *TINY_TRAIN, *bad])
        assert r.exit_code in (1, 2) and "Traceback" not in r.stderr, r.stderr
        assert {p.name: digest(p) for p in d.glob("*.pt")} == before, bad


def test_overwrite_replaces_the_run_and_nothing_of_it_is_left(tmp_path, small_corpus):
    d = tmp_path / "run"
    assert run(["train", small_corpus, "--run-dir", d, *TINY_TRAIN]).exit_code == 0
    r = run(
        ["train", small_corpus, "--run-dir", d, "--overwrite", *TINY_TRAIN[:-6], "--max-steps", "3", "--device", "cpu"]
    )
    assert r.exit_code == 0, r.stderr
    assert load_checkpoint(d / "best.pt")["step"] == 3
    assert [json.loads(line)["step"] for line in (d / "metrics.jsonl").read_text().splitlines()] == [3]
    assert {p.name for p in d.glob("ckpt-*.pt")} == {"ckpt-000000003.pt"}


# ---------------------------------------------------------------------------------------------------
# 2, 3. stderr that goes away, a second signal


def test_a_closed_stderr_does_not_stop_training(tmp_path):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text())
    args = " ".join(TINY_TRAIN).replace("--log-every 5", "--log-every 1")
    cmd = (
        f"{sys.executable} -m charrnn train {corpus} --run-dir {tmp_path / 'run'} {args} --max-steps 40 2>&1 | head -3"
    )
    proc = subprocess.run(
        ["bash", "-c", cmd], cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert len(proc.stdout.splitlines()) == 3
    # bash waited for the whole pipeline, so training went on, quietly, to its end after head left
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 40


def _slow_train(tmp_path: Path) -> subprocess.Popen:
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text(4000))
    # One step of a 2x1024 LSTM over 64 x 256 characters takes seconds on two cores: long enough for a
    # signal to land in the middle of it.
    size = flags(hidden_size=1024, num_layers=2, batch_size=64, seq_len=256)
    run_for = flags(max_steps=50, log_every=1, eval_every=1000, seed=1, device="cpu")
    return cli_start(["train", corpus, "--run-dir", tmp_path / "run", *size, *run_for], tmp_path)


def _wait_for_first_step(proc: subprocess.Popen) -> None:
    wait_for_line(proc, lambda line: line.startswith("step"))


def test_a_second_sigint_exits_within_a_second_even_mid_step(tmp_path):
    proc = _slow_train(tmp_path)
    try:
        _wait_for_first_step(proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)  # inside the next step: the first signal only sets the flag
        assert proc.poll() is None, "the step ended before the second signal; the test needs a longer step"
        sent = time.time()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        took = time.time() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    # Waiting for the step would take seconds; the margin covers a loaded machine's scheduling, not the step.
    assert took < 2.0, f"took {took:.2f} s"
    assert "again" in err and "Traceback" not in err
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.parametrize("sig,code", [(signal.SIGHUP, 129)])
def test_sighup_saves_and_stops_like_sigterm(sig, code, tmp_path, small_corpus):
    proc = cli_start(["train", small_corpus, "--run-dir", tmp_path / "run", *ENDLESS], tmp_path)
    _wait_for_first_step(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "charrnn train --resume --run-dir" in err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] >= 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_the_corpus_is_read_stops_at_once_and_leaves_no_temporary(sig, tmp_path):
    """Before the first step there is nothing to save: the first signal stops at once (here in the middle of a
    read from a stdin that never ends), and the spool and encoder temporaries are removed on the way out."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", "-", "--run-dir", str(tmp_path / "run"), *TINY_TRAIN],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(word_text())  # and the pipe stays open: the text has not ended
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not list((cache / "tmp").glob(".spool-*")):  # reading has begun
            assert proc.poll() is None and time.monotonic() < deadline, "charrnn never started reading stdin"
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=30)  # it used to wait for the end of stdin, then save an untrained checkpoint
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"{signal.Signals(sig).name}: stopped" in err, err
    assert "finishing this step" not in err  # no step was running
    assert not [p.name for p in cache.rglob("*") if p.name.startswith(".spool-") or p.name.endswith(".tmp")]
    assert not list((tmp_path / "run").glob("*.pt"))


def test_a_burst_of_sigints_never_prints_a_traceback(tmp_path, small_corpus):
    proc = cli_start(["train", small_corpus, "--run-dir", tmp_path / "run", *ENDLESS], tmp_path)
    _wait_for_first_step(proc)
    for _ in range(100):
        try:
            proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            break
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err


# ---------------------------------------------------------------------------------------------------
# 5, 6. stdout and metrics that cannot be written


@pytest.mark.parametrize("command", ["train", "sample", "info"])
@pytest.mark.parametrize("stdout", ["closed", "full"])
def test_unwritable_stdout_is_one_sentence_and_exit_1(command, stdout, tmp_path, trained_run):
    if stdout == "full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text())
    args = {
        "train": f"train {corpus} --run-dir {tmp_path / 'run'} {' '.join(TINY_TRAIN)}",
        "sample": f"sample {trained_run} -n 50 --seed 1",
        "info": f"info {trained_run}",
    }[command]
    redirect = ">&-" if stdout == "closed" else ">/dev/full"
    proc = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m charrnn {args} {redirect}"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "standard output" in errors[0]
    if command == "train":
        assert load_checkpoint(tmp_path / "run" / "best.pt")["step"] == 20  # the model is saved all the same


def test_metrics_on_a_full_disk_stops_cleanly_and_keeps_the_checkpoint(tmp_path, small_corpus, monkeypatch):
    import errno

    from charrnn.training import progress as report

    def full(*args, **kwargs):
        if str(args[0]).endswith("metrics.jsonl") and "a" in (args[1] if len(args) > 1 else kwargs.get("mode", "")):
            if getattr(full, "calls", 0):
                raise OSError(errno.ENOSPC, "No space left on device")
            full.calls = 1
        return open(*args, **kwargs)

    monkeypatch.setattr(report, "open", full, raising=False)
    d = tmp_path / "run"
    r = run(["train", small_corpus, "--run-dir", d, *TINY_TRAIN, "-q"])
    err = assert_one_error(r, 1)
    assert "metrics.jsonl" in err and "No space left" in err and "kept" in err
    assert load_checkpoint(d / "last.pt")["step"] == 10


def test_unwritable_metrics_fails_before_the_first_step(tmp_path, small_corpus):
    d = tmp_path / "run"
    (d / "metrics.jsonl").mkdir(parents=True)  # open(..., "a") fails even for root
    r = run(["train", small_corpus, "--run-dir", d, *TINY_TRAIN, "-q"])
    assert "metrics.jsonl" in assert_one_error(r, 1)
    assert not list(d.glob("*.pt"))


# ---------------------------------------------------------------------------------------------------
# 7, 14, 15, 16. options


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--max-epochs", "inf"], "max-epochs"),
        (["--max-epochs", "nan"], "max-epochs"),
        (["--max-steps", "0"], "max-steps"),
        (["--hidden-size", "0"], "hidden"),
        (["--num-layers", "0"], "layers"),
        (["--hidden-size", "-5"], "hidden"),
        (["--hidden-size", "100000"], "hidden-size"),
        (["--hidden-size", "20000", "--num-layers", "4"], "parameters"),
        (["--grad-clip", "nan"], "grad-clip"),
        (["--weight-decay", "nan"], "weight-decay"),
        (["--seed", str(2**64)], "seed"),
        (["--seed", str(-(2**63) - 1)], "seed"),
        (["--threads", "0"], "threads"),
        (["--model", "transformer"], "model"),
        (["--max-time", "soon"], "duration"),
        (["--val-frac", "1.5"], "val-frac"),
        (["--seq-len", "0"], "seq-len"),
        (["--lr", "-1"], "lr"),
        (["--min-lr-frac", "1.5"], "min-lr-frac"),
        (["--embed-size", "-3"], "embed-size"),
        pytest.param(
            ["--device", "cuda"],
            "cuda",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
        ),
    ],
)
def test_bad_options_are_refused_before_the_corpus_is_read(args, needle, tmp_path, small_corpus):
    cache = Path(os.environ["CHARRNN_CACHE_DIR"])
    r = run(["train", small_corpus, "--run-dir", tmp_path / "r", *TINY_TRAIN, *args])
    err = assert_one_error(r, 2)
    assert needle in err.lower()
    assert err.lstrip().startswith(("Error", "Usage:")), err  # nothing printed before the error (or Typer's usage)
    assert not (cache / "encoded").exists()  # the corpus was never read
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_prints_nothing_first(tmp_path, small_corpus):
    r = run(["train", small_corpus, "--run-dir", tmp_path / "r", *TINY_TRAIN[:-2], "--device", "cuda"])
    err = assert_one_error(r, 2)
    assert err.lstrip().startswith("Error") and "corpus" not in err.split("Error", 1)[0]
    assert not (Path(os.environ["CHARRNN_CACHE_DIR"]) / "encoded").exists()


@pytest.mark.parametrize("command", ["train", "sample", "info"])
def test_help_reads_like_a_typer_app_with_examples(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # one option per line, so phrases are not cut by wrapping
    r = run([command, "--help"])
    assert r.exit_code == 0
    text = r.stdout
    for odd in ("<bool>", "<list[str]>", "<int>", "<float>", "<str>", "{corpus}", "{checkpoint}"):
        assert odd not in text, odd
    assert "Examples" in text and f"charrnn {command}" in text.split("Examples", 1)[1]
    if command == "train":
        assert "INTEGER" in text and "a bare number is seconds" in text


# ---------------------------------------------------------------------------------------------------
# 10, 13. which checkpoint, and what it holds


def test_sample_says_which_checkpoint_it_used_and_accepts_a_run_dir(trained_run):
    r = run(["sample", trained_run, "-n", "20", "--seed", "1"])
    assert r.exit_code == 0, r.stderr
    assert (
        r.stderr.splitlines()[0]
        == f"using {trained_run / 'best.pt'} (step 20, val "
        + f"{load_checkpoint(trained_run / 'best.pt')['val_loss']:.4f} nats/char)"
    )
    quiet = run(["sample", trained_run, "-n", "20", "--seed", "1", "-q"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == r.stdout
    info = run(["info", trained_run])
    assert info.exit_code == 0 and f"checkpoint:     {trained_run / 'best.pt'}" in info.stdout


def test_info_before_the_first_evaluation_says_so_and_counts_layers_right(tmp_path, small_corpus):
    d = tmp_path / "run"
    args = [a for a in ENDLESS]
    args[args.index("--eval-every") + 1] = "1000"
    proc = cli_start(["train", small_corpus, "--run-dir", d, *args], tmp_path)
    _wait_for_first_step(proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    r = run(["info", d / "last.pt"])
    assert r.exit_code == 0, r.stderr
    assert "best val loss:  not evaluated yet" in r.stdout
    assert "1 layer x 32 hidden" in r.stdout and "inf nats" not in r.stdout


# ---------------------------------------------------------------------------------------------------
# 11. resume without the corpus


def test_resume_needs_no_corpus_and_the_printed_hint_works(tmp_path):
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text())
    args = [a for a in TINY_TRAIN if a not in ("--max-steps", "20")]
    proc = cli_start(
        ["train", corpus, "--run-dir", tmp_path / "run", *args, "--max-steps", "100000", "--log-every", "1"], tmp_path
    )
    _wait_for_first_step(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    hint = err.strip().splitlines()[-1].split("continue with: ", 1)[1]
    assert hint == f"charrnn train --resume --run-dir {tmp_path / 'run'}"
    stopped = load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    resumed = cli([*hint.split()[1:], "--max-steps", str(stopped + 3)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == stopped + 3

    corpus.write_text(word_text(seed=1))  # the text changed: resume must refuse, not train on it
    again = cli(["train", "--resume", "--run-dir", tmp_path / "run", "--max-steps", str(stopped + 6)], cwd=tmp_path)
    assert again.returncode == 1 and "differs" in again.stderr and "Traceback" not in again.stderr


def test_resume_without_corpus_or_run_dir_is_a_usage_error():
    r = run(["train", "--resume"])
    assert "--run-dir" in assert_one_error(r, 2)


def test_resume_keeps_the_saved_settings_it_is_not_given(tmp_path, small_corpus):
    d = tmp_path / "run"
    args = [a for a in TINY_TRAIN]
    args[args.index("--eval-every") + 1] = "1"
    args[args.index("--max-steps") + 1] = "10"
    saved_only = ["--keep", "10", "--max-skips", "9", "--threads", "1"]  # none of them the default
    assert run(["train", small_corpus, "--run-dir", d, *args, *saved_only]).exit_code == 0
    before = digest(d / "last.pt")
    refused = run(["train", "--resume", "--run-dir", d, "--max-steps", "14", "--lr", "0.5", "--seq-len", "8"])
    error = assert_one_error(refused, 2)
    assert "--lr and --seq-len cannot change on --resume" in error and "--init-from" in error
    assert digest(d / "last.pt") == before
    refused = run(["train", "--resume", "--run-dir", d, "--hidden-size", "64"])
    assert "--hidden-size cannot change on --resume" in assert_one_error(refused, 2)
    r = run(["train", "--resume", "--run-dir", d, "--max-steps", "14", "--log-every", "2", "-q"])
    assert r.exit_code == 0, r.stderr
    steps = sorted(int(p.stem.split("-")[1]) for p in d.glob("ckpt-*.pt"))
    assert steps == list(range(5, 15))  # --keep 10 and --eval-every 1 came back from the checkpoint
    saved = load_checkpoint(d / "last.pt")["train_config"]
    assert saved["log_every"] == 2 and saved["max_steps"] == 14  # what may change, changed
    assert saved["keep"] == 10 and saved["eval_every"] == 1 and saved["lr"] == TrainConfig().lr
    assert saved["max_skips"] == 9 != TrainConfig().max_skips and saved["threads"] == 1 != TrainConfig().threads


# ---------------------------------------------------------------------------------------------------
# 11 (issue 14 item 4). one process per run directory


def test_a_second_process_on_a_run_dir_is_refused_naming_the_holder(tmp_path, small_corpus):
    d = tmp_path / "run"
    proc = cli_start(["train", small_corpus, "--run-dir", d, *ENDLESS], tmp_path)
    try:
        _wait_for_first_step(proc)
        second = cli(["train", small_corpus, "--run-dir", d, "--resume", "--max-steps", "5"], cwd=tmp_path)
        assert second.returncode == 1, second.stderr
        assert f"PID {proc.pid}" in second.stderr and "Traceback" not in second.stderr
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    # kill -9 leaves the lock file but not the lock: the next process takes it
    after = cli(
        ["train", small_corpus, "--run-dir", d, "--overwrite", *TINY_TRAIN[:-6], "--max-steps", "3", "--device", "cpu"],
        cwd=tmp_path,
    )
    assert after.returncode == 0, after.stderr
    assert load_checkpoint(d / "last.pt")["step"] == 3


def test_a_new_default_run_skips_a_name_another_process_holds(tmp_path, small_corpus):
    from charrnn.checkpoint.rundir import RunLock

    with RunLock(tmp_path / "checkpoints" / "small"):
        r = run(["train", small_corpus, *TINY_TRAIN], cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(Path("checkpoints") / "small-2" / "best.pt")


# ---------------------------------------------------------------------------------------------------
# 12. what a directory corpus skipped


def test_a_directory_corpus_says_what_it_skipped_and_lists_it_with_verbose(tmp_path):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "a.txt").write_text(word_text(300, seed=1))
    (d / "b.txt").write_text(word_text(300, seed=2))
    (d / "ls").write_bytes(Path(sys.executable).read_bytes()[:20000])  # a binary
    (d / ".hidden.txt").write_text("hidden")
    (d / "latin1.txt").write_bytes(word_text(50).encode() + "café".encode("latin-1"))  # bad byte at the end
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    r = run(["train", d, "--run-dir", tmp_path / "run", *TINY_TRAIN])
    assert r.exit_code == 0, r.stderr
    assert "skipped 4 file(s)" in r.stderr and "--verbose lists them" in r.stderr
    v = run(["train", d, "--run-dir", tmp_path / "run2", *TINY_TRAIN, "--verbose"])
    assert v.exit_code == 0, v.stderr
    listed = [line for line in v.stderr.splitlines() if line.startswith("warning: skipped ") and ": " in line[17:]]
    assert {Path(line[len("warning: skipped ") :].split(": ")[0]).name for line in listed} == {
        "ls",
        ".hidden.txt",
        "latin1.txt",
        ".git",
    }
    assert any("not UTF-8 at byte" in line for line in listed)


def test_training_a_directory_never_reads_its_own_run_directory(tmp_path):
    (tmp_path / "text.txt").write_text(word_text())
    first = run(["train", ".", *TINY_TRAIN], cwd=tmp_path)
    assert first.exit_code == 0, first.stderr
    name = Path(first.stdout.strip()).parent
    # metrics.jsonl and the checkpoints now lie inside the corpus directory: resume must still see the same text
    again = run(["train", "--resume", "--run-dir", name, "--max-steps", "25"], cwd=tmp_path)
    assert again.exit_code == 0, again.stderr
    assert load_checkpoint(tmp_path / name / "last.pt")["step"] == 25


# ---------------------------------------------------------------------------------------------------
# 17. a busy CPU


def test_the_thread_governor_uses_the_cores_others_leave_free(monkeypatch):
    from charrnn import runtime

    monkeypatch.setattr(runtime, "_usable_cpus", lambda: {0, 1})
    monkeypatch.setattr(runtime.os.path, "exists", lambda p: True)
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    # (wall s, busy CPU-s of our CPUs, our CPU-s): others use 1 core twice, then 0.1 core twice, then 1 once
    samples = iter([(0, 0, 0), (1, 2, 1), (2, 4, 2), (3, 5, 2.9), (4, 6, 3.8), (5, 8, 4.8), (6, 9, 5.7)])
    monkeypatch.setattr(runtime.ThreadGovernor, "_sample", lambda self: next(samples))
    try:
        gov = runtime.ThreadGovernor(enabled=True)
        assert gov.check() is None  # one reading is not enough to change
        assert gov.check() == 1 and torch.get_num_threads() == 1  # another process holds a core
        assert gov.check() is None
        assert gov.check() == 2  # the core is free again: all of them
        assert gov.check() is None and gov.check() is None  # a load that comes and goes changes nothing
        assert torch.get_num_threads() == 2
        assert runtime.ThreadGovernor(enabled=False).check() is None
    finally:
        torch.set_num_threads(original)


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or torch.get_num_threads() < 2 or not Path("/proc/stat").exists(),
    reason="needs 2+ cores and threads, and Linux",
)
def test_training_beside_a_busy_process_drops_to_the_free_cores(tmp_path, small_corpus):
    # A wall-clock budget, not a step count: the governor needs two readings 50 ms+ apart that agree, and a
    # dozen tiny steps can finish before the second one on a fast machine (CI failed that way once).
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range((os.cpu_count() or 2) - 1)]
    try:
        # 8 s: start-up, auto-sizing's absence and the closing evaluation leave the loop several seconds of
        # progress reports (each one a governor check) even on a loaded CI machine; no previews or mid-run
        # evaluations to stretch the time between checks.
        budget = flags(hidden_size=128, num_layers=1, batch_size=4, seq_len=16, log_every=5, eval_every=100000)
        budget += flags(max_time="8s", sample_length=0, seed=7, device="cpu")
        r = cli(["train", small_corpus, "--run-dir", tmp_path / "run", *budget], cwd=tmp_path)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert r.returncode == 0, r.stderr
    assert "other processes are using the CPU: training with 1 thread(s)" in r.stderr


# ---------------------------------------------------------------------------------------------------
# checkpoints from before this change


FORMAT1 = REPO / "tests" / "fixtures" / "format1"


def test_a_checkpoint_from_before_still_loads_samples_the_same_text_and_resumes(tmp_path):
    import shutil

    info = run(["info", FORMAT1 / "best.pt"])
    assert info.exit_code == 0, info.stderr
    assert "steps:          20" in info.stdout
    s = run(["sample", FORMAT1 / "best.pt", "-n", "200", "--seed", "11", "--prime", "the ", "-q"])
    assert s.exit_code == 0, s.stderr
    assert s.stdout == (FORMAT1 / "sample-seed11.txt").read_text()

    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(FORMAT1 / "best.pt", d / "last.pt")
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text())  # the same text it was trained on; its recorded path is gone
    r = run(["train", corpus, "--resume", "--run-dir", d, "--max-steps", "24"])
    assert r.exit_code == 0, r.stderr
    assert load_checkpoint(d / "last.pt")["step"] == 24


# ---------------------------------------------------------------------------------------------------
# 4, 9. the corpus cache, through the CLI


def test_a_cache_damaged_in_place_is_re_encoded_and_said_so(tmp_path, small_corpus):
    assert run(["train", small_corpus, "--run-dir", tmp_path / "a", *TINY_TRAIN]).exit_code == 0
    encoded = Path(os.environ["CHARRNN_CACHE_DIR"]) / "encoded"
    (bin_path,) = encoded.glob("*.bin")
    bin_path.write_bytes(bytes(bin_path.stat().st_size))  # zeros, same size
    r = run(["train", small_corpus, "--run-dir", tmp_path / "b", *TINY_TRAIN])
    assert r.exit_code == 0, r.stderr
    assert "damaged" in r.stderr and "re-encoding" in r.stderr
    assert (
        load_checkpoint(tmp_path / "b" / "best.pt")["val_loss"]
        == load_checkpoint(tmp_path / "a" / "best.pt")["val_loss"]
    )


def test_a_cache_dir_that_is_a_file_is_one_sentence_for_a_named_corpus(tmp_path, monkeypatch):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(blocker))
    r = run(["train", "pydocs", "--run-dir", tmp_path / "r", *TINY_TRAIN])
    err = assert_one_error(r, 1)
    assert "CHARRNN_CACHE_DIR" in err and "is a file" in err


def test_a_corpus_name_with_any_characters_resumes_and_prints_safely(tmp_path):
    corpus = tmp_path / "my\u00a0notes \U0001f469\u200d\U0001f4bb.txt"  # a non-breaking space, an emoji with a ZWJ
    corpus.write_text(word_text())
    d = tmp_path / "run"
    assert run(["train", corpus, "--run-dir", d, *TINY_TRAIN]).exit_code == 0
    info = run(["info", d])
    assert info.exit_code == 0, info.stderr
    assert "my\u00a0notes \U0001f469\u200d\U0001f4bb" in info.stdout
    again = run(["train", "--resume", "--run-dir", d, "--max-steps", "22"])
    assert again.exit_code == 0, again.stderr

    ckpt = torch.load(d / "best.pt", weights_only=True)
    ckpt["corpus"]["name"] = "\x1b]0;owned\x07"  # a terminal escape sequence in a crafted file
    torch.save(ckpt, tmp_path / "crafted.pt")
    crafted = run(["info", tmp_path / "crafted.pt"])
    assert crafted.exit_code == 0, crafted.stderr
    assert "\x1b" not in crafted.stdout and "\\x1b]0;owned\\x07" in crafted.stdout


def test_a_checkpoint_from_before_with_a_negative_seed_still_resumes(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    ckpt = torch.load(FORMAT1 / "best.pt", weights_only=True)
    ckpt["train_config"]["seed"] = -1  # older charrnn took --seed -1 (torch maps negative seeds)
    torch.save(ckpt, d / "last.pt")
    corpus = tmp_path / "words.txt"
    corpus.write_text(word_text())
    r = run(["train", corpus, "--resume", "--run-dir", d, "--max-steps", "22"])
    assert r.exit_code == 0, r.stderr
    assert load_checkpoint(d / "last.pt")["train_config"]["seed"] == -1
