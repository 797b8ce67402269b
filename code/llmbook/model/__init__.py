"""Decoder-only transformer models (@sec-architecture)."""

from llmbook.model.config import PRESETS, GPTConfig

__all__ = ["GPTConfig", "PRESETS"]
