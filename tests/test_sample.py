"""Contracts of charrnn.generation.sample: the Stepper computes what the model computes, sampling is seeded per stream,
temperature / top-k / top-p mean what they say, and beam search finds what exhaustive search finds."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch

from charrnn.config.sample import MAX_NUM_SAMPLES
from charrnn.errors import UsageError
from charrnn.generation import beam as beam_mod
from charrnn.generation import kernels, sample
from charrnn.generation import stepper as stepper_mod
from charrnn.generation.beam import BeamConfig, BeamEvent, BeamPiece, BeamResult, beam_search, refuse_sampling_controls
from charrnn.generation.sample import SampleConfig, _Sampler, generate
from charrnn.generation.stepper import (
    SIGMOID_ONLY_MIN_ELEMS,
    GRUCell,
    LSTMCell,
    LSTMCellOneSigmoid,
    ReLURNNCell,
    RNNCell,
    Stepper,
)
from charrnn.model import CharRNN, ModelConfig

CPU = torch.device("cpu")
V = 13
needs_int8 = pytest.mark.skipif(kernels.int8_engine() is None, reason="this torch build has no int8 CPU kernel")


def make_model(
    kind: str = "lstm", num_layers: int = 2, hidden_size: int = 32, seed: int = 0, nonlinearity: str = "tanh", **kw
) -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=V, model=kind, hidden_size=hidden_size, num_layers=num_layers, **kw))
    if nonlinearity != "tanh":  # ModelConfig has no nonlinearity field: swap in an nn.RNN built with it
        c = model.config
        model.rnn = torch.nn.RNN(c.embed_size, hidden_size, num_layers, nonlinearity=nonlinearity, batch_first=True)
    with torch.no_grad():
        # Larger head weights give peaked, varied distributions, so filtering actually excludes ids.
        model.head.weight.mul_(8.0)
    return model.eval()


def run(model: CharRNN, prime: list[int] = (1, 2, 3), **cfg) -> torch.Tensor:
    """All generated ids as one (B, length) tensor."""
    chunks = list(generate(model, list(prime), SampleConfig(**cfg), CPU))
    return torch.cat(chunks, dim=1) if chunks else torch.empty(cfg.get("num_samples", 1), 0, dtype=torch.int64)


def teacher_forced_logits(model: CharRNN, prime: list[int], ids: torch.Tensor) -> torch.Tensor:
    """Model logits (B, n, V) that predicted each of the n generated ids, from the model's own nn.RNN."""
    B = ids.shape[0]
    x = torch.cat([torch.tensor([prime]).expand(B, -1), ids[:, :-1]], dim=1)  # (B, T)
    with torch.no_grad():
        logits, _ = model.eval()(x)
    return logits[:, len(prime) - 1 :]


def greedy_reference(model: CharRNN, prime: list[int], length: int) -> list[int]:
    """argmax decoding by calling the model itself one character at a time with carried state."""
    with torch.no_grad():
        logits, state = model(torch.tensor([prime]))
        out = []
        for _ in range(length):
            tok = int(logits[0, -1].argmax())
            out.append(tok)
            logits, state = model(torch.tensor([[tok]]), state)
    return out


# ---- Stepper == model ----


# Every Cell class by name, with the model it steps and the sigmoid_only that selects it.
CELL_CASES = {
    LSTMCell: ("lstm", "tanh", False),
    LSTMCellOneSigmoid: ("lstm", "tanh", True),  # tanh as 2 sigmoid(2x) - 1, g weights doubled: the same function
    GRUCell: ("gru", "tanh", None),
    RNNCell: ("rnn", "tanh", None),
    ReLURNNCell: ("rnn", "relu", None),
}


