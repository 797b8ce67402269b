"""Tokenizer analysis: compression (bytes or characters per token), fertility, unknown tokens, vocabulary overlap
and token lengths (@sec-data-bpe-analysis, @sec-data-tokenizers)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol


class Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


def _ids(tok: Encoder | Callable[[str], list[int]], text: str) -> list[int]:
    """Ids from a from-scratch tokenizer, a `tokenizers.Tokenizer` (whose encode returns an Encoding) or a function."""
    out = tok(text) if callable(tok) and not hasattr(tok, "encode") else tok.encode(text)
    return list(out.ids) if hasattr(out, "ids") else list(out)


def bytes_per_token(tok: Encoder | Callable[[str], list[int]], texts: Iterable[str]) -> float:
    """UTF-8 bytes per token over `texts`: higher means better compression and a longer effective context."""
    n_bytes = n_tokens = 0
    for text in texts:
        n_bytes += len(text.encode("utf-8", "surrogatepass"))
        n_tokens += len(_ids(tok, text))
    if n_tokens == 0:
        raise ValueError("no tokens: texts are empty")
    return n_bytes / n_tokens


def chars_per_token(tok: Encoder | Callable[[str], list[int]], texts: Iterable[str]) -> float:
    """Unicode characters per token: compression measured in the text's own units, fair across scripts whose
    characters take one (Latin) or three (CJK) UTF-8 bytes."""
    n_chars = n_tokens = 0
    for text in texts:
        n_chars += len(text)
        n_tokens += len(_ids(tok, text))
    if n_tokens == 0:
        raise ValueError("no tokens: texts are empty")
    return n_chars / n_tokens


def unknown_rate(tok: Encoder | Callable[[str], list[int]], texts: Iterable[str], unk_id: int | None) -> float:
    """Share of the tokens that are the unknown token `unk_id` (0 for a tokenizer without one, such as
    byte-level BPE): the text those tokens stood for is lost to the model."""
    n_unk = n_tokens = 0
    for text in texts:
        ids = _ids(tok, text)
        n_tokens += len(ids)
        n_unk += 0 if unk_id is None else ids.count(unk_id)
    if n_tokens == 0:
        raise ValueError("no tokens: texts are empty")
    return n_unk / n_tokens


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """Jaccard similarity |A & B| / |A | B| of two vocabularies (sets of strings); 1.0 for two empty sets."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def compression_curve(bpe, texts: Sequence[str], vocab_sizes: Sequence[int]) -> list[dict[str, float]]:
    """Bytes per token of a trained `BPETokenizer` cut to each vocab size (its first merges), on `texts`.

    Truncating the merge list gives exactly the tokenizer that training to the smaller size would have learned,
    because BPE training is greedy, so one training run yields the whole curve.
    """
    rows = []
    for size in sorted(vocab_sizes):
        # the shortest prefix of merges whose vocabulary (without specials) reaches `size`
        n_merges = 0
        if size > 256:
            n_merges = next((k + 1 for k, i in enumerate(bpe.merge_ids) if i + 1 >= size), len(bpe.merges))
        tok = bpe.truncated(n_merges)
        rows.append({"vocab_size": tok.n_regular, "bytes_per_token": bytes_per_token(tok, texts)})
    return rows


def token_length_histogram(tok: Encoder, texts: Iterable[str], decode_bytes: Callable[[int], bytes]) -> Counter:
    """How many tokens of each byte length appear when encoding `texts` (`decode_bytes(id)` gives a token's bytes)."""
    hist: Counter = Counter()
    for text in texts:
        hist.update(len(decode_bytes(i)) for i in _ids(tok, text))
    return hist


def fertility(tok: Encoder | Callable[[str], list[int]], texts: Iterable[str]) -> float:
    """Tokens per whitespace-separated word: about 1.3 for English with a good vocabulary, more for other scripts."""
    n_words = n_tokens = 0
    for text in texts:
        n_words += len(text.split())
        n_tokens += len(_ids(tok, text))
    if n_words == 0:
        raise ValueError("no words: texts are empty or whitespace")
    return n_tokens / n_words
