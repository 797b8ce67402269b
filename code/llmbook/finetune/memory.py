"""Measured training memory: the bytes of weights, gradients, optimizer state and saved activations that one
optimizer step actually allocates, for full fine-tuning, LoRA and QLoRA side by side (@sec-finetune-lora).

The tensors are counted, not estimated: parameters and buffers as stored (a 4-bit base at its packed size),
`.grad` after the backward, AdamW's state after the step, and every tensor autograd saves for the backward
(through `torch.autograd.graph.saved_tensors_hooks`, parameters excluded since they are counted already). On a GPU
the allocator's peak is recorded too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes held during one training step."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    peak_cuda: int | None = None

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, int | None]:
        return {**asdict(self), "total": self.total}


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def measure_training_memory(model: nn.Module, x: Tensor, y: Tensor, lr: float = 1e-4) -> TrainingMemory:
    """Run one AdamW step of `model(x, y)` (the model's own loss) on a deep copy and count what it allocates."""
    import copy

    model = copy.deepcopy(model).train()
    device = next(model.parameters()).device
    params = {id(p): p for p in model.parameters()}
    weights = sum(_nbytes(p) for p in params.values()) + sum(_nbytes(b) for b in model.buffers())
    param_ptrs = {p.data_ptr() for p in params.values()}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        if t.data_ptr() not in param_ptrs:
            saved.setdefault(t.data_ptr(), _nbytes(t))  # a tensor saved by several ops is stored once
        return t

    trainable = [p for p in params.values() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x.to(device), y.to(device))
    loss.backward()
    gradients = sum(_nbytes(p.grad) for p in trainable if p.grad is not None)
    optimizer.step()
    state = sum(_nbytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return TrainingMemory(weights, gradients, state, sum(saved.values()), peak)
