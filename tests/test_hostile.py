"""Hostile checkpoints: files that pass the CRC check and torch.load(weights_only=True), yet hold values that
would corrupt memory (the fused AdamW kernel trusts the moments' shapes), exhaust it, block, or end in a
traceback. Each must end in one sentence on stderr that names the file and the field, and exit code 1.

A tampered file is made the way an editor would: torch.load, change one value, torch.save (valid CRCs).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from charrnn.checkpoint.files import load_checkpoint, load_model
from charrnn.checkpoint.rules import check_resume_state
from charrnn.checkpoint.state import RunFacts
from charrnn.config.train import TrainConfig
from charrnn.errors import CheckpointError
from charrnn.fields import MAX_TEXT
from charrnn.training.step import make_optimizer
from tests.conftest import word_text

TRAIN = [
    "--hidden-size",
    "32",
    "--num-layers",
    "1",
    "--batch-size",
    "8",
    "--seq-len",
    "16",
    "--max-steps",
    "4",
    "--eval-every",
    "2",
    "--seed",
    "1",
    "--device",
    "cpu",
    "-q",
]
L, B, H = 1, 8, 32


def _cli(args: list[str], cwd: Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, CHARRNN_CACHE_DIR=str(cwd / "cache"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *args], cwd=cwd, env=env, capture_output=True, timeout=timeout, **kwargs
    )


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """Exit code 1 and exactly one line on stderr, "Error: …", with no traceback."""
    stderr = proc.stderr.decode() if isinstance(proc.stderr, bytes) else proc.stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, (proc.returncode, stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A 4-step run trained through the real CLI; its last.pt carries hidden state (batch_index 4)."""
    work = tmp_path_factory.mktemp("hostile")
    (work / "small.txt").write_text(word_text(), encoding="utf-8")
    proc = _cli(["train", "small.txt", *TRAIN, "--run-dir", "r"], work)
    assert proc.returncode == 0, proc.stderr
    return work


@pytest.fixture(scope="module")
def live(base):
    """The base checkpoint and the model and optimizer a resume of it builds, for library-level checks."""
    model, _ = load_model(base / "r" / "last.pt")
    ckpt = load_checkpoint(base / "r" / "last.pt")
    optimizer = make_optimizer(model, TrainConfig(), torch.device("cpu"))
    return ckpt, model, optimizer


def _tamper(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)  # torch.save writes valid CRCs: only the content is hostile
    return dst


def _opt(ckpt: dict, pid: int = 0) -> dict:
    return ckpt["optimizer"]["state"][pid]


def _put(getter, key, value):
    return lambda c: getter(c).__setitem__(key, value)


def _nan_at(name: str, index):
    return lambda c: c["model"][name].__setitem__(index, math.nan)


# ---------------------------------------------------------------- resume (needs Trainer to call the checks)


def _two_ranks(c, **changes):
    c["world_size"] = 2
    c["hidden_ranks"] = [c["hidden"], copy.deepcopy(c["hidden"])]
    c["rng_ranks"] = [c["rng"], copy.deepcopy(c["rng"])]
    c.update(changes)


def _short_rank_rng(c):
    _two_ranks(c)
    c["rng_ranks"][1]["torch"] = torch.zeros(3, dtype=torch.uint8)


