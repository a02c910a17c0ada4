"""`python -m bench --gpu`, the one-command GPU check, run end to end in a subprocess. --smoke runs every part at
toy sizes (on the CPU without CUDA), so a part that breaks fails here, not on the first machine lent a GPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> list[dict]:
    """The JSON lines of one smoke run on a small corpus, in the order printed."""
    work = tmp_path_factory.mktemp("gpu_check")
    corpus = work / "words.txt"
    corpus.write_text(word_text(1000), encoding="utf-8")
    proc = gpu_check("--smoke", "--corpus", corpus, work=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


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
    assert row["stopped_by"] in ("gain_below_10pct", "max_batch", "out_of_memory")


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
        if torch.cuda.is_available():
            assert row["graph_chars_per_sec"] > 0
            assert row["ratio_graph_vs_eager"] == pytest.approx(
                row["graph_chars_per_sec"] / row["eager_chars_per_sec"], rel=0.02
            )
        else:
            assert row["cuda_graph"].startswith("skipped") and "graph_chars_per_sec" not in row


def test_the_trained_checkpoint_scores_the_same_on_the_cpu_and_samples_there(smoke):
    (row,) = rows(smoke, "gpu_checkpoint_on_cpu")
    assert row["checkpoint_device"].startswith("cuda" if torch.cuda.is_available() else "cpu")
    assert row["checkpoint_step"] == SMOKE_STEPS and row["val_chars"] > 0
    cpu, device = row["val_loss_cpu"], row["val_loss_device_fp32"]
    assert math.isfinite(cpu) and 0 < cpu < math.log(64)  # a real loss: below a uniform guess over 64 (the text has 28)
    assert row["abs_diff_cpu_vs_device"] == pytest.approx(abs(cpu - device), abs=2e-6)
    assert row["tolerance"] == 1e-3 and row["agrees"] is True and row["abs_diff_cpu_vs_device"] <= 1e-3
    assert row["cpu_sample_chars"] == SMOKE_CPU_SAMPLE and row["cpu_sample_head"]


def test_torchrun_runs_with_two_gpus_and_says_it_was_skipped_otherwise(smoke):
    (row,) = rows(smoke, "gpu_torchrun")
    if torch.cuda.device_count() >= 2:
        assert row["processes"] == 2 and row["chars_per_sec_total"] > 0
    else:
        assert "needs 2" in row["skipped"]


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
    assert all(r["graph_chars_per_sec"] > 0 for r in rows(smoke, "gpu_sample"))
    (row,) = rows(smoke, "gpu_checkpoint_on_cpu")
    assert row["checkpoint_device"].startswith("cuda") and row["agrees"] is True
