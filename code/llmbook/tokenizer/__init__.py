"""Byte-level BPE tokenizers: a from-scratch trainer and encoder, and the Hugging Face `tokenizers` path (@sec-data-bpe)."""

from llmbook.tokenizer.analysis import bytes_per_token, compression_curve, fertility, token_length_histogram
from llmbook.tokenizer.bpe import BPETokenizer
from llmbook.tokenizer.hf import load_hf_tokenizer, train_hf_tokenizer
from llmbook.tokenizer.pretokenize import PATTERNS, bytes_to_unicode, pretokenize

__all__ = [
    "BPETokenizer",
    "PATTERNS",
    "bytes_per_token",
    "bytes_to_unicode",
    "compression_curve",
    "fertility",
    "load_hf_tokenizer",
    "pretokenize",
    "token_length_histogram",
    "train_hf_tokenizer",
]