# name -> (edit, what the one-line error must say). Each runs as a real `--resume` in a subprocess, so a crash
# (exit 139 or 134) fails one case instead of the suite: every kind of tensor a checkpoint carries is here
# (weights, optimizer moments and steps, carried hidden state, every RNG state, other ranks' states), except
# the GradScaler's, which only a CUDA run reads (test_a_crafted_scaler_is_refused_on_a_cuda_resume).
RESUME_TAMPERS = {
    "NaN weight": (_nan_at("rnn.weight_hh_l0", (0, 0)), "model['rnn.weight_hh_l0'] holds NaN"),
    "weight of another shape": (
        _put(lambda c: c["model"], "head.bias", torch.zeros(3)),
        "model['head.bias'] has shape (3,) but must have shape",
    ),
    "non-contiguous weight": (
        lambda c: c["model"].__setitem__("rnn.weight_hh_l0", c["model"]["rnn.weight_hh_l0"].t().contiguous().t()),
        "model['rnn.weight_hh_l0'] is a non-contiguous view",
    ),
    "exp_avg of another shape": (
        _put(_opt, "exp_avg", torch.zeros(3)),
        "optimizer state for parameter 0 (exp_avg) has shape (3,) but the parameter has shape (128, 32)",
    ),
    "negative exp_avg_sq": (
        lambda c: _opt(c)["exp_avg_sq"].fill_(-1.0),
        "optimizer state for parameter 0 (exp_avg_sq) holds negative values",
    ),
    "empty step": (_put(_opt, "step", torch.zeros(0)), "optimizer state for parameter 0 (step) has shape (0,)"),
    "stride-0 moment": (
        _put(_opt, "exp_avg", torch.zeros(1, H).expand(4 * H, H)),
        "optimizer state for parameter 0 (exp_avg) is a non-contiguous view",
    ),
    "float64 moment": (
        lambda c: _opt(c).__setitem__("exp_avg", _opt(c)["exp_avg"].double()),
        "(exp_avg) has dtype float64, not float32",
    ),
    "hidden of another batch size": (
        _put(lambda c: c["hidden"], 0, torch.zeros(L, 3, H)),
        "hidden[0] has shape (1, 3, 32) but must have shape (1, 8, 32)",
    ),
    "NaN hidden": (lambda c: c["hidden"][1].fill_(math.nan), "hidden[1] holds NaN"),
    "short torch RNG state": (
        _put(lambda c: c["rng"], "torch", torch.zeros(10, dtype=torch.uint8)),
        "rng['torch'] has shape (10,)",
    ),
    "short python RNG state": (_put(lambda c: c["rng"], "python", (3, tuple(range(5)), None)), "rng['python'][1]"),
    "short numpy RNG key": (
        _put(lambda c: c["rng"]["numpy"]["state"], "key", [1, 2, 3]),
        "rng['numpy']['state']['key']",
    ),
    "cuda RNG not tensors": (_put(lambda c: c["rng"], "cuda", [b"x"]), "rng['cuda'][0]"),
    "another rank's RNG state": (_short_rank_rng, "rng_ranks[1]['torch'] has shape (3,)"),
    "string in train_config": (_put(lambda c: c["train_config"], "seq_len", "16"), "train_config.seq_len is '16'"),
    "train_config without seq_len": (lambda c: c["train_config"].pop("seq_len"), "train_config.seq_len is missing"),
    "batch_index past the epoch": (_put(lambda c: c["data"], "batch_index", 10**6), "data.batch_index"),
    "best_val_loss None": (_put(lambda c: c, "best_val_loss", None), "best_val_loss is None"),
}


@pytest.mark.parametrize("case", RESUME_TAMPERS)
def test_resume_refuses_a_hostile_checkpoint_in_one_sentence(base, tmp_path, case):
    edit, expected = RESUME_TAMPERS[case]
    shutil.copy(base / "small.txt", tmp_path)
    shutil.copytree(base / "r", tmp_path / "r")  # copies break the hard links: only last.pt is tampered
    _tamper(base / "r" / "last.pt", tmp_path / "r" / "last.pt", edit)
    proc = _cli(
        ["train", "small.txt", "--resume", "--run-dir", "r", "--max-steps", "8", "--device", "cpu", "-q"], tmp_path
    )
    line = _one_error_line(proc)
    assert f"checkpoint {Path('r') / 'last.pt'}: " in line and expected in line, line
    assert line.endswith("start a new run.")


