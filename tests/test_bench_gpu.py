"""`python -m bench --gpu`, the one-command GPU check, run end to end in a subprocess. --smoke runs every part at
toy sizes (on the CPU without CUDA), so a part that breaks fails here, not on the first machine lent a GPU."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from bench import gpu_check as gcheck
from tests.conftest import REPO, cli_env, word_text

PARTS = [
    "gpu_batch_search",
    "gpu_train_throughput",  # at B=4 (the smoke plan's B=50)
    "gpu_train_throughput",  # at the saturating batch
    "gpu_train_reference",
    "gpu_sample",  # 1 stream
    "gpu_sample",  # 64 streams
    "gpu_checkpoint_on_cpu",
    "gpu_torchrun",
]
SMOKE_BATCH, SMOKE_STEPS, SMOKE_CPU_SAMPLE = 4, 60, 40  # bench/gpu_check.py's SMOKE plan


def gpu_check(*args, work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", "--gpu", *map(str, args)],
        cwd=REPO,
        env=cli_env(work),
        capture_output=True,
        text=True,
        timeout=240,
    )


def smoke_run(work: Path, *args) -> list[dict]:
    """The JSON lines of one smoke run on a small corpus, in the order printed; the run must exit 0."""
    corpus = work / "words.txt"
    corpus.write_text(word_text(1000), encoding="utf-8")
    proc = gpu_check("--smoke", "--corpus", corpus, *args, work=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> list[dict]:
    return smoke_run(tmp_path_factory.mktemp("gpu_check"))


def rows(smoke: list[dict], bench: str) -> list[dict]:
    return [r for r in smoke if r["bench"] == bench]


def test_every_part_prints_its_lines_and_none_fails(smoke):
    assert [r["bench"] for r in smoke] == PARTS
    assert [r for r in smoke if "error" in r] == []
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for r in smoke:
        assert r["smoke"] is True and r["device"].startswith(device) and r["machine"]["cores"] >= 1
        assert 0 <= r["part_s"] <= r["check_s"]


def test_the_batch_search_doubles_the_batch_and_picks_one_it_measured(smoke):
    (row,) = rows(smoke, "gpu_batch_search")
    sizes = [p["batch_size"] for p in row["points"]]
    assert sizes[0] == SMOKE_BATCH and all(b == 2 * a for a, b in pairwise(sizes))
    assert all(p["chars_per_sec"] > 0 for p in row["points"])
    assert row["saturating_batch_size"] in sizes
    assert row["stopped_by"] in ("gain_below_10pct", "max_batch", "out_of_memory", "out_of_time")
    assert sizes[-1] <= row["max_batch_size"] <= 16  # the smoke plan's max_batch


def test_training_is_timed_against_the_plain_loop_at_both_batches(smoke):
    default, saturating = rows(smoke, "gpu_train_throughput")
    (search,) = rows(smoke, "gpu_batch_search")
    assert (default["batch_role"], default["batch_size"]) == ("default", SMOKE_BATCH)
    assert (saturating["batch_role"], saturating["batch_size"]) == ("saturating", search["saturating_batch_size"])
    for row in (default, saturating):
        assert row["plain_chars_per_sec"] > 0 and row["charrnn_chars_per_sec"] > 0
        assert len(row["all_plain"]) == 2 and row["plain_chars_per_sec"] == max(row["all_plain"])
        ratio = row["charrnn_chars_per_sec"] / row["plain_chars_per_sec"]
        assert row["ratio_vs_plain"] == pytest.approx(ratio, rel=0.01)
        assert row["charrnn_steps"] == SMOKE_STEPS and 0 < row["charrnn_timed_steps"] < SMOKE_STEPS
        assert row["amp"] is torch.cuda.is_available()


def test_the_reference_line_gives_our_multiple_of_torch_rnn(smoke):
    (ref,) = rows(smoke, "gpu_train_reference")
    default, saturating = rows(smoke, "gpu_train_throughput")
    assert ref["reference_chars_per_sec"] == 32_000 and ref["target_multiple"] == 10
    assert ref["charrnn_chars_per_sec_default"] == default["charrnn_chars_per_sec"]
    assert ref["charrnn_chars_per_sec_saturating"] == saturating["charrnn_chars_per_sec"]
    assert ref["multiple_saturating"] == pytest.approx(saturating["charrnn_chars_per_sec"] / 32_000, abs=0.01)


def test_sampling_is_timed_at_1_and_64_streams_with_and_without_the_graph(smoke):
    one, many = rows(smoke, "gpu_sample")
    assert (one["num_samples"], many["num_samples"]) == (1, 64)
    for row in (one, many):
        assert row["eager_chars_per_sec"] > 0
        assert row["checkpoint_run"] == "saturating" and row["repeats"] == 1
        if torch.cuda.is_available():
            assert row["graph_chars_per_sec"] > 0
            assert row["ratio_graph_vs_eager"] == pytest.approx(
                row["graph_chars_per_sec"] / row["eager_chars_per_sec"], rel=0.02
            )
            assert isinstance(row["graph_captured"], bool) and row["capture_s"] > 0 and "tf32" in row
        else:
            assert row["cuda_graph"].startswith("skipped") and "graph_chars_per_sec" not in row
            assert "graph_captured" not in row and "tf32" not in row


def test_the_trained_checkpoint_scores_the_same_on_the_cpu_and_samples_there(smoke):
    (row,) = rows(smoke, "gpu_checkpoint_on_cpu")
    assert row["checkpoint_device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    assert row["checkpoint_step"] == SMOKE_STEPS and row["val_chars"] > 0
    assert row["checkpoint_run"] == "saturating"
    assert row["device_tf32"] == {"matmul": False, "cudnn": False}  # the device scored fp32 against the CPU's fp32
    cpu, device = row["val_loss_cpu"], row["val_loss_device_fp32"]
    assert math.isfinite(cpu) and 0 < cpu < math.log(64)  # a real loss: below a uniform guess over 64 (the text has 28)
    assert row["abs_diff_cpu_vs_device"] == pytest.approx(abs(cpu - device), abs=2e-6)
    assert row["tolerance"] == 1e-3 and row["agrees"] is True and row["abs_diff_cpu_vs_device"] <= 1e-3
    assert row["cpu_sample_chars"] == SMOKE_CPU_SAMPLE and row["cpu_sample_head"]


def test_torchrun_runs_with_two_gpus_and_says_it_was_skipped_otherwise(smoke):
    (row,) = rows(smoke, "gpu_torchrun")
    if torch.cuda.device_count() >= 2:
        assert row["processes"] == 2 and row["chars_per_sec_total"] > 0
        assert "host sync" in row["rank_sync_per_step"]
    else:
        assert "needs 2" in row["skipped"]


def test_a_part_that_would_overrun_the_budget_is_skipped_and_the_b50_checkpoint_stands_in(tmp_path):
    """--train-seconds 400 cannot fit the 290 s budget: the saturating run is skipped for time (not an error), and
    sampling and the CPU check read the B=50 run's checkpoint."""
    lines = smoke_run(tmp_path, "--train-seconds", 400)
    assert [r["bench"] for r in lines] == PARTS
    assert [r for r in lines if "error" in r] == []
    default, saturating = rows(lines, "gpu_train_throughput")
    assert default["batch_role"] == "default" and default["charrnn_chars_per_sec"] > 0
    assert saturating["skipped"].startswith("out of time: the saturating batch's run needs about 411 s")
    (ref,) = rows(lines, "gpu_train_reference")
    assert "charrnn_chars_per_sec_default" in ref and "charrnn_chars_per_sec_saturating" not in ref
    assert [r["checkpoint_run"] for r in rows(lines, "gpu_sample")] == ["default", "default"]
    (cpu,) = rows(lines, "gpu_checkpoint_on_cpu")
    assert cpu["checkpoint_run"] == "default" and cpu["agrees"] is True


