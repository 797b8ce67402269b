"""Measure where training memory goes, to check `llmbook.costs` predictions on a real model (@sec-scale-memory)."""

from __future__ import annotations

import contextlib

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


def _autocast(device_type: str, dtype: torch.dtype | None):
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _cast_of_parameter(t: torch.Tensor, params: set[int]) -> bool:
    """True when t (or the tensor it views) is autocast's low-precision copy of one of the parameters."""
    base = t._base if t._base is not None else t
    fn = base.grad_fn
    if fn is None or type(fn).__name__ != "ToCopyBackward0":
        return False
    source = fn.next_functions[0][0]
    return source is not None and id(getattr(source, "variable", None)) in params


def saved_tensor_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       autocast_dtype: torch.dtype | None = None) -> tuple[int, int]:
    """Bytes autograd saves for the backward of one forward: (activations, autocast's copies of the weights).

    Counted with `torch.autograd.graph.saved_tensors_hooks`, each storage once, so views of the same tensor are
    not double counted; parameters themselves are left out. Under autocast, the 16-bit copies of the weights
    that the matmuls save are reported separately from the activations.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_ids = {id(p) for p in model.parameters()}
    saved: list[torch.Tensor] = []
    copies: list[torch.Tensor] = []

    def pack(t: torch.Tensor):
        if _cast_of_parameter(t, param_ids):
            copies.append(t)
        elif t.untyped_storage().data_ptr() not in params:
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _autocast(x.device.type, autocast_dtype):
        _, loss = model(x, y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return _nbytes(saved), _nbytes(copies)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast_dtype=None) -> int:
    """Bytes of the activations autograd saves for the backward pass of one forward (parameters excluded).

    This is the "activations" term of the memory model; see `saved_tensor_bytes`.
    """
    return saved_tensor_bytes(model, x, y, autocast_dtype)[0]


def measure_training_memory(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                            y: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> MemoryBreakdown:
    """Run one optimizer step and count the bytes of weights, gradients, AdamW moments and saved tensors.

    With `autocast_dtype` the forward runs under `torch.autocast`, as `llmbook.train` does for bf16/fp16.
    Returns the same `MemoryBreakdown` that `llmbook.costs.training_memory` predicts, so the two compare field by field.
    """
    activations, copies = saved_tensor_bytes(model, x, y, autocast_dtype)
    with _autocast(x.device.type, autocast_dtype):
        _, loss = model(x, y)
    loss.backward()
    grads = _nbytes(p.grad for p in model.parameters() if p.grad is not None)
    optimizer.step()
    state = _nbytes(v for s in optimizer.state.values() for v in s.values()
                    if torch.is_tensor(v) and v.ndim > 0)
    optimizer.zero_grad(set_to_none=True)
    return MemoryBreakdown(_nbytes(model.parameters()), grads, state, activations, copies)