@pytest.mark.gpu
def test_a_crafted_scaler_is_refused_on_a_cuda_resume(tmp_path):
    """Only a CUDA run has a GradScaler, so only a CUDA resume reads a checkpoint's scaler state; a crafted one
    is refused there in one sentence, in a subprocess like the cases above."""
    (tmp_path / "small.txt").write_text(word_text(), encoding="utf-8")
    on_cuda = ["cuda" if arg == "cpu" else arg for arg in TRAIN]
    trained = _cli(["train", "small.txt", *on_cuda, "--run-dir", "r"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert isinstance(ckpt["scaler"], dict) and ckpt["scaler"]  # fp16 autocast ran with its scaler
    ckpt["scaler"]["scale"] = math.nan
    (tmp_path / "r" / "last.pt").unlink()  # a hard link: the numbered file keeps the good state
    torch.save(ckpt, tmp_path / "r" / "last.pt")
    proc = _cli(["train", "--resume", "--run-dir", "r", "--max-steps", "8", "--device", "cuda", "-q"], tmp_path)
    line = _one_error_line(proc)
    assert f"checkpoint {Path('r') / 'last.pt'}: " in line and "scaler.scale is nan" in line, line


# ---------------------------------------------------------------- resume, library level


@pytest.fixture
def resume_check(live):
    ckpt, model, optimizer = live

    def check(edit=None, **kwargs):
        c = copy.deepcopy(ckpt)
        if edit is not None:
            edit(c)
        args = dict(batch_size=B, world_size=1, uses_scaler=False, batches_per_epoch=ckpt["data"]["batches_per_epoch"])
        check_resume_state(c, model, optimizer, "r/last.pt", **{**args, **kwargs})

    return check


def test_an_untouched_checkpoint_passes_and_loads(resume_check, live):
    resume_check()
    ckpt, model, optimizer = live
    optimizer.load_state_dict(copy.deepcopy(ckpt["optimizer"]))  # what the check vouches for really loads


def _alias(c):
    c["optimizer"]["state"][1]["exp_avg"] = c["optimizer"]["state"][0]["exp_avg"]


LIBRARY_TAMPERS = {
    **RESUME_TAMPERS,
    "inf bias": (lambda c: c["model"]["head.bias"].__setitem__(0, math.inf), "model['head.bias'] holds NaN or inf"),
    "missing weight": (lambda c: c["model"].pop("head.bias"), "lacks head.bias"),
    "transposed moment": (lambda c: _opt(c).__setitem__("exp_avg", torch.zeros(H, 4 * H).t()), "non-contiguous"),
    "shared moments": (_alias, "shares its memory with optimizer state for parameter 0 (exp_avg)"),
    "missing exp_avg": (lambda c: _opt(c).pop("exp_avg"), "optimizer state for parameter 0 lacks exp_avg"),
    "extra state entry": (_put(_opt, "foo", torch.zeros(1)), "has an unexpected entry 'foo'"),
    "negative step": (_put(_opt, "step", torch.tensor(-1.0)), "(step) is -1, below 0"),
    "state for an unknown id": (_put(lambda c: c["optimizer"]["state"], 99, {}), "has an entry for 99"),
    "one group": (lambda c: c["optimizer"]["param_groups"].pop(), "not a list of 2 parameter groups"),
    "group too short": (lambda c: c["optimizer"]["param_groups"][0]["params"].pop(), "params is [0, 1]"),
    "repeated id": (_put(lambda c: c["optimizer"]["param_groups"][1]["params"], 0, 0), "repeats parameter 0"),
    "NaN lr": (_put(lambda c: c["optimizer"]["param_groups"][0], "lr", math.nan), "param_groups[0].lr is nan"),
    "string eps": (_put(lambda c: c["optimizer"]["param_groups"][0], "eps", "1e-8"), "param_groups[0].eps"),
    "beta of 1": (_put(lambda c: c["optimizer"]["param_groups"][1], "betas", (0.9, 1.0)), "param_groups[1].betas"),
    "capturable on CPU": (
        _put(lambda c: c["optimizer"]["param_groups"][0], "capturable", True),
        "param_groups[0].capturable is True but charrnn's AdamW uses False",
    ),
    "hidden of one tensor": (lambda c: c["hidden"].pop(), "hidden is"),
    "int hidden": (_put(lambda c: c["hidden"], 0, torch.zeros(L, B, H, dtype=torch.int64)), "not a floating-point"),
    "torch RNG of another dtype": (
        lambda c: c["rng"].__setitem__("torch", c["rng"]["torch"].float()),
        "rng['torch'] has dtype float32, not uint8",
    ),
    "python RNG version 2": (
        lambda c: c["rng"].__setitem__("python", (2, *c["rng"]["python"][1:])),
        "rng['python'][0]",
    ),
    "python RNG word too big": (
        lambda c: c["rng"].__setitem__("python", (3, (2**40,) * 625, None)),
        "rng['python'][1]",
    ),
    "python RNG gauss a string": (
        lambda c: c["rng"].__setitem__("python", (*c["rng"]["python"][:2], "x")),
        "rng['python'][2]",
    ),
    "numpy RNG pos": (_put(lambda c: c["rng"]["numpy"]["state"], "pos", 625), "rng['numpy']['state']['pos']"),
    "numpy RNG generator": (_put(lambda c: c["rng"]["numpy"], "bit_generator", "PCG64"), "bit_generator"),
    "no RNG": (lambda c: c.pop("rng"), "rng is None"),
    "negative step count": (_put(lambda c: c, "step", -1), "step is -1"),
    "bool step count": (_put(lambda c: c, "step", True), "step is True"),
    "NaN elapsed": (_put(lambda c: c, "elapsed_s", math.nan), "elapsed_s is nan"),
    "NaN best": (_put(lambda c: c, "best_val_loss", math.nan), "best_val_loss is nan"),
    "string best_step": (_put(lambda c: c, "best_step", "4"), "best_step is '4'"),
    "skipped_steps float": (_put(lambda c: c, "skipped_steps", 0.5), "skipped_steps is 0.5"),
    "world_size 0": (_put(lambda c: c, "world_size", 0), "world_size is 0"),
    "data a list": (_put(lambda c: c, "data", [0, 4]), "data is [0, 4]"),
    "negative epoch": (_put(lambda c: c["data"], "epoch", -1), "data.epoch is -1"),
    "corpus a list": (_put(lambda c: c, "corpus", ["x"]), "corpus is ['x']"),
    "amp a string": (_put(lambda c: c["train_config"], "amp", "yes"), "train_config.amp is 'yes'"),
    "val_frac 1": (_put(lambda c: c["train_config"], "val_frac", 1.0), "train_config.val_frac is 1.0"),
    "lr inf": (_put(lambda c: c["train_config"], "lr", math.inf), "train_config.lr is inf"),
    "seed past 64 bits": (_put(lambda c: c["train_config"], "seed", 2**64), f"train_config.seed is {2**64}"),
    "threads 0": (_put(lambda c: c["train_config"], "threads", 0), "train_config.threads is 0"),
    "train_config a list": (_put(lambda c: c, "train_config", []), "train_config is [] (a list), not a dict"),
}


@pytest.mark.parametrize("case", LIBRARY_TAMPERS)
def test_check_resume_state_names_the_bad_field(resume_check, case):
    edit, expected = LIBRARY_TAMPERS[case]
    with pytest.raises(CheckpointError) as info:
        resume_check(edit)
    message = str(info.value)
    assert message.startswith("checkpoint r/last.pt: ") and expected in message, message
    assert message.count(". ") == 0 and message.endswith(".")


def test_batch_index_is_bounded_by_this_runs_epoch(resume_check):
    resume_check(_put(lambda c: c["data"], "batch_index", 50), batches_per_epoch=60)
    with pytest.raises(CheckpointError, match=r"data.batch_index is 50 .*from 0 to 9"):
        resume_check(_put(lambda c: c["data"], "batch_index", 50), batches_per_epoch=10)


def _scaler(**changes) -> dict:
    state = torch.amp.GradScaler("cpu").state_dict()  # the keys and types GradScaler writes
    return {**state, **changes}


@pytest.mark.parametrize(
    "scaler, expected",
    [
        (_scaler(scale=math.nan), "scaler.scale is nan"),
        (_scaler(scale=0.0), "scaler.scale is 0.0"),
        (_scaler(growth_interval="2000"), "scaler.growth_interval is '2000'"),
        (_scaler(backoff_factor=2.0), "scaler.backoff_factor is 2.0"),
        ({k: v for k, v in _scaler().items() if k != "_growth_tracker"}, "scaler lacks _growth_tracker"),
        ([1.0], "scaler is [1.0] (a list), not a dict"),
    ],
)
def test_scaler_state_is_checked_when_this_run_uses_one(resume_check, scaler, expected):
    resume_check(_put(lambda c: c, "scaler", _scaler()), uses_scaler=True)
    resume_check(_put(lambda c: c, "scaler", scaler), uses_scaler=False)  # not read without a scaler
    with pytest.raises(CheckpointError) as info:
        resume_check(_put(lambda c: c, "scaler", scaler), uses_scaler=True)
    assert expected in str(info.value)


def test_per_rank_states_are_checked(resume_check):
    resume_check(_two_ranks, world_size=2)
    resume_check(_two_ranks, world_size=1)  # re-sharded: checked all the same, they are in the file
    with pytest.raises(CheckpointError, match=r"hidden_ranks is .* but it must be a list of 2 entries"):
        resume_check(lambda c: _two_ranks(c, hidden_ranks=[c["hidden"]]), world_size=2)
    with pytest.raises(CheckpointError, match=r"rng_ranks\[1\]\['torch'\] has shape \(3,\)"):
        resume_check(
            lambda c: (_two_ranks(c), c["rng_ranks"][1].__setitem__("torch", torch.zeros(3, dtype=torch.uint8))),
            world_size=2,
        )


# ---------------------------------------------------------------- info and sample (load_model)

INFO_TAMPERS = {
    "hidden_size a string": (
        _put(lambda c: c["model_config"], "hidden_size", "32"),
        "model_config.hidden_size is '32'",
    ),
    "hidden_size a list": (_put(lambda c: c["model_config"], "hidden_size", [32]), "model_config.hidden_size is [32]"),
    "vocab_size 1e9": (
        _put(lambda c: c["model_config"], "vocab_size", 10**9),
        "model_config.vocab_size is 1000000000 (an int), but it must be an integer from 2 to 1114112",
    ),
    "model an int": (_put(lambda c: c["model_config"], "model", 5), "model_config.model is 5"),
    "config wider than its weights": (
        _put(lambda c: c["model_config"], "hidden_size", 40_000),
        "model['rnn.weight_ih_l0'] has shape (128, 32) but must have shape (160000, 32)",
    ),
    "NaN weight": (_nan_at("head.weight", (0, 0)), "model['head.weight'] holds NaN"),
    "inf bias": (lambda c: c["model"]["head.bias"].__setitem__(0, math.inf), "model['head.bias'] holds NaN or inf"),
    "best_val_loss None": (_put(lambda c: c, "best_val_loss", None), "best_val_loss is None"),  # needs cli.info wiring
}


@pytest.mark.parametrize("case", INFO_TAMPERS)
def test_info_refuses_a_crafted_checkpoint_in_one_sentence(base, tmp_path, case):
    edit, expected = INFO_TAMPERS[case]
    path = _tamper(base / "r" / "best.pt", tmp_path / "crafted.pt", edit)
    line = _one_error_line(_cli(["info", str(path)], tmp_path))
    assert f"checkpoint {path}: " in line and expected in line, line
    assert "--" not in line  # a file's field, not a command-line option


@pytest.mark.parametrize("case", INFO_TAMPERS)
def test_sample_refuses_a_crafted_checkpoint_in_one_sentence(base, tmp_path, case):
    edit, expected = INFO_TAMPERS[case]
    path = _tamper(base / "r" / "best.pt", tmp_path / "crafted.pt", edit)
    proc = _cli(["sample", str(path), "--seed", "1", "-n", "10", "--device", "cpu"], tmp_path)
    line = _one_error_line(proc)
    assert f"checkpoint {path}: " in line and expected in line and proc.stdout == b"", line
    assert "--" not in line  # a file's field, not a command-line option


@pytest.mark.parametrize(
    "case", ["hidden_size a string", "vocab_size 1e9", "model an int", "config wider than its weights"]
)
def test_resume_refuses_a_crafted_model_config_in_one_sentence(base, tmp_path, case):
    """What info and sample refuse in the model's config, --resume refuses too, before a model is built."""
    edit, expected = INFO_TAMPERS[case]
    shutil.copytree(base / "r", tmp_path / "r")
    _tamper(base / "r" / "last.pt", tmp_path / "r" / "last.pt", edit)
    proc = _cli(["train", "--resume", "--run-dir", "r", "--max-steps", "8", "--device", "cpu", "-q"], tmp_path)
    line = _one_error_line(proc)
    assert f"checkpoint {Path('r') / 'last.pt'}: " in line and expected in line, line
    assert "--" not in line


def test_run_facts_types_what_info_prints(live):
    ckpt = live[0]
    fields = RunFacts.from_dict(ckpt, "r/best.pt").as_dict()
    assert fields == {
        "step": 4,
        "epoch": pytest.approx(ckpt["epoch"]),
        "val_loss": ckpt["val_loss"] if math.isfinite(ckpt["val_loss"]) else None,
        "best_val_loss": ckpt["best_val_loss"],
        "best_step": ckpt["best_step"],
        "corpus_name": "small",
        "corpus_chars": ckpt["corpus"]["num_chars"],
        "device": "cpu",
        "torch_version": str(torch.__version__),
    }
    assert RunFacts.from_dict({}, "x").as_dict() == dict.fromkeys(fields)
    never = RunFacts.from_dict({"best_val_loss": math.inf, "best_step": -1, "epoch": 0}, "x").as_dict()
    assert never["best_val_loss"] is None and never["best_step"] is None and never["epoch"] == 0.0


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"best_val_loss": None}, "best_val_loss is None"),
        ({"best_val_loss": "3.2"}, "best_val_loss is '3.2'"),
        ({"best_val_loss": math.nan}, "best_val_loss is nan"),
        ({"step": 4.5}, "step is 4.5"),
        ({"epoch": math.inf}, "epoch is inf"),
        ({"best_step": [4]}, "best_step is [4]"),
        ({"corpus": "small"}, "corpus is 'small' (a str), not a dict"),
        ({"corpus": {"num_chars": "many"}}, "corpus.num_chars is 'many'"),
        ({"corpus": {"name": "x" * (MAX_TEXT + 1)}}, "corpus.name is"),
        ({"device": 0}, "device is 0"),
        ({"torch_version": None}, "torch_version is None"),
    ],
)
def test_run_facts_names_a_wrong_type(changes, expected):
    with pytest.raises(CheckpointError) as info:
        RunFacts.from_dict(changes, "r/best.pt").as_dict()
    message = str(info.value)
    assert message.startswith("checkpoint r/best.pt: ") and expected in message, message


