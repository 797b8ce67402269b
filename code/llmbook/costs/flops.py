"""Floating-point operations for training and inference, and model FLOPs utilisation (@sec-costs-flops)."""

from __future__ import annotations

from dataclasses import dataclass

from llmbook.costs.memory import kv_cache_bytes
from llmbook.costs.params import count_params
from llmbook.model.config import GPTConfig


def _positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return value


def matmul_params(cfg: GPTConfig) -> int:
    """Parameters that take part in a matrix multiply per token: all layers plus the output head.

    The embedding lookup costs no FLOPs, but the head's V x d projection does, tied or not.
    """
    p = count_params(cfg)
    return p.attention + p.mlp + cfg.vocab_size * cfg.n_embd


def flops_per_token(cfg: GPTConfig, seq_len: int | None = None, training: bool = True) -> float:
    """FLOPs per token: 6N + 12·L·T·d for training, 2N + 4·L·T·d forward only (PaLM appendix B).

    N counts matmul parameters and T the context length; the attention term counts the full T x T score
    matrix as in [@chowdhery2022palm], without discounting the causal mask.
    """
    T = cfg.block_size if seq_len is None else int(_positive("seq_len", seq_len))
    n, attn = matmul_params(cfg), cfg.n_layer * T * cfg.n_embd
    return 6 * n + 12 * attn if training else 2 * n + 4 * attn


def train_flops(n_params: float, n_tokens: float) -> float:
    """The classic C = 6·N·D estimate of training compute [@kaplan2020scaling; @hoffmann2022chinchilla]."""
    return 6 * _positive("params", n_params) * _positive("tokens", n_tokens)


def train_flops_for(cfg: GPTConfig, n_tokens: float, seq_len: int | None = None) -> float:
    """Training compute of a concrete architecture, attention included."""
    return _positive("tokens", n_tokens) * flops_per_token(cfg, seq_len, training=True)


def mfu(tokens_per_s: float, cfg: GPTConfig, seq_len: int | None, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware peak [@chowdhery2022palm]."""
    achieved = _positive("tokens_per_s", tokens_per_s) * flops_per_token(cfg, seq_len, training=True)
    return achieved / _positive("peak_flops", peak_flops)


@dataclass(frozen=True)
class DecodeStep:
    """One forward step for a batch (a decoding step, or a prefill): FLOPs, and the bytes of weights and of KV
    cache read from memory."""

    flops: float
    weight_bytes: float
    kv_bytes: float

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved; below the GPU's ridge point the step is memory-bound."""
        return self.flops / self.bytes

    @property
    def kv_share(self) -> float:
        """Fraction of the bytes read that are the KV cache rather than the weights."""
        return self.kv_bytes / self.bytes


def decode_step(cfg: GPTConfig, batch: int, context: int, bytes_per_value: int = 2) -> DecodeStep:
    """Cost of generating one token for each of `batch` sequences with `context` cached tokens.

    Each step reads every weight once, whatever the batch (2·N FLOPs per sequence for N matmul weights), and
    each sequence's cached keys and values (4·L·context·d attention FLOPs) [@pope2023efficiently]
    (@sec-architecture-kvcache).
    """
    _positive("batch", batch)
    _positive("context", context)
    n = matmul_params(cfg)
    flops = batch * (2 * n + 4 * cfg.n_layer * context * cfg.n_embd)
    weights = bytes_per_value * (n + count_params(cfg).norm)
    return DecodeStep(flops, weights, kv_cache_bytes(cfg, batch, context, bytes_per_value))