def test_a_nonpositive_train_seconds_is_refused(tmp_path):
    proc = gpu_check("--smoke", "--train-seconds", 0, work=tmp_path)
    assert proc.returncode == 2 and "--train-seconds must be above 0" in proc.stderr and proc.stdout == ""


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_missing_corpus_fails_with_cuda_and_is_skipped_without(device, tmp_path, monkeypatch, capsys):
    """A GPU lent for the check with no corpus to train on: exit 2 and one sentence. Without CUDA (the smoke run
    on the CPU) it stays a skip."""
    monkeypatch.setattr(gcheck, "pick_device", lambda smoke: torch.device(device))
    monkeypatch.setattr(gcheck, "SHAKESPEARE", tmp_path / "absent.txt")
    status = gcheck.main(["--smoke"])
    out, err = capsys.readouterr()
    if device == "cuda":
        assert status == 2 and out == ""
        assert len(err.strip().splitlines()) == 1 and "absent.txt is absent" in err and "--corpus PATH" in err
    else:
        assert status == 0 and json.loads(out)["skipped"].endswith("absent.txt is absent")


def check_on(tmp_path, plan=gcheck.SMOKE) -> gcheck.GpuCheck:
    """A GpuCheck on the CPU over a small corpus, for its parts run one at a time in this process."""
    text = tmp_path / "words.txt"
    text.write_text(word_text(1000), encoding="utf-8")
    corpus = gcheck.load_corpus([str(text)])
    return gcheck.GpuCheck(corpus, str(text), plan, torch.device("cpu"), True, tmp_path, budget=math.inf)


def test_the_batch_search_never_passes_charrnns_logits_limit(tmp_path, monkeypatch):
    check = check_on(tmp_path, gcheck.replace(gcheck.SMOKE, max_batch=1 << 20))
    T, V = check.plan.seq_len, check.vocab
    assert check.max_batch() == (len(check.ids) - 1) // (4 * T + 1)  # the text bounds it here
    monkeypatch.setattr(gcheck, "MAX_LOGITS", 8 * T * V + T * V - 1)
    assert check.max_batch() == 8