@pytest.mark.parametrize("cell", list(CELL_CASES), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_every_cell_matches_the_model_logits_and_state(cell, num_layers, batch_size):
    kind, nonlinearity, sigmoid_only = CELL_CASES[cell]
    model = make_model(kind, num_layers, hidden_size=48, embed_size=24, nonlinearity=nonlinearity)
    gen = torch.Generator().manual_seed(1)
    H = 48
    state = tuple(
        torch.randn(num_layers, batch_size, H, generator=gen) * 0.5 for _ in range(2 if kind == "lstm" else 1)
    )
    stepper = Stepper(model, batch_size, CPU, sigmoid_only=sigmoid_only)
    assert type(stepper.cell) is cell
    assert stepper.sigmoid_only is (cell is LSTMCellOneSigmoid)
    stepper.set_state(state)
    for _ in range(20):
        tokens = torch.randint(0, V, (batch_size,), generator=gen)
        with torch.no_grad():
            logits, state = model(tokens[:, None], state)  # (B, 1, V)
        ours = stepper.step(tokens)
        assert ours.shape == (batch_size, V)
        assert (ours - logits[:, 0]).abs().max().item() <= 1e-5
        got = stepper.get_state()
        assert len(got) == len(state)
        for a, b in zip(got, state, strict=True):
            assert a.shape == (num_layers, batch_size, H)
            assert (a - b).abs().max().item() <= 1e-5


def _max_gap_to_model(model: CharRNN, stepper: Stepper, batch_size: int, steps: int = 20) -> float:
    """Largest |logit| difference between the stepper and the model over `steps` random tokens from a random state."""
    gen = torch.Generator().manual_seed(2)
    L, H = model.config.num_layers, model.config.hidden_size
    state = tuple(
        torch.randn(L, batch_size, H, generator=gen) * 0.5 for _ in range(2 if model.config.model == "lstm" else 1)
    )
    stepper.set_state(state)
    gap = 0.0
    for _ in range(steps):
        tokens = torch.randint(0, V, (batch_size,), generator=gen)
        with torch.no_grad():
            logits, state = model(tokens[:, None], state)
        gap = max(gap, (stepper.step(tokens) - logits[:, 0]).abs().max().item())
    return gap


def test_cell_formulation_is_chosen_by_batch_size_on_cpu_only():
    model = make_model("lstm", 1, hidden_size=32)
    big = SIGMOID_ONLY_MIN_ELEMS // 32
    assert not Stepper(model, 1, CPU).sigmoid_only
    assert Stepper(model, big, CPU).sigmoid_only
    assert not Stepper(make_model("gru", 1, hidden_size=32), big, CPU).sigmoid_only
    assert not Stepper(model, big, torch.device("meta")).sigmoid_only  # off the CPU tanh is not the bottleneck


def test_streams_of_a_large_batch_equal_single_runs():
    # 512 streams x 32 hidden switches the batch to the one-sigmoid cell; single runs use sigmoid + tanh.
    model = make_model("lstm", 2, hidden_size=32)
    batch = run(model, length=60, num_samples=SIGMOID_ONLY_MIN_ELEMS // 32, seed=3, temperature=1.0)
    for i in (0, 1, 511):
        assert torch.equal(batch[i], run(model, length=60, num_samples=1, seed=3 + i, temperature=1.0)[0])


def _kernels(stepper: Stepper) -> set[str]:
    cell = stepper.cell
    return {cell.hidden_product_0.kernel} | {p.kernel for p in cell.stacked_products}


@pytest.mark.parametrize("onednn", [True, False])
def test_product_kernels_are_chosen_by_batch_size_precision_and_the_probe(onednn, monkeypatch):
    # Packing is stubbed, so the choice is tested for both answers of the probe on any CPU.
    monkeypatch.setattr(kernels, "onednn_linear_available", lambda dtype=torch.float32: onednn)
    monkeypatch.setattr(kernels, "pack_linear_weight", lambda w, batch_size: w)
    model = make_model("lstm", 2, hidden_size=32)
    assert _kernels(Stepper(model, 1, CPU)) == {"addmm"}  # MKL's mat-vec is best at one stream
    assert _kernels(Stepper(model, 4, CPU)) == ({"onednn"} if onednn else {"addmm"})
    bf16 = Stepper(model, 4, CPU, precision="bf16")
    assert _kernels(bf16) == {"bf16"} and bf16.cell.hidden_product_0.packed is onednn
    assert _kernels(Stepper(model, 4, torch.device("meta"))) == {"addmm"}  # oneDNN packing is CPU-only


def test_the_bf16_probe_asks_torch_before_touching_the_op(monkeypatch):
    """On a CPU without avx512bw/vl/dq or avx_ne_convert, torch's bf16 oneDNN ops raise; the probe must say no
    without calling them. Faked here: torch answers no, and the op would fail the test if called."""
    kernels.onednn_linear_available.cache_clear()
    try:
        monkeypatch.setattr(kernels, "torch_supports_onednn_bf16", lambda: False)

        def refuse(*args):
            raise AssertionError("the bf16 op was called on a CPU torch says cannot run it")

        monkeypatch.setattr(kernels, "pack_linear_weight", refuse)
        assert kernels.onednn_linear_available(torch.bfloat16) is False
        model = make_model("lstm", 2, hidden_size=32)
        stepper = Stepper(model, 4, CPU, precision="bf16")  # falls back to torch.mm on bfloat16 weights
        assert not stepper.cell.hidden_product_0.packed
        assert 0 < _max_gap_to_model(model, stepper, 4) <= 0.05
    finally:
        kernels.onednn_linear_available.cache_clear()


def test_the_probes_fall_back_to_no_when_torch_lacks_them(monkeypatch):
    kernels.onednn_linear_available.cache_clear()
    try:
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
        assert kernels.onednn_linear_available() is False
        monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
        assert kernels.bf16_is_native(CPU) is False
    finally:
        kernels.onednn_linear_available.cache_clear()


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_every_kernel_matches_the_model_with_and_without_onednn(kind, monkeypatch):
    model = make_model(kind, 2, hidden_size=48, embed_size=24)
    real = kernels.onednn_linear_available
    for off in (False, True):  # the machine's own answer per dtype, then no oneDNN at all: never claim a missing path
        monkeypatch.setattr(
            kernels, "onednn_linear_available", lambda dtype=torch.float32, off=off: not off and real(dtype)
        )
        assert _max_gap_to_model(model, Stepper(model, 4, CPU), 4) <= 1e-5
        assert 0 < _max_gap_to_model(model, Stepper(model, 4, CPU, precision="bf16"), 4) <= 0.05


def test_stepper_refuses_an_unknown_precision():
    with pytest.raises(UsageError, match="precision"):
        Stepper(make_model(), 1, CPU, precision="fp16")


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("sigmoid_only", [False, True])
def test_bf16_stepper_tracks_the_model_closely_but_not_exactly(kind, sigmoid_only):
    model = make_model(kind, 2, hidden_size=48, embed_size=24)
    gap = _max_gap_to_model(model, Stepper(model, 4, CPU, precision="bf16", sigmoid_only=sigmoid_only), 4)
    # bfloat16 keeps 8 significant bits: logits of this size (|x| up to ~10) move by 1e-4..1e-2, never more.
    assert 0 < gap <= 0.05


@pytest.mark.parametrize("precision", ["bf16", pytest.param("int8", marks=needs_int8)])
def test_reduced_precision_generate_is_seeded_and_follows_the_model(precision):
    model = make_model()
    a = run(model, length=40, num_samples=3, seed=4, precision=precision)
    b = run(model, length=40, num_samples=3, seed=4, precision=precision)
    assert torch.equal(a, b) and a.shape == (3, 40)
    assert ((a >= 0) & (a < V)).all() and len(set(a.flatten().tolist())) > 3  # not a constant stream
    # Greedy decoding follows the fp32 model's argmax wherever the top two logits are not near-tied.
    greedy = run(model, length=40, temperature=0.0, precision=precision)[0].tolist()
    expected = greedy_reference(model, [1, 2, 3], 40)
    assert sum(g == e for g, e in zip(greedy, expected, strict=True)) >= 30


def test_bad_precision_and_bf16_off_cpu_and_cuda_are_usage_errors():
    with pytest.raises(UsageError, match="precision"):
        SampleConfig(precision="fp16").validate()
    with pytest.raises(UsageError, match="bf16"):
        generate(make_model(), [1], SampleConfig(precision="bf16"), torch.device("meta"))


# ---- int8 and --precision auto ----


def _every_kernel(stepper: Stepper) -> set[str]:
    """The kernel of every product the cell holds, whatever its kind calls them."""
    found: set[str] = set()
    for value in vars(stepper.cell).values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, stepper_mod._Product):
                found.add(item.kernel)
    return found


@needs_int8
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("sigmoid_only", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_int8_stepper_tracks_the_model_closely_but_not_exactly(kind, sigmoid_only, batch_size):
    model = make_model(kind, 2, hidden_size=48, embed_size=24)
    stepper = Stepper(model, batch_size, CPU, precision="int8", sigmoid_only=sigmoid_only)
    assert _every_kernel(stepper) == {"int8"}
    gap = _max_gap_to_model(model, stepper, batch_size)
    # Weights keep 8 bits per row, inputs 7 per call: logits of |x| up to ~10 move by 1e-3..1e-1, never more.
    assert 0 < gap <= 0.2


def test_int8_off_the_cpu_or_without_a_kernel_is_a_usage_error(monkeypatch):
    with pytest.raises(UsageError, match="int8 runs on the CPU"):
        generate(make_model(), [1], SampleConfig(precision="int8"), torch.device("meta"))
    monkeypatch.setattr(kernels, "int8_engine", lambda: None)
    with pytest.raises(UsageError, match="no int8 CPU kernel"):
        generate(make_model(), [1], SampleConfig(precision="int8"), CPU)
    assert "int8" not in sample.native_precisions(CPU)


def test_the_int8_probe_says_no_when_torch_has_none_of_the_engines(monkeypatch):
    kernels.int8_engine.cache_clear()
    try:
        monkeypatch.setattr(kernels, "INT8_ENGINES", ("an-engine-this-torch-lacks",))
        assert kernels.int8_engine() is None
        with pytest.raises(RuntimeError, match="no quantized engine"):
            kernels.pack_int8_linear(torch.ones(2, 2), None)
    finally:
        kernels.int8_engine.cache_clear()


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        ({"fp32": 100.0, "int8": 250.0, "bf16": 150.0}, "int8"),
        ({"fp32": 100.0, "int8": 90.0, "bf16": 160.0}, "bf16"),
        ({"fp32": 100.0, "int8": 105.0, "bf16": 50.0}, "fp32"),  # within AUTO_MARGIN: not worth leaving fp32
    ],
)
def test_auto_takes_the_fastest_native_precision_by_a_margin(rates, expected, monkeypatch):
    monkeypatch.setattr(sample, "native_precisions", lambda device: list(rates))
    monkeypatch.setattr(sample, "_steps_per_sec", lambda stepper, device: rates[stepper.cell.precision])
    choice = sample.choose_precision(make_model(), 4, CPU)
    assert choice.precision == expected and choice.steps_per_sec == rates
    assert choice.stepper.cell.precision == expected and choice.stepper.batch_size == 4


