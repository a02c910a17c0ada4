"""Step-by-step sampling from a CharRNN: prime -> step -> temperature / top-k / top-p -> ids, streamed.

The prime runs through the model's fused nn.LSTM / GRU / RNN. Each new character then runs through a Stepper,
which does the cell math itself instead of calling model.rnn once per character: at seq_len 1 the fused module
pays a per-call cost (on CPU oneDNN re-lays out the weights on every call) that dominates a one-stream step. The
Stepper lays the weights out once, pre-transposed for the product they feed, and steps one Cell per recurrent
kind (LSTMCell, GRUCell, RNNCell), chosen from the model's nn module type:

- all hidden states live in one (B, L*H) buffer, so layer l >= 1 reads [h_{l-1} | h_l] as one slice and does one
  product against the stacked [W_ih; W_hh]^T (a GRU keeps two: its candidate gate needs W_hh h on its own);
- layer 0's input projection is a row gather from a precomputed (V, G) table, since the embedding is a lookup;
- nonlinearities run in place on buffers allocated once, and every view of them is made once;
- on CUDA the step plus sampling is captured in a CUDA graph and replayed per character.

The products (_Product) use MKL's addmm at one stream and oneDNN's linear on weights prepacked for the batch size
from ONEDNN_MIN_BATCH streams up, since MKL's small-batch GEMM is slow on CPU. With many streams the step is bound
by its products and then by tanh, which PyTorch's CPU kernel computes at more than a sigmoid's cost and on one
thread for small tensors. So from SIGMOID_ONLY_MIN_ELEMS (B*H) on CPU the LSTM uses tanh(x) = 2 sigmoid(2x) - 1,
with the g-gate rows pre-doubled, and one sigmoid covers all four gates (LSTMCellOneSigmoid). On CUDA tanh costs
what sigmoid does, so the plain cell is kept.

`precision="bf16"` stores the recurrent weights in bfloat16 and rounds each layer's input to bfloat16 before its
product; the kernel accumulates in float32 but stores the product in bfloat16 (CPU matmul has no float32 output
for bfloat16 inputs), and it is then added to float32 gates. The cell math, state and output layer stay float32,
so the rounding stays in the products. It pays on CPUs with AVX512-BF16 or AMX and with many streams;
bench/bench_precision.py measures both its speed and its accuracy cost.

Sampling is inverse-CDF with one seeded torch.Generator per stream (seed + i), so stream i of a batch writes the
same text as a single-sample run with seed + i. In fp32 the batch and the single run differ only by float
rounding in the logits, which changes a character only if a uniform lands that close to a CDF step.

Beam search (`beam_search`, `charrnn sample --beam N`) steps its N beams as one batch of the same Stepper. Each
step ranks every (beam, next id) pair by summed log-probability, keeps the best N, and moves each kept beam's
state to its row with `Stepper.reorder`. With one result asked for, ids are yielded as soon as every beam agrees
on them, so the text still streams. It runs in fp32 only, so its scores are the model's own log-probabilities.

The measured figures behind these choices live in bench/README.md, where they can be dated and rerun.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from charrnn import runtime
from charrnn.errors import UsageError
from charrnn.generation import kernels
from charrnn.generation.kernels import bf16_is_native
from charrnn.model import CharRNN, State

PRECISIONS = ("fp32", "bf16", "int8")  # what a Stepper runs; --precision auto picks one of them
SAMPLE_PRECISIONS = (*PRECISIONS, "auto")
# Worst validation cost against fp32 (bits/char) measured on three trained checkpoints, one stream and the
# 64-stream cell alike (bench/bench_precision.py; the figures are in bench/README.md).
MEASURED_COST_BPC = {"fp32": 0.0, "bf16": 0.0001, "int8": 0.0003}
MAX_AUTO_COST_BPC = 0.01  # --precision auto only picks precisions measured to cost at most this
AUTO_MARGIN = 1.1  # auto leaves fp32 only for a precision this much faster: timings on a busy CPU are noisy
AUTO_ROUNDS, AUTO_STEPS = 3, 8  # auto times each candidate's step for the best of 3 rounds of 8 steps
ONEDNN_MIN_BATCH = 2  # streams from which fp32 products use oneDNN's prepacked linear, not MKL (timed on CPU)
SIGMOID_ONLY_MIN_ELEMS = 16384  # B*H from which the one-sigmoid LSTM cell beats sigmoid + tanh (timed on CPU)
UNIFORM_BLOCK = 256  # uniforms drawn per stream at a time, so the Python loop over generators is amortised
CUDA_YIELD_BLOCK = 32  # ids per host transfer on CUDA (divides UNIFORM_BLOCK)
CUDA_WARMUP_STEPS = 3  # eager steps on a side stream before graph capture, as torch.cuda.graph asks
MIN_TEMPERATURE = 1e-4  # below this 1/T overflows float32 logits; 0 (greedy) is what such a T means anyway
MAX_NUM_SAMPLES = 1024  # streams in one batch: each has its own generator and state
MAX_HELD_CHARS = 50_000_000  # samples 1.. are held in memory until sample 0 has streamed: (N - 1) * length
PRIME_CHUNK = 4096  # prime characters run through the model at a time, so a long prime needs bounded memory


@dataclass
class SampleConfig:
    temperature: float = 0.8  # 0 means greedy argmax
    top_k: int | None = None  # keep the k most likely chars (clamped to V)
    top_p: float | None = None  # nucleus: smallest set with cumulative prob >= top_p, in (0, 1]
    length: int = 2000  # new characters per sample
    num_samples: int = 1
    seed: int = 0  # stream i uses seed + i
    # "bf16": bfloat16 recurrent weights, faster with many streams on CPUs that have it; "int8": int8 recurrent
    # weights on CPU, faster for all but small models; "auto": the fastest here within MAX_AUTO_COST_BPC
    precision: str = "fp32"

    def validate(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"--temperature must be a finite number >= 0 (0 means greedy), not {self.temperature}.")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise UsageError(f"--temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, not {self.temperature}.")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, not {self.top_k}.")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            raise UsageError(f"--top-p must be in (0, 1], not {self.top_p}.")
        if self.length < 0:
            raise UsageError(f"--length must be at least 0, not {self.length}.")
        if not 1 <= self.num_samples <= MAX_NUM_SAMPLES:
            raise UsageError(f"--num-samples must be between 1 and {MAX_NUM_SAMPLES}, not {self.num_samples}.")
        if (self.num_samples - 1) * self.length > MAX_HELD_CHARS:
            raise UsageError(
                f"--num-samples {self.num_samples} x --length {self.length} would hold "
                f"{(self.num_samples - 1) * self.length:,} characters in memory while sample 0 streams "
                f"(the limit is {MAX_HELD_CHARS:,}); ask for fewer or shorter samples, or run several "
                "commands with different --seed."
            )
        runtime.check_seed(self.seed, self.num_samples)
        check_precision(self.precision, SAMPLE_PRECISIONS)


def check_precision(precision: str, allowed: tuple[str, ...] = PRECISIONS) -> None:
    if precision not in allowed:
        raise UsageError(f"--precision must be one of {', '.join(allowed)}, not {precision!r}.")


def check_precision_on(precision: str, device: torch.device) -> None:
    """UsageError unless `precision` runs on `device` ("auto" always does: it only picks what runs)."""
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise UsageError(f"--precision bf16 runs on cpu and cuda, not {device.type}; use --precision fp32 there.")
    if precision == "bf16" and device.type == "cuda" and not bf16_is_native(device):
        raise UsageError(
            "this GPU has no bfloat16 matrix units (it needs compute capability 8.0+); use --precision fp32."
        )
    if precision == "int8" and device.type != "cpu":
        raise UsageError(f"--precision int8 runs on the CPU, not {device.type}; use fp32 or bf16 there.")
    if precision == "int8" and kernels.int8_engine() is None:
        raise UsageError("this torch build has no int8 CPU kernel (fbgemm, oneDNN or qnnpack); use --precision fp32.")


class PrecisionChoice(NamedTuple):
    precision: str
    steps_per_sec: dict[str, float]  # every candidate timed, the choice included
    stepper: Stepper  # the chosen precision's, built for the timing: generate() samples with it


def native_precisions(device: torch.device) -> list[str]:
    """The precisions that run in hardware here and whose measured cost is within MAX_AUTO_COST_BPC."""
    device = torch.device(device)
    native = ["fp32"]
    if device.type == "cpu" and kernels.int8_engine() is not None:
        native.append("int8")
    if device.type in ("cpu", "cuda") and bf16_is_native(device):
        native.append("bf16")
    return [p for p in native if MEASURED_COST_BPC[p] <= MAX_AUTO_COST_BPC]


def choose_precision(model: CharRNN, batch_size: int, device: torch.device) -> PrecisionChoice:
    """--precision auto: time a few steps of each native precision at this batch size on this model and take
    the fastest, leaving fp32 only for one at least AUTO_MARGIN faster. Speed depends on the CPU, the model's
    size and the batch, so it is measured, not assumed (a fraction of a second)."""
    device = torch.device(device)
    steppers = {p: Stepper(model, batch_size, device, precision=p) for p in native_precisions(device)}
    rates = {p: _steps_per_sec(stepper, device) for p, stepper in steppers.items()}
    fastest = max(rates, key=lambda p: rates[p])
    chosen = fastest if rates[fastest] >= AUTO_MARGIN * rates["fp32"] else "fp32"
    return PrecisionChoice(chosen, rates, steppers[chosen])


def _steps_per_sec(stepper: Stepper, device: torch.device) -> float:
    tokens = torch.zeros(stepper.batch_size, dtype=torch.int64, device=device)  # (B,)
    best = math.inf
    with torch.inference_mode():
        stepper.step(tokens)  # first-call allocations and thread start-up
        for _ in range(AUTO_ROUNDS):
            runtime.synchronize(device)
            start = time.perf_counter()
            for _ in range(AUTO_STEPS):
                stepper.step(tokens)
            runtime.synchronize(device)
            best = min(best, time.perf_counter() - start)
    return AUTO_STEPS / max(best, 1e-9)


# --------------------------------------------------------------------------------------------------
# Stepper: cell math on pre-laid-out weights
# --------------------------------------------------------------------------------------------------


class _Product:
    """out <- x @ W (+ bias), or out += x @ W when bias is None; out is float32 (B, N).

    Four kernels, chosen once per Stepper:
    - "addmm": MKL's sgemm. Best at one stream, and the only one off the CPU.
    - "onednn": oneDNN's fp32 linear on weights prepacked for this batch size, from ONEDNN_MIN_BATCH streams up:
      MKL's small-M GEMM is slow on this class of CPU, and oneDNN's is not. Its op has no out= form, so each
      call allocates its (B, N) result.
    - "bf16": x is rounded into a staging buffer and multiplied by bfloat16 weights: oneDNN's prepacked linear
      on CPU (faster than torch.mm at few streams), else torch.mm on an (N, K)-laid-out W. The product, stored
      in bfloat16, is added to out.
    - "int8": weights quantized per output row to int8 and x per call (kernels.int8_linear: fbgemm on x86),
      accumulated in int32 and scaled back to float32: a quarter of fp32's weight bytes to read per character,
      and integer products are cheaper per stream. CPU only; small models gain little or lose (it costs a
      quantization of x per call), which is why --precision auto times it."""

    def __init__(
        self,
        w: torch.Tensor,
        bias: torch.Tensor | None,
        batch_size: int,
        precision: str,
        staging_out: torch.Tensor | None,
    ) -> None:
        K = w.shape[0]  # w arrives float32 (K, N)
        self.bias = bias
        on_cpu = w.device.type == "cpu"
        if precision == "bf16":
            self.kernel = "bf16"
            self.xs = torch.empty(batch_size, K, device=w.device, dtype=torch.bfloat16)  # (B, K)
            w_nk = w.t().to(torch.bfloat16).contiguous()  # (N, K)
            self.packed = on_cpu and kernels.onednn_linear_available(torch.bfloat16)
            if self.packed:
                self.w = kernels.pack_linear_weight(w_nk, batch_size)  # opaque (N, K)
            else:
                self.w = w_nk.t()  # (K, N) view: the layout cuBLAS / oneDNN mm run fastest
                self.ys = staging_out  # (B, N) bfloat16, shared by every product of this width
        elif precision == "int8":
            self.kernel = "int8"
            self.w = kernels.pack_int8_linear(w.t(), bias)  # opaque (N, K) int8, bias folded in
        elif on_cpu and batch_size >= ONEDNN_MIN_BATCH and kernels.onednn_linear_available():
            self.kernel = "onednn"
            self.w = kernels.pack_linear_weight(w.t().contiguous(), batch_size)  # opaque (N, K)
        else:
            self.kernel = "addmm"
            self.w = w
        self._call = getattr(self, f"_{self.kernel}")

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        self._call(x, out)

    def _addmm(self, x: torch.Tensor, out: torch.Tensor) -> None:
        if self.bias is None:
            out.addmm_(x, self.w)
        else:
            torch.addmm(self.bias, x, self.w, out=out)

    def _onednn(self, x: torch.Tensor, out: torch.Tensor) -> None:
        y = kernels.onednn_linear(x, self.w, self.bias)  # (B, N)
        if self.bias is None:
            out.add_(y)
        else:
            out.copy_(y)

    def _int8(self, x: torch.Tensor, out: torch.Tensor) -> None:
        y = kernels.int8_linear(x, self.w)  # (B, N) float32, bias included
        if self.bias is None:
            out.add_(y)
        else:
            out.copy_(y)

    def _bf16(self, x: torch.Tensor, out: torch.Tensor) -> None:
        self.xs.copy_(x)
        if self.packed:
            y = kernels.onednn_linear(self.xs, self.w, None)  # (B, N) bfloat16
        else:
            y = torch.mm(self.xs, self.w, out=self.ys)
        if self.bias is None:
            out.add_(y)
        else:
            torch.add(self.bias, y, out=out)


class _LayerWeights(NamedTuple):
    """One layer's weights in float32, rows in the gate order its Cell's views expect."""

    w_ih: torch.Tensor  # (G, input size)
    w_hh: torch.Tensor  # (G, H)
    b_ih: torch.Tensor  # (G,)
    b_hh: torch.Tensor  # (G,)


class Cell:
    """One recurrent kind's step on pre-laid-out weights, for every layer of a model at a fixed batch size.

    All hidden states live in one (B, L*H) buffer `hs` = [h_0 | h_1 | ... | h_{L-1}] (and cell states, where the
    kind has them, in `cs`), so a layer's input h_{l-1} sits just left of its own state h_l. Layer 0's input
    projection, bias included, is a row of `input_table` per token. Subclasses give the gate count, lay the
    products out and compute the nonlinearities; `step(layer, tokens)` updates layer's state in place.
    """

    GATES = 1  # weight rows per hidden unit: G = GATES * H
    HAS_CELL_STATE = False

    @classmethod
    def variant(cls, rnn: nn.Module, sigmoid_only: bool) -> type[Cell]:
        """The class that steps `rnn` (a formulation or nonlinearity of this kind); this one by default."""
        return cls

    def __init__(self, model: CharRNN, batch_size: int, device: torch.device, precision: str) -> None:
        c = model.config
        B, L, H = batch_size, c.num_layers, c.hidden_size
        self.batch_size, self.hidden_size, self.device, self.precision = B, H, device, precision
        self.hs = torch.zeros(B, L * H, device=device, dtype=torch.float32)  # (B, L*H)
        self.cs = torch.zeros(B, L * H, device=device, dtype=torch.float32) if self.HAS_CELL_STATE else None
        self.gates = torch.empty(B, self.GATES * H, device=device, dtype=torch.float32)  # (B, G)
        # Where an unpacked bf16 product lands before it is added to float32 gates; products of width G share it.
        self.bf16_staging = (
            torch.empty(B, self.GATES * H, device=device, dtype=torch.bfloat16) if precision == "bf16" else None
        )
        # Views are made once: per-step slicing would allocate Python tensor objects every step.
        self.h = [self.hs[:, k * H : (k + 1) * H] for k in range(L)]  # (B, H) each
        with torch.no_grad():
            weights = [self.layer_weights(model.rnn, layer) for layer in range(L)]
            w_ih0, b_ih0 = self.own(weights[0].w_ih), self.own(weights[0].b_ih)
            self.input_table = torch.addmm(b_ih0, self.own(model.embed.weight.detach()), w_ih0.t())  # (V, G)
            self.lay_out(weights)

    def own(self, t: torch.Tensor) -> torch.Tensor:
        # Always a fresh contiguous float32 copy on the device: later training of the model must not leak in,
        # and .to() alone returns the same tensor when nothing changes.
        return torch.empty(t.shape, device=self.device, dtype=torch.float32).copy_(t)

    def product(self, w: torch.Tensor, bias: torch.Tensor | None) -> _Product:
        return _Product(w, bias, self.batch_size, self.precision, self.bf16_staging)

    def layer_weights(self, rnn: nn.Module, layer: int) -> _LayerWeights:
        """The layer's weights in float32 (possibly the model's own tensors), gate rows arranged for this cell."""
        w_ih = getattr(rnn, f"weight_ih_l{layer}").detach().float()
        w_hh = getattr(rnn, f"weight_hh_l{layer}").detach().float()
        if getattr(rnn, "bias", True):
            b_ih = getattr(rnn, f"bias_ih_l{layer}").detach().float()
            b_hh = getattr(rnn, f"bias_hh_l{layer}").detach().float()
        else:
            b_ih = b_hh = w_ih.new_zeros(w_ih.shape[0])
        return _LayerWeights(*(self.arrange_gates(t) for t in (w_ih, w_hh, b_ih, b_hh)))

    def arrange_gates(self, t: torch.Tensor) -> torch.Tensor:
        """Gate rows of a (G, ...) weight or (G,) bias in the order (and scale) the step's views expect."""
        return t

    def lay_out(self, weights: list[_LayerWeights]) -> None:
        """Own the weights as the products of `step` read them, and make the views those products read."""
        raise NotImplementedError

    def step(self, layer: int, tokens: torch.Tensor) -> None:
        """Advance `layer` one step; layer 0 reads tokens (B,), layer l >= 1 reads h_{l-1}, already updated."""
        raise NotImplementedError