def test_an_error_after_the_first_point_ends_the_search_with_what_it_measured(tmp_path, monkeypatch, capsys):
    check = check_on(tmp_path)

    def rate(ids, vocab, plan, batch, seconds, device):
        if batch > 8:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED " + "x" * 300)
        return 1000.0 * batch

    monkeypatch.setattr(gcheck, "plain_rate", rate)
    check.part("gpu_batch_search", check.batch_search)
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["batch_size"] for p in row["points"]] == [4, 8] and row["saturating_batch_size"] == 8
    assert row["stopped_by"].startswith("error: cuDNN error") and len(row["stopped_by"]) == 200
    assert check.failed == 0


def test_a_search_that_measures_nothing_fails_and_training_falls_back_to_the_default_batch(
    tmp_path, monkeypatch, capsys
):
    check = check_on(tmp_path)
    monkeypatch.setattr(gcheck, "plain_rate", lambda *a: (_ for _ in ()).throw(RuntimeError("CUDA error: unknown")))
    check.part("gpu_batch_search", check.batch_search)
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["error"] == "RuntimeError: CUDA error: unknown" and check.saturating is None and check.failed == 1

    trained = []

    def run(corpus, plan, batch, seconds, device, run_dir):
        trained.append(batch)
        windows = [{"step": s, "chars_per_sec": 500.0} for s in (1, 10, 20, 30)]
        return gcheck.TrainResult(run_dir, run_dir / "best.pt", run_dir / "last.pt", 30, 1.0, "max_steps"), windows

    monkeypatch.setattr(gcheck, "plain_rate", lambda *a: 400.0)
    monkeypatch.setattr(gcheck, "charrnn_run", run)
    check.part("gpu_train_throughput", lambda: check.throughput("saturating"))
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert trained == [gcheck.SMOKE.batch_size] and row["batch_size"] == gcheck.SMOKE.batch_size
    assert "found no saturating batch" in row["batch_fallback"] and row["ratio_vs_plain"] == 1.25
    assert check.trained_role == "saturating"


def test_torchrun_gets_the_budgets_time_left_and_its_line_notes_the_per_step_rank_sync(tmp_path, monkeypatch, capsys):
    """The torchrun part as it runs with 2 GPUs, its launch faked: the timeout is the budget's time left (never under
    20 s, never over the plan's 240 s), NCCL warns, and the line says the speedup includes a host sync a step."""
    check = check_on(tmp_path)
    check.rates["default"] = 1000.0
    launches = []

    def launch(cmd, env, timeout):
        launches.append((cmd, env, timeout))
        return 0, "".join(f"step {s} epoch 0.1 | loss 2.0 | 900 char/s\n" for s in (1, 10, 20, 30))

    monkeypatch.setattr(gcheck, "run_group", launch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "two fake GPUs")
    for budget, timeout in ((math.inf, 240.0), (-100.0, 20.0)):
        check.budget = budget
        check.part("gpu_torchrun", check.torchrun)
        assert launches[-1][2] == timeout
    cmd, env, _ = launches[0]
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and env["NCCL_DEBUG"] == "WARN"
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["chars_per_sec_per_process"] == 900 and row["speedup_vs_one_gpu"] == 1.8
    assert "every step" in row["rank_sync_per_step"] and "speedup_vs_one_gpu includes it" in row["rank_sync_per_step"]
    assert len(check.ids) == 0  # the training text left the device before the launch


def test_a_command_past_its_timeout_is_stopped_with_its_whole_process_group(tmp_path):
    """torchrun's launch: past the timeout the group gets SIGTERM, then SIGKILL; the error ends with its stderr."""
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen(['sleep', '60']); open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('rank 0 is stuck', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"ran past its 2 s and was stopped(.|\n)*rank 0 is stuck"):
        gcheck.run_group([sys.executable, "-c", script], dict(os.environ), 2.0)
    assert time.monotonic() - started < 2 + gcheck.STOP_GRACE_SECONDS + 5
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive(child):
        time.sleep(0.05)
    assert not alive(child)  # the grandchild went with the group


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path):
    proc = gpu_check(work=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert json.loads(line)["skipped"].startswith("no CUDA GPU is present")
    assert "no CUDA GPU is present" in proc.stderr and "--smoke" in proc.stderr


def test_smoke_without_gpu_is_refused(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke"], cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "only goes with --gpu" in proc.stderr


@pytest.mark.gpu
def test_on_cuda_the_smoke_run_trains_there_and_times_the_graph(smoke):
    assert all(r["device"].startswith("cuda") for r in smoke)
    assert all(r["graph_chars_per_sec"] > 0 and r["graph_captured"] is True for r in rows(smoke, "gpu_sample"))
    assert all(r["tf32"] is True for r in rows(smoke, "gpu_sample"))  # charrnn's CUDA default, set for the check
    (row,) = rows(smoke, "gpu_checkpoint_on_cpu")
    assert row["checkpoint_device"].startswith("cuda") and row["agrees"] is True