def test_auto_only_considers_what_is_native_and_within_the_cost_bound(monkeypatch):
    monkeypatch.setattr(kernels, "int8_engine", lambda: "fbgemm")
    monkeypatch.setattr(sample, "bf16_is_native", lambda device: False)
    assert sample.native_precisions(CPU) == ["fp32", "int8"]
    monkeypatch.setattr(sample, "MEASURED_COST_BPC", {**sample.MEASURED_COST_BPC, "int8": 0.02})
    assert sample.native_precisions(CPU) == ["fp32"]
    monkeypatch.setattr(sample, "bf16_is_native", lambda device: True)
    assert sample.native_precisions(CPU) == ["fp32", "bf16"]
    assert sample.native_precisions(torch.device("meta")) == ["fp32"]


def test_auto_times_real_steps_and_generates_in_what_it_picked(monkeypatch):
    model = make_model()
    choice = sample.choose_precision(model, 2, CPU)
    assert choice.precision in sample.native_precisions(CPU)
    assert set(choice.steps_per_sec) == set(sample.native_precisions(CPU))
    assert all(rate > 0 for rate in choice.steps_per_sec.values())
    picked = []
    real = sample._generate

    def spy(m, p, cfg, *rest):
        picked.append((cfg.precision, rest[-1]))  # and the stepper auto timed, handed on rather than rebuilt
        return real(m, p, cfg, *rest)

    monkeypatch.setattr(sample, "_generate", spy)
    ids = run(model, length=10, num_samples=2, seed=1, precision="auto")
    assert ids.shape == (2, 10) and picked and picked[0][0] in stepper_mod.PRECISIONS
    assert picked[0][1] is not None and picked[0][1].cell.precision == picked[0][0]


