"""FlashAttention-2 forward and backward kernels in Triton (@sec-architecture-flash).

The same algorithm as `llmbook.kernels.tiled` [@dao2023flashattention2], one program per (query block, head):
scores live in registers/SRAM tile by tile, exponentials use exp2 with the log2(e) factor folded into the
scale, and grouped-query attention reads the shared K/V head directly (query head h uses K/V head
h // (H / H_kv)), so K/V are never repeated in memory. The backward pass is two kernels: one program per
K/V block accumulates dK and dV over every query head of its group (no atomics), one per query block
accumulates dQ. Block sizes are compile-time constants chosen by `_config`, the hook for autotuning.
Runs on CUDA, and on CPU under TRITON_INTERPRET=1 (how the tests check it without a GPU).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

LOG2E = 1.4426950408889634


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, qk_scale, T_Q, T_K, WINDOW,
                s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, HEAD_DIM: tl.constexpr,
                CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                PRECISION: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    h_kv = h // GROUP
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d[None, :] < D
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :],
                mask=(offs_m[:, None] < T_Q) & d_ok, other=0.0)
    k_base = K + b * s_kb + h_kv * s_kh
    v_base = V + b * s_vb + h_kv * s_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offset = T_K - T_Q  # queries are aligned with the last keys
    lo = 0
    hi = T_K
    if CAUSAL:
        hi = tl.minimum(T_K, (start_m + 1) * BLOCK_M + offset)
    if USE_WINDOW:
        lo = tl.maximum(0, start_m * BLOCK_M + offset - WINDOW + 1) // BLOCK_N * BLOCK_N
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_base + cols[:, None] * s_kt + offs_d[None, :], mask=(cols[:, None] < T_K) & d_ok, other=0.0)
        v = tl.load(v_base + cols[:, None] * s_vt + offs_d[None, :], mask=(cols[:, None] < T_K) & d_ok, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        keep = cols[None, :] < T_K
        if CAUSAL:
            keep = keep & (cols[None, :] <= offs_m[:, None] + offset)
        if USE_WINDOW:
            keep = keep & (cols[None, :] > offs_m[:, None] + offset - WINDOW)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, tl.where(seen, m_i, 0.0) + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    row_ok = offs_m < T_Q
    tl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok)
    tl.store(LSE + bh * T_Q + offs_m, lse, mask=row_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale, T_Q, T_K, WINDOW,
                     s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                     H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, HEAD_DIM: tl.constexpr,
                     CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bh_kv = tl.program_id(1)
    H_KV: tl.constexpr = H // GROUP
    b = bh_kv // H_KV
    h_kv = bh_kv % H_KV
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d[None, :] < D
    col_ok = cols[:, None] < T_K
    k = tl.load(K + b * s_kb + h_kv * s_kh + cols[:, None] * s_kt + offs_d[None, :], mask=col_ok & d_ok, other=0.0)
    v = tl.load(V + b * s_vb + h_kv * s_vh + cols[:, None] * s_vt + offs_d[None, :], mask=col_ok & d_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    offset = T_K - T_Q
    lo = 0
    hi = T_Q
    if CAUSAL:  # only queries at or after this key block see it
        lo = tl.maximum(0, start_n - offset) // BLOCK_M * BLOCK_M
    if USE_WINDOW:  # and only the next WINDOW of them
        hi = tl.minimum(T_Q, start_n + BLOCK_N - offset + WINDOW)
    for g in range(GROUP):  # every query head that shares this K/V head
        h = h_kv * GROUP + g
        for start_m in range(lo, hi, BLOCK_M):
            rows = start_m + tl.arange(0, BLOCK_M)
            row_ok = rows < T_Q
            q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_qt + offs_d[None, :],
                        mask=row_ok[:, None] & d_ok, other=0.0)
            do = tl.load(DO + b * s_ob + h * s_oh + rows[:, None] * s_ot + offs_d[None, :],
                         mask=row_ok[:, None] & d_ok, other=0.0)
            lse = tl.load(LSE + (b * H + h) * T_Q + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(DELTA + (b * H + h) * T_Q + rows, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            keep = row_ok[:, None] & (cols[None, :] < T_K)
            if CAUSAL:
                keep = keep & (cols[None, :] <= rows[:, None] + offset)
            if USE_WINDOW:
                keep = keep & (cols[None, :] > rows[:, None] + offset - WINDOW)
            p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)  # probabilities rebuilt from the log-sum-exp
            dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    dk = dk * sm_scale
    tl.store(DK + b * s_kb + h_kv * s_kh + cols[:, None] * s_kt + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=col_ok & d_ok)
    tl.store(DV + b * s_vb + h_kv * s_vh + cols[:, None] * s_vt + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=col_ok & d_ok)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale, T_Q, T_K, WINDOW,
                   s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                   H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, HEAD_DIM: tl.constexpr,
                   CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    h_kv = h // GROUP
    rows = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d[None, :] < D
    row_ok = rows < T_Q
    q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_qt + offs_d[None, :], mask=row_ok[:, None] & d_ok,
                other=0.0)
    do = tl.load(DO + b * s_ob + h * s_oh + rows[:, None] * s_ot + offs_d[None, :], mask=row_ok[:, None] & d_ok,
                 other=0.0)
    lse = tl.load(LSE + bh * T_Q + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh * T_Q + rows, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offset = T_K - T_Q
    lo = 0
    hi = T_K
    if CAUSAL:
        hi = tl.minimum(T_K, (start_m + 1) * BLOCK_M + offset)
    if USE_WINDOW:
        lo = tl.maximum(0, start_m * BLOCK_M + offset - WINDOW + 1) // BLOCK_N * BLOCK_N
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols[:, None] < T_K
        k = tl.load(K + b * s_kb + h_kv * s_kh + cols[:, None] * s_kt + offs_d[None, :], mask=col_ok & d_ok,
                    other=0.0)
        v = tl.load(V + b * s_vb + h_kv * s_vh + cols[:, None] * s_vt + offs_d[None, :], mask=col_ok & d_ok,
                    other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        keep = row_ok[:, None] & (cols[None, :] < T_K)
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None] + offset)
        if USE_WINDOW:
            keep = keep & (cols[None, :] > rows[:, None] + offset - WINDOW)
        p = tl.where(keep, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * s_qb + h * s_qh + rows[:, None] * s_qt + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & d_ok)


def _config(q: Tensor, head_dim: int) -> dict:
    """Block sizes and launch options: the single place an autotuner would plug in."""
    if q.device.type != "cuda":  # the interpreter: small tiles keep the CPU run short
        return dict(BLOCK_M=16, BLOCK_N=16)
    big = head_dim <= 64 and q.dtype != torch.float32
    return dict(BLOCK_M=128 if big else 64, BLOCK_N=64 if head_dim <= 64 else 32, num_warps=8 if head_dim == 128 else 4,
                num_stages=2)


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the Triton attention kernel supports float16, bfloat16 and float32, not {q.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] > 128:
        raise ValueError(f"the Triton attention kernel supports head dims up to 128, got {q.shape[-1]}")


def _common(q: Tensor, k: Tensor, causal: bool, scale: float, window: int | None) -> tuple[dict, dict]:
    b, h, t_q, d = q.shape
    head_dim = max(16, triton.next_power_of_2(d))
    consts = dict(H=h, GROUP=h // k.shape[1], D=d, HEAD_DIM=head_dim, CAUSAL=causal, USE_WINDOW=window is not None,
                  PRECISION="ieee", **_config(q, head_dim))
    scalars = dict(qk_scale=scale * LOG2E, T_Q=t_q, T_K=k.shape[2], WINDOW=window or 0)
    return consts, scalars


class TritonAttention(torch.autograd.Function):
    """Autograd wrapper around the three kernels; saves q, k, v, the output and the (base-2) log-sum-exp."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, window: int | None) -> Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        consts, scalars = _common(q, k, causal, scale, window)
        b, h, t_q, _ = q.shape
        o = torch.empty_like(q)
        lse = torch.empty(b * h * t_q, dtype=torch.float32, device=q.device)
        grid = (triton.cdiv(t_q, consts["BLOCK_M"]), b * h)
        _fwd_kernel[grid](q, k, v, o, lse, scalars["qk_scale"], scalars["T_Q"], scalars["T_K"], scalars["WINDOW"],
                          *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], **consts)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (causal, scale, window)
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        causal, scale, window = ctx.args
        do = do.contiguous()
        consts, scalars = _common(q, k, causal, scale, window)
        b, h, t_q, _ = q.shape
        delta = (do.float() * o.float()).sum(dim=-1).reshape(-1)  # D_i = rowsum(dO * O)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        args = (scalars["qk_scale"], scale, scalars["T_Q"], scalars["T_K"], scalars["WINDOW"],
                *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
        grid_kv = (triton.cdiv(k.shape[2], consts["BLOCK_N"]), b * k.shape[1])
        _bwd_dkdv_kernel[grid_kv](q, k, v, do, lse, delta, dk, dv, *args, **consts)
        grid_q = (triton.cdiv(t_q, consts["BLOCK_M"]), b * h)
        _bwd_dq_kernel[grid_q](q, k, v, do, lse, delta, dq, *args, **consts)
        return dq, dk, dv, None, None, None


def triton_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: float | None = None,
                     window: int | None = None) -> Tensor:
    """FlashAttention-2 in Triton with autograd (@sec-architecture-flash); q (B, H, T_q, D), k/v (B, H_kv, T_k, D)."""
    _check(q, k, v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return TritonAttention.apply(q, k, v, causal, scale, window)
