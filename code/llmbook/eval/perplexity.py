"""Perplexity three ways: per token, per word and in bits per byte, with sliding windows (@sec-evaluation-perplexity)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

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
    doc_nll: tuple[float, ...] = field(default=(), repr=False)
    doc_tokens: tuple[int, ...] = field(default=(), repr=False)
    doc_words: tuple[int, ...] = field(default=(), repr=False)
    doc_bytes: tuple[int, ...] = field(default=(), repr=False)

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

    def interval(self, metric: str = "bits_per_byte", iters: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
        """Percentile-bootstrap interval of a corpus metric, resampling whole documents (the unit of dependence)."""
        units = {"bits_per_byte": self.doc_bytes, "token_perplexity": self.doc_tokens, "word_perplexity": self.doc_words}
        if metric not in units:
            raise ValueError(f"metric={metric!r} must be one of {sorted(units)}")
        nll, denom = np.asarray(self.doc_nll), np.asarray(units[metric], dtype=float)
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(nll), (iters, len(nll)))
        per_unit = nll[idx].sum(1) / denom[idx].sum(1)
        values = per_unit / math.log(2) if metric == "bits_per_byte" else np.exp(per_unit)
        lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
        return float(lo), float(hi)

    def to_dict(self, iters: int = 1000) -> dict:
        """Counts, the three normalisations and a 95% document-bootstrap interval for each."""
        out = {"nll": self.nll, "n_tokens": self.n_tokens, "n_words": self.n_words, "n_bytes": self.n_bytes,
               "n_documents": len(self.doc_nll), "stride": self.stride, "max_length": self.max_length}
        for metric in ("token_perplexity", "word_perplexity", "bits_per_byte"):
            lo, hi = self.interval(metric, iters)
            out.update({metric: getattr(self, metric), f"{metric}_ci_low": lo, f"{metric}_ci_high": hi})
        return out


def perplexity(model: CausalLM, texts: Sequence[str], stride: int | None = None) -> PerplexityResult:
    """Score every document with `loglikelihood_rolling` and pool the NLL over the corpus."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no non-empty documents to score")
    scores = model.loglikelihood_rolling(texts, stride=stride)
    doc_nll = tuple(-s.logprob for s in scores)
    doc_tokens = tuple(s.n_tokens for s in scores)
    doc_words = tuple(len(t.split()) for t in texts)
    doc_bytes = tuple(len(t.encode("utf-8")) for t in texts)
    return PerplexityResult(
        nll=sum(doc_nll), n_tokens=sum(doc_tokens), n_words=sum(doc_words), n_bytes=sum(doc_bytes),
        stride=stride or model.max_length, max_length=model.max_length,
        doc_nll=doc_nll, doc_tokens=doc_tokens, doc_words=doc_words, doc_bytes=doc_bytes,
    )


def wikitext_documents(text: str) -> list[str]:
    """Split WikiText into articles at top-level ' = Title = ' headings (the unit lm-evaluation-harness scores)."""
    docs: list[list[str]] = []
    for line in text.splitlines(keepends=True):
        if _WIKITEXT_TITLE.match(line.rstrip("\n")) or not docs:
            docs.append([])
        docs[-1].append(line)
    return ["".join(d).strip() for d in docs if "".join(d).strip()]