class _SummedGatesCell(Cell):
    """Kinds whose gate pre-activations are the one sum W_ih x + b_ih + W_hh h + b_hh (LSTM, Elman RNN).

    The two biases fold into one, which for layer 0 goes into `input_table`. Layer l >= 1 reads
    [h_{l-1} (already updated this step) | h_l (previous step)] as the single slice hs[:, (l-1)H:(l+1)H], so one
    product against the stacked [W_ih; W_hh]^T does both projections without a concatenation."""

    def layer_weights(self, rnn: nn.Module, layer: int) -> _LayerWeights:
        w = super().layer_weights(rnn, layer)
        return w._replace(b_ih=w.b_ih + w.b_hh, b_hh=torch.zeros_like(w.b_hh))  # b_hh now lives in b_ih

    def lay_out(self, weights: list[_LayerWeights]) -> None:
        H = self.hidden_size
        self.hidden_product_0 = self.product(self.own(weights[0].w_hh.t()), None)  # += h_0 @ W_hh0^T: (H, G)
        self.stacked_products = [
            self.product(self.own(torch.cat([w.w_ih, w.w_hh], dim=1).t()), self.own(w.b_ih))  # (2H, G)
            for w in weights[1:]
        ]
        self.stacked_inputs = [self.hs[:, (k - 1) * H : (k + 1) * H] for k in range(1, len(weights))]  # (B, 2H)

    def project(self, layer: int, tokens: torch.Tensor) -> None:
        """gates <- W_ih x + W_hh h + b for `layer`."""
        if layer == 0:
            torch.index_select(self.input_table, 0, tokens, out=self.gates)  # (B, G)
            self.hidden_product_0(self.h[0], self.gates)
        else:
            self.stacked_products[layer - 1](self.stacked_inputs[layer - 1], self.gates)


