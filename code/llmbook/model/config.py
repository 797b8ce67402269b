"""The model configuration shared by the architecture code and the cost estimates (@sec-architecture)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbook.kernels import IMPLS as ATTN_IMPLS

MLP_TYPES = ("gelu", "swiglu")
NORM_TYPES = ("layernorm", "rmsnorm")
POS_TYPES = ("learned", "sinusoidal", "rope", "alibi")
NORM_POSITIONS = ("pre", "post")


@dataclass
class GPTConfig:
    """Shape and options of a decoder-only transformer; validated on construction.

    Field names follow nanoGPT (n_layer, n_head, n_embd) and Llama (n_kv_head, multiple_of).
    """

    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None  # None: equal to n_head (multi-head attention)
    n_embd: int = 768
    mlp: str = "gelu"  # "gelu" (4x hidden) or "swiglu" (8/3x hidden, rounded to multiple_of)
    mlp_hidden: int | None = None  # override the hidden width of the MLP
    multiple_of: int = 64
    norm: str = "layernorm"
    pos_emb: str = "learned"
    bias: bool = True
    tie_weights: bool = True
    dropout: float = 0.0  # on embeddings and on each residual branch (attention probabilities are not dropped)
    norm_eps: float = 1e-5
    norm_position: str = "pre"  # "pre" (GPT-2, Llama) or "post" (original transformer, BERT)
    rope_base: float = 10000.0  # theta of RoPE; Llama 3 pre-trains with 500000
    sliding_window: int | None = None  # each query sees at most this many keys (itself included); None: all
    attn_impl: str = "auto"  # see llmbook.kernels.attention
    causal: bool = True  # False: a bidirectional encoder (masked-LM) built from the same blocks
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # options owned by later chapters

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "multiple_of"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        for name in ("bias", "tie_weights", "causal"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("dropout", "norm_eps", "rope_base"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"GPTConfig.{name} must be a number, got {value!r}")
        if self.mlp_hidden is not None and (not isinstance(self.mlp_hidden, int) or self.mlp_hidden <= 0):
            raise ValueError(f"GPTConfig.mlp_hidden must be a positive integer or None, got {self.mlp_hidden!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig.n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}")
        for name, allowed in (("mlp", MLP_TYPES), ("norm", NORM_TYPES), ("pos_emb", POS_TYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        for name, allowed in (("norm_position", NORM_POSITIONS), ("attn_impl", ATTN_IMPLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} is not one of {allowed}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"GPTConfig.norm_eps must be positive, got {self.norm_eps!r}")
        if not self.rope_base > 1:
            raise ValueError(f"GPTConfig.rope_base must be greater than 1, got {self.rope_base!r}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window <= 0):
            raise ValueError(f"GPTConfig.sliding_window must be a positive integer or None, got {self.sliding_window!r}")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"GPTConfig.pos_emb='rope' needs an even head_dim, got {self.head_dim}")
        if self.pos_emb == "alibi" and self.attn_impl not in ("auto", "naive", "sdpa"):
            raise ValueError(f"GPTConfig.pos_emb='alibi' adds a bias to the score matrix, which only the naive "
                             f"and sdpa attentions support; got attn_impl={self.attn_impl!r}, use 'sdpa' or 'naive'")
        if self.sliding_window is not None and not self.causal:
            raise ValueError("GPTConfig.sliding_window needs causal=True (a window of past tokens)")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the MLP: 4d for GELU, 8d/3 rounded up to `multiple_of` for SwiGLU."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "gelu":
            return 4 * self.n_embd
        hidden = int(8 * self.n_embd / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "GPTConfig":
        """Build a config from a mapping, naming the source and the field when something is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of GPTConfig fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown GPTConfig field(s) {unknown}; known fields are {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named architecture from `PRESETS` (published shapes), with optional overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def load(cls, spec: str) -> "GPTConfig":
        """Resolve a preset name, a JSON file, or a TOML file whose `[model]` table holds the fields."""
        if spec in PRESETS:
            return cls.from_preset(spec)
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"{spec!r} is neither a model preset ({', '.join(sorted(PRESETS))}) nor a file")
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"{path}: malformed TOML: {err}") from None
            data = data.get("model", data)
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: malformed JSON: {err}") from None
        return cls.from_dict(data, source=str(path))


def _llama(n_layer: int, n_head: int, n_embd: int, vocab: int, ctx: int, n_kv_head: int | None = None,
           multiple_of: int = 256, mlp_hidden: int | None = None, rope_base: float = 10000.0,
           norm_eps: float = 1e-5) -> dict[str, Any]:
    return dict(vocab_size=vocab, block_size=ctx, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head,
                n_embd=n_embd, mlp="swiglu", multiple_of=multiple_of, mlp_hidden=mlp_hidden, norm="rmsnorm",
                pos_emb="rope", bias=False, tie_weights=False, rope_base=rope_base, norm_eps=norm_eps)


def _gpt2(n_layer: int, n_head: int, n_embd: int, ctx: int = 1024, vocab: int = 50257) -> dict[str, Any]:
    return dict(vocab_size=vocab, block_size=ctx, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


# Published shapes: GPT-2 [@radford2019gpt2], GPT-3 [@brown2020gpt3], LLaMA [@touvron2023llama],
# Llama 2 [@touvron2023llama2], Llama 3 [@grattafiori2024llama3], TinyLlama [@zhang2024tinyllama].
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-124m": _gpt2(12, 12, 768),
    "gpt2-350m": _gpt2(24, 16, 1024),
    "gpt2-774m": _gpt2(36, 20, 1280),
    "gpt2-1.5b": _gpt2(48, 25, 1600),
    "gpt3-175b": _gpt2(96, 96, 12288, ctx=2048),
    "llama-7b": _llama(32, 32, 4096, 32000, 2048, norm_eps=1e-6),  # LLaMA-1's RMSNorm eps; Llama 2 and 3: 1e-5
    "llama-13b": _llama(40, 40, 5120, 32000, 2048, norm_eps=1e-6),
    "llama-65b": _llama(80, 64, 8192, 32000, 2048, norm_eps=1e-6),
    "llama2-7b": _llama(32, 32, 4096, 32000, 4096),
    "llama2-70b": _llama(80, 64, 8192, 32000, 4096, n_kv_head=8, mlp_hidden=28672),
    "llama3-8b": _llama(32, 32, 4096, 128256, 8192, n_kv_head=8, mlp_hidden=14336, rope_base=500000.0),
    "llama3-70b": _llama(80, 64, 8192, 128256, 8192, n_kv_head=8, mlp_hidden=28672, rope_base=500000.0),
    # TinyLlama's 1.1B shape [@zhang2024tinyllama]: the book's ~1B model for single-GPU experiments.
    "llama-1b": _llama(22, 32, 2048, 32000, 2048, n_kv_head=4, mlp_hidden=5632),
}
