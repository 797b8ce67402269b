"""Attention kernels: naive, PyTorch SDPA, tiled FlashAttention in PyTorch, and FlashAttention in Triton (@sec-architecture-flash)."""

from __future__ import annotations

import torch
from torch import Tensor

from llmbook.kernels.reference import allowed_mask, check_window, naive_attention, sdpa_attention
from llmbook.kernels.tiled import tiled_attention

IMPLS = ("auto", "naive", "sdpa", "tiled", "triton")


def triton_available(device: torch.device | str | None = None) -> bool:
    """True when the Triton kernel can run on `device`: CUDA with triton installed, or the CPU interpreter."""
    import importlib.util
    import os

    if importlib.util.find_spec("triton") is None:
        return False
    if device is not None and torch.device(device).type == "cuda":
        return True
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_preferred(dtype: torch.dtype, head_dim: int, capability: tuple[int, int]) -> bool:
    """Whether "auto" should run the Triton kernel on a GPU of compute `capability` (no mask or bias).

    Yes for float16 or bfloat16 with a head dim of 32, 64 or 128 from Ampere (sm_80) on. Before Ampere
    (e.g. a T4, sm_75) Triton emits no tensor-core (mma) instructions for these dots, in float16 or bfloat16,
    only scalar FMAs (checked on the compiled PTX by the tests), so SDPA is faster there. Never in float32
    (exact, slow, non-tensor-core dot products unless precision="tf32" is asked for explicitly).
    """
    return (head_dim in (32, 64, 128) and dtype in (torch.float16, torch.bfloat16)
            and tuple(capability) >= (8, 0))


def resolve_impl(impl: str, device: torch.device | str, head_dim: int, masked: bool,
                 dtype: torch.dtype = torch.bfloat16) -> str:
    """The implementation `attention(..., impl=impl)` runs: "auto" is triton on CUDA when supported
    (`triton_preferred`, no explicit mask or score bias), else sdpa."""
    if impl not in IMPLS:
        raise ValueError(f"attention impl={impl!r} is not one of {IMPLS}")
    if impl != "auto":
        return impl
    device = torch.device(device)
    if (device.type == "cuda" and not masked and torch.cuda.is_available() and triton_available(device)
            and triton_preferred(dtype, head_dim, torch.cuda.get_device_capability(device))):
        return "triton"
    return "sdpa"


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, impl: str = "auto", scale: float | None = None,
              window: int | None = None, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention with one signature for every implementation (@sec-architecture-flash).

    q: (B, H, T_q, D); k, v: (B, H_kv, T_k, D) with H a multiple of H_kv (GQA/MQA). Causal masking aligns the
    queries with the last keys. `window` (causal only) limits each query to its last `window` keys. `mask`
    (bool, True = may attend) and `bias` (additive, e.g. ALiBi) are supported by "naive" and "sdpa" only.
    """
    check_window(causal, window)
    chosen = resolve_impl(impl, q.device, q.shape[-1], mask is not None or bias is not None, q.dtype)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects 4-d (B, H, T, D) tensors, got {q.ndim}, {k.ndim}, {v.ndim} dims")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"incompatible shapes q={tuple(q.shape)} k={tuple(k.shape)} v={tuple(v.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})")
    if chosen == "naive":
        return naive_attention(q, k, v, causal, scale, window, mask, bias)
    if chosen == "sdpa":
        return sdpa_attention(q, k, v, causal, scale, window, mask, bias)
    if mask is not None or bias is not None:
        raise ValueError(f"attention impl={chosen!r} supports neither an explicit mask nor a score bias "
                         f"(e.g. ALiBi, padding masks); use impl='naive' or 'sdpa'")
    if chosen == "tiled":
        return tiled_attention(q, k, v, causal, scale, window)
    from llmbook.kernels.flash_triton import triton_attention

    return triton_attention(q, k, v, causal, scale, window)


__all__ = ["attention", "allowed_mask", "naive_attention", "sdpa_attention", "tiled_attention", "resolve_impl",
           "triton_available", "triton_preferred", "check_window", "IMPLS"]
