"""The CUDA paths end to end: fp16 autocast training with the GradScaler, a resumable checkpoint that loads on a
CPU-only machine, and the CUDA-graph sampler. Marked `gpu`: they skip without a CUDA device (conftest.py)."""

from __future__ import annotations

import pytest
import torch

from charrnn.checkpoint.files import load_checkpoint
from charrnn.generation.sample import SampleConfig, generate
from charrnn.model import CharRNN, ModelConfig
from tests.conftest import TINY_TRAIN
from tests.test_cli import run

pytestmark = pytest.mark.gpu
CUDA_TRAIN = [*TINY_TRAIN[:-2], "--device", "cuda"]


def test_training_on_cuda_writes_a_checkpoint_that_samples_on_cpu(tmp_path, small_corpus):
    r = run(["train", small_corpus, "--run-dir", tmp_path / "run", *CUDA_TRAIN], cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    ck = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ck["device"].startswith("cuda") and ck["scaler"] is not None  # fp16 autocast ran with its scaler
    assert all(t.device.type == "cpu" for t in ck["model"].values())
    out = run(["sample", tmp_path / "run", "-n", "50", "--seed", "1", "--device", "cpu", "-q"])
    assert out.exit_code == 0 and len(out.stdout) >= 50


def test_cuda_resume_continues_the_run(tmp_path, small_corpus):
    args = [a for a in CUDA_TRAIN]
    args[args.index("--max-steps") + 1] = "10"
    assert run(["train", small_corpus, "--run-dir", tmp_path / "run", *args], cwd=tmp_path).exit_code == 0
    r = run(["train", "--resume", "--run-dir", tmp_path / "run", "--max-steps", "20"], cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 20


def test_the_cuda_sampler_matches_the_cpu_sampler_greedily(trained_run):
    outs = {}
    for device in ("cpu", "cuda"):
        r = run(["sample", trained_run, "-n", "200", "--temp", "0", "--prime", "the ", "--device", device, "-q"])
        assert r.exit_code == 0, r.stderr
        outs[device] = r.stdout
    # Greedy decoding of a tiny model: fp32 on both devices, so the argmax agrees except at near-ties.
    same = sum(a == b for a, b in zip(outs["cpu"], outs["cuda"], strict=False))
    assert same >= 0.9 * len(outs["cpu"])


def test_bf16_sampling_runs_on_a_gpu_that_has_it(trained_run):
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("this GPU has no bfloat16 (before Ampere)")
    r = run(["sample", trained_run, "-n", "100", "--precision", "bf16", "--num-samples", "4", "--device", "cuda", "-q"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout.count("\n\n") >= 3  # four samples, a blank line apart


def test_the_sampler_without_its_graph_writes_the_same_text():
    """generate(cuda_graph=False) runs the graph's kernels eagerly (bench/gpu_check.py times one against the
    other), so the same seed writes the same text."""
    torch.manual_seed(0)
    cuda = torch.device("cuda")
    model = CharRNN(ModelConfig(vocab_size=30, hidden_size=64, num_layers=2)).to(cuda).eval()
    cfg = SampleConfig(length=100, num_samples=4, seed=3)
    graph = torch.cat(list(generate(model, [1, 2], cfg, cuda)), dim=1)  # (4, 100)
    eager = torch.cat(list(generate(model, [1, 2], cfg, cuda, cuda_graph=False)), dim=1)
    # The same kernels either way; a cuBLAS algorithm chosen differently under capture could at most move a
    # logit by float rounding, which flips a draw only at a near-tie.
    assert graph.shape == eager.shape == (4, 100)
    assert (graph == eager).float().mean() >= 0.99