def test_stepper_with_tied_weights_matches_model():
    model = make_model("lstm", 2, hidden_size=32, tie_weights=True)
    stepper = Stepper(model, 2, CPU)
    state = model.init_state(2)
    for tok in ([1, 2], [3, 4], [5, 6]):
        tokens = torch.tensor(tok)
        with torch.no_grad():
            logits, state = model(tokens[:, None], state)
        assert torch.allclose(stepper.step(tokens), logits[:, 0], atol=1e-5)


def test_stepper_copies_weights_so_later_training_does_not_change_it():
    model = make_model("gru", 1)
    stepper = Stepper(model, 1, CPU)
    before = stepper.step(torch.tensor([3])).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    stepper.set_state(model.init_state(1))
    assert torch.equal(stepper.step(torch.tensor([3])), before)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("precision", ["fp32", pytest.param("int8", marks=needs_int8)])
def test_steppers_of_several_batch_sizes_share_one_packing_and_step_as_their_own(kind, precision):
    """packed=: Steppers of one model at batch sizes 1..16, in both LSTM formulations (the one-sigmoid one has
    doubled g rows: other weights), put in one dict, hold one packing per product and formulation, and each
    gives the logits a Stepper with its own packing gives, bit for bit."""
    model = make_model(kind, 2, hidden_size=48, embed_size=24)
    packed: dict = {}
    made = [(b, so, Stepper(model, b, CPU, precision=precision, sigmoid_only=so, packed=packed))
            for b, so in ((1, False), (2, False), (4, True), (16, False), (16, True))]  # fmt: skip
    keys = {(type(s.cell).__name__, i) for _, _, s in made for i, p in enumerate(_products(s)) if p.kernel != "addmm"}
    assert len(packed) == len(keys) >= 2  # one entry per product and formulation, not per batch size
    for b, so, stepper in made:
        own = Stepper(model, b, CPU, precision=precision, sigmoid_only=so)
        assert all(any(p.w is w for w in packed.values()) for p in _products(stepper) if p.kernel != "addmm")
        tokens = torch.arange(b) % V
        for _ in range(3):
            assert torch.equal(stepper.step(tokens), own.step(tokens)), (b, so)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_the_servers_batch_packs_a_models_weights_once_for_every_batch_size(precision):
    """Batch hands its dict to every Stepper it makes, --precision auto's timed candidates included."""
    from charrnn.serve.batch import Batch

    batch = Batch(make_model("lstm", 2, hidden_size=48, embed_size=24), CPU, precision)
    two, four = batch._stepper(2), batch._stepper(4)
    shared = [p for s in (two, four) for p in _products(s) if p.kernel in ("onednn", "int8")]
    assert batch.packed  # auto's fp32 candidate, timed and maybe not chosen, packed into it too
    assert all(any(p.w is w for w in batch.packed.values()) for p in shared)
    if precision == "fp32":
        assert len(shared) >= 4 and all(a.w is b.w for a, b in zip(_products(two), _products(four), strict=True))


