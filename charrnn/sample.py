"""Step-by-step sampling from a CharRNN: prime -> step -> temperature / top-k / top-p -> ids, streamed.

Why not call model.rnn once per character: for seq_len 1 the fused nn.LSTM pays a per-call cost (oneDNN
re-lays out the weights on every call on CPU), which dominates a batch-1 step. The Stepper instead keeps
the weights pre-transposed and does the cell math itself: one addmm per layer per step (two for a GRU,
whose candidate gate needs the hidden projection on its own), in-place gate nonlinearities, and buffers
allocated once. Layer 0's input projection is a row gather from a precomputed (V, G) table, since the
embedding is a lookup. On CUDA the step plus sampling is captured in a CUDA graph and replayed per character.

On CPU the products use MKL's addmm at one stream and oneDNN's linear on prepacked weights from two streams up
(MKL's small-batch GEMM is several times slower there; see _Product). With many streams the step is bound by
its matrix products, and then by tanh: PyTorch's CPU tanh costs about four times a sigmoid per element and runs
on one thread below 32k elements. So for large batches on CPU the LSTM cell uses tanh(x) = 2 sigmoid(2x) - 1,
with the g-gate weights pre-scaled by 2: one sigmoid covers all four gates.
`precision="bf16"` stores the recurrent weights in bfloat16 and rounds each layer's input to bfloat16 before its
product; the kernel accumulates in float32 but stores the product in bfloat16 (CPU matmul has no float32 output
for bfloat16 inputs), and it is then added to float32 gates. The cell math, state and output layer stay float32.
On CPUs with AVX512-BF16 or AMX those products run about twice as fast as float32 at 64 streams, for a loss of
accuracy measured below 0.0001 bits/char (bench/bench_precision.py).

Sampling is inverse-CDF with one seeded torch.Generator per stream (seed + i), so stream i of a batch
writes the same text as a single-sample run with seed + i. In fp32 the batch and the single run differ only by
float rounding (~1e-7 in a logit), which changes a character only if a uniform lands that close to a CDF step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from charrnn import kernels, runtime
from charrnn.errors import UsageError
from charrnn.kernels import bf16_is_native
from charrnn.model import CharRNN, State

PRECISIONS = ("fp32", "bf16")
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
    precision: str = "fp32"  # "bf16": bfloat16 recurrent weights, faster with many streams on CPUs that have it

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
        check_precision(self.precision)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}.")


# --------------------------------------------------------------------------------------------------
# Stepper: cell math on pre-laid-out weights
# --------------------------------------------------------------------------------------------------


class _Product:
    """out <- x @ W (+ bias), or out += x @ W when bias is None; out is float32 (B, N).

    Three kernels, chosen once per Stepper:
    - "addmm": MKL's sgemm. Best at one stream, and the only one off the CPU.
    - "onednn": oneDNN's fp32 linear on weights prepacked for this batch size. MKL's small-M GEMM is slow on
      this class of CPU (4 streams cost 4x one stream at 2x512); oneDNN runs 2-16 streams at 2-4x MKL's speed and
      64 at about 1.5x. Its op has no out= form, so each call allocates its (B, N) result.
    - "bf16": x is rounded into a staging buffer and multiplied by bfloat16 weights: oneDNN's prepacked linear
      on CPU (2x torch.mm's speed at 1-4 streams), else torch.mm on an (N, K)-laid-out W. The product, stored
      in bfloat16, is added to out."""

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


class Stepper:
    """Cell-math step of a CharRNN on pre-laid-out weights; fixed batch size.

    All hidden states live in one (B, L*H) buffer `hs` = [h_0 | h_1 | ... | h_{L-1}]. Layer l >= 1 reads
    its input and its own previous state as the single slice hs[:, (l-1)H:(l+1)H] = [h_{l-1} (already
    updated this step) | h_l (previous step)], so one addmm against the stacked [W_ih; W_hh]^T does both
    projections without a concatenation.

    sigmoid_only: None picks the LSTM cell formulation by size (see the module docstring); True/False force it.
    """

    def __init__(
        self,
        model: CharRNN,
        batch_size: int,
        device: torch.device,
        precision: str = "fp32",
        sigmoid_only: bool | None = None,
    ) -> None:
        c = model.config
        self.kind = c.model
        self.batch_size = B = batch_size
        self.num_layers = L = c.num_layers
        self.hidden_size = H = c.hidden_size
        self.vocab_size = V = c.vocab_size
        self.device = device = torch.device(device)
        rnn = model.rnn
        self._relu = self.kind == "rnn" and rnn.nonlinearity == "relu"
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[self.kind]
        G = gates * H
        check_precision(precision)
        if sigmoid_only is None:  # on CUDA tanh is as cheap as sigmoid, so the extra element-wise ops would only cost
            sigmoid_only = device.type == "cpu" and B * H >= SIGMOID_ONLY_MIN_ELEMS
        self.sigmoid_only = sigmoid_only and self.kind == "lstm"

        def own(t: torch.Tensor) -> torch.Tensor:
            # Always a fresh contiguous float32 copy on `device`: later training of the model must not leak in,
            # and .to() alone returns the same tensor when nothing changes.
            return torch.empty(t.shape, device=device, dtype=torch.float32).copy_(t)

        f32 = dict(device=device, dtype=torch.float32)
        staging = torch.empty(B, G, device=device, dtype=torch.bfloat16) if precision == "bf16" else None

        def product(w: torch.Tensor, bias: torch.Tensor | None) -> _Product:
            return _Product(w, bias, B, precision, staging)

        with torch.no_grad():
            weights = [self._layer_weights(rnn, layer, H, self.sigmoid_only) for layer in range(L)]
            # Layer 0's input projection of every vocabulary entry: a (V, G) table, gathered per step.
            w_ih0, b0 = own(weights[0][0]), own(weights[0][2])
            self._table = torch.addmm(b0, own(model.embed.weight.detach()), w_ih0.t())  # (V, G)
            b_hh0 = own(weights[0][3]) if self.kind == "gru" else None  # LSTM/RNN: folded into the table
            self._hh0 = product(own(weights[0][1].t()), b_hh0)  # h_0 @ W_hh0^T: (B, H) x (H, G)
            # Layers >= 1: [W_ih; W_hh]^T stacked for LSTM/RNN; kept apart for GRU (its n gate needs W_hh h alone).
            self._up: list = []
            for w_ih, w_hh, b_ih, b_hh in weights[1:]:
                if self.kind == "gru":
                    self._up.append((product(own(w_ih.t()), own(b_ih)), product(own(w_hh.t()), own(b_hh))))
                else:
                    self._up.append(product(own(torch.cat([w_ih, w_hh], dim=1).t()), own(b_ih)))  # (2H, G)
            self._w_head = own(model.head.weight.detach().t())  # (H, V), float32 in every precision
            self._b_head = own(model.head.bias.detach())

        self.hs = torch.zeros(B, L * H, **f32)  # (B, L*H)
        self.cs = torch.zeros(B, L * H, **f32) if self.kind == "lstm" else None
        self.logits = torch.zeros(B, V, **f32)  # (B, V), reused by every step
        self._gates = torch.empty(B, G, **f32)  # (B, G)
        self._ghh = torch.empty(B, 3 * H, **f32) if self.kind == "gru" else None  # GRU hidden projection
        self._tmp = torch.empty(B, H, **f32)
        lstm_cell = self._lstm_cell_sigmoid_only if self.sigmoid_only else self._lstm_cell
        self._cell = {"lstm": lstm_cell, "gru": self._gru_cell, "rnn": self._rnn_cell}[self.kind]
        self._views()

    @staticmethod
    def _layer_weights(rnn: torch.nn.Module, layer: int, H: int, double_g: bool = False):
        """(W_ih, W_hh, b_ih, b_hh) in float32 (possibly the model's own tensors); LSTM gates reordered to
        i, f, o, g (and g scaled by 2 when double_g); LSTM/RNN biases folded into b_ih."""
        w_ih = getattr(rnn, f"weight_ih_l{layer}").detach().float()
        w_hh = getattr(rnn, f"weight_hh_l{layer}").detach().float()
        G = w_ih.shape[0]
        bias = getattr(rnn, "bias", True)
        b_ih = getattr(rnn, f"bias_ih_l{layer}").detach().float() if bias else w_ih.new_zeros(G)
        b_hh = getattr(rnn, f"bias_hh_l{layer}").detach().float() if bias else w_ih.new_zeros(G)
        if isinstance(rnn, torch.nn.LSTM):
            # PyTorch order is i, f, g, o; i, f, o, g lets one sigmoid_ cover three gates. Doubling g's rows
            # makes sigmoid(g') = (tanh(g) + 1) / 2, so one sigmoid can cover all four.
            scale = 2.0 if double_g else 1.0

            def reorder(t: torch.Tensor) -> torch.Tensor:
                return torch.cat([t[: 2 * H], t[3 * H :], t[2 * H : 3 * H] * scale])

            w_ih, w_hh, b_ih, b_hh = reorder(w_ih), reorder(w_hh), reorder(b_ih), reorder(b_hh)
        if isinstance(rnn, torch.nn.GRU):
            return w_ih, w_hh, b_ih, b_hh
        # LSTM/RNN add both biases before any nonlinearity, so they can be one.
        return w_ih, w_hh, b_ih + b_hh, torch.zeros_like(b_hh)

    def _views(self) -> None:
        # Views are made once: per-step slicing would allocate Python tensor objects every step.
        H, L, g = self.hidden_size, self.num_layers, self._gates
        self._h = [self.hs[:, k * H : (k + 1) * H] for k in range(L)]
        self._xh = [self.hs[:, (k - 1) * H : (k + 1) * H] for k in range(1, L)]
        self._x_in = [self.hs[:, (k - 1) * H : k * H] for k in range(1, L)]
        self._h_top = self._h[L - 1]
        if self.kind == "lstm":
            self._c = [self.cs[:, k * H : (k + 1) * H] for k in range(L)]
            self._sig, self._g = g[:, : 3 * H], g[:, 3 * H :]  # sigmoid gates i, f, o | tanh gate g
            self._i, self._f, self._o = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H]
        elif self.kind == "gru":
            self._rz, self._r, self._z, self._n = g[:, : 2 * H], g[:, :H], g[:, H : 2 * H], g[:, 2 * H :]
            self._hrz, self._hn = self._ghh[:, : 2 * H], self._ghh[:, 2 * H :]

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

    # ---- one step ----

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B,) int64 on the device -> logits (B, V): a buffer the next call overwrites."""
        with torch.no_grad():
            for layer in range(self.num_layers):
                self._cell(layer, tokens)
            return torch.addmm(self._b_head, self._h_top, self._w_head, out=self.logits)

    def _project(self, layer: int, tokens: torch.Tensor) -> None:
        """gates <- input projection + hidden projection (+ biases) for LSTM/RNN layers."""
        if layer == 0:
            torch.index_select(self._table, 0, tokens, out=self._gates)  # (B, G)
            self._hh0(self._h[0], self._gates)  # += h_0 @ W_hh0^T
        else:
            self._up[layer - 1](self._xh[layer - 1], self._gates)

    def _lstm_cell(self, layer: int, tokens: torch.Tensor) -> None:
        self._project(layer, tokens)
        c, h, tmp = self._c[layer], self._h[layer], self._tmp
        self._sig.sigmoid_()  # i, f, o
        self._g.tanh_()
        c.mul_(self._f).addcmul_(self._i, self._g)  # c = f*c + i*g
        torch.tanh(c, out=tmp)
        torch.mul(self._o, tmp, out=h)  # h = o * tanh(c)

    def _lstm_cell_sigmoid_only(self, layer: int, tokens: torch.Tensor) -> None:
        self._project(layer, tokens)  # g's pre-activation arrives doubled
        c, h, tmp = self._c[layer], self._h[layer], self._tmp
        self._gates.sigmoid_()  # i, f, o and (tanh(g) + 1) / 2, one call over (B, 4H)
        self._g.mul_(2.0).sub_(1.0)  # tanh(g)
        c.mul_(self._f).addcmul_(self._i, self._g)  # c = f*c + i*g
        torch.mul(c, 2.0, out=tmp).sigmoid_().mul_(2.0).sub_(1.0)  # tanh(c) = 2 sigmoid(2c) - 1
        torch.mul(self._o, tmp, out=h)  # h = o * tanh(c)

    def _rnn_cell(self, layer: int, tokens: torch.Tensor) -> None:
        self._project(layer, tokens)
        if self._relu:
            torch.clamp(self._gates, min=0.0, out=self._h[layer])
        else:
            torch.tanh(self._gates, out=self._h[layer])

    def _gru_cell(self, layer: int, tokens: torch.Tensor) -> None:
        h = self._h[layer]
        if layer == 0:
            torch.index_select(self._table, 0, tokens, out=self._gates)  # W_ih x + b_ih, (B, 3H)
            self._hh0(h, self._ghh)  # W_hh h + b_hh, (B, 3H)
        else:
            ih, hh = self._up[layer - 1]
            ih(self._x_in[layer - 1], self._gates)
            hh(h, self._ghh)
        self._rz.add_(self._hrz).sigmoid_()  # r, z
        self._n.addcmul_(self._r, self._hn).tanh_()  # n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h.sub_(self._n).mul_(self._z).add_(self._n)  # h' = (1 - z) * n + z * h = n + z * (h - n)


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
        f32 = dict(device=device, dtype=torch.float32)
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


def generate(model: CharRNN, prime_ids: list[int], cfg: SampleConfig, device: torch.device) -> Iterator[torch.Tensor]:
    """Yields CPU int64 tensors of shape (B, k) holding the next k generated ids of every stream, until
    cfg.length ids per stream. k == 1 on CPU (so text streams per character); on CUDA up to CUDA_YIELD_BLOCK
    per host transfer. The prime runs through the fused model.rnn first; its state seeds the Stepper.

    Bad options raise UsageError here, at the call, not at the first next()."""
    cfg.validate()
    if not prime_ids:
        raise UsageError("--prime must contain at least one character; pass e.g. a newline.")
    V = model.config.vocab_size
    bad = [i for i in prime_ids if not 0 <= i < V]
    if bad:
        raise UsageError(f"prime id {bad[0]} is outside the vocabulary of {V} characters.")
    device = torch.device(device)
    if cfg.precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise UsageError(f"--precision bf16 runs on cpu and cuda, not {device.type}; use --precision fp32 there.")
    if cfg.precision == "bf16" and device.type == "cuda" and not bf16_is_native(device):
        raise UsageError(
            "this GPU has no bfloat16 matrix units (it needs compute capability 8.0+); use --precision fp32."
        )
    return _generate(model, list(prime_ids), cfg, device)


def _generate(model: CharRNN, prime_ids: list[int], cfg: SampleConfig, device: torch.device) -> Iterator[torch.Tensor]:
    if cfg.length == 0:
        return
    B = cfg.num_samples
    # Buffers are made outside inference mode (plain tensors), so in-place updates work in any grad mode.
    stepper = Stepper(model, B, device, precision=cfg.precision)
    loop = _Loop(stepper, cfg, device)
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
    state = None
    try:
        ids = torch.tensor(prime_ids, dtype=torch.int64, device=next(model.parameters()).device)  # (T,)
        for chunk in ids.split(PRIME_CHUNK):
            logits, state = model(chunk[None, :], state)  # (1, t, V)
            last = logits[:, -1]
    finally:
        for m, training in modes:
            m.training = training
    return last.to(device=device, dtype=torch.float32), tuple(s.to(device=device, dtype=torch.float32) for s in state)


class _Loop:
    """Drives sample -> step -> sample ...; `advance` (step, then sample into the token buffer) is the one
    function run eagerly on CPU and captured in a CUDA graph on GPU."""

    def __init__(self, stepper: Stepper, cfg: SampleConfig, device: torch.device) -> None:
        self.stepper, self.cfg, self.device = stepper, cfg, device
        B = stepper.batch_size
        self.sampler = _Sampler(cfg, B, stepper.vocab_size, device)
        self.uniforms = _Uniforms(cfg.seed, B, device)
        self.tok = torch.zeros(B, 1, dtype=torch.int64, device=device)  # (B, 1) last sampled ids
        self.tok_flat = self.tok.view(B)
        self.u = torch.zeros(B, 1, device=device) if device.type == "cuda" else None  # static slot for the graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_tried = False

    def _sample(self, u: torch.Tensor) -> None:
        self.sampler(self.stepper.logits, u, self.tok)

    def advance(self, u: torch.Tensor) -> None:
        """Feed the last ids, then sample the next ids from the new logits into self.tok."""
        self.stepper.step(self.tok_flat)
        self._sample(u)

    def run_blocks(self, k: int) -> Iterator[torch.Tensor]:
        B, length = self.stepper.batch_size, self.cfg.length
        out = torch.empty(B, k, dtype=torch.int64, device=self.device)  # (B, k) ids of the current block
        for t in range(length):
            j = t % UNIFORM_BLOCK
            with torch.inference_mode():
                if j == 0:
                    self.uniforms.refill()
                u = self.uniforms.columns[j]
                if t == 0:
                    self._sample(u)  # the prime's logits are already in the stepper's buffer
                else:
                    self._advance_fast(u)
                out[:, t % k].copy_(self.tok_flat)
            if (t + 1) % k == 0 or t + 1 == length:
                n = t % k + 1
                yield out[:, :n].to("cpu", copy=True)

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
        graph = torch.cuda.CUDAGraph()
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
            graph = None
        torch.cuda.synchronize()
        self.stepper.set_state(saved_state)
        self.tok.copy_(saved_tok)
        self.u.copy_(saved_u)
        return graph
