"""The one module that touches PyTorch's private CPU ops: oneDNN's prepacked linear and the CPU feature probes.

They are private, so each is probed once, the answer cached, and every failure means "not available": callers
fall back to torch.addmm / torch.mm, which every build has. Measured speeds are in bench/README.md.
"""

from __future__ import annotations

import functools

import torch


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
