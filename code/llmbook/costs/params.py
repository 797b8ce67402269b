"""Parameter counts from a model config, split by where they live (@sec-costs-params)."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.model.config import GPTConfig


@dataclass(frozen=True)
class ParamCount:
    """Parameters of a decoder-only transformer by component; `total` is what `model.parameters()` sums to."""

    embedding: int  # token embedding table (shared with the head when tied)
    position: int  # learned absolute position table (0 for sinusoidal, RoPE, ALiBi)
    attention: int  # Q, K, V and output projections of all layers (+ biases)
    mlp: int  # feed-forward weights of all layers (+ biases)
    norm: int  # every normalisation layer, the final one included
    head: int  # untied output projection (0 when tied to the embedding)

    @property
    def total(self) -> int:
        return self.embedding + self.position + self.attention + self.mlp + self.norm + self.head

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: everything but the embedding and position tables [@kaplan2020scaling]."""
        return self.attention + self.mlp + self.norm + self.head


def count_params(cfg: GPTConfig) -> ParamCount:
    """Exact parameter count of the model `cfg` describes (GQA, SwiGLU, tied heads and biases included)."""
    d, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    kv = cfg.n_kv_head * cfg.head_dim  # width of the K and V projections under grouped-query attention
    f = cfg.ffn_dim
    attn = d * d + 2 * d * kv + d * d  # W_q, W_k, W_v, W_o
    if cfg.bias:
        attn += d + 2 * kv + d
    if cfg.mlp == "swiglu":
        mlp = 3 * d * f + (2 * f + d if cfg.bias else 0)  # gate, up, down
    else:
        mlp = 2 * d * f + (f + d if cfg.bias else 0)  # up, down
    norm_size = 2 * d if (cfg.norm == "layernorm" and cfg.bias) else d  # LayerNorm has a bias, RMSNorm none
    return ParamCount(
        embedding=V * d,
        position=cfg.block_size * d if cfg.pos_emb == "learned" else 0,
        attention=L * attn,
        mlp=L * mlp,
        norm=(2 * L + 1) * norm_size,
        head=0 if cfg.tie_weights else V * d,
    )
