"""Attention built step by step, one small function per idea, for the book to print (@sec-architecture-attention).

scores -> mask (causal, sliding window) -> softmax -> weighted sum -> multi-head -> grouped-query, plus
cross-attention for encoder-decoder models. The model's own attention (`llmbook.model.model`) runs the fused
kernels of `llmbook.kernels`; the tests check that both compute the same thing as PyTorch's
`scaled_dot_product_attention` and `nn.MultiheadAttention`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def attention_scores(q: Tensor, k: Tensor) -> Tensor:
    """Step 1: every query against every key, q k^T / sqrt(d_h): (..., T_q, D) x (..., T_k, D) -> (..., T_q, T_k)."""
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def causal_mask(t_q: int, t_k: int, device: torch.device | str | None = None) -> Tensor:
    """Step 2: True where query i may see key j, i.e. j <= i (queries aligned to the last keys, as in decoding)."""
    i = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)  # the query's position among the keys
    j = torch.arange(t_k, device=device)[None, :]
    return j <= i


def sliding_window_mask(t_q: int, t_k: int, window: int, device: torch.device | str | None = None) -> Tensor:
    """Causal mask that also hides keys more than `window - 1` positions back: each query sees `window` keys."""
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    i = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)
    j = torch.arange(t_k, device=device)[None, :]
    return (j <= i) & (j > i - window)


def masked_softmax(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """Step 3: scores of hidden keys become -inf, so each row's softmax spreads 1 over the visible keys only."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def weighted_sum(probs: Tensor, v: Tensor) -> Tensor:
    """Step 4: each query's output is the average of the values, weighted by its attention probabilities."""
    return probs @ v


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Steps 1-4 together: softmax(q k^T / sqrt(d_h), masked) v for one or many heads."""
    return weighted_sum(masked_softmax(attention_scores(q, k), mask), v)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, H * D) -> (B, H, T, D): the width is cut into `n_head` independent slices."""
    b, t, width = x.shape
    if width % n_head:
        raise ValueError(f"width {width} is not divisible by n_head={n_head}")
    return x.view(b, t, n_head, width // n_head).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, H * D): the heads' outputs side by side again."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Grouped-query attention: (B, H_kv, T, D) -> (B, H_kv * n_rep, T, D), each K/V head serving n_rep query heads."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def multi_head_attention(x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, w_o: Tensor, n_head: int,
                         n_kv_head: int | None = None, mask: Tensor | None = None,
                         memory: Tensor | None = None) -> Tensor:
    """Steps 5-6: project, split into heads, share K/V heads (GQA), attend per head, merge, project back.

    Weights are stored like `nn.Linear` (out_features, in_features). Queries come from x (B, T, C); keys and
    values from `memory` (B, S, C) when given (cross-attention), else from x itself (self-attention).
    """
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    if n_head % n_kv_head:
        raise ValueError(f"n_head={n_head} must be a multiple of n_kv_head={n_kv_head}")
    source = x if memory is None else memory
    q = split_heads(x @ w_q.T, n_head)  # (B, H, T, D)
    k = split_heads(source @ w_k.T, n_kv_head)  # (B, H_kv, S, D)
    v = split_heads(source @ w_v.T, n_kv_head)
    k, v = repeat_kv(k, n_head // n_kv_head), repeat_kv(v, n_head // n_kv_head)
    return merge_heads(scaled_dot_product_attention(q, k, v, mask)) @ w_o.T


class CrossAttention(nn.Module):
    """Encoder-decoder attention [@vaswani2017attention]: decoder queries read the encoder's keys and values.

    There is no causal mask: every output position may look at the whole (already known) input; `memory_mask`
    (B, S), True for real input tokens, hides padding (@sec-architecture-families).
    """

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_head = n_head
        self.q, self.k, self.v, self.o = (nn.Linear(n_embd, n_embd, bias=False) for _ in range(4))

    def forward(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        """x (B, T, C) attends to memory (B, S, C); returns (B, T, C)."""
        mask = None if memory_mask is None else memory_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        return multi_head_attention(x, self.q.weight, self.k.weight, self.v.weight, self.o.weight, self.n_head,
                                    mask=mask, memory=memory)

    @torch.no_grad()
    def weights(self, x: Tensor, memory: Tensor) -> Tensor:
        """The attention probabilities (B, H, T, S) of each decoder position over the encoder positions."""
        q, k = split_heads(self.q(x), self.n_head), split_heads(self.k(memory), self.n_head)
        return masked_softmax(attention_scores(q, k))
