"""Never lose a run: bit-exact resume (with controls that prove the test has teeth), signals on the real CLI,
non-finite steps skipped without touching the weights, divergence, and NaN validation losses."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

import charrnn.training.loop as train_mod
from charrnn.checkpoint.files import load_checkpoint, save_checkpoint
from charrnn.cli.signals import StopFlag
from charrnn.config.train import TrainConfig
from charrnn.errors import CorpusError, DivergedError
from charrnn.model import ModelConfig
from charrnn.text.corpus import load_corpus
from charrnn.training import evaluation
from charrnn.training.job import ModelOptions, TrainJob, prepared, train
from tests.conftest import cli, cli_env, cli_start, flags, tiny_train_config, wait_for_line, word_text

N_STEPS = 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "words.txt"
    path.write_text(word_text(60, seed=3))  # small: an epoch is ~16 steps, so runs cross epoch boundaries
    return load_corpus([str(path)], cache_dir=path.parent / "cache")


def cfg(**kw) -> TrainConfig:
    return tiny_train_config(
        **{"lr": 5e-3, "eval_every": 1000, "log_every": 1, "max_steps": N_STEPS, "seed": 11, "keep": 1, **kw}
    )


def model_cfg(corpus) -> ModelConfig:
    return ModelConfig(vocab_size=len(corpus.vocab), hidden_size=24, num_layers=2, dropout=0.3)


def run_losses(corpus, run_dir: Path, resume=False, stop_after: int | None = None, **kw) -> list[float]:
    """Train and return the per-step losses; `stop_after` simulates a SIGINT after that many steps."""
    losses: list[float] = []

    def report(event, info):
        if event == "log":
            losses.append(info["train_loss"])

    def should_stop():
        return signal.SIGINT if stop_after is not None and len(losses) >= stop_after else None

    train(
        corpus,
        model_cfg(corpus),
        cfg(**kw),
        run_dir,
        report=report,
        should_stop=should_stop,
        resume=resume,
    )
    return losses


def final_tensors(run_dir: Path) -> dict:
    ck = load_checkpoint(run_dir / "last.pt")
    out = {f"model.{k}": v for k, v in ck["model"].items()}
    for i, st in ck["optimizer"]["state"].items():
        for k, v in st.items():
            out[f"opt.{i}.{k}"] = v
    return out


@pytest.fixture(scope="module")
def uninterrupted(corpus, tmp_path_factory):
    d = tmp_path_factory.mktemp("A")
    return run_losses(corpus, d), final_tensors(d)


def interrupted(corpus, tmp_path, k, tamper=None):
    d = tmp_path / "B"
    first = run_losses(corpus, d, stop_after=k)  # interrupted, as by a signal: the budget is unchanged
    if tamper:
        ck = load_checkpoint(d / "last.pt")
        tamper(ck)
        save_checkpoint(ck, d / "last.pt")
    torch.rand(1000)  # disturb the global RNG: resume must not depend on what this process did before
    second = run_losses(corpus, d, resume=True)
    return first + second, final_tensors(d)


def test_runs_cross_an_epoch_boundary(corpus):
    bpe = train_mod.DeviceFeeder(train_mod.split(corpus.ids, 0.1)[0], 4, 16, torch.device("cpu")).batches_per_epoch
    assert bpe < N_STEPS - 2  # so the resume points below include one at the epoch boundary


@pytest.mark.parametrize("k", [1, 17, "epoch", "epoch+1", N_STEPS - 1])
def test_resume_is_bit_exact(k, corpus, uninterrupted, tmp_path):
    bpe = train_mod.DeviceFeeder(train_mod.split(corpus.ids, 0.1)[0], 4, 16, torch.device("cpu")).batches_per_epoch
    k = {"epoch": bpe, "epoch+1": bpe + 1}.get(k, k)
    losses_a, tensors_a = uninterrupted
    losses_b, tensors_b = interrupted(corpus, tmp_path, k)
    assert len(losses_a) == N_STEPS
    assert losses_b == losses_a  # exactly, not approximately: a missed RNG restore shifts losses by ~1e-3
    assert tensors_a.keys() == tensors_b.keys()
    for name in tensors_a:
        assert torch.equal(tensors_a[name], tensors_b[name]), name


def _fresh_rng(ck):
    from charrnn import runtime

    runtime.seed_everything(12345)
    ck["rng"] = runtime.rng_state()


@pytest.mark.parametrize(
    "name,tamper",
    [
        ("rng", _fresh_rng),
        ("data position", lambda ck: ck["data"].update(batch_index=0)),
        ("schedule/step", lambda ck: ck.update(step=0)),
        ("optimizer", lambda ck: ck.update(optimizer={"state": {}, "param_groups": ck["optimizer"]["param_groups"]})),
        ("hidden state", lambda ck: ck.update(hidden=[torch.zeros_like(h) for h in ck["hidden"]])),
    ],
)
def test_resume_test_has_teeth(name, tamper, corpus, uninterrupted, tmp_path):
    """Negative controls: forgetting any one piece of state changes the loss curve, so the test above can fail."""
    losses_a, _ = uninterrupted
    losses_b, _ = interrupted(corpus, tmp_path, 17, tamper)
    assert losses_b != losses_a, name


def test_resume_refuses_a_changed_corpus(corpus, tmp_path):
    d = tmp_path / "run"
    run_losses(corpus, d, max_steps=3)
    other = tmp_path / "other.txt"
    other.write_text(word_text(60, seed=4))
    changed = load_corpus([str(other)], cache_dir=tmp_path / "cache")
    with pytest.raises(CorpusError, match="differs"):
        train(changed, None, cfg(), d, resume=True)


def test_resume_falls_back_when_the_newest_checkpoint_is_corrupt(corpus, tmp_path):
    d = tmp_path / "run"
    run_losses(corpus, d, max_steps=6, eval_every=3, keep=3)
    data = (d / "last.pt").read_bytes()
    os.unlink(d / "last.pt")  # break the hard link first so only last.pt is damaged
    (d / "last.pt").write_bytes(data[: len(data) // 3])
    warnings = []
    train(
        corpus,
        None,
        cfg(max_steps=8),
        d,
        resume=True,
        report=lambda e, i: warnings.append(i["text"]) if e == "warning" else None,
    )
    assert any("last.pt" in w and "corrupt" in w for w in warnings), warnings
    assert load_checkpoint(d / "last.pt")["step"] == 8


# ---------------------------------------------------------------------------------------------------
# non-finite steps and divergence


class NaNAt:
    """Wraps F.cross_entropy so that chosen training calls return NaN."""

    def __init__(self, bad_calls):
        self.bad, self.calls = set(bad_calls), 0
        self.real = torch.nn.functional.cross_entropy

    def __call__(self, *a, **kw):
        loss = self.real(*a, **kw)
        if kw.get("reduction", "mean") == "mean":  # training calls; evaluation uses reduction="sum"
            self.calls += 1
            if self.calls in self.bad or ("always_after" in self.bad and self.calls > 10):
                return loss * float("nan")
        return loss


def weights_after_each_step(corpus, run_dir: Path, max_steps: int, check=lambda trainer: None) -> list[list]:
    """Train through a TrainJob (log_every 1) and return a copy of the weights after every step; check(trainer) runs
    on the prepared trainer before the first step."""
    snapshots = []

    def snapshot(trainer):
        snapshots.append([p.detach().clone() for p in trainer.model.parameters()])

    job = TrainJob(
        corpus=corpus, train=cfg(max_steps=max_steps), model=ModelOptions.of(model_cfg(corpus)), run_dir=run_dir
    )
    with prepared(job, lambda e, i: snapshot(trainer) if e == "log" else None) as trainer:
        check(trainer)
        trainer.run()
    return snapshots


def same(a: list, b: list) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=False))


def test_nan_loss_is_skipped_without_touching_weights(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", NaNAt({5}))
    snapshots = weights_after_each_step(corpus, tmp_path / "r", max_steps=8)
    after4, after5, after6 = snapshots[3], snapshots[4], snapshots[5]
    assert same(after4, after5)  # the NaN step changed nothing
    assert not same(after5, after6)  # and training went on
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ck["skipped_steps"] == 1 and ck["step"] == 8
    assert all(torch.isfinite(t).all() for t in ck["model"].values())


def test_nan_step_is_skipped_with_a_non_fused_optimizer(corpus, tmp_path, monkeypatch):
    """The foreach AdamW path (used on MPS, which has no found_inf) skips a bad step with a host check."""
    real = train_mod.make_optimizer
    monkeypatch.setattr(
        train_mod,
        "make_optimizer",
        lambda m, c, d: torch.optim.AdamW(real(m, c, d).param_groups, fused=False, foreach=True),
    )
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", NaNAt({3}))

    def not_fused(trainer):
        assert not trainer.train_step.fused

    snapshots = weights_after_each_step(corpus, tmp_path / "r", max_steps=5, check=not_fused)
    assert same(snapshots[1], snapshots[2])
    assert not same(snapshots[2], snapshots[3])


def test_persistent_nan_stops_as_diverged_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", NaNAt({"always_after"}))
    with pytest.raises(DivergedError, match="diverged at step"):
        train(corpus, model_cfg(corpus), cfg(max_steps=100, eval_every=5, max_skips=5), tmp_path / "r")
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ck["step"] == 10  # the last checkpoint before the NaNs began
    assert all(torch.isfinite(t).all() for t in ck["model"].values())


def test_nan_validation_loss_never_becomes_best(corpus, tmp_path, monkeypatch):
    scripted = iter([2.0, float("nan"), 1.5, float("nan")])
    monkeypatch.setattr(train_mod, "evaluate", lambda *a, **k: next(scripted))
    result = train(corpus, model_cfg(corpus), cfg(max_steps=8, eval_every=2), tmp_path / "r")
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    assert best["step"] == 6 and best["best_val_loss"] == 1.5 and result.best_val_loss == 1.5
    assert math.isnan(load_checkpoint(tmp_path / "r" / "last.pt")["val_loss"])
    import json

    vals = [json.loads(line)["val_loss"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert vals == [2.0, None, 1.5, None]  # strict JSON: NaN is written as null


# ---------------------------------------------------------------------------------------------------
# signals on the real CLI


def test_second_signal_aborts_at_once(monkeypatch):
    exits, cleaned = [], []
    monkeypatch.setattr("charrnn.cli.signals.os._exit", exits.append)
    flag = StopFlag()
    flag.on_abort(lambda: cleaned.append(True))
    flag._on_signal(signal.SIGINT)
    assert flag() == signal.SIGINT and exits == [] and cleaned == []
    flag._on_signal(signal.SIGTERM)
    assert exits == [128 + signal.SIGTERM] and cleaned == [True]


def _interrupt(signum: int) -> KeyboardInterrupt:
    exc = KeyboardInterrupt()
    exc.signum = signum
    return exc


@pytest.mark.parametrize("exc,code", [(KeyboardInterrupt(), 130), (_interrupt(signal.SIGTERM), 143)])
def test_interrupts_outside_the_loop_exit_with_the_signal_code(exc, code):
    import typer

    from charrnn.cli.signals import user_errors

    with pytest.raises(typer.Exit) as info:
        with user_errors():
            raise exc
    assert info.value.exit_code == code


def _train_args(corpus_path: Path, run_dir: Path, *extra) -> list:
    size = flags(hidden_size=96, num_layers=2, dropout=0.2, batch_size=8, seq_len=32)
    rest = flags(log_every=1, eval_every=25, seed=5, device="cpu", threads=1)
    return ["train", corpus_path, "--run-dir", run_dir, *size, *rest, *extra]


def _wait_for_step(proc, step: int, timeout: float = 60.0) -> list[str]:
    return wait_for_line(
        proc, lambda line: line.startswith("step") and "loss" in line and int(line.split()[1]) >= step, timeout
    )


TOTAL = 150  # the reference and the interrupted run share this budget, so their lr schedules are the same


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("signals")
    text = work / "words.txt"
    text.write_text(word_text(200, seed=9))
    env = cli_env(work)
    ref = cli(_train_args(text, work / "A", "--max-steps", str(TOTAL)), cwd=work, env=env, timeout=180)
    assert ref.returncode == 0, ref.stderr
    return text, env, load_checkpoint(work / "A" / "last.pt")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_resume_matches_an_uninterrupted_run(sig, code, tmp_path, reference_run):
    text, env, a = reference_run
    total = TOTAL
    proc = cli_start(_train_args(text, tmp_path / "B", "--max-steps", str(total)), tmp_path, env)
    _wait_for_step(proc, 10)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)  # a signalled run that does not stop fails here
    assert proc.returncode == code, err
    assert out == "" and "Traceback" not in err and "--resume" in err
    stopped = load_checkpoint(tmp_path / "B" / "last.pt")["step"]
    assert 10 <= stopped < total

    resumed = cli(_train_args(text, tmp_path / "B", "--max-steps", str(total), "--resume"), tmp_path, env, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    b = load_checkpoint(tmp_path / "B" / "last.pt")
    assert a["step"] == b["step"] == total
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_double_sigint_exits_without_corrupting(tmp_path):
    text = tmp_path / "words.txt"
    text.write_text(word_text(200, seed=9))
    proc = cli_start(_train_args(text, tmp_path / "C", "--max-steps", "100000", "--eval-every", "5"), tmp_path)
    _wait_for_step(proc, 12)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert load_checkpoint(tmp_path / "C" / "last.pt")["step"] >= 10  # whatever happened, a good checkpoint loads
    assert not list((tmp_path / "C").glob("*.tmp"))


# ---------------------------------------------------------------------------------------------------
# previews during training


PREVIEWS = {"sample_every": 3, "sample_length": 30}


def test_previews_change_nothing_in_training_and_resume_stays_bit_exact(corpus, uninterrupted, tmp_path):
    """The model has dropout 0.3, so a preview that drew from the global RNG would shift every later loss."""
    losses_a, tensors_a = uninterrupted
    assert run_losses(corpus, tmp_path / "P", **PREVIEWS) == losses_a
    first = run_losses(corpus, tmp_path / "B", stop_after=17, **PREVIEWS)
    second = run_losses(corpus, tmp_path / "B", resume=True, **PREVIEWS)
    assert first + second == losses_a
    tensors_b = final_tensors(tmp_path / "B")
    assert all(torch.equal(tensors_a[name], tensors_b[name]) for name in tensors_a)
    previews = [json.loads(line) for line in (tmp_path / "B" / "samples.jsonl").read_text().splitlines()]
    assert [p["step"] for p in previews] == list(range(3, N_STEPS + 1, 3))
    assert all(len(p["text"]) == 30 for p in previews)


def test_the_preview_test_has_teeth(corpus, uninterrupted, tmp_path, monkeypatch):
    """Control: a preview that draws one random number from the global RNG does change the run."""
    real = evaluation.preview_text
    monkeypatch.setattr(evaluation, "preview_text", lambda *a: (torch.rand(1), real(*a))[1])
    assert run_losses(corpus, tmp_path / "P", **PREVIEWS) != uninterrupted[0]
