"""Reference attention: the materialised-score teaching version and PyTorch's fused SDPA (@sec-architecture-attention)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype attention arithmetic runs in: float32 for half-precision inputs, else the input's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_window(causal: bool, window: int | None) -> None:
    """Reject windows the kernels do not implement: non-positive ones, and a window without causal masking."""
    if window is None:
        return
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise ValueError(f"window must be a positive integer or None, got {window!r}")
    if not causal:
        raise ValueError(f"window={window} needs causal=True: the window keeps the last `window` keys up to the "
                         f"query's position (a one-sided, causal window); symmetric windows are not implemented")


def mask_block(rows: range, cols: range, t_q: int, t_k: int, causal: bool, window: int | None,
               device: torch.device | str) -> Tensor | None:
    """Boolean (len(rows), len(cols)) block of which queries may see which keys, or None when all may.

    Queries are aligned to the *end* of the keys (query i sits at key position i + t_k - t_q), which is the
    convention of FlashAttention-2 and what decoding with a KV cache needs; `window` keeps the last `window`
    keys up to and including the query's own position (sliding-window attention). The tiled kernel asks for
    one tile at a time; `allowed_mask` for the whole matrix.
    """
    check_window(causal, window)
    if not causal and window is None:
        return None
    i = torch.arange(rows.start, rows.stop, device=device)[:, None] + (t_k - t_q)
    j = torch.arange(cols.start, cols.stop, device=device)[None, :]
    keep = torch.ones(len(rows), len(cols), dtype=torch.bool, device=device)
    if causal:
        keep &= j <= i
    if window is not None:
        keep &= j > i - window
    return keep


def allowed_mask(t_q: int, t_k: int, causal: bool, window: int | None, device: torch.device | str) -> Tensor | None:
    """Boolean (t_q, t_k) matrix of which keys each query may see (see `mask_block`), or None when all may."""
    return mask_block(range(t_q), range(t_k), t_q, t_k, causal, window, device)


def naive_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: float | None = None,
                    window: int | None = None, mask: Tensor | None = None, bias: Tensor | None = None,
                    return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(q k^T * scale + bias, masked) v with the full (T_q, T_k) score matrix in memory (@sec-architecture-attention).

    q is (B, H, T_q, D); k, v are (B, H_kv, T_k, D) with H a multiple of H_kv (grouped-query attention: each
    K/V head serves H / H_kv query heads, here by repeating it). `mask` (bool, True = may attend) and `bias`
    (added to the scores, e.g. ALiBi) broadcast to (B, H, T_q, T_k). Half-precision inputs are computed in
    float32. A query that may see no key at all gets a zero output rather than NaN.
    """
    n_head, n_kv = q.shape[1], k.shape[1]
    if n_head % n_kv:
        raise ValueError(f"query heads ({n_head}) must be a multiple of key/value heads ({n_kv})")
    if n_kv != n_head:
        k = k.repeat_interleave(n_head // n_kv, dim=1)
        v = v.repeat_interleave(n_head // n_kv, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    compute = compute_dtype(q.dtype)
    scores = (q.to(compute) @ k.to(compute).transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias.to(compute)
    keep = allowed_mask(q.shape[-2], k.shape[-2], causal, window, q.device)
    if mask is not None:
        keep = mask if keep is None else keep & mask
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if keep is not None:
        weights = torch.where(keep.any(dim=-1, keepdim=True), weights, 0.0)
    out = (weights @ v.to(compute)).to(q.dtype)
    return (out, weights) if return_weights else out


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: float | None = None,
                   window: int | None = None, mask: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """The same computation through `torch.nn.functional.scaled_dot_product_attention` (fused kernels when available)."""
    t_q, t_k = q.shape[-2], k.shape[-2]
    attn_mask = None
    is_causal = causal and window is None and mask is None and bias is None and t_q == t_k
    if not is_causal:
        attn_mask = allowed_mask(t_q, t_k, causal, window, q.device)
        if mask is not None:
            attn_mask = mask if attn_mask is None else attn_mask & mask
        if bias is not None:
            neg = torch.zeros((), dtype=q.dtype, device=q.device) if attn_mask is None else \
                torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(~attn_mask, float("-inf"))
            attn_mask = bias.to(q.dtype) + neg
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])
