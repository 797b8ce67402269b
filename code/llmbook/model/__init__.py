"""Decoder-only transformer models (@sec-architecture)."""

from llmbook.model.config import PRESETS, GPTConfig
from llmbook.model.hf import from_hf, hf_config, to_hf
from llmbook.model.model import GPT, KVCache, left_pad, mask_tokens, sample

__all__ = ["GPTConfig", "PRESETS", "GPT", "KVCache", "left_pad", "mask_tokens", "sample", "from_hf", "to_hf", "hf_config"]
