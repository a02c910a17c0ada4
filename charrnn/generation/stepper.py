"""The Stepper: one new character of every stream through a CharRNN, with the cell math done here.

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

The measured figures behind these choices live in bench/README.md, where they can be dated and rerun.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from charrnn.config.sample import PRECISIONS
from charrnn.errors import UsageError
from charrnn.generation import kernels
from charrnn.generation.kernels import bf16_is_native
from charrnn.model import CharRNN, State

ONEDNN_MIN_BATCH = 2  # streams from which fp32 products use oneDNN's prepacked linear, not MKL (timed on CPU)
SIGMOID_ONLY_MIN_ELEMS = 16384  # B*H from which the one-sigmoid LSTM cell beats sigmoid + tanh (timed on CPU)


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
        packed: dict | None = None,
        key: tuple = (),
    ) -> None:
        """packed, key: where Steppers of one model at other batch sizes keep their prepacked weights (Batch's);
        an int8 or fp32 oneDNN product found there under `key` is not packed again."""
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
            self.w = self._shared(packed, key, lambda: kernels.pack_int8_linear(w.t(), bias))  # opaque (N, K) int8
        elif on_cpu and batch_size >= ONEDNN_MIN_BATCH and kernels.onednn_linear_available():
            self.kernel = "onednn"
            self.w = self._shared(packed, key, lambda: kernels.pack_linear_weight(w.t().contiguous(), batch_size))
        else:
            self.kernel = "addmm"
            self.w = w
        self._call = getattr(self, f"_{self.kernel}")

    def _shared(self, packed: dict | None, key: tuple, pack) -> torch.Tensor:
        """pack(), or the tensor it gave a Stepper of another batch size. oneDNN's fp32 packing takes the batch
        size only as a hint: a weight packed for any batch gave bit-identical products at every other, within
        timing noise of its own packing (bench/bench_packing.py, native and AVX2), and int8 packing takes none.
        So a server's batch sizes share one copy of the weights instead of one each (~12 MB a batch size at
        2x512: under churn the server grew 32 MB once a burst drained through batch sizes it had not used)."""
        if packed is None:
            return pack()
        k = (*key, self.kernel)
        if k not in packed:
            packed[k] = pack()
        return packed[k]

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

    def __init__(
        self, model: CharRNN, batch_size: int, device: torch.device, precision: str, packed: dict | None = None
    ) -> None:
        c = model.config
        B, L, H = batch_size, c.num_layers, c.hidden_size
        self.batch_size, self.hidden_size, self.device, self.precision = B, H, device, precision
        self.packed, self.products_made = packed, 0  # prepacked weights shared across batch sizes (_Product)
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
        """The next product of lay_out; its key (the cell's formulation, its place in lay_out) names the same
        weights in a Cell of another batch size."""
        key = (type(self).__name__, self.products_made)
        self.products_made += 1
        return _Product(w, bias, self.batch_size, self.precision, self.bf16_staging, self.packed, key)

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

    def __init__(
        self, model: CharRNN, batch_size: int, device: torch.device, precision: str, packed: dict | None = None
    ) -> None:
        super().__init__(model, batch_size, device, precision, packed)
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

    def __init__(
        self, model: CharRNN, batch_size: int, device: torch.device, precision: str, packed: dict | None = None
    ) -> None:
        super().__init__(model, batch_size, device, precision, packed)
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
    packed: a dict that Steppers of one model at several batch sizes share, so that their prepacked weights are
    one copy (the server's Batch passes one); None packs this Stepper's own.
    """

    def __init__(
        self,
        model: CharRNN,
        batch_size: int,
        device: torch.device,
        precision: str = "fp32",
        sigmoid_only: bool | None = None,
        packed: dict | None = None,
    ) -> None:
        check_precision(precision)
        c = model.config
        self.batch_size = B = batch_size
        self.num_layers, self.hidden_size, self.vocab_size = c.num_layers, c.hidden_size, c.vocab_size
        self.device = device = torch.device(device)
        if sigmoid_only is None:  # on CUDA tanh is as cheap as sigmoid, so the extra element-wise ops would only cost
            sigmoid_only = device.type == "cpu" and B * c.hidden_size >= SIGMOID_ONLY_MIN_ELEMS
        self.cell = cell_class(model.rnn, sigmoid_only)(model, B, device, precision, packed)
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
