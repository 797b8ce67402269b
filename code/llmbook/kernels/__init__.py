"""Attention kernels: naive, PyTorch SDPA, tiled FlashAttention in PyTorch, and FlashAttention in Triton (@sec-architecture-flash)."""

from __future__ import annotations

import torch
from torch import Tensor

from llmbook.kernels.reference import allowed_mask, naive_attention, sdpa_attention
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


def resolve_impl(impl: str, device: torch.device | str, head_dim: int, masked: bool) -> str:
    """The implementation `attention(..., impl=impl)` runs: "auto" is triton on CUDA when supported, else sdpa."""
    if impl not in IMPLS:
        raise ValueError(f"attention impl={impl!r} is not one of {IMPLS}")
    if impl != "auto":
        return impl
    if (torch.device(device).type == "cuda" and not masked and head_dim in (32, 64, 128)
            and triton_available(device)):
        return "triton"
    return "sdpa"


def attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, impl: str = "auto", scale: float | None = None,
              window: int | None = None, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention with one signature for every implementation (@sec-architecture-flash).

    q: (B, H, T_q, D); k, v: (B, H_kv, T_k, D) with H a multiple of H_kv (GQA/MQA). Causal masking aligns the
    queries with the last keys. `window` limits each query to its last `window` keys. `mask` (bool, True = may
    attend) and `bias` (additive, e.g. ALiBi) are supported by "naive" and "sdpa" only.
    """
    chosen = resolve_impl(impl, q.device, q.shape[-1], mask is not None or bias is not None)
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
           "triton_available", "IMPLS"]
