"""Pruning: zero the least important weights of every `nn.Linear`, unstructured or 2:4 (@sec-inference-prune).

Magnitude pruning [@han2015pruning] keeps the weights with the largest |w| in each layer. Unstructured
sparsity saves memory only with a sparse format and time only with sparse kernels at high sparsity; the
2:4 pattern (in every group of four consecutive input weights, two are zero) is what NVIDIA's sparse tensor
cores accelerate [@mishra2021sparse], at a fixed 50% sparsity.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch import Tensor

from llmbook.serve.quant import _linears


def magnitude_mask(w: Tensor, sparsity: float) -> Tensor:
    """Bool mask keeping all but the round(sparsity * numel) smallest-|w| entries (ties broken by position)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    n_drop = round(sparsity * w.numel())
    mask = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    if n_drop:
        mask[torch.topk(w.abs().flatten(), n_drop, largest=False).indices] = False
    return mask.reshape(w.shape)


def n_m_mask(w: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """Bool mask keeping the n largest-|w| of every m consecutive weights along the input dimension (2:4 by default)."""
    if not 0 < n < m:
        raise ValueError(f"need 0 < n < m, got n={n}, m={m}")
    out_f, in_f = w.shape
    if in_f % m:
        raise ValueError(f"in_features={in_f} is not a multiple of m={m}")
    groups = w.abs().reshape(out_f, in_f // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, torch.topk(groups, n, dim=-1).indices, True)
    return keep.reshape(out_f, in_f)


def prune_model(model: nn.Module, method: str = "magnitude", sparsity: float = 0.5,
                skip: Iterable[str] = ("lm_head",)) -> dict[str, float]:
    """Zero weights of every `nn.Linear` outside `skip` in place; returns each layer's achieved sparsity.

    `method` is "magnitude" (per-layer, at `sparsity`) or "2:4" (sparsity is then 0.5 by construction).
    """
    if method not in ("magnitude", "2:4"):
        raise ValueError(f"pruning method {method!r} is not 'magnitude' or '2:4'")
    achieved = {}
    with torch.no_grad():
        for name, lin in _linears(model, skip):
            mask = magnitude_mask(lin.weight, sparsity) if method == "magnitude" else n_m_mask(lin.weight)
            lin.weight.mul_(mask)
            achieved[name] = 1 - mask.float().mean().item()
    return achieved


def sparsity_of(model: nn.Module, skip: Iterable[str] = ("lm_head",)) -> float:
    """Fraction of exactly-zero weights over the linear layers outside `skip`."""
    zeros = total = 0
    for _, lin in _linears(model, skip):
        zeros += int((lin.weight == 0).sum())
        total += lin.weight.numel()
    return zeros / max(total, 1)
