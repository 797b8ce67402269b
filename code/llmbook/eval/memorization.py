"""Memorisation: can a model's training text be extracted by prompting it with a prefix? (@sec-applications-memorization)

Following Carlini et al. [@carlini2021extracting; @carlini2023quantifying]: take sequences of the training
data, prompt the model with the first `prefix` tokens, decode greedily for `suffix` tokens and count exact
matches with the true continuation. The same test on held-out text of the same distribution gives the
baseline: text that is easy to predict (formulaic openings, common phrases) is "extracted" without having
been memorised, and only the excess over held-out text is memorisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmbook.data.quality import wilson_interval
from llmbook.eval.harness import MetricValue, summarize
from llmbook.eval.models import CausalLM


@dataclass(frozen=True)
class Extraction:
    """One test sequence: prompt tokens, true and generated continuation, and how many leading tokens match."""

    prefix: list[int]
    target: list[int]
    generated: list[int]

    @property
    def matched(self) -> int:
        n = 0
        for a, b in zip(self.target, self.generated):
            if a != b:
                break
            n += 1
        return n

    @property
    def exact(self) -> bool:
        return self.matched == len(self.target)


def sequences_of_length(model: CausalLM, texts: Sequence[str], length: int) -> list[list[int]]:
    """The first `length` tokens of every text that has at least that many (shorter texts are skipped)."""
    out = []
    for t in texts:
        ids = model.encode(t)
        if len(ids) >= length:
            out.append(ids[:length])
    return out


def greedy_continuation(model: CausalLM, ids: list[int], n: int) -> list[int]:
    """n greedily decoded tokens after `ids`, through the backend's fast path when it has one; decoding
    continues past an end-of-text token so that every continuation has n tokens to compare."""
    fast = model.greedy_ids(ids, n)
    if fast is not None and len(fast) == n:
        return fast
    out: list[int] = []
    for _ in range(n):
        out.append(int(model.next_token_logits(ids + out).argmax()))
    return out


def extraction_test(model: CausalLM, texts: Sequence[str], prefix: int = 32, suffix: int = 16) -> list[Extraction]:
    """Prompt with each text's first `prefix` tokens and decode `suffix` tokens greedily (@sec-applications-memorization)."""
    if prefix < 1 or suffix < 1:
        raise ValueError(f"prefix and suffix must be >= 1 token, got {prefix} and {suffix}")
    if prefix + suffix > model.max_length:
        raise ValueError(f"prefix + suffix = {prefix + suffix} tokens exceed the model's window of {model.max_length}")
    return [Extraction(s[:prefix], s[prefix:], greedy_continuation(model, s[:prefix], suffix))
            for s in sequences_of_length(model, texts, prefix + suffix)]


@dataclass(frozen=True)
class ExtractionSummary:
    """Exact-match rate with its Wilson interval and mean matched-prefix length with a bootstrap interval."""

    n: int
    exact: int
    exact_rate: tuple[float, float, float]
    matched_tokens: MetricValue


def summarize_extractions(results: Sequence[Extraction], iters: int = 1000, seed: int = 0) -> ExtractionSummary:
    if not results:
        raise ValueError("no sequences were long enough to test")
    k = sum(r.exact for r in results)
    return ExtractionSummary(len(results), k, (k / len(results), *wilson_interval(k, len(results))),
                             summarize([r.matched for r in results], iters, seed))


def occurrences(snippets: Sequence[str], documents: Sequence[str]) -> np.ndarray:
    """How many of the documents contain each snippet: the duplication that makes text easy to extract."""
    return np.array([sum(s in d for d in documents) for s in snippets])
