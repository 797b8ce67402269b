"""AdamW (or Muon with AdamW) with decay/no-decay parameter groups and warmup + cosine or WSD schedules
(@sec-scale-stability)."""

from __future__ import annotations

import math

import torch
from torch import nn

from llmbook.train.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters: matrices of linear layers decay; norms, biases and embeddings do not.

    Decaying a norm gain or a bias pulls it towards zero for no benefit, and decaying embedding rows
    penalises rare tokens that receive few gradient updates (minGPT's convention; nanoGPT decays every
    parameter with two or more dimensions, embeddings included).
    """
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower():
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class MuonAdamW(torch.optim.Optimizer):
    """Muon [@jordan2024muon] for the weight matrices inside the transformer blocks, AdamW for everything else
    (embeddings, output head, norms, biases), presented as one optimizer to the trainer and its checkpoints.

    Muon replaces each matrix's momentum by the nearest semi-orthogonal matrix (five Newton-Schulz
    iterations), so every direction of the update moves by the same amount. PyTorch's implementation is
    used with the `match_rms_adamw` scaling of [@liu2025muon], which sizes the update like AdamW's, so one
    learning rate, schedule and weight decay serve both halves.
    """

    def __init__(self, muon_params: list[torch.Tensor], adamw_groups: list[dict], lr: float, weight_decay: float,
                 momentum: float, betas: tuple[float, float], eps: float):
        if not hasattr(torch.optim, "Muon"):
            raise ValueError(f"optim.name='muon' needs PyTorch 2.9 or newer (torch.optim.Muon); this is "
                             f"{torch.__version__}: upgrade PyTorch or use optim.name='adamw'")
        self.muon = torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     nesterov=True, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps)
        super().__init__(self.muon.param_groups + self.adamw.param_groups, {})  # the same group dicts: set_lr reaches both

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError(f"not a MuonAdamW state (keys {sorted(state_dict)}); was the run trained with AdamW?")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def muon_split(model: nn.Module, weight_decay: float) -> tuple[list[torch.Tensor], list[dict]]:
    """The 2-D weights of `model.blocks` (for Muon) and `param_groups` of everything else (for AdamW)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("[optim] name='muon' needs a model with transformer blocks in `model.blocks`")
    muon = [p for p in blocks.parameters() if p.requires_grad and p.ndim == 2]
    chosen = {id(p) for p in muon}
    groups = [{**g, "params": [p for p in g["params"] if id(p) not in chosen]} for g in param_groups(model, weight_decay)]
    return muon, [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW over `param_groups` (the fused kernel on CUDA), or `MuonAdamW` when `cfg.name == "muon"`."""
    if cfg.name == "muon":
        muon, groups = muon_split(model, cfg.weight_decay)
        return MuonAdamW(muon, groups, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                         betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, fused=fused)


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then cosine, WSD or constant.

    Cosine decays from `lr` to `min_lr` over the steps after warmup [@loshchilov2017sgdr]. WSD
    (warmup-stable-decay) holds `lr` and decays linearly to `min_lr` over the last `decay_fraction`
    of the run [@hu2024minicpm], so a run can be extended from any checkpoint of its stable phase.
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))
    decay_steps = max(1, round(cfg.decay_fraction * total_steps))
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return cfg.lr
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return cfg.lr + (cfg.min_lr - cfg.lr) * progress


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write the scheduled learning rate into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
