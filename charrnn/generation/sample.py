"""Step-by-step sampling from a CharRNN: prime -> step -> temperature / top-k / top-p -> ids, streamed.

Sampling is inverse-CDF with one seeded torch.Generator per stream (seed + i), so stream i of a batch writes the
same text as a single-sample run with seed + i. In fp32 the batch and the single run differ only by float
rounding in the logits, which changes a character only if a uniform lands that close to a CDF step.

The Stepper (stepper.py) runs each step, and `precision="auto"` times it to choose; beam search is beam.py.
The measured figures behind these choices live in bench/README.md, where they can be dated and rerun.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, NamedTuple

import torch

from charrnn import runtime
from charrnn.config.sample import SampleConfig
from charrnn.errors import UsageError
from charrnn.generation import kernels
from charrnn.generation.kernels import bf16_is_native
from charrnn.generation.stepper import Stepper, check_precision_on
from charrnn.model import CharRNN, State

# Worst validation cost against fp32 (bits/char) measured on three trained checkpoints, one stream and the
# 64-stream cell alike (bench/bench_precision.py; the figures are in bench/README.md).
MEASURED_COST_BPC = {"fp32": 0.0, "bf16": 0.0001, "int8": 0.0003}
MAX_AUTO_COST_BPC = 0.01  # --precision auto only picks precisions measured to cost at most this
AUTO_MARGIN = 1.1  # auto leaves fp32 only for a precision this much faster: timings on a busy CPU are noisy
AUTO_ROUNDS, AUTO_STEPS = 3, 8  # auto times each candidate's step for the best of 3 rounds of 8 steps
UNIFORM_BLOCK = 256  # uniforms drawn per stream at a time, so the Python loop over generators is amortised
CUDA_YIELD_BLOCK = 32  # ids per host transfer on CUDA (divides UNIFORM_BLOCK)
CUDA_WARMUP_STEPS = 3  # eager steps on a side stream before graph capture, as torch.cuda.graph asks
PRIME_CHUNK = 4096  # prime characters run through the model at a time, so a long prime needs bounded memory


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


def choose_precision(
    model: CharRNN, batch_size: int, device: torch.device, packed: dict | None = None
) -> PrecisionChoice:
    """--precision auto: time a few steps of each native precision at this batch size on this model and take
    the fastest, leaving fp32 only for one at least AUTO_MARGIN faster. Speed depends on the CPU, the model's
    size and the batch, so it is measured, not assumed (a fraction of a second). packed: as Stepper's."""
    device = torch.device(device)
    steppers = {p: Stepper(model, batch_size, device, precision=p, packed=packed) for p in native_precisions(device)}
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


Sampler = _Sampler  # the public name: the server (serve/batch.py) samples its streams with this same code


def stream_generator(seed: int) -> torch.Generator:
    """The CPU generator of the stream seeded `seed` (stream i of a batch: seed + i), whatever the device."""
    return torch.Generator().manual_seed(seed)


def draw_uniforms(gen: torch.Generator, out: torch.Tensor) -> None:
    """A stream's next UNIFORM_BLOCK uniforms into out (UNIFORM_BLOCK,): uniform t of a stream is the draw that
    samples its character t, here and in the server alike."""
    torch.rand(UNIFORM_BLOCK, generator=gen, out=out)


class _Uniforms:
    """Per-stream uniforms from one torch.Generator per stream (seed + i), drawn UNIFORM_BLOCK at a time."""

    def __init__(self, seed: int, batch_size: int, device: torch.device) -> None:
        self.gens = [stream_generator(seed + i) for i in range(batch_size)]
        self.host = torch.empty(batch_size, UNIFORM_BLOCK)
        self.block = self.host if device.type != "cuda" else torch.empty(batch_size, UNIFORM_BLOCK, device=device)
        self.columns = [self.block[:, j : j + 1] for j in range(UNIFORM_BLOCK)]  # (B, 1) views, made once

    def refill(self) -> None:
        for i, g in enumerate(self.gens):
            draw_uniforms(g, self.host[i])
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
        prime_logits, prime_state = run_prime(model, prime_ids, device)
        stepper.set_state(tuple(s.expand(-1, B, -1) for s in prime_state))
        stepper.logits.copy_(prime_logits.expand(B, -1))
    # The inference-mode blocks stay inside run_blocks between yields: a context held across a yield
    # would leak into the caller's code.
    yield from loop.run_blocks(CUDA_YIELD_BLOCK if device.type == "cuda" else 1)


def run_prime(model: CharRNN, prime_ids: list[int], device: torch.device) -> tuple[torch.Tensor, State]:
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