def _products(stepper: Stepper) -> list:
    found = []
    for value in vars(stepper.cell).values():
        found += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, stepper_mod._Product)]
    return found


# ---- generate: determinism and streams ----


def test_generate_yields_one_id_per_stream_per_chunk_on_cpu():
    chunks = list(generate(make_model(), [1], SampleConfig(length=7, num_samples=3, seed=2), CPU))
    assert len(chunks) == 7
    for c in chunks:
        assert c.shape == (3, 1) and c.dtype == torch.int64 and c.device.type == "cpu"
        assert ((c >= 0) & (c < V)).all()
    ids = torch.cat(chunks, dim=1)
    assert torch.equal(ids, run(make_model(), [1], length=7, num_samples=3, seed=2))  # the same draws, chunked
    assert len(set(ids.flatten().tolist())) > 2  # a sampler, not a constant


def test_generate_is_deterministic_under_a_seed():
    model = make_model()
    a = run(model, length=60, num_samples=2, seed=7)
    b = run(model, length=60, num_samples=2, seed=7)
    c = run(model, length=60, num_samples=2, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_stream_i_of_a_batch_equals_a_single_run_with_seed_plus_i(kind):
    # length > 256 crosses a uniform-block refill.
    model = make_model(kind)
    batch = run(model, length=300, num_samples=4, seed=11, top_k=8, temperature=1.0)
    for i in range(4):
        alone = run(model, length=300, num_samples=1, seed=11 + i, top_k=8, temperature=1.0)
        assert torch.equal(batch[i], alone[0])
    assert len({tuple(row.tolist()) for row in batch}) == 4  # streams really are independent


def test_generate_does_not_mutate_the_model_and_samples_in_eval_mode():
    model = make_model(dropout=0.5)
    model.train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    ids = run(model, length=30, temperature=0.0)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    # With dropout active the greedy text would be perturbed; it must equal eval-mode greedy decoding.
    assert ids[0].tolist() == greedy_reference(make_model(dropout=0.5), [1, 2, 3], 30)


def test_generate_leaves_no_inference_mode_behind_between_yields():
    it = generate(make_model(), [1], SampleConfig(length=3), CPU)
    next(it)
    assert not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()


# ---- greedy equivalences ----


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_temperature_zero_is_greedy_argmax_of_the_model(kind):
    model = make_model(kind)
    ids = run(model, length=40, temperature=0.0, num_samples=2)
    expected = greedy_reference(model, [1, 2, 3], 40)
    assert ids[0].tolist() == expected and ids[1].tolist() == expected


@pytest.mark.parametrize("filters", [{"top_k": 1}, {"top_p": 1e-9}, {"top_k": 1, "top_p": 0.5}])
def test_top_k_one_and_tiny_top_p_are_greedy(filters):
    model = make_model()
    ids = run(model, length=40, temperature=1.5, num_samples=3, seed=3, **filters)
    expected = greedy_reference(model, [1, 2, 3], 40)
    for row in ids:
        assert row.tolist() == expected


# ---- top-k / top-p exclusion ----


def test_top_k_never_emits_an_id_outside_the_k_most_likely():
    model = make_model()
    prime, k, T = [1, 2, 3], 3, 2.0
    ids = run(model, list(prime), length=150, num_samples=8, seed=0, top_k=k, temperature=T)
    logits = teacher_forced_logits(model, prime, ids)  # (B, n, V)
    kth = logits.topk(k, dim=-1).values[..., -1]  # (B, n)
    chosen = logits.gather(-1, ids[..., None])[..., 0]
    assert (chosen >= kth - 1e-5).all()
    # The filter must bite: with T=2 unfiltered sampling would leave the top 3 often.
    unfiltered = run(model, list(prime), length=150, num_samples=8, seed=0, temperature=T)
    u_logits = teacher_forced_logits(model, prime, unfiltered)
    assert (u_logits.gather(-1, unfiltered[..., None])[..., 0] < u_logits.topk(k, dim=-1).values[..., -1] - 1e-5).any()


def nucleus_min_prob(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Smallest kept probability of the nucleus (smallest prefix with cumulative prob >= top_p), (...,)."""
    sp = probs.sort(dim=-1, descending=True).values
    before = sp.cumsum(-1) - sp
    count = (before < top_p).sum(-1, keepdim=True)
    return sp.gather(-1, count - 1)[..., 0]


def test_top_p_never_emits_an_id_outside_the_nucleus():
    model = make_model()
    prime, p, T = [4, 5], 0.6, 1.2
    ids = run(model, list(prime), length=150, num_samples=8, seed=1, top_p=p, temperature=T)
    probs = torch.softmax(teacher_forced_logits(model, prime, ids).double() / T, dim=-1)  # (B, n, V)
    floor = nucleus_min_prob(probs, p)
    chosen = probs.gather(-1, ids[..., None])[..., 0]
    assert (chosen >= floor * (1 - 1e-4)).all()
    assert (probs < floor[..., None] * (1 - 1e-4)).any(-1).float().mean() > 0.5  # most steps exclude something


def test_sampler_frequencies_follow_the_filtered_softmax():
    """Inverse-CDF sampling over many uniforms reproduces softmax(logits / T) restricted by top-k and top-p."""
    n, T = 20000, 0.9
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, 1.5])
    W = logits.numel()
    u = torch.rand(n, 1, generator=torch.Generator().manual_seed(0))
    for cfg, keep in [
        (SampleConfig(temperature=T), [0, 1, 2, 3, 4, 5, 6]),
        (SampleConfig(temperature=T, top_k=3), [0, 6, 1]),
        (SampleConfig(temperature=T, top_p=0.75), None),
    ]:
        probs = torch.softmax(logits.double() / T, dim=0)
        if keep is None:  # nucleus computed independently
            floor = nucleus_min_prob(probs, 0.75)
            keep = [i for i in range(W) if probs[i] >= floor]
            assert 1 < len(keep) < W
        target = torch.zeros(W, dtype=torch.float64)
        target[keep] = probs[keep] / probs[keep].sum()
        out = torch.empty(n, 1, dtype=torch.int64)
        _Sampler(cfg, n, W, CPU)(logits.expand(n, -1).contiguous(), u, out)
        freq = torch.bincount(out[:, 0], minlength=W).double() / n
        assert (freq - target).abs().max().item() < 0.015
        assert (freq[target == 0] == 0).all()


@pytest.mark.parametrize("row", [[0.0, 5.0, -200.0], [-200.0, 0.0, 5.0]])
def test_sampler_never_picks_a_zero_probability_id_even_at_the_extreme_uniforms(row):
    logits = torch.tensor([row])  # the -200 id underflows to probability 0 at T=0.5
    zero_id = row.index(-200.0)
    out = torch.empty(1, 1, dtype=torch.int64)
    for u in (0.0, 1.0 - 2**-24, 1.0):
        _Sampler(SampleConfig(temperature=0.5), 1, 3, CPU)(logits, torch.tensor([[u]]), out)
        assert 0 <= out.item() < 3 and out.item() != zero_id


# ---- config and edge cases ----


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"top_k": 0},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_p": -0.2},
        {"length": -1},
        {"num_samples": 0},
    ],
)
def test_validate_rejects_bad_values(bad):
    with pytest.raises(UsageError):
        SampleConfig(**bad).validate()
    with pytest.raises(UsageError):
        generate(make_model(), [1], SampleConfig(**bad), CPU)  # raised at the call, not at first next()


def test_edge_values_are_accepted_and_mean_what_they_say():
    model = make_model()
    plain = run(model, length=30, seed=5, temperature=1.0)
    assert torch.equal(run(model, length=30, seed=5, temperature=1.0, top_p=1.0), plain)  # the whole nucleus
    greedy = greedy_reference(model, [1, 2, 3], 30)
    assert run(model, length=30, seed=5, temperature=1.0, top_k=1)[0].tolist() == greedy  # one candidate
    assert plain[0].tolist() != greedy  # so the two checks above could each have failed
    edge = SampleConfig(temperature=0.0, top_k=1, top_p=1.0, length=0, num_samples=1)
    assert list(generate(model, [1], edge, CPU)) == []


def test_top_k_larger_than_vocab_is_clamped():
    model = make_model()
    assert torch.equal(run(model, length=30, seed=2, top_k=10_000), run(model, length=30, seed=2))


def test_empty_prime_and_out_of_vocab_prime_are_usage_errors():
    with pytest.raises(UsageError):
        generate(make_model(), [], SampleConfig(length=5), CPU)
    with pytest.raises(UsageError):
        generate(make_model(), [V], SampleConfig(length=5), CPU)


def test_length_zero_yields_nothing():
    assert list(generate(make_model(), [1], SampleConfig(length=0, num_samples=3), CPU)) == []


# ---- Stepper.reorder ----


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_reorder_moves_each_rows_state_in_place(kind):
    model = make_model(kind, 2, hidden_size=16)
    gen = torch.Generator().manual_seed(3)
    state = tuple(torch.randn(2, 4, 16, generator=gen) for _ in range(2 if kind == "lstm" else 1))
    stepper = Stepper(model, 4, CPU)
    stepper.set_state(state)
    buffers = [b.data_ptr() for b in (stepper.hs, stepper.cs) if b is not None]
    index = torch.tensor([2, 0, 0, 3])
    stepper.reorder(index)
    moved = tuple(s[:, index] for s in state)  # (L, B, H) each
    for got, want in zip(stepper.get_state(), moved, strict=True):
        assert torch.equal(got, want)
    assert [b.data_ptr() for b in (stepper.hs, stepper.cs) if b is not None] == buffers
    # The cells' views still read those buffers: a step from the reordered state is the model's step from it.
    tokens = torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        logits, _ = model(tokens[:, None], moved)
    assert (stepper.step(tokens) - logits[:, 0]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="one index per row"):
        stepper.reorder(torch.tensor([0, 1]))


# ---- beam search ----


def tiny_model(kind: str, num_layers: int, vocab: int = 3, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=vocab, model=kind, hidden_size=8, num_layers=num_layers))
    with torch.no_grad():
        model.head.weight.mul_(4.0)  # spread the log-probs, so no two sequences nearly tie
    return model.eval()


def sequence_log_probs(model: CharRNN, prime: list[int], seqs: torch.Tensor) -> torch.Tensor:
    """Summed log-prob (float64, (S,)) of each row of seqs (S, n) after the prime, from the model's own forward."""
    logp = torch.log_softmax(teacher_forced_logits(model, prime, seqs).double(), dim=-1)  # (S, n, V)
    return logp.gather(-1, seqs[..., None])[..., 0].sum(-1)


def beam(model: CharRNN, prime: list[int] = (1, 2), **cfg) -> list[BeamEvent]:
    return list(beam_search(model, list(prime), BeamConfig(**cfg), CPU))


def results(events: list[BeamEvent]) -> list[BeamResult]:
    return [e for e in events if isinstance(e, BeamResult)]


def streamed(events: list[BeamEvent]) -> list[int]:
    return [i for e in events if isinstance(e, BeamPiece) for i in e.ids]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_a_beam_as_wide_as_every_sequence_is_exhaustive_search(kind, num_layers):
    model, prime, n = tiny_model(kind, num_layers), [1, 2], 4
    every = torch.tensor(list(itertools.product(range(3), repeat=n)))  # (81, n): all 3**4 continuations
    exact = sequence_log_probs(model, prime, every)  # (81,)
    order = exact.argsort(descending=True)
    # No near-ties, so the order is well defined: the stepper's float32 sums sit within ~1e-6 of the model's.
    assert (exact[order][:-1] - exact[order][1:]).min() > 2e-5
    found = results(beam(model, prime, beam_size=81, length=n, num_results=81))
    assert [r.rank for r in found] == list(range(81))
    assert [r.ids for r in found] == every[order].tolist()  # the best sequence and the whole order
    assert [r.log_prob for r in found] == pytest.approx(exact[order].tolist(), abs=1e-5)
    assert [r.score for r in found] == pytest.approx([r.log_prob / n for r in found])
    top = beam(model, prime, beam_size=81, length=n, num_results=5)
    assert top == results(top)  # more than one result: no streamed pieces, only the results at the end
    assert [r.ids for r in top] == every[order[:5]].tolist()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_narrow_beam_returns_distinct_sequences_scored_as_the_model_scores_them(kind):
    model, prime, n = tiny_model(kind, 2, vocab=4), [0, 3], 12
    found = results(beam(model, prime, beam_size=3, length=n, num_results=3))
    ids = torch.tensor([r.ids for r in found])  # (3, n)
    assert ids.shape == (3, n) and ((ids >= 0) & (ids < 4)).all()
    assert len({tuple(r.ids) for r in found}) == 3
    assert [r.log_prob for r in found] == pytest.approx(sequence_log_probs(model, prime, ids).tolist(), abs=1e-4)
    assert [r.score for r in found] == sorted((r.score for r in found), reverse=True)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_beam_one_is_greedy_sampling(kind):
    model = make_model(kind)
    events = beam(model, [1, 2, 3], beam_size=1, length=40)
    greedy = run(model, length=40, temperature=0.0)[0].tolist()
    assert results(events)[0].ids == greedy
    assert [e.ids for e in events if isinstance(e, BeamPiece)] == [[g] for g in greedy]  # one id a step


def confident_model() -> CharRNN:
    """An Elman RNN over 3 ids whose unit 0 remembers whether every id so far was 0 (+1) or not (-1, for good).
    While it is +1, id 0 comes next with probability 1 - 4e-9; after any other id, all ids are about equally
    likely. A beam that strayed pays log 3 a step, so a fresh stray outranks an old one, and the beams agree on
    all but their last id."""
    model = CharRNN(ModelConfig(vocab_size=3, model="rnn", hidden_size=8, num_layers=1))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight[:, 0] = torch.tensor([1.0, -1.0, -1.0])  # z: +1 for id 0, -1 otherwise
        model.rnn.weight_ih_l0[0, 0] = 10.0  # h0' = tanh(10 (h0 + z - 0.5)): once -1, always -1
        model.rnn.weight_hh_l0[0, 0] = 10.0
        model.rnn.bias_ih_l0[0] = -5.0
        a = torch.tensor([5.0, -5.0, -5.0])
        model.head.weight[:, 0] = a  # logits a (h0 + 1): (10, -10, -10) while h0 = +1, about 0 after
        model.head.bias.copy_(a)
    return model.eval()


def test_beam_streams_what_every_beam_agrees_on_before_the_end(monkeypatch):
    model, n = confident_model(), 30
    steps: list[int] = []
    advance = beam_mod._Beams.advance
    monkeypatch.setattr(beam_mod._Beams, "advance", lambda self, t: (steps.append(t), advance(self, t))[1])
    it = beam_search(model, [0], BeamConfig(beam_size=3, length=n), CPU)
    first = next(it)
    assert first == BeamPiece([0]) and steps == [0, 1]  # beams 00, 01, 02 agree on the first id
    events = [first, *it]
    (best,) = results(events)
    assert events[-1] is best and best.ids == [0] * n
    assert streamed(events) == best.ids
    assert sum(isinstance(e, BeamPiece) for e in events) == n  # one id a step, then the last one at the end


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_streamed_pieces_concatenate_to_the_best_beam(kind):
    model = make_model(kind)
    events = beam(model, [1, 2, 3], beam_size=4, length=60)
    (best,) = results(events)
    assert streamed(events) == best.ids and len(best.ids) == 60
    assert sum(isinstance(e, BeamPiece) for e in events) > 1  # it streamed, not one piece at the end
    four = beam(model, [1, 2, 3], beam_size=4, length=60, num_results=4)
    assert four == results(four) and four[0].ids == best.ids
    assert four[0].log_prob == pytest.approx(best.log_prob)


def test_beam_search_runs_inside_the_callers_inference_mode_and_leaves_none_behind():
    model = make_model()
    with torch.inference_mode():  # as the CLI calls it
        inside = beam(model, beam_size=3, length=20, num_results=2)
    assert beam(model, beam_size=3, length=20, num_results=2) == inside
    it = beam_search(model, [1], BeamConfig(beam_size=2, length=5), CPU)
    next(it)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()


def test_beam_length_zero_yields_nothing_and_fewer_continuations_than_asked_yield_fewer_results():
    assert beam(tiny_model("lstm", 1), beam_size=3, length=0, num_results=2) == []
    found = results(beam(tiny_model("lstm", 1), beam_size=5, length=1, num_results=5))  # V = 3: 3 exist
    assert sorted(r.ids for r in found) == [[0], [1], [2]]


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"beam_size": 0}, "--beam must be at least 1"),
        ({"beam_size": MAX_NUM_SAMPLES + 1}, "--beam must be at most"),
        ({"beam_size": 2, "num_results": 3}, "--num-samples 3 asks for more results than --beam 2"),
        ({"num_results": 0}, "--num-samples must be at least 1"),
        ({"length": -1}, "--length must be at least 0"),
        ({"beam_size": 1000, "length": 60_000}, "beam history"),
        ({"precision": "bf16"}, "--beam runs in fp32 only"),
        ({"precision": "int8"}, "--beam runs in fp32 only"),
        ({"precision": "fp16"}, "--precision must be one of"),
    ],
)
def test_bad_beam_options_are_usage_errors_at_the_call(cfg, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        beam_search(make_model(), [1], BeamConfig(**cfg), CPU)


def test_beam_refuses_a_bad_prime_and_too_many_candidates_a_step(monkeypatch):
    with pytest.raises(UsageError, match="--prime"):
        beam_search(make_model(), [], BeamConfig(beam_size=2, length=5), CPU)
    with pytest.raises(UsageError, match="outside the vocabulary"):
        beam_search(make_model(), [V], BeamConfig(beam_size=2, length=5), CPU)
    monkeypatch.setattr(beam_mod, "MAX_BEAM_CANDIDATES", 2 * V)
    beam_search(make_model(), [1], BeamConfig(beam_size=2, length=5), CPU)  # at the limit: accepted
    with pytest.raises(UsageError, match="use --beam at most 2"):
        beam_search(make_model(), [1], BeamConfig(beam_size=3, length=5), CPU)


def test_sampling_controls_are_refused_with_beam_in_one_sentence():
    refuse_sampling_controls(None, None, None)
    with pytest.raises(UsageError, match="--temperature or --top-p: beam search is deterministic"):
        refuse_sampling_controls(0.8, None, 0.9)
    with pytest.raises(UsageError, match="with --top-k:"):
        refuse_sampling_controls(None, 5, None)


@pytest.mark.gpu
def test_beam_search_on_cuda_finds_what_it_finds_on_cpu():
    model = make_model()
    cfg = BeamConfig(beam_size=4, length=80, num_results=4)
    cpu = list(beam_search(model, [1, 2, 3], cfg, CPU))
    cuda = list(beam_search(model, [1, 2, 3], cfg, torch.device("cuda")))
    assert [r.ids for r in cuda] == [r.ids for r in cpu]
    assert [r.log_prob for r in cuda] == pytest.approx([r.log_prob for r in cpu], abs=1e-3)
    one = list(beam_search(model, [1, 2, 3], BeamConfig(beam_size=4, length=80), torch.device("cuda")))
    assert streamed(one) == cpu[0].ids
