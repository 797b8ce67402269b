"""FlashAttention-2 forward and backward kernels in Triton (@sec-architecture-flash).

The same algorithm as `llmbook.kernels.tiled` [@dao2023flashattention2], one program per (query block, head):
scores live in registers/SRAM tile by tile, exponentials use exp2 with the log2(e) factor folded into the
scale, and grouped-query attention reads the shared K/V head directly (query head h uses K/V head
h // (H / H_kv)), so K/V are never repeated in memory. The backward pass is two kernels: one program per
K/V block accumulates dK and dV over every query head of its group (no atomics), one per query block
accumulates dQ, each with its own tile sizes. Inside each kernel the loop over tiles runs in three parts:
tiles every query sees in full skip building the causal/window mask; only the tiles on the diagonal, at the
window's edge or on a ragged tail pay for it. Block sizes are compile-time constants chosen by `_config`
and the launch grids are functions of them, so `triton.autotune` can replace the table on CUDA.
Runs on CUDA, and on CPU under TRITON_INTERPRET=1 (how the tests check it without a GPU).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from llmbook.kernels.reference import check_window

LOG2E = 1.4426950408889634


@triton.jit
def _split(lo, hi, first_ok, last_ok, STEP: tl.constexpr):
    """Split the tile starts lo, lo+STEP, ... below hi into [lo, a) masked, [a, b) unmasked, [b, hi) masked.

    The unmasked starts p are those with first_ok <= p <= last_ok: there every score is valid and the kernel
    skips building the mask. lo is a multiple of STEP; a and b are lo plus multiples of STEP.
    """
    a = lo + (tl.maximum(first_ok - lo, 0) + STEP - 1) // STEP * STEP
    b = lo + tl.maximum(last_ok - lo + STEP, 0) // STEP * STEP
    a = tl.minimum(a, hi)
    b = tl.minimum(tl.maximum(b, a), hi)
    return a, b


@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, start_n, rows, offs_n, offs_d, d_ok, s_kt, s_vt, qk_scale,
              T_K, WINDOW, offset, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, MASKED: tl.constexpr,
              PRECISION: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of the online softmax; MASKED=False for tiles every query sees in full."""
    cols = start_n + offs_n
    if MASKED:
        k = tl.load(k_base + cols[:, None] * s_kt + offs_d[None, :], mask=(cols[:, None] < T_K) & d_ok, other=0.0)
        v = tl.load(v_base + cols[:, None] * s_vt + offs_d[None, :], mask=(cols[:, None] < T_K) & d_ok, other=0.0)
    else:
        k = tl.load(k_base + cols[:, None] * s_kt + offs_d[None, :], mask=d_ok, other=0.0)
        v = tl.load(v_base + cols[:, None] * s_vt + offs_d[None, :], mask=d_ok, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASKED:
        keep = cols[None, :] < T_K
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None] + offset)
        if USE_WINDOW:
            keep = keep & (cols[None, :] > rows[:, None] + offset - WINDOW)
        s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _key_range(start_m, T_K, WINDOW, offset, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tiles a query block [start_m, start_m + BLOCK_M) visits, split into masked and unmasked parts."""
    lo = start_m * 0
    hi = lo + T_K
    if CAUSAL:
        hi = tl.minimum(T_K, start_m + BLOCK_M + offset)
    if USE_WINDOW:
        lo = tl.maximum(0, start_m + offset - WINDOW + 1) // BLOCK_N * BLOCK_N
    first_ok = lo
    last_ok = T_K - BLOCK_N  # no ragged key tail
    if CAUSAL:  # the whole tile is at or before the first query's position
        last_ok = tl.minimum(last_ok, start_m + offset - BLOCK_N + 1)
    if USE_WINDOW:  # and inside the last query's window
        first_ok = start_m + BLOCK_M + offset - WINDOW
    a, b = _split(lo, hi, first_ok, last_ok, BLOCK_N)
    return lo, a, b, hi


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, qk_scale, T_Q, T_K, WINDOW,
                s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, HEAD_DIM: tl.constexpr,
                CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)  # 64-bit offsets: B * H * T * D can exceed 2^31
    b = bh // H
    h = bh % H
    h_kv = h // GROUP
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    d_ok = offs_d[None, :] < D
    q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_qt + offs_d[None, :],
                mask=(rows[:, None] < T_Q) & d_ok, other=0.0)
    k_base = K + b * s_kb + h_kv * s_kh
    v_base = V + b * s_vb + h_kv * s_vh
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max (log2 units)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offset = T_K - T_Q  # queries are aligned with the last keys
    lo, a, b_, hi = _key_range(start_m, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, a, BLOCK_N):  # window edge: masked
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, start_n, rows, offs_n, offs_d, d_ok, s_kt, s_vt,
                                  qk_scale, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, True, PRECISION)
    for start_n in range(a, b_, BLOCK_N):  # off-diagonal: no mask
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, start_n, rows, offs_n, offs_d, d_ok, s_kt, s_vt,
                                  qk_scale, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, False, PRECISION)
    for start_n in range(b_, hi, BLOCK_N):  # diagonal and ragged tail: masked
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, start_n, rows, offs_n, offs_d, d_ok, s_kt, s_vt,
                                  qk_scale, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, True, PRECISION)
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("inf"))
    row_ok = rows < T_Q
    tl.store(O + b * s_ob + h * s_oh + rows[:, None] * s_ot + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & d_ok)
    tl.store(LSE + bh * T_Q + rows, lse, mask=row_ok)


@triton.jit
def _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, cols, offs_d, d_ok, s_qt,
               s_ot, qk_scale, T_Q, T_K, WINDOW, offset, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr,
               MASKED: tl.constexpr, BLOCK_M: tl.constexpr, PRECISION: tl.constexpr):
    """dK, dV contributions of one query tile; rows past T_Q have lse=inf, so p=0 there without a mask."""
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < T_Q
    q = tl.load(q_base + rows[:, None] * s_qt + offs_d[None, :], mask=row_ok[:, None] & d_ok, other=0.0)
    do = tl.load(do_base + rows[:, None] * s_ot + offs_d[None, :], mask=row_ok[:, None] & d_ok, other=0.0)
    lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
    delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    p = tl.exp2(s - lse[:, None])  # probabilities rebuilt from the log-sum-exp
    if MASKED:
        keep = cols[None, :] < T_K
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None] + offset)
        if USE_WINDOW:
            keep = keep & (cols[None, :] > rows[:, None] + offset - WINDOW)
        p = tl.where(keep, p, 0.0)
    dv += tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dk += tl.dot(tl.trans(ds).to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale, T_Q, T_K, WINDOW,
                     s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                     H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, HEAD_DIM: tl.constexpr,
                     CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    start_n = tl.program_id(0) * BLOCK_N
    bh_kv = tl.program_id(1).to(tl.int64)
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
    lo = start_n * 0
    hi = lo + T_Q
    if CAUSAL:  # only queries at or after this key block see it
        lo = tl.maximum(0, start_n - offset) // BLOCK_M * BLOCK_M
    if USE_WINDOW:  # and only the next WINDOW of them
        hi = tl.minimum(T_Q, start_n + BLOCK_N - offset + WINDOW)
    first_ok = lo
    last_ok = hi  # ragged query tails need no mask (lse = inf); ragged key tails are never stored
    if CAUSAL:  # every query of the tile is at or after the block's last key
        first_ok = start_n + BLOCK_N - 1 - offset
    if USE_WINDOW:  # and the tile's last query still has the block's first key in its window
        last_ok = start_n - offset + WINDOW - BLOCK_M
    a, b_ = _split(lo, hi, first_ok, last_ok, BLOCK_M)
    for g in range(GROUP):  # every query head that shares this K/V head
        h = h_kv * GROUP + g
        q_base = Q + b * s_qb + h * s_qh
        do_base = DO + b * s_ob + h * s_oh
        lse_base = LSE + (b * H + h) * T_Q
        delta_base = DELTA + (b * H + h) * T_Q
        for start_m in range(lo, a, BLOCK_M):  # diagonal: masked
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, cols, offs_d, d_ok,
                                s_qt, s_ot, qk_scale, T_Q, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, True,
                                BLOCK_M, PRECISION)
        for start_m in range(a, b_, BLOCK_M):  # off-diagonal: no mask
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, cols, offs_d, d_ok,
                                s_qt, s_ot, qk_scale, T_Q, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, False,
                                BLOCK_M, PRECISION)
        for start_m in range(b_, hi, BLOCK_M):  # window edge: masked
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, start_m, cols, offs_d, d_ok,
                                s_qt, s_ot, qk_scale, T_Q, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, True,
                                BLOCK_M, PRECISION)
    dk = dk * sm_scale
    tl.store(DK + b * s_kb + h_kv * s_kh + cols[:, None] * s_kt + offs_d[None, :], dk.to(DK.dtype.element_ty),
             mask=col_ok & d_ok)
    tl.store(DV + b * s_vb + h_kv * s_vh + cols[:, None] * s_vt + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=col_ok & d_ok)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, k_base, v_base, start_n, rows, offs_n, offs_d, d_ok, s_kt, s_vt, qk_scale,
             T_K, WINDOW, offset, CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, MASKED: tl.constexpr,
             PRECISION: tl.constexpr):
    """dQ contribution of one key tile; keys past T_K load as zeros, so they add nothing to dQ = dS K."""
    cols = start_n + offs_n
    col_ok = cols[:, None] < T_K
    k = tl.load(k_base + cols[:, None] * s_kt + offs_d[None, :], mask=col_ok & d_ok, other=0.0)
    v = tl.load(v_base + cols[:, None] * s_vt + offs_d[None, :], mask=col_ok & d_ok, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    p = tl.exp2(s - lse[:, None])
    if MASKED:
        keep = cols[None, :] < T_K
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None] + offset)
        if USE_WINDOW:
            keep = keep & (cols[None, :] > rows[:, None] + offset - WINDOW)
        p = tl.where(keep, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale, T_Q, T_K, WINDOW,
                   s_qb, s_qh, s_qt, s_kb, s_kh, s_kt, s_vb, s_vh, s_vt, s_ob, s_oh, s_ot,
                   H: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, HEAD_DIM: tl.constexpr,
                   CAUSAL: tl.constexpr, USE_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    h_kv = h // GROUP
    rows = start_m + tl.arange(0, BLOCK_M)
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
    k_base = K + b * s_kb + h_kv * s_kh
    v_base = V + b * s_vb + h_kv * s_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offset = T_K - T_Q
    lo, a, b_, hi = _key_range(start_m, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, BLOCK_M, BLOCK_N)
    for start_n in range(lo, a, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, start_n, rows, offs_n, offs_d, d_ok, s_kt, s_vt,
                      qk_scale, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, True, PRECISION)
    for start_n in range(a, b_, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, start_n, rows, offs_n, offs_d, d_ok, s_kt, s_vt,
                      qk_scale, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, False, PRECISION)
    for start_n in range(b_, hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, start_n, rows, offs_n, offs_d, d_ok, s_kt, s_vt,
                      qk_scale, T_K, WINDOW, offset, CAUSAL, USE_WINDOW, True, PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * s_qb + h * s_qh + rows[:, None] * s_qt + offs_d[None, :], dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & d_ok)


@triton.jit
def _delta_kernel(O, DO, DELTA, T_Q, s_ob, s_oh, s_ot, H: tl.constexpr, D: tl.constexpr, HEAD_DIM: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    """Preprocessing for the backward pass: D_i = rowsum(dO_i * O_i) in float32."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    bh = tl.program_id(1).to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = (rows[:, None] < T_Q) & (offs_d[None, :] < D)
    ptr = (bh // H) * s_ob + (bh % H) * s_oh + rows[:, None] * s_ot + offs_d[None, :]
    o = tl.load(O + ptr, mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + ptr, mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * T_Q + rows, tl.sum(o * do, 1), mask=rows < T_Q)


def _config(dtype: torch.dtype, head_dim: int, capability: tuple[int, int] | None) -> dict[str, dict]:
    """Block sizes and launch options of the three kernels ("fwd", "dkdv", "dq"): the fixed configurations.

    `capability` is the GPU's compute capability, None for the CPU interpreter. Before Ampere (e.g. the T4
    of free notebooks, 64 KiB of shared memory per block) the tiles are smaller and not pipelined. The
    launch grids are functions of the chosen block sizes, so a `triton.autotune` over these keys can
    replace this table on CUDA.
    """
    if capability is None:  # the interpreter: small tiles keep the CPU run short
        tile = dict(BLOCK_M=16, BLOCK_N=16)
        return dict(fwd=tile, dkdv=dict(tile), dq=dict(tile))
    if capability < (8, 0):
        fwd = dict(BLOCK_M=64 if head_dim <= 64 else 32, BLOCK_N=32, num_warps=4, num_stages=1)
        return dict(fwd=fwd, dkdv=dict(BLOCK_M=32, BLOCK_N=64 if head_dim <= 64 else 32, num_warps=4, num_stages=1),
                    dq=dict(fwd))
    big = head_dim <= 64 and dtype != torch.float32
    fwd = dict(BLOCK_M=128 if big else 64, BLOCK_N=64 if head_dim <= 64 else 32,
               num_warps=8 if head_dim == 128 else 4, num_stages=2)
    # dK/dV: a tall key tile stays in registers while query tiles stream past (FlashAttention-2's layout)
    dkdv = dict(BLOCK_M=32, BLOCK_N=128 if big else 64, num_warps=8 if head_dim == 128 else 4, num_stages=2)
    return dict(fwd=fwd, dkdv=dkdv, dq=dict(fwd))


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the Triton attention kernel supports float16, bfloat16 and float32, not {q.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] > 128:
        raise ValueError(f"the Triton attention kernel supports head dims up to 128, got {q.shape[-1]}")


PRECISIONS = ("ieee", "tf32")


def _common(q: Tensor, k: Tensor, causal: bool, scale: float, window: int | None,
            precision: str) -> tuple[dict, dict, dict]:
    """Constants shared by the kernels, each kernel's tile configuration, and the runtime scalars."""
    b, h, t_q, d = q.shape
    head_dim = max(16, triton.next_power_of_2(d))
    capability = torch.cuda.get_device_capability(q.device) if q.device.type == "cuda" else None
    consts = dict(H=h, GROUP=h // k.shape[1], D=d, HEAD_DIM=head_dim, CAUSAL=causal, USE_WINDOW=window is not None,
                  PRECISION=precision if q.dtype == torch.float32 else "ieee")
    scalars = dict(qk_scale=scale * LOG2E, T_Q=t_q, T_K=k.shape[2], WINDOW=window or 0)
    return consts, _config(q.dtype, head_dim, capability), scalars


class TritonAttention(torch.autograd.Function):
    """Autograd wrapper around the kernels; saves q, k, v, the output and the (base-2) log-sum-exp."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float, window: int | None,
                precision: str) -> Tensor:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        consts, tiles, scalars = _common(q, k, causal, scale, window, precision)
        b, h, t_q, _ = q.shape
        o = torch.empty_like(q)
        lse = torch.empty(b * h * t_q, dtype=torch.float32, device=q.device)
        grid = lambda META: (triton.cdiv(t_q, META["BLOCK_M"]), b * h)  # noqa: E731 (what triton.autotune calls)
        _fwd_kernel[grid](q, k, v, o, lse, scalars["qk_scale"], scalars["T_Q"], scalars["T_K"], scalars["WINDOW"],
                          *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], **consts, **tiles["fwd"])
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (causal, scale, window, precision)
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, o, lse = ctx.saved_tensors
        causal, scale, window, precision = ctx.args
        do = do.contiguous()
        consts, tiles, scalars = _common(q, k, causal, scale, window, precision)
        b, h, t_q, _ = q.shape
        delta = torch.empty_like(lse)  # D_i = rowsum(dO * O)
        _delta_kernel[lambda META: (triton.cdiv(t_q, META["BLOCK_M"]), b * h)](
            o, do, delta, t_q, *o.stride()[:3], H=h, D=consts["D"], HEAD_DIM=consts["HEAD_DIM"], BLOCK_M=16)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        args = (scalars["qk_scale"], scale, scalars["T_Q"], scalars["T_K"], scalars["WINDOW"],
                *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
        grid_kv = lambda META: (triton.cdiv(k.shape[2], META["BLOCK_N"]), b * k.shape[1])  # noqa: E731
        _bwd_dkdv_kernel[grid_kv](q, k, v, do, lse, delta, dk, dv, *args, **consts, **tiles["dkdv"])
        grid_q = lambda META: (triton.cdiv(t_q, META["BLOCK_M"]), b * h)  # noqa: E731
        _bwd_dq_kernel[grid_q](q, k, v, do, lse, delta, dq, *args, **consts, **tiles["dq"])
        return dq, dk, dv, None, None, None, None


def triton_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: float | None = None,
                     window: int | None = None, precision: str = "ieee") -> Tensor:
    """FlashAttention-2 in Triton with autograd (@sec-architecture-flash); q (B, H, T_q, D), k/v (B, H_kv, T_k, D).

    `precision` applies to float32 inputs: "ieee" (exact float32 dot products) or "tf32" (tensor cores on
    Ampere and later, about 1e-3 relative error, like torch.backends.cuda.matmul.allow_tf32).
    """
    _check(q, k, v)
    check_window(causal, window)
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {PRECISIONS}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return TritonAttention.apply(q, k, v, causal, scale, window, precision)