class LSTMCell(_SummedGatesCell):
    """c' = f*c + i*g, h' = o*tanh(c'), with the gates laid out i, f, o | g (PyTorch's order is i, f, g, o) so one
    in-place sigmoid covers three of them."""

    GATES = 4
    HAS_CELL_STATE = True
    G_SCALE = 1.0  # factor on the g gate's rows

    @classmethod
    def variant(cls, rnn: nn.Module, sigmoid_only: bool) -> type[Cell]:
        return LSTMCellOneSigmoid if sigmoid_only else LSTMCell

    def __init__(self, model: CharRNN, batch_size: int, device: torch.device, precision: str) -> None:
        super().__init__(model, batch_size, device, precision)
        H, g, cs = self.hidden_size, self.gates, self.cs
        assert cs is not None
        self.c = [cs[:, k * H : (k + 1) * H] for k in range(len(self.h))]  # (B, H) each
        self.tanh_c = torch.empty(batch_size, H, device=device, dtype=torch.float32)  # (B, H)
        self.sigmoid_gates, self.candidate = g[:, : 3 * H], g[:, 3 * H :]  # i, f, o | g
        self.input_gate, self.forget_gate, self.output_gate = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H]

    def arrange_gates(self, t: torch.Tensor) -> torch.Tensor:
        H = self.hidden_size
        return torch.cat([t[: 2 * H], t[3 * H :], t[2 * H : 3 * H] * self.G_SCALE])

    def step(self, layer: int, tokens: torch.Tensor) -> None:
        self.project(layer, tokens)
        c, h, tanh_c = self.c[layer], self.h[layer], self.tanh_c
        self.sigmoid_gates.sigmoid_()  # i, f, o
        self.candidate.tanh_()
        c.mul_(self.forget_gate).addcmul_(self.input_gate, self.candidate)  # c = f*c + i*g
        torch.tanh(c, out=tanh_c)
        torch.mul(self.output_gate, tanh_c, out=h)  # h = o * tanh(c)


