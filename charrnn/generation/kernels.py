"""The one module that touches PyTorch's private CPU ops: oneDNN's prepacked linear, the int8 linear and the CPU
feature probes.

They are private, so each is probed once, the answer cached, and every failure means "not available": callers
fall back to torch.addmm / torch.mm, which every build has. Measured speeds are in bench/README.md.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

# Quantized engines with a dynamic int8 linear, fastest first: fbgemm ran 2-3x oneDNN's at 1 and 64 streams on
# AVX2 and AVX-512 alike (bench/README.md); qnnpack is the ARM one.
INT8_ENGINES = ("fbgemm", "x86", "onednn", "qnnpack")


def torch_supports_onednn_bf16() -> bool:
    """torch's own answer to whether oneDNN runs bfloat16 on this CPU (avx512bw/vl/dq or avx_ne_convert): the
    check its bf16 kernels make before refusing, so asking it first never trips that refusal."""
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except (RuntimeError, NotImplementedError):
        return False


@functools.cache
def onednn_linear_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's prepacked linear (the op Inductor's CPU path uses) works for `dtype` in this torch build
    on this CPU: torch must say so, and a tiny product must come out right."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not torch_supports_onednn_bf16():
        return False
    try:
        w = pack_linear_weight(torch.ones(3, 2, dtype=dtype), 2)  # (N, K) packed for batch 2
        return bool((onednn_linear(torch.ones(2, 2, dtype=dtype), w, None) == 2).all())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def pack_linear_weight(w_nk: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N, K) weights -> an opaque tensor laid out for oneDNN's linear at this batch size."""
    return torch.ops.mkldnn._reorder_linear_weight(w_nk, batch_size)


def onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (B, K) @ packed (N, K)^T + bias -> (B, N), in x's dtype."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def bf16_is_native(device: torch.device) -> bool:
    """Whether bfloat16 products run in hardware here (else --precision bf16 is emulated and slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)  # Ampere+; is_bf16_supported() counts emulation
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    # Private probes (torch.cpu has no public one); a torch without them is treated as "unknown: no".
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


# ---- int8: weights quantized per output channel, activations quantized per call ----------------------------


@functools.cache
def int8_engine() -> str | None:
    """The quantized engine whose dynamic int8 linear works in this torch build on this CPU, or None: the
    engine must be supported and a small product must come out within int8 rounding of float32's."""
    supported = getattr(torch.backends.quantized, "supported_engines", [])
    for engine in INT8_ENGINES:
        if engine not in supported:
            continue
        try:
            w = torch.linspace(-1, 1, 12).reshape(4, 3)  # (N, K)
            x = torch.tensor([[0.5, -0.25, 1.0]])  # (1, K)
            y = int8_linear(x, pack_int8_linear(w, None, engine))
        except (AttributeError, RuntimeError, NotImplementedError):
            continue
        if y.shape == (1, 4) and bool(torch.allclose(y, x @ w.t(), atol=0.05)):
            return engine
    return None


def pack_int8_linear(w_nk: torch.Tensor, bias: torch.Tensor | None, engine: str | None = None) -> Any:
    """float32 (N, K) weights -> packed int8 weights (one symmetric scale per output row) with a float32 bias:
    an opaque object for int8_linear. Each row's scale is its largest magnitude / 127, so no weight clips."""
    engine = engine or int8_engine()
    if engine is None:
        raise RuntimeError("no quantized engine with an int8 linear in this torch build")
    w = w_nk.detach().float().contiguous()
    scales = (w.abs().amax(dim=1).clamp_min(1e-30) / 127.0).double()  # (N,)
    zero_points = torch.zeros(w.shape[0], dtype=torch.int64)
    previous = torch.backends.quantized.engine
    with warnings.catch_warnings():
        # torch >= 2.10 warns on every quantized tensor made that they are deprecated: nothing a user can act
        # on, and a torch without them is probed as "no int8".
        warnings.filterwarnings("ignore", message=".*deprecated", category=UserWarning)
        try:
            torch.backends.quantized.engine = engine  # prepack lays the weights out for the current engine
            qw = torch.quantize_per_channel(w, scales, zero_points, 0, torch.qint8)
            b = None if bias is None else bias.detach().float().contiguous()
            return torch.ops.quantized.linear_prepack(qw, b)
        finally:
            torch.backends.quantized.engine = previous


def int8_linear(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """x (B, K) float32 @ packed (N, K)^T + bias -> (B, N) float32. x is quantized to 8 bits per call over its
    own range; reduce_range keeps it to 7 so that AVX2's u8 x s8 pair products cannot saturate int16 (CPUs
    without VNNI), the same on every CPU so a model samples alike everywhere."""
    return _linear_dynamic()(x, packed, True)


@functools.cache
def _linear_dynamic() -> Any:
    # The overload itself: calling the op packet scans its arguments for fake script objects in Python first,
    # ~8 us a character at one stream (two products a step).
    return torch.ops.quantized.linear_dynamic.default
