"""FlashAttention in plain PyTorch: tiles, online softmax, and a backward pass that recomputes the scores (@sec-architecture-flash).

This is the algorithm of FlashAttention-2 [@dao2023flashattention2] written for reading, not for speed: the
(T_q, T_k) score matrix never exists in full, only (block_q, block_k) tiles of it, so memory grows as O(T)
instead of O(T^2). The forward pass saves the output and the log-sum-exp of each row; the backward pass
rebuilds each tile of probabilities from them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from llmbook.kernels.reference import check_window, compute_dtype, mask_block


def _tile_visible(qs: int, qe: int, ks: int, ke: int, offset: int, causal: bool, window: int | None) -> bool:
    """False when no query of rows [qs, qe) may see any key of columns [ks, ke): the tile is skipped."""
    if causal and ks > qe - 1 + offset:
        return False
    return not (window is not None and ke - 1 <= qs + offset - window)


def _forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, window: int | None, block_q: int,
             block_k: int) -> tuple[Tensor, Tensor]:
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    dt = compute_dtype(q.dtype)
    qg = q.reshape(b, h_kv, h // h_kv, t_q, d).to(dt)  # query heads grouped under their K/V head
    kg, vg = k[:, :, None].to(dt), v[:, :, None].to(dt)  # broadcast over the group, never repeated in memory
    out = torch.zeros_like(qg)
    lse = torch.empty(qg.shape[:-1], dtype=dt, device=q.device)
    offset = t_k - t_q
    for qs in range(0, t_q, block_q):
        qe = min(qs + block_q, t_q)
        qb = qg[..., qs:qe, :]
        m = torch.full(qb.shape[:-1], float("-inf"), dtype=dt, device=q.device)  # running row maximum
        l = torch.zeros_like(m)  # running sum of exp(s - m)
        acc = torch.zeros_like(qb)  # running sum of exp(s - m) v
        for ks in range(0, t_k, block_k):
            ke = min(ks + block_k, t_k)
            if not _tile_visible(qs, qe, ks, ke, offset, causal, window):
                continue
            s = (qb @ kg[..., ks:ke, :].transpose(-2, -1)) * scale
            keep = mask_block(range(qs, qe), range(ks, ke), t_q, t_k, causal, window, q.device)
            if keep is not None:
                s = s.masked_fill(~keep, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1))
            m_safe = torch.where(torch.isinf(m_new), 0.0, m_new)  # rows that have seen no key yet
            p = torch.exp(s - m_safe[..., None])
            alpha = torch.exp(m - m_safe)  # rescales what was accumulated under the old maximum
            l = alpha * l + p.sum(dim=-1)
            acc = alpha[..., None] * acc + p @ vg[..., ks:ke, :]
            m = m_new
        seen = l > 0
        out[..., qs:qe, :] = torch.where(seen[..., None], acc / torch.where(seen, l, 1.0)[..., None], 0.0)
        lse[..., qs:qe] = torch.where(seen, torch.where(torch.isinf(m), 0.0, m) + torch.log(l), float("inf"))
    return out.reshape(b, h, t_q, d).to(q.dtype), lse.reshape(b, h, t_q)


def _backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, scale: float,
              window: int | None, block_q: int, block_k: int) -> tuple[Tensor, Tensor, Tensor]:
    b, h, t_q, d = q.shape
    h_kv, t_k = k.shape[1], k.shape[2]
    g = h // h_kv
    dt = compute_dtype(q.dtype)
    qg = q.reshape(b, h_kv, g, t_q, d).to(dt)
    dog = do.reshape(b, h_kv, g, t_q, d).to(dt)
    lseg = lse.reshape(b, h_kv, g, t_q)
    delta = (dog * out.reshape(b, h_kv, g, t_q, d).to(dt)).sum(dim=-1)  # D_i = rowsum(dO * O)
    kg, vg = k[:, :, None].to(dt), v[:, :, None].to(dt)
    dq = torch.zeros_like(qg)
    dk = torch.zeros(b, h_kv, t_k, d, dtype=dt, device=q.device)
    dv = torch.zeros_like(dk)
    offset = t_k - t_q
    for ks in range(0, t_k, block_k):
        ke = min(ks + block_k, t_k)
        kb, vb = kg[..., ks:ke, :], vg[..., ks:ke, :]
        for qs in range(0, t_q, block_q):
            qe = min(qs + block_q, t_q)
            if not _tile_visible(qs, qe, ks, ke, offset, causal, window):
                continue
            s = (qg[..., qs:qe, :] @ kb.transpose(-2, -1)) * scale
            keep = mask_block(range(qs, qe), range(ks, ke), t_q, t_k, causal, window, q.device)
            if keep is not None:
                s = s.masked_fill(~keep, float("-inf"))
            p = torch.exp(s - lseg[..., qs:qe, None])  # the probabilities, rebuilt from the saved log-sum-exp
            dob = dog[..., qs:qe, :]
            dv[..., ks:ke, :] += (p.transpose(-2, -1) @ dob).sum(dim=2)
            dp = dob @ vb.transpose(-2, -1)
            ds = p * (dp - delta[..., qs:qe, None])  # softmax backward: dS = P * (dP - D)
            dq[..., qs:qe, :] += (ds @ kb) * scale
            dk[..., ks:ke, :] += (ds.transpose(-2, -1) @ qg[..., qs:qe, :]).sum(dim=2) * scale
    return dq.reshape(b, h, t_q, d).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class TiledAttention(torch.autograd.Function):
    """Autograd wrapper: saves q, k, v, the output and the log-sum-exp; never the probabilities."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, window: int | None,
                block_q: int, block_k: int) -> Tensor:
        out, lse = _forward(q, k, v, causal, scale, window, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.args = (causal, scale, window, block_q, block_k)
        return out

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, out, lse, *ctx.args)
        return dq, dk, dv, None, None, None, None, None


def tiled_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: float | None = None,
                    window: int | None = None, block_q: int = 64, block_k: int = 64) -> Tensor:
    """Block-wise online-softmax attention with a recomputing backward (@sec-architecture-flash)."""
    if block_q <= 0 or block_k <= 0:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
    check_window(causal, window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return TiledAttention.apply(q, k, v, causal, scale, window, block_q, block_k)