class LSTMCellOneSigmoid(LSTMCell):
    """The same LSTM with every tanh as tanh(x) = 2 sigmoid(2x) - 1, for large B*H on CPU, where tanh is the
    dearer kernel. The g rows are pre-doubled, so sigmoid(g') = (tanh(g) + 1) / 2 and one in-place sigmoid covers
    all four gates."""

    G_SCALE = 2.0

    def step(self, layer: int, tokens: torch.Tensor) -> None:
        self.project(layer, tokens)  # g's pre-activation arrives doubled
        c, h, tanh_c = self.c[layer], self.h[layer], self.tanh_c
        self.gates.sigmoid_()  # i, f, o and (tanh(g) + 1) / 2, one call over (B, 4H)
        self.candidate.mul_(2.0).sub_(1.0)  # tanh(g)
        c.mul_(self.forget_gate).addcmul_(self.input_gate, self.candidate)  # c = f*c + i*g
        torch.mul(c, 2.0, out=tanh_c).sigmoid_().mul_(2.0).sub_(1.0)  # tanh(c) = 2 sigmoid(2c) - 1
        torch.mul(self.output_gate, tanh_c, out=h)  # h = o * tanh(c)


class RNNCell(_SummedGatesCell):
    """Elman RNN with tanh: h' = tanh(W_ih x + W_hh h + b)."""

    @classmethod
    def variant(cls, rnn: nn.Module, sigmoid_only: bool) -> type[Cell]:
        return ReLURNNCell if getattr(rnn, "nonlinearity", "tanh") == "relu" else RNNCell

    def step(self, layer: int, tokens: torch.Tensor) -> None:
        self.project(layer, tokens)
        torch.tanh(self.gates, out=self.h[layer])


class ReLURNNCell(RNNCell):
    """Elman RNN with ReLU: h' = max(0, W_ih x + W_hh h + b)."""

    def step(self, layer: int, tokens: torch.Tensor) -> None:
        self.project(layer, tokens)
        torch.clamp(self.gates, min=0.0, out=self.h[layer])


class GRUCell(Cell):
    """r, z = sigmoid(W_i{r,z} x + b_i{r,z} + W_h{r,z} h + b_h{r,z}), n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
    h' = (1 - z) n + z h. The reset gate scales the hidden projection alone, so input and hidden products stay
    apart, each with its own bias: two products per layer, into `gates` and `hidden_gates`."""

    GATES = 3

    def __init__(self, model: CharRNN, batch_size: int, device: torch.device, precision: str) -> None:
        super().__init__(model, batch_size, device, precision)
        H, g = self.hidden_size, self.gates
        self.hidden_gates = hg = torch.empty(batch_size, 3 * H, device=device, dtype=torch.float32)  # (B, 3H)
        self.reset_update, self.candidate = g[:, : 2 * H], g[:, 2 * H :]  # r, z | n
        self.reset, self.update = g[:, :H], g[:, H : 2 * H]
        self.hidden_reset_update, self.hidden_candidate = hg[:, : 2 * H], hg[:, 2 * H :]

    def lay_out(self, weights: list[_LayerWeights]) -> None:
        H = self.hidden_size
        self.hidden_product_0 = self.product(self.own(weights[0].w_hh.t()), self.own(weights[0].b_hh))  # (H, 3H)
        self.input_products = [self.product(self.own(w.w_ih.t()), self.own(w.b_ih)) for w in weights[1:]]  # (H, 3H)
        self.hidden_products = [self.product(self.own(w.w_hh.t()), self.own(w.b_hh)) for w in weights[1:]]  # (H, 3H)
        self.inputs = [self.hs[:, (k - 1) * H : k * H] for k in range(1, len(weights))]  # (B, H): h_{l-1}

    def step(self, layer: int, tokens: torch.Tensor) -> None:
        h = self.h[layer]
        if layer == 0:
            torch.index_select(self.input_table, 0, tokens, out=self.gates)  # W_ih x + b_ih, (B, 3H)
            self.hidden_product_0(h, self.hidden_gates)  # W_hh h + b_hh, (B, 3H)
        else:
            self.input_products[layer - 1](self.inputs[layer - 1], self.gates)
            self.hidden_products[layer - 1](h, self.hidden_gates)
        self.reset_update.add_(self.hidden_reset_update).sigmoid_()  # r, z
        self.candidate.addcmul_(self.reset, self.hidden_candidate).tanh_()  # n
        h.sub_(self.candidate).mul_(self.update).add_(self.candidate)  # h' = (1 - z) * n + z * h = n + z * (h - n)


CELLS: dict[type[nn.Module], type[Cell]] = {nn.LSTM: LSTMCell, nn.GRU: GRUCell, nn.RNN: RNNCell}


def cell_class(rnn: nn.Module, sigmoid_only: bool) -> type[Cell]:
    """The Cell that steps `rnn`: the kind from its module type, then the formulation or nonlinearity."""
    kind = next((CELLS[t] for t in type(rnn).__mro__ if t in CELLS), None)
    if kind is None:
        raise TypeError(f"no sampling cell for a {type(rnn).__name__}; expected one of nn.LSTM, nn.GRU, nn.RNN")
    return kind.variant(rnn, sigmoid_only)


