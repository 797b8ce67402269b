"""Decoder-only transformer models (@sec-architecture)."""

from llmbook.model.config import PRESETS, GPTConfig
from llmbook.model.model import GPT, KVCache, left_pad, sample

__all__ = ["GPTConfig", "PRESETS", "GPT", "KVCache", "left_pad", "sample"]
