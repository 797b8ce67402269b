"""Tokenizers: byte-level BPE from scratch and with Hugging Face `tokenizers` (@sec-data-bpe), and the other
families compared with it (@sec-data-tokenizers)."""

from llmbook.tokenizer.analysis import (bytes_per_token, chars_per_token, compression_curve, fertility, jaccard,
                                       token_length_histogram, unknown_rate)
from llmbook.tokenizer.bpe import BPETokenizer
from llmbook.tokenizer.families import FAMILIES, surface_vocab, token_text, train_family, unk_id
from llmbook.tokenizer.hf import load_hf_tokenizer, train_hf_tokenizer
from llmbook.tokenizer.pretokenize import PATTERNS, bytes_to_unicode, pretokenize

__all__ = [
    "BPETokenizer",
    "FAMILIES",
    "PATTERNS",
    "bytes_per_token",
    "bytes_to_unicode",
    "chars_per_token",
    "compression_curve",
    "fertility",
    "jaccard",
    "load_hf_tokenizer",
    "pretokenize",
    "surface_vocab",
    "token_length_histogram",
    "token_text",
    "train_family",
    "train_hf_tokenizer",
    "unk_id",
    "unknown_rate",
]
