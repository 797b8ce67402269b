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
    """Bytes per parameter for weights, gradients and AdamW state, and bytes per stored activation value.

    `residual` is the width of the residual stream, which the norms save for their backward pass (fp32 under
    autocast, because adding a 16-bit branch output to an fp32 stream stays fp32). `weight_copy` is what
    autocast adds per matmul weight: the 16-bit copy it casts once per forward and keeps for the backward.
    """

    weights: int
    grads: int
    optimizer: int
    activation: int
    residual: int
    weight_copy: int = 0


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(4, 4, 8, 4, 4),  # everything fp32; AdamW keeps two fp32 moments
    # torch.autocast, what llmbook.train does for bf16/fp16: fp32 weights, grads and moments (4 + 4 + 8),
    # 16-bit matmul inputs, an fp32 residual stream, and a 16-bit copy of every weight matrix during fwd/bwd
    "amp": Precision(4, 4, 8, 2, 4, weight_copy=2),
    # DeepSpeed/Megatron-LM: 16-bit weights and grads, fp32 master copy + two moments (ZeRO's K = 12)
    "mixed": Precision(2, 2, 12, 2, 2),
}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes held on one GPU during training, by category.

    `working_weights` are 16-bit weights that exist only during forward and backward: autocast's copies, or
    under ZeRO-3 the gathered weights of the blocks being computed.
    """

    weights: float
    gradients: float
    optimizer: float
    activations: float
    working_weights: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.working_weights

    def as_dict(self) -> dict[str, float]:
        return {"weights": self.weights, "gradients": self.gradients, "optimizer": self.optimizer,
                "activations": self.activations, "working_weights": self.working_weights, "total": self.total}


def _check_int(name: str, value: int, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def layer_activation_bytes(cfg: GPTConfig, micro_batch: int, seq_len: int, bytes_per_value: int = 2,
                           flash_attention: bool = True, dropout: bool = False,
                           residual_bytes: int | None = None) -> float:
    """Bytes one transformer block saves for its backward pass (Korthikanti et al.'s 34sbh + 5as²b, generalised).

    With MHA, GELU, a 4d MLP, LayerNorm, dropout and no FlashAttention this is exactly their s·b·h·(34 + 5·a·s/h).
    The generalisation counts what `llmbook.model.GPT` saves in PyTorch: RoPE keeps the rotated queries and
    keys, SwiGLU four hidden-width tensors (gate, up, SiLU(gate), product), and RMSNorm fp32 copies of its
    input and normalised input whatever the model's dtype; `residual_bytes` (default `bytes_per_value`) is
    the width of the residual stream, which LayerNorm saves as it is.
    """
    e, s, b = bytes_per_value, seq_len, micro_batch
    r = e if residual_bytes is None else residual_bytes
    h, a, f = cfg.n_embd, cfg.n_head, cfg.ffn_dim
    h_kv = cfg.n_kv_head * cfg.head_dim
    tokens = s * b
    attention = e * tokens * (h + (h + 2 * h_kv) + h)  # norm output, Q/K/V, attention output
    if cfg.pos_emb == "rope":
        attention += e * tokens * (h + h_kv)  # the rotated queries and keys
    if flash_attention:
        attention += 4 * a * s * b  # one fp32 log-sum-exp per query row; scores are recomputed
    else:
        attention += e * a * s * s * b  # softmax probabilities
        if dropout:
            attention += a * s * s * b + e * a * s * s * b  # dropout mask (1 byte) and dropped probabilities
    mlp = e * tokens * h + (4 if cfg.mlp == "swiglu" else 2) * e * tokens * f  # norm output, hidden activations
    if cfg.mlp == "swiglu" and r != e:
        mlp += e * tokens * h  # autocast casts the wider norm output once for each of the two input projections
    if dropout:
        attention += tokens * h
        mlp += tokens * h  # residual dropout masks
    norms = 2 * _norm_saved_bytes(cfg, r) * tokens * h
    return attention + mlp + norms


def _norm_saved_bytes(cfg: GPTConfig, residual_bytes: int) -> int:
    """Bytes a norm saves per element: LayerNorm its input; PyTorch's RMSNorm fp32 copies of input and output."""
    return residual_bytes if cfg.norm == "layernorm" else 2 * 4


def activation_bytes(cfg: GPTConfig, micro_batch: int, seq_len: int, bytes_per_value: int = 2,
                     checkpointing: bool = False, flash_attention: bool = True, dropout: bool = False,
                     residual_bytes: int | None = None) -> float:
    """Peak activation memory of one forward pass, with or without full activation checkpointing.

    Checkpointing keeps only each block's input and recomputes one block at a time during backward
    [@chen2016checkpointing]; the final norm's input and output and the fp32 logits for the loss are always kept.
    """
    _check_int("micro_batch", micro_batch)
    _check_int("seq_len", seq_len)
    r = bytes_per_value if residual_bytes is None else residual_bytes
    per_layer = layer_activation_bytes(cfg, micro_batch, seq_len, bytes_per_value, flash_attention, dropout, r)
    tokens = micro_batch * seq_len
    if checkpointing:
        layers = cfg.n_layer * r * tokens * cfg.n_embd + per_layer
    else:
        layers = cfg.n_layer * per_layer
    final_norm = (_norm_saved_bytes(cfg, r) + bytes_per_value) * tokens * cfg.n_embd  # saved inside, and output
    ids = 16 * tokens  # int64 input ids (embedding) and targets (loss)
    rope = 8 * tokens * cfg.head_dim if cfg.pos_emb == "rope" else 0  # fp32 cos and sin tables, shared by layers
    return layers + final_norm + 4 * tokens * cfg.vocab_size + ids + rope


def _weight_matrices(cfg: GPTConfig) -> int:
    """Entries of the weight matrices that matmuls read (biases, norms and the embedding lookup excluded)."""
    d, kv = cfg.n_embd, cfg.n_kv_head * cfg.head_dim
    block = 2 * d * d + 2 * d * kv + (3 if cfg.mlp == "swiglu" else 2) * d * cfg.ffn_dim
    return cfg.n_layer * block + cfg.vocab_size * d  # the output head reads a V x d matrix, tied or not


def training_memory(cfg: GPTConfig, micro_batch: int = 1, seq_len: int | None = None, world_size: int = 1,
                    zero_stage: int = 0, precision: str = "mixed", checkpointing: bool = False,
                    flash_attention: bool = True, dropout: bool = False) -> MemoryBreakdown:
    """Bytes per GPU under data parallelism: DDP (stage 0) or ZeRO stage 1/2/3 (FSDP is stage 3).

    Stage 1 shards optimizer states over `world_size` GPUs, stage 2 also gradients, stage 3 also weights
    [@rajbhandari2020zero; @zhao2023fsdp]. Activations are per GPU and never sharded by data parallelism.
    `precision` picks the byte layout: "mixed" is DeepSpeed/Megatron's 2 + 2 + 12, "amp" the autocast layout
    of `llmbook.train` (4 + 4 + 8, plus autocast's 16-bit weight copies), "fp32" no mixed precision. Under
    stage 3 the working weights are instead the 16-bit gathered weights of two blocks (the one computing and
    the one prefetched) and of the embedding/head, an estimate of what FSDP2 holds at a time, and the whole
    forward runs in 16 bits (FSDP2's MixedPrecisionPolicy replaces autocast), residual stream included.
    """
    _check_int("world_size", world_size)
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0 (DDP), 1, 2 or 3, got {zero_stage!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    p, counts = PRECISIONS[precision], count_params(cfg)
    n = counts.total

    def per_gpu(bytes_per_param: int, sharded_from_stage: int) -> float:
        return bytes_per_param * n / (world_size if zero_stage >= sharded_from_stage else 1)

    residual = p.residual
    if zero_stage == 3 and precision != "fp32":  # gathered 16-bit weights; FSDP2 computes in 16 bits, no autocast
        block = (counts.attention + counts.mlp) / cfg.n_layer
        working = 2 * (2 * block + cfg.vocab_size * cfg.n_embd)
        residual = p.activation
    else:
        working = p.weight_copy * _weight_matrices(cfg)
    return MemoryBreakdown(
        weights=per_gpu(p.weights, 3),
        gradients=per_gpu(p.grads, 2),
        optimizer=per_gpu(p.optimizer, 1),
        activations=activation_bytes(cfg, micro_batch, seq_len or cfg.block_size, p.activation,
                                     checkpointing, flash_attention, dropout, residual),
        working_weights=working,
    )


def kv_cache_bytes(cfg: GPTConfig, batch: int, seq_len: int, bytes_per_value: int = 2) -> float:
    """Memory of the key/value cache for generation: 2 · layers · batch · tokens · n_kv_head · head_dim values."""
    _check_int("batch", batch)
    _check_int("seq_len", seq_len)
    return 2 * cfg.n_layer * batch * seq_len * cfg.n_kv_head * cfg.head_dim * bytes_per_value