# ---------------------------------------------------------------- files that block or explode


def test_info_on_a_fifo_fails_at_once_instead_of_blocking(tmp_path):
    fifo = tmp_path / "best.pt"
    os.mkfifo(fifo)
    line = _one_error_line(_cli(["info", str(fifo)], tmp_path, timeout=60))
    assert f"checkpoint {fifo} is a pipe (FIFO), not a checkpoint file" in line


def test_a_checkpoint_piped_to_stdin_is_not_called_empty(base, tmp_path):
    data = (base / "r" / "best.pt").read_bytes()
    proc = _cli(["info", "/dev/stdin"], tmp_path, timeout=60, input=data)
    line = _one_error_line(proc)
    assert "is a pipe (FIFO), not a checkpoint file" in line and "empty" not in line


ZIP_BOMB_LOAD = r"""
import resource, sys
from charrnn.checkpoint.files import load_checkpoint
from charrnn.errors import CheckpointError

with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (256 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    load_checkpoint(sys.argv[1])
except CheckpointError as exc:
    print(exc)
    sys.exit(3)
"""


def _add_bomb(path: Path, megabytes: int) -> None:
    """Append a deflate record of zeros: ~1 KB per MB on disk, megabytes once inflated."""
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/bomb", "w") as f:
            for _ in range(megabytes):
                f.write(zeros)


