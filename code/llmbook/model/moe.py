"""A mixture-of-experts MLP: top-k routing, the load-balancing loss, and parameter/FLOP counts (@sec-architecture-moe).

Each token is sent by a learned router to `top_k` of `n_expert` copies of the block's MLP (the experts), and
its output is the router-weighted sum of theirs [@shazeer2017outrageously; @lepikhin2021gshard]. Parameters
grow with the number of experts, compute per token only with `top_k`. The layout and the renormalised top-k
weights follow Mixtral [@jiang2024mixtral]; the auxiliary loss is Switch Transformer's [@fedus2022switch].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from llmbook.costs.params import count_params
from llmbook.model.config import GPTConfig
from llmbook.model.model import MLP


@dataclass
class MoEConfig:
    """How many experts, how many each token uses, and whether the chosen experts' weights are renormalised."""

    n_expert: int = 8
    top_k: int = 2
    renormalize: bool = True  # Mixtral: the k chosen probabilities are rescaled to sum to 1; Switch (k=1): raw p

    def __post_init__(self) -> None:
        for name in ("n_expert", "top_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MoEConfig.{name} must be a positive integer, got {value!r}")
        if self.top_k > self.n_expert:
            raise ValueError(f"MoEConfig.top_k={self.top_k} exceeds n_expert={self.n_expert}")


class MoEOutput(NamedTuple):
    """What one MoE forward returns: the output, the load-balancing loss and the routing decisions."""

    output: Tensor  # (B, T, C)
    aux_loss: Tensor  # scalar load-balancing loss (1.0 for perfectly uniform routing)
    router_probs: Tensor  # (B*T, n_expert), float32
    expert_index: Tensor  # (B*T, top_k) chosen experts, most probable first


def route(logits: Tensor, top_k: int, renormalize: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Router probabilities (N, E), the weights (N, k) and indices (N, k) of each token's top-k experts.

    The softmax runs in float32; with `renormalize` the k chosen probabilities are divided by their sum.
    """
    probs = torch.softmax(logits.float(), dim=-1)
    weights, index = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, index


def tokens_per_expert(expert_index: Tensor, n_expert: int) -> Tensor:
    """How many (token, slot) assignments each expert received: (n_expert,) counts summing to N * k."""
    return torch.bincount(expert_index.reshape(-1), minlength=n_expert)


def load_balancing_loss(router_probs: Tensor, expert_index: Tensor, n_expert: int) -> Tensor:
    """Switch Transformer's auxiliary loss E * sum_i f_i * P_i [@fedus2022switch].

    f_i is the fraction of the N * k assignments that went to expert i (a count, no gradient) and P_i the
    mean router probability of expert i (differentiable). Uniform routing gives exactly 1. For k > 1 this
    divides by k; Hugging Face's Mixtral `load_balancing_loss_func` does not, so it equals k times this value.
    """
    f = tokens_per_expert(expert_index, n_expert).to(router_probs.dtype) / expert_index.numel()
    p = router_probs.mean(dim=0)
    return n_expert * (f * p).sum()


class MoE(nn.Module):
    """A drop-in replacement for the block's MLP: a router and `n_expert` MLPs, of which each token uses `top_k`."""

    def __init__(self, config: GPTConfig, moe: MoEConfig) -> None:
        super().__init__()
        self.moe = moe
        self.router = nn.Linear(config.n_embd, moe.n_expert, bias=False)
        self.experts = nn.ModuleList(MLP(config) for _ in range(moe.n_expert))

    def forward(self, x: Tensor) -> MoEOutput:
        """Route every token of x (B, T, C) to its top-k experts and mix their outputs by the router weights."""
        flat = x.reshape(-1, x.shape[-1])
        probs, weights, index = route(self.router(flat), self.moe.top_k, self.moe.renormalize)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(index == e)  # the tokens that chose expert e, and in which of their k slots
            if token.numel():
                out.index_add_(0, token, (weights[token, slot, None] * expert(flat[token])).to(out.dtype))
        return MoEOutput(out.view_as(x), load_balancing_loss(probs, index, self.moe.n_expert), probs, index)


# ------------------------------------------------------------------------------------------ counting
@dataclass(frozen=True)
class MoECount:
    """Parameters stored (total) and parameters each token computes with (active)."""

    total: int
    active: int


def _mlp_matmul_params(cfg: GPTConfig) -> int:
    """Weights of one MLP that take part in matrix multiplies (biases excluded)."""
    return (3 if cfg.mlp == "swiglu" else 2) * cfg.n_embd * cfg.ffn_dim


def layer_params(cfg: GPTConfig, moe: MoEConfig) -> MoECount:
    """Parameters of one MoE layer: the router plus all experts (total) or plus the top_k used (active)."""
    expert = count_params(cfg).mlp // cfg.n_layer  # one MLP of this shape, biases included
    router = cfg.n_embd * moe.n_expert
    return MoECount(total=router + moe.n_expert * expert, active=router + moe.top_k * expert)


def layer_flops_per_token(cfg: GPTConfig, moe: MoEConfig) -> int:
    """Forward matmul FLOPs of one MoE layer per token: 2 per weight of the router and of the top_k experts."""
    return 2 * (cfg.n_embd * moe.n_expert + moe.top_k * _mlp_matmul_params(cfg))


def model_params(cfg: GPTConfig, moe: MoEConfig) -> MoECount:
    """Total and active parameters of the transformer `cfg` with every block's MLP replaced by an MoE layer."""
    dense = count_params(cfg)
    layer = layer_params(cfg, moe)
    rest = dense.total - dense.mlp
    return MoECount(total=rest + cfg.n_layer * layer.total, active=rest + cfg.n_layer * layer.active)


# Mixtral 8x7B's published shape [@jiang2024mixtral]: Mistral 7B's attention with 8 SwiGLU experts, top-2.
MIXTRAL_8X7B = (
    GPTConfig(vocab_size=32000, block_size=32768, n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, mlp="swiglu",
              mlp_hidden=14336, norm="rmsnorm", pos_emb="rope", bias=False, tie_weights=False, rope_base=1e6),
    MoEConfig(n_expert=8, top_k=2),
)
