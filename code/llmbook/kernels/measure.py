"""Counting what an attention call computes and allocates: FLOPs and the largest tensor it creates (@sec-architecture-flash)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def attention_flops(batch: int, n_head: int, t_q: int, t_k: int, head_dim: int, causal: bool,
                    mode: str = "fwd") -> int:
    """Matmul FLOPs of attention: 4·B·H·(visible query-key pairs)·D forward, 2.5x that backward [@dao2023flashattention2].

    2.5x is FlashAttention-2's counting convention: its backward does five matmuls (recomputing the scores)
    to the forward's two; naive and SDPA backward passes do four. A causal mask halves the visible pairs.
    """
    offset = t_k - t_q
    pairs = sum(max(0, min(t_k, i + offset + 1)) for i in range(t_q)) if causal else t_q * t_k
    fwd = 4 * batch * n_head * pairs * head_dim
    factors = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
    if mode not in factors:
        raise ValueError(f"mode={mode!r} is not one of {sorted(factors)}")
    return int(fwd * factors[mode])


class LargestTensor(TorchDispatchMode):
    """Records the size in bytes of the largest tensor any operation creates while active.

    A deterministic stand-in for peak memory on CPU: the naive attention's (T_q, T_k) score matrix shows up
    as O(T^2), the tiled one's (block_q, block_k) tiles do not.
    """

    def __init__(self) -> None:
        super().__init__()
        self.max_bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.max_bytes = max(self.max_bytes, t.numel() * t.element_size())
        return out


def largest_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the largest tensor created while running `fn()` (inputs excluded)."""
    with LargestTensor() as tracker:
        fn()
    return tracker.max_bytes
