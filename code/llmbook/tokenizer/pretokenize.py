"""Regex pre-tokenisation (GPT-2 / GPT-4 style) and the GPT-2 byte-to-printable-character map (@sec-data-bpe)."""

from __future__ import annotations

from functools import lru_cache

import regex

# GPT-2 (Radford et al., 2019) and GPT-4's cl100k_base split patterns, as published in OpenAI's tiktoken.
PATTERNS: dict[str, str] = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
}


def resolve_pattern(pattern: str) -> str:
    """Return the regex for a pattern name ('gpt2', 'gpt4') or the pattern itself when it is not a name."""
    return PATTERNS.get(pattern, pattern)


@lru_cache(maxsize=8)
def compiled(pattern: str) -> regex.Pattern:
    """Compile (and cache) a pre-tokenisation regex."""
    return regex.compile(resolve_pattern(pattern))


def pretokenize(text: str, pattern: str = "gpt4") -> list[str]:
    """Split text into the chunks BPE merges never cross: words with their leading space, numbers, punctuation."""
    return compiled(pattern).findall(text)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters, used for byte-level vocab strings."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}
