"""Measure where training memory goes, to check `llmbook.costs` predictions on a real model (@sec-scale-memory)."""

from __future__ import annotations

import torch
from torch import nn

from llmbook.costs.memory import MemoryBreakdown


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if t.device.type != "meta" and key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast_dtype=None) -> int:
    """Bytes of the tensors autograd saves for the backward pass of one forward (parameters excluded).

    Counted with `torch.autograd.graph.saved_tensors_hooks`, each storage once, so views of the same
    activation are not double counted. This is the "activations" term of the memory model.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor):
        if t.untyped_storage().data_ptr() not in params:
            saved.append(t)
        return t

    ctx = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else torch.autocast(x.device.type, enabled=False)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        _, loss = model(x, y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return _nbytes(saved)


def measure_training_memory(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                            y: torch.Tensor) -> MemoryBreakdown:
    """Run one optimizer step and count the bytes of weights, gradients, AdamW moments and saved activations.

    Returns the same `MemoryBreakdown` that `llmbook.costs.training_memory` predicts, so the two compare field by field.
    """
    activations = saved_activation_bytes(model, x, y)
    _, loss = model(x, y)
    loss.backward()
    grads = _nbytes(p.grad for p in model.parameters() if p.grad is not None)
    optimizer.step()
    state = _nbytes(v for s in optimizer.state.values() for v in s.values()
                    if torch.is_tensor(v) and v.ndim > 0)
    optimizer.zero_grad(set_to_none=True)
    return MemoryBreakdown(_nbytes(model.parameters()), grads, state, activations)
