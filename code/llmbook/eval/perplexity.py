"""Perplexity three ways: per token, per word and in bits per byte, with sliding windows (@sec-evaluation-perplexity)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from llmbook.eval.models import CausalLM

_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


@dataclass(frozen=True)
class PerplexityResult:
    """Corpus-level negative log-likelihood normalised by tokens, words and UTF-8 bytes."""

    nll: float
    n_tokens: int
    n_words: int
    n_bytes: int
    stride: int
    max_length: int

    @property
    def token_perplexity(self) -> float:
        """exp(NLL per token): depends on the tokenizer, so only comparable between models sharing one."""
        return math.exp(self.nll / self.n_tokens)

    @property
    def word_perplexity(self) -> float:
        """exp(NLL per whitespace word): comparable across tokenizers of the same text."""
        return math.exp(self.nll / self.n_words)

    @property
    def bits_per_byte(self) -> float:
        """NLL in bits per UTF-8 byte: tokenizer-independent, the compression view of language modelling."""
        return self.nll / (self.n_bytes * math.log(2))

    def to_dict(self) -> dict:
        return {**asdict(self), "token_perplexity": self.token_perplexity,
                "word_perplexity": self.word_perplexity, "bits_per_byte": self.bits_per_byte}


def perplexity(model: CausalLM, texts: Sequence[str], stride: int | None = None) -> PerplexityResult:
    """Score every document with `loglikelihood_rolling` and pool the NLL over the corpus."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no non-empty documents to score")
    scores = model.loglikelihood_rolling(texts, stride=stride)
    return PerplexityResult(
        nll=-sum(s.logprob for s in scores),
        n_tokens=sum(s.n_tokens for s in scores),
        n_words=sum(len(t.split()) for t in texts),
        n_bytes=sum(len(t.encode("utf-8")) for t in texts),
        stride=stride or model.max_length,
        max_length=model.max_length,
    )


def wikitext_documents(text: str) -> list[str]:
    """Split WikiText into articles at top-level ' = Title = ' headings (the unit lm-evaluation-harness scores)."""
    docs: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _WIKITEXT_TITLE.match(line.rstrip("\n")) or not docs:
            docs.append([])
        docs[-1].append(line)
    return ["".join(d).strip() for d in docs if "".join(d).strip()]