class Stepper:
    """A CharRNN stepped one character at a time on pre-laid-out weights, for a fixed batch size: its Cell
    advances every layer, then the output layer writes `logits`.

    sigmoid_only: None picks the LSTM formulation by size (see the module docstring); True/False force it.
    """

    def __init__(
        self,
        model: CharRNN,
        batch_size: int,
        device: torch.device,
        precision: str = "fp32",
        sigmoid_only: bool | None = None,
    ) -> None:
        check_precision(precision)
        c = model.config
        self.batch_size = B = batch_size
        self.num_layers, self.hidden_size, self.vocab_size = c.num_layers, c.hidden_size, c.vocab_size
        self.device = device = torch.device(device)
        if sigmoid_only is None:  # on CUDA tanh is as cheap as sigmoid, so the extra element-wise ops would only cost
            sigmoid_only = device.type == "cpu" and B * c.hidden_size >= SIGMOID_ONLY_MIN_ELEMS
        self.cell = cell_class(model.rnn, sigmoid_only)(model, B, device, precision)
        self.sigmoid_only = isinstance(self.cell, LSTMCellOneSigmoid)
        self.hs, self.cs = self.cell.hs, self.cell.cs  # (B, L*H) each; cs is None but for an LSTM
        self._step_layer = self.cell.step  # bound once: step() calls it per layer
        self._h_top = self.cell.h[-1]  # (B, H)
        with torch.no_grad():
            self._w_head = self.cell.own(model.head.weight.detach().t())  # (H, V), float32 in every precision
            self._b_head = self.cell.own(model.head.bias.detach())
        self.logits = torch.zeros(B, c.vocab_size, device=device, dtype=torch.float32)  # (B, V), reused by every step
        self._reorder_scratch: torch.Tensor | None = None  # (B, L*H), made by the first reorder()

    # ---- state in model format ----

    def set_state(self, state: State) -> None:
        """Copy a model-format state ((L, B, H) tensors: (h, c) for LSTM, (h,) otherwise) in."""
        B, L, H = self.batch_size, self.num_layers, self.hidden_size
        with torch.no_grad():
            self.hs.view(B, L, H).copy_(state[0].transpose(0, 1))
            if self.cs is not None:
                self.cs.view(B, L, H).copy_(state[1].transpose(0, 1))

    def get_state(self) -> State:
        """The current state in model format: (L, B, H) tensors, copies."""
        B, L, H = self.batch_size, self.num_layers, self.hidden_size
        h = self.hs.view(B, L, H).transpose(0, 1).contiguous()
        return (h, self.cs.view(B, L, H).transpose(0, 1).contiguous()) if self.cs is not None else (h,)

    def reorder(self, index: torch.Tensor) -> None:
        """Row b of the state becomes row index[b] of the current state, index (B,) int64 on the device (beam
        search's parents; a row may be copied to several). In place: the cells' views point into hs and cs, so
        those buffers are overwritten through a scratch buffer, never replaced."""
        if index.shape != (self.batch_size,):
            raise ValueError(f"reorder needs one index per row, shape ({self.batch_size},), not {tuple(index.shape)}")
        with torch.no_grad():
            scratch = self._reorder_scratch
            if scratch is None:
                # A plain tensor even when the first call is in inference mode, so later calls work in any mode.
                with torch.inference_mode(False):
                    scratch = self._reorder_scratch = torch.empty_like(self.hs)  # (B, L*H)
            for buf in (self.hs, self.cs):
                if buf is not None:
                    # Gathering straight into buf would read rows it has already overwritten.
                    torch.index_select(buf, 0, index, out=scratch)
                    buf.copy_(scratch)

    # ---- one step ----

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) int64 on the device -> logits (B, V): a buffer the next call overwrites."""
        with torch.no_grad():
            for layer in range(self.num_layers):
                self._step_layer(layer, tokens)
            return torch.addmm(self._b_head, self._h_top, self._w_head, out=self.logits)


# --------------------------------------------------------------------------------------------------
# Sampling from logits with preallocated buffers
# --------------------------------------------------------------------------------------------------


class _Sampler:
    """logits (B, V) + uniforms (B, 1) -> ids (B, 1), written in place; the same code eager and in a graph."""

    def __init__(self, cfg: SampleConfig, batch_size: int, vocab_size: int, device: torch.device) -> None:
        B, V = batch_size, vocab_size
        self.greedy = cfg.temperature == 0
        self.inv_t = 0.0 if self.greedy else 1.0 / cfg.temperature
        self.k = min(cfg.top_k, V) if cfg.top_k is not None else V
        self.top_p = cfg.top_p if cfg.top_p is not None and cfg.top_p < 1.0 else None
        self.filtered = self.k < V or self.top_p is not None
        f32: dict[str, Any] = dict(device=device, dtype=torch.float32)
        self.p = torch.empty(B, V, **f32)  # unnormalised probs exp((logits - max) / T); the max entry is 1
        self.cdf = torch.empty(B, V, **f32)
        self.mx = torch.empty(B, 1, **f32)
        self.target = torch.empty(B, 1, **f32)
        self.below_total = torch.empty(B, 1, **f32)
        self.zero = torch.zeros(B, 1, **f32)
        self.total = self.cdf[:, V - 1 :]
        if self.filtered:
            self.sp = torch.empty(B, V, **f32)
            self.si = torch.empty(B, V, device=device, dtype=torch.int64)
            self.thr = torch.empty(B, 1, **f32)
            self.drop = torch.empty(B, V, device=device, dtype=torch.bool)
            self.sp_k = self.sp[:, : self.k]
            self.kth = self.sp[:, self.k - 1 : self.k]
            if self.top_p is not None:
                self.cum = torch.empty(B, self.k, **f32)
                self.cum_total = self.cum[:, self.k - 1 :]
                self.keep = torch.empty(B, self.k, device=device, dtype=torch.bool)
                self.count = torch.empty(B, 1, device=device, dtype=torch.int64)

    def __call__(self, logits: torch.Tensor, u: torch.Tensor, out: torch.Tensor) -> None:
        """logits (B, V), u (B, 1) uniforms in [0, 1) -> out (B, 1) int64 ids."""
        if self.greedy:
            torch.argmax(logits, dim=1, keepdim=True, out=out)
            return
        p = self.p
        torch.amax(logits, dim=1, keepdim=True, out=self.mx)
        torch.sub(logits, self.mx, out=p).mul_(self.inv_t).exp_()  # softmax(logits / T) up to a constant
        if self.filtered:
            self._filter(p)
        torch.cumsum(p, dim=1, out=self.cdf)
        # target = u * total, kept strictly below total so the search never runs off the end;
        # right=True picks the first cdf > target, which always has a non-zero probability.
        torch.mul(u, self.total, out=self.target)
        torch.nextafter(self.total, self.zero, out=self.below_total)
        torch.minimum(self.target, self.below_total, out=self.target)
        torch.searchsorted(self.cdf, self.target, right=True, out=out)

    def _filter(self, p: torch.Tensor) -> None:
        """Zero every probability below the top-k / top-p threshold (ties at the threshold are kept)."""
        torch.sort(p, dim=1, descending=True, out=(self.sp, self.si))
        if self.top_p is None:
            threshold = self.kth
        else:
            # Keep sorted entry j while the mass before it is < top_p * (mass of the top k): the smallest
            # prefix reaching top_p; entry 0 is always kept.
            torch.cumsum(self.sp_k, dim=1, out=self.cum)
            torch.mul(self.cum_total, self.top_p, out=self.thr)
            self.cum.sub_(self.sp_k)
            torch.lt(self.cum, self.thr, out=self.keep)
            torch.sum(self.keep, dim=1, keepdim=True, out=self.count)
            # A top_p so small that top_p * mass rounds to 0 in float32 keeps nothing: keep entry 0 regardless.
            self.count.sub_(1).clamp_(min=0)
            torch.gather(self.sp, 1, self.count, out=self.thr)
            threshold = self.thr
        torch.lt(p, threshold, out=self.drop)
        p.masked_fill_(self.drop, 0.0)


class _Uniforms:
    """Per-stream uniforms from one torch.Generator per stream (seed + i), drawn UNIFORM_BLOCK at a time."""

    def __init__(self, seed: int, batch_size: int, device: torch.device) -> None:
        self.gens = [torch.Generator().manual_seed(seed + i) for i in range(batch_size)]
        self.host = torch.empty(batch_size, UNIFORM_BLOCK)
        self.block = self.host if device.type != "cuda" else torch.empty(batch_size, UNIFORM_BLOCK, device=device)
        self.columns = [self.block[:, j : j + 1] for j in range(UNIFORM_BLOCK)]  # (B, 1) views, made once

    def refill(self) -> None:
        for i, g in enumerate(self.gens):
            torch.rand(UNIFORM_BLOCK, generator=g, out=self.host[i])
        if self.block is not self.host:
            self.block.copy_(self.host)  # one host -> device copy per block


# --------------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------------


def generate(
    model: CharRNN,
    prime_ids: list[int],
    cfg: SampleConfig,
    device: torch.device,
    *,
    cuda_graph: bool = True,
    on_precision: Callable[[PrecisionChoice], None] | None = None,
) -> Iterator[torch.Tensor]:
    """Yields CPU int64 tensors of shape (B, k) holding the next k generated ids of every stream, until
    cfg.length ids per stream. k == 1 on CPU (so text streams per character); on CUDA up to CUDA_YIELD_BLOCK
    per host transfer. The prime runs through the fused model.rnn first; its state seeds the Stepper.
    cuda_graph=False steps eagerly on CUDA instead of replaying a captured graph (same numerics; for timing the
    graph against eager stepping, bench/gpu_check.py); it changes nothing elsewhere. With precision "auto",
    on_precision is told what choose_precision picked, before sampling starts.

    Bad options raise UsageError here, at the call, not at the first next()."""
    cfg.validate()
    check_prime(prime_ids, model.config.vocab_size)
    device = torch.device(device)
    check_precision_on(cfg.precision, device)
    stepper = None
    if cfg.precision == "auto":
        choice = choose_precision(model, cfg.num_samples, device)
        if on_precision is not None:
            on_precision(choice)
        cfg, stepper = replace(cfg, precision=choice.precision), choice.stepper
    return _generate(model, list(prime_ids), cfg, device, cuda_graph, stepper)


def check_prime(prime_ids: list[int], vocab_size: int) -> None:
    """A prime to start from: at least one id, every id in the vocabulary (UsageError otherwise)."""
    if not prime_ids:
        raise UsageError("--prime must contain at least one character; pass e.g. a newline.")
    bad = [i for i in prime_ids if not 0 <= i < vocab_size]
    if bad:
        raise UsageError(f"prime id {bad[0]} is outside the vocabulary of {vocab_size} characters.")


def _generate(
    model: CharRNN,
    prime_ids: list[int],
    cfg: SampleConfig,
    device: torch.device,
    cuda_graph: bool = True,
    stepper: Stepper | None = None,
) -> Iterator[torch.Tensor]:
    """stepper: one already built for cfg (auto's timed choice); its state is overwritten by the prime's."""
    if cfg.length == 0:
        return
    B = cfg.num_samples
    if stepper is None:  # buffers made outside inference mode (plain tensors) take in-place updates in any mode
        stepper = Stepper(model, B, device, precision=cfg.precision)
    loop = _Loop(stepper, cfg, device, cuda_graph)
    with torch.inference_mode():
        prime_logits, prime_state = _run_prime(model, prime_ids, device)
        stepper.set_state(tuple(s.expand(-1, B, -1) for s in prime_state))
        stepper.logits.copy_(prime_logits.expand(B, -1))
    # The inference-mode blocks stay inside run_blocks between yields: a context held across a yield
    # would leak into the caller's code.
    yield from loop.run_blocks(CUDA_YIELD_BLOCK if device.type == "cuda" else 1)


def _run_prime(model: CharRNN, prime_ids: list[int], device: torch.device) -> tuple[torch.Tensor, State]:
    """Logits (1, V) after the last prime char and the state (L, 1, H) tensors, in eval mode; the model's
    training flags are restored afterwards so the caller's model is left as it was. The prime runs PRIME_CHUNK
    characters at a time with the state carried, so a 20 MB prime needs no more memory than a short one."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    state: State | None = None
    try:
        ids = torch.tensor(prime_ids, dtype=torch.int64, device=next(model.parameters()).device)  # (T,)
        for chunk in ids.split(PRIME_CHUNK):
            logits, state = model(chunk[None, :], state)  # (1, t, V)
            last = logits[:, -1]
    finally:
        for m, training in modes:
            m.training = training
    assert state is not None  # generate() refuses an empty prime
    return last.to(device=device, dtype=torch.float32), tuple(s.to(device=device, dtype=torch.float32) for s in state)


class _Loop:
    """Drives sample -> step -> sample ...; `advance` (step, then sample into the token buffer) is the one
    function run eagerly on CPU and captured in a CUDA graph on GPU."""

    def __init__(self, stepper: Stepper, cfg: SampleConfig, device: torch.device, cuda_graph: bool = True) -> None:
        self.stepper, self.cfg, self.device = stepper, cfg, device
        B = stepper.batch_size
        self.sampler = _Sampler(cfg, B, stepper.vocab_size, device)
        self.uniforms = _Uniforms(cfg.seed, B, device)
        self.tok = torch.zeros(B, 1, dtype=torch.int64, device=device)  # (B, 1) last sampled ids
        self.tok_flat = self.tok.view(B)
        self.u = torch.zeros(B, 1, device=device)  # the graph's static uniform slot (unused on CPU)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_tried = not cuda_graph  # no graph wanted: step eagerly, as after a failed capture

    def _sample(self, u: torch.Tensor) -> None:
        self.sampler(self.stepper.logits, u, self.tok)

    def advance(self, u: torch.Tensor) -> None:
        """Feed the last ids, then sample the next ids from the new logits into self.tok."""
        self.stepper.step(self.tok_flat)
        self._sample(u)

    def run_blocks(self, k: int) -> Iterator[torch.Tensor]:
        B, length = self.stepper.batch_size, self.cfg.length
        if k == 1 and self.device.type == "cpu":  # the token buffer is the block: one copy a character, not three ops
            for t in range(length):
                with torch.inference_mode():
                    self._next(t)
                yield self.tok.clone()  # (B, 1)
            return
        out = torch.empty(B, k, dtype=torch.int64, device=self.device)  # (B, k) ids of the current block
        for t in range(length):
            with torch.inference_mode():
                self._next(t)
                out[:, t % k].copy_(self.tok_flat)
            if (t + 1) % k == 0 or t + 1 == length:
                n = t % k + 1
                yield out[:, :n].to("cpu", copy=True)

    def _next(self, t: int) -> None:
        """Character t of every stream into self.tok."""
        j = t % UNIFORM_BLOCK
        if j == 0:
            self.uniforms.refill()
        u = self.uniforms.columns[j]
        if t == 0:
            self._sample(u)  # the prime's logits are already in the stepper's buffer
        else:
            self._advance_fast(u)

    def _advance_fast(self, u: torch.Tensor) -> None:
        if self.device.type != "cuda":
            self.advance(u)
            return
        self.u.copy_(u)
        if not self.capture_tried:
            self.capture_tried = True
            self.graph = self._capture()
        if self.graph is not None:
            self.graph.replay()
        else:
            self.advance(self.u)

    def _capture(self) -> torch.cuda.CUDAGraph | None:
        """Capture `advance` reading the static uniform slot; None (eager fallback) if capture fails.
        Warm-up steps run on a side stream and mutate the state, so state and ids are restored after."""
        saved_state, saved_tok, saved_u = self.stepper.get_state(), self.tok.clone(), self.u.clone()
        graph, captured = torch.cuda.CUDAGraph(), True
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(CUDA_WARMUP_STEPS):
                    self.advance(self.u)
            torch.cuda.current_stream().wait_stream(side)
            with torch.cuda.graph(graph):
                self.advance(self.u)
        except Exception:  # noqa: BLE001 - any capture failure means "run eagerly", same numerics
            captured = False
        torch.cuda.synchronize()
        self.stepper.set_state(saved_state)
        self.tok.copy_(saved_tok)
        self.u.copy_(saved_u)
        return graph if captured else None


# --------------------------------------------------------------------------------------------------
# beam search
# --------------------------------------------------------------------------------------------------

MAX_BEAM_CANDIDATES = 1 << 24  # beam * V scores ranked per step: each (N, V) float32 temporary is 64 MiB at most


@dataclass
class BeamConfig:
    """`charrnn sample --beam N`: the N most likely continuations kept at each step, the best K returned."""

    beam_size: int = 1  # --beam: continuations kept at each step
    length: int = 2000  # --length: new characters
    num_results: int = 1  # --num-samples: the K best continuations returned, K <= beam_size
    precision: str = "fp32"  # fp32 only, which is also what "auto" picks (see validate)

    def validate(self) -> None:
        N, K = self.beam_size, self.num_results
        if N < 1:
            raise UsageError(f"--beam must be at least 1, not {N}.")
        if N > MAX_NUM_SAMPLES:
            raise UsageError(f"--beam must be at most {MAX_NUM_SAMPLES} (the beams step as one batch), not {N}.")
        if self.length < 0:
            raise UsageError(f"--length must be at least 0, not {self.length}.")
        if K < 1:
            raise UsageError(f"--num-samples must be at least 1, not {K}.")
        if K > N:
            raise UsageError(
                f"--num-samples {K} asks for more results than --beam {N} keeps; "
                f"use --num-samples at most {N} or a larger --beam."
            )
        if N * self.length > MAX_HELD_CHARS:
            raise UsageError(
                f"--beam {N} x --length {self.length} would hold {N * self.length:,} characters of beam history "
                f"in memory (the limit is {MAX_HELD_CHARS:,}); use a smaller --beam or --length."
            )
        check_precision(self.precision, SAMPLE_PRECISIONS)
        if self.precision not in ("fp32", "auto"):  # auto picks among what can run: for beams, fp32
            raise UsageError(
                f"--beam runs in fp32 only: its scores are the model's log-probabilities, which {self.precision} "
                "products would shift; drop --precision."
            )


def refuse_sampling_controls(temperature: float | None, top_k: int | None, top_p: float | None) -> None:
    """With --beam, refuse whichever sampling flags were given (None: not given), in one sentence."""
    flags = (("--temperature", temperature), ("--top-k", top_k), ("--top-p", top_p))
    given = [flag for flag, value in flags if value is not None]
    if given:
        raise UsageError(
            f"--beam cannot be combined with {' or '.join(given)}: beam search is deterministic and maximises "
            "likelihood, so sampling controls do not apply."
        )


@dataclass(frozen=True)
class BeamPiece:
    """Generated ids every live beam agrees on, following those already yielded: whichever beam wins starts with
    them. Yielded only when one result is asked for."""

    ids: list[int]


@dataclass(frozen=True)
class BeamResult:
    """One finished continuation; results come best first (rank 0)."""

    rank: int
    ids: list[int]  # the generated ids, prime excluded: `length` of them
    log_prob: float  # sum of the model's log-probabilities (nats) of these ids after the prime
    score: float  # log_prob / length: mean log-prob per generated character, the ranking key


BeamEvent = BeamPiece | BeamResult


def beam_search(model: CharRNN, prime_ids: list[int], cfg: BeamConfig, device: torch.device) -> Iterator[BeamEvent]:
    """The cfg.num_results most likely continuations of the prime under the model, cfg.length ids each, by beam
    search with cfg.beam_size beams stepped as one batch.

    num_results == 1: BeamPiece events as soon as every live beam agrees on the next ids, then a last BeamPiece
    with the rest of the winner (the pieces concatenate to its ids), then its BeamResult. num_results > 1: only
    the BeamResults, best first, when the search ends. Fewer results come when fewer distinct continuations
    exist (V ** length < num_results); length 0 yields nothing.

    Bad options raise UsageError here, at the call, not at the first next()."""
    cfg.validate()
    V = model.config.vocab_size
    check_prime(prime_ids, V)
    if cfg.beam_size * V > MAX_BEAM_CANDIDATES:
        raise UsageError(
            f"--beam {cfg.beam_size} over {V:,} characters would rank {cfg.beam_size * V:,} candidates a step "
            f"(the limit is {MAX_BEAM_CANDIDATES:,}); use --beam at most {MAX_BEAM_CANDIDATES // V}."
        )
    return _beam_search(model, list(prime_ids), cfg, torch.device(device))


def _beam_search(model: CharRNN, prime_ids: list[int], cfg: BeamConfig, device: torch.device) -> Iterator[BeamEvent]:
    if cfg.length == 0:
        return
    beams = _Beams(model, cfg.beam_size, cfg.length, device)  # buffers made in the caller's mode, as in generate
    stream = cfg.num_results == 1
    emitted = 0  # ids of the winner already yielded
    # Inference mode is entered per step and never held across a yield: it would leak into the caller's code.
    with torch.inference_mode():
        beams.start(model, prime_ids)
    for t in range(cfg.length):
        with torch.inference_mode():
            beams.advance(t)
        if stream and beams.settled > emitted:
            yield BeamPiece(beams.ids(emitted, beams.settled))
            emitted = beams.settled
    if stream and emitted < cfg.length:
        yield BeamPiece(beams.ids(emitted, cfg.length))
    yield from beams.results(cfg.num_results)


class _Beams:
    """N beams stepped as one batch: their states in a Stepper, their scores on the device, and for every step
    the parent each beam extended and the id it appended (back-pointers, on the host).

    Rows [0, live) are the live beams, best first after each step. live grows from 1 (the prime) to
    min(N, V ** (t + 1)) after step t; the rows past it are padding that the Stepper steps and nothing reads.
    The first `settled` positions hold the same ids in every live beam, and never change again.

    Memory: the Stepper's state and buffers for N rows, 2 * N * length int32 back-pointers, N * V float32 scores.
    Work per step beyond the Stepper's: a top-N over N * V scores and copying 2N ids to the host. A beam's ids
    are read back by following the pointers; agreement is checked by walking back to `settled`, each step while
    the unsettled stretch is short and then only when it doubles, so beams that never agree cost linear, not
    quadratic, time.
    """

    def __init__(self, model: CharRNN, beam_size: int, length: int, device: torch.device) -> None:
        N = self.beam_size = beam_size
        self.length, self.vocab_size = length, model.config.vocab_size
        self.stepper = Stepper(model, N, device)
        i64: dict[str, Any] = dict(device=device, dtype=torch.int64)
        self.scores = torch.zeros(N, device=device, dtype=torch.float32)  # (N,) summed log-probs of each beam
        self.parents = torch.zeros(N, **i64)  # (N,) the old beam each new beam extends; padding rows copy row 0
        self.tokens = torch.zeros(N, **i64)  # (N,) the id each new beam appended
        self.parent_at = np.zeros((length, N), dtype=np.int32)  # (length, N) back-pointers, step by step
        self.token_at = np.zeros((length, N), dtype=np.int32)  # (length, N) the id appended at each step
        self.live, self.settled, self.stepped = 1, 0, -1  # stepped: the latest position chosen
        self.logits = torch.zeros(1, self.vocab_size, device=device)  # (live, V) next-id logits of the live beams

    def start(self, model: CharRNN, prime_ids: list[int]) -> None:
        """Every row starts from the prime's state, but only row 0 is live: the first step then ranks one row's
        ids, rather than picking N copies of the same continuation."""
        prime_logits, prime_state = _run_prime(model, prime_ids, self.stepper.device)
        self.stepper.set_state(tuple(s.expand(-1, self.beam_size, -1) for s in prime_state))
        self.logits = prime_logits  # (1, V)

    def advance(self, t: int) -> None:
        """Choose the ids at position t: rank every (live beam, next id) pair by its summed log-prob, keep the
        best N as the new beams, and step their states unless t is the last position."""
        N, V, live = self.beam_size, self.vocab_size, self.live
        logp = torch.log_softmax(self.logits[:live], dim=1)  # (live, V)
        candidates = (logp + self.scores[:live, None]).reshape(-1)  # (live * V,): beam b's id v at b * V + v
        kept = min(N, live * V)
        best, flat = torch.topk(candidates, kept)  # (kept,) each, sorted: row 0 is the best beam
        self.parents[:kept] = flat.div(V, rounding_mode="floor")
        self.tokens[:kept] = flat.remainder(V)
        self.scores[:kept] = best
        self.stepper.reorder(self.parents)
        self.live = kept
        if t + 1 < self.length:
            self.logits = self.stepper.step(self.tokens)  # (N, V); rows past `live` are padding
        # One device-to-host copy a step (on CUDA, one sync): the back-pointers and ids travel together.
        self.parent_at[t, :kept], self.token_at[t, :kept] = torch.stack((self.parents[:kept], self.tokens[:kept])).cpu()
        self.stepped = t
        self._settle(t)

    def _columns(self, rows: np.ndarray, t: int, start: int) -> np.ndarray:
        """(t + 1 - start, len(rows)) ids at positions [start, t] of the beams `rows`, as numbered after step t."""
        cols = np.empty((t + 1 - start, len(rows)), dtype=np.int32)
        for c in range(t, start - 1, -1):
            cols[c - start] = self.token_at[c, rows]
            rows = self.parent_at[c, rows]
        return cols

    def _settle(self, t: int) -> None:
        """Move `settled` over the positions up to t on which every live beam agrees. Agreement is final: every
        later beam descends from one of these, so it inherits their common prefix."""
        gap = t + 1 - self.settled
        if gap > 32 and gap & (gap - 1):  # a long stretch that still disagrees: look again when it doubles
            return
        cols = self._columns(np.arange(self.live), t, self.settled)  # (gap, live)
        agree = (cols == cols[:, :1]).all(axis=1)  # (gap,)
        self.settled += int(np.cumprod(agree).sum())  # the leading agreed positions

    def ids(self, start: int, stop: int) -> list[int]:
        """The best beam's ids at positions [start, stop); stop is at most the positions stepped so far. Rows are
        numbered after the latest step, so the walk starts there."""
        return self._columns(np.zeros(1, dtype=np.int64), self.stepped, start)[: stop - start, 0].tolist()

    def results(self, k: int) -> list[BeamResult]:
        """The k best beams, best first (fewer if fewer are live)."""
        n = min(k, self.live)
        ids = self._columns(np.arange(n), self.length - 1, 0).T.tolist()  # (n, length)
        log_probs = self.scores[:n].tolist()
        # Every candidate has `length` ids, so dividing by it leaves the ranking as it was: normalising only
        # matters when comparing continuations of different lengths. The mean is kept as the reported score.
        return [BeamResult(rank=i, ids=ids[i], log_prob=lp, score=lp / self.length) for i, lp in enumerate(log_probs)]