def test_a_zip_bomb_is_refused_before_anything_is_inflated(base, tmp_path):
    path = tmp_path / "bomb.pt"
    shutil.copy(base / "r" / "best.pt", path)
    _add_bomb(path, 512)
    assert path.stat().st_size < 2 << 20
    proc = subprocess.run(
        [sys.executable, "-c", ZIP_BOMB_LOAD, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    message = proc.stdout.strip()
    assert message.startswith(f"checkpoint {path} declares 5") and "which torch.save never writes" in message


def test_a_record_within_the_limit_still_loads(base, tmp_path):
    # Teeth for the limit: a small extra record, even compressed, is fine.
    path = tmp_path / "extra.pt"
    shutil.copy(base / "r" / "best.pt", path)
    _add_bomb(path, 1)
    assert load_checkpoint(path)["step"] == 4


# ---------------------------------------------------------------- configs that ask for huge allocations

UNDER_LIMIT = """
import resource, sys
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
import torch, charrnn.cli.app  # imported before the limit, so only what the command itself allocates counts
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.RLIM_INFINITY))
sys.argv = ["charrnn", *sys.argv[1:]]
charrnn.cli.app.main()
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmSize from /proc")
@pytest.mark.parametrize("field,value", [("hidden_size", 40_000), ("vocab_size", 10**9), ("hidden_size", 8000)])
@pytest.mark.parametrize("command", ["info", "sample"])
def test_a_config_asking_for_gigabytes_is_refused_within_a_small_memory_limit(field, value, command, base, tmp_path):
    ckpt = torch.load(base / "r" / "best.pt", weights_only=True)
    ckpt["model_config"][field] = value  # the weights in the file stay small: only the config lies
    torch.save(ckpt, tmp_path / "big.pt")
    args = [command, str(tmp_path / "big.pt")] + (["--seed", "1", "-n", "5"] if command == "sample" else [])
    env = dict(os.environ, CHARRNN_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", UNDER_LIMIT, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    line = _one_error_line(proc)  # exit 1 and one sentence, not a failed allocation
    assert "big.pt" in line and ("model_config" in line or "must have shape" in line), line


@pytest.mark.parametrize(
    "field, value, code",
    [
        ("train_loss", "low", 0),  # carried for info, not read on resume
        ("train_loss", None, 0),
        ("device", [1], 1),  # what info prints: type-checked, one sentence
        ("hidden", torch.zeros(3, 3), 1),  # checked against the model: one sentence
        ("hidden", 7, 1),
    ],
)
def test_fields_resume_does_not_need_never_crash_it(base, tmp_path, field, value, code):
    """A crafted value in a field resume only carries (or reads after its checks) is one sentence or ignored,
    never a traceback."""
    run = tmp_path / "r"
    shutil.copytree(base / "r", run)
    _tamper(base / "r" / "last.pt", run / "last.pt", lambda c: c.__setitem__(field, value))
    proc = _cli(["train", "--resume", "--run-dir", str(run), "--max-steps", "6", "--device", "cpu"], base, text=True)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == code, proc.stderr[-2000:]
    if code:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and errors[0].startswith("Error: checkpoint"), proc.stderr[-2000:]
