"""Training memory per GPU: weights, gradients, optimizer states and activations (@sec-costs-memory).

Byte counts follow the ZeRO paper's accounting [@rajbhandari2020zero] and the activation analysis of
[@korthikanti2022reducing], generalised to grouped-query attention, SwiGLU and FlashAttention.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.costs.params import count_params
from llmbook.model.config import GPTConfig


@dataclass(frozen=True)
class Precision:
    """Bytes per parameter for weights, gradients and AdamW state, and bytes per stored activation."""

    weights: int
    grads: int
    optimizer: int
    activation: int


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(4, 4, 8, 4),  # everything fp32; AdamW keeps two fp32 moments
    "amp": Precision(4, 4, 8, 2),  # torch.autocast: fp32 weights/grads/moments, 16-bit activations
    "mixed": Precision(2, 2, 12, 2),  # 16-bit weights and grads, fp32 master copy + two moments (ZeRO's K=12)
}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes held on one GPU during training, by category."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict[str, float]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "total": self.total}


def _check_int(name: str, value: int, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def layer_activation_bytes(cfg: GPTConfig, micro_batch: int, seq_len: int, bytes_per_value: int = 2,
                           flash_attention: bool = True, dropout: bool = False) -> float:
    """Bytes one transformer block saves for its backward pass (Korthikanti et al.'s 34sbh + 5as²b, generalised).

    With MHA, GELU, a 4d MLP, dropout and no FlashAttention this is exactly their s·b·h·(34 + 5·a·s/h).
    """
    e, s, b = bytes_per_value, seq_len, micro_batch
    h, a, f = cfg.n_embd, cfg.n_head, cfg.ffn_dim
    h_kv = cfg.n_kv_head * cfg.head_dim
    tokens = s * b
    attention = e * tokens * (h + (h + 2 * h_kv) + h)  # norm output, Q/K/V, attention output
    if flash_attention:
        attention += 4 * a * s * b  # one fp32 log-sum-exp per query row; scores are recomputed
    else:
        attention += e * a * s * s * b  # softmax probabilities
        if dropout:
            attention += a * s * s * b + e * a * s * s * b  # dropout mask (1 byte) and dropped probabilities
    mlp = e * tokens * h + (3 if cfg.mlp == "swiglu" else 2) * e * tokens * f  # norm output, hidden activations
    if dropout:
        attention += tokens * h
        mlp += tokens * h  # residual dropout masks
    norms = 2 * e * tokens * h  # inputs of the two norms
    return attention + mlp + norms


def activation_bytes(cfg: GPTConfig, micro_batch: int, seq_len: int, bytes_per_value: int = 2,
                     checkpointing: bool = False, flash_attention: bool = True, dropout: bool = False) -> float:
    """Peak activation memory of one forward pass, with or without full activation checkpointing.

    Checkpointing keeps only each block's input and recomputes one block at a time during backward
    [@chen2016checkpointing]; the final norm input and fp32 logits for the loss are always kept.
    """
    _check_int("micro_batch", micro_batch)
    _check_int("seq_len", seq_len)
    per_layer = layer_activation_bytes(cfg, micro_batch, seq_len, bytes_per_value, flash_attention, dropout)
    tokens = micro_batch * seq_len
    if checkpointing:
        layers = cfg.n_layer * bytes_per_value * tokens * cfg.n_embd + per_layer
    else:
        layers = cfg.n_layer * per_layer
    return layers + bytes_per_value * tokens * cfg.n_embd + 4 * tokens * cfg.vocab_size


def training_memory(cfg: GPTConfig, micro_batch: int = 1, seq_len: int | None = None, world_size: int = 1,
                    zero_stage: int = 0, precision: str = "mixed", checkpointing: bool = False,
                    flash_attention: bool = True, dropout: bool = False) -> MemoryBreakdown:
    """Bytes per GPU under data parallelism: DDP (stage 0) or ZeRO stage 1/2/3 (FSDP is stage 3).

    Stage 1 shards optimizer states over `world_size` GPUs, stage 2 also gradients, stage 3 also weights
    [@rajbhandari2020zero; @zhao2023fsdp]. Activations are per GPU and never sharded by data parallelism.
    """
    _check_int("world_size", world_size)
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0 (DDP), 1, 2 or 3, got {zero_stage!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    p, n = PRECISIONS[precision], count_params(cfg).total

    def per_gpu(bytes_per_param: int, sharded_from_stage: int) -> float:
        return bytes_per_param * n / (world_size if zero_stage >= sharded_from_stage else 1)

    return MemoryBreakdown(
        weights=per_gpu(p.weights, 3),
        gradients=per_gpu(p.grads, 2),
        optimizer=per_gpu(p.optimizer, 1),
        activations=activation_bytes(cfg, micro_batch, seq_len or cfg.block_size, p.activation,
                                     checkpointing, flash_attention, dropout),
    )


def kv_cache_bytes(cfg: GPTConfig, batch: int, seq_len: int, bytes_per_value: int = 2) -> float:
    """Memory of the key/value cache for generation: 2 · layers · batch · tokens · n_kv_head · head_dim values."""
    _check_int("batch", batch)
    _check_int("seq_len", seq_len)
    return 2 * cfg.n_layer * batch * seq_len * cfg.n_kv_head * cfg.head_dim * bytes_per_value
