"""Planted problems for demonstrations: near-duplicates and PII inserted into real text with known labels (@sec-data-pipeline).

Real corpora do not say which of their documents are duplicates or hold personal data, so to *see* what the
pipeline removes, the chapter plants both with a seed and checks the pipeline finds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import regex

from llmbook.data.dedup import normalize_for_dedup

EDIT_KINDS = ("substitute", "insert", "delete", "swap_sentences")

# Fictitious values in reserved ranges (example.com, 555 numbers, documentation IP blocks, test card numbers).
PII_SNIPPETS = (
    ("EMAIL", "Write to {} for the tickets.", "ana.lima@example.com"),
    ("EMAIL", "Questions go to {}.", "help-desk@example.org"),
    ("PHONE", "Call the office at {} after nine.", "(415) 555-0172"),
    ("PHONE", "Her mobile number is {}.", "+44 7700 900461"),
    ("IP_ADDRESS", "The request came from {}.", "203.0.113.77"),
    ("IP_ADDRESS", "The server listens on {}.", "2001:db8::7"),
    ("CREDIT_CARD", "He paid with the card {}.", "4111 1111 1111 1111"),
    ("IBAN", "Send the rent to {}.", "DE89 3704 0044 0532 0130 00"),
)


_SENTENCE_END = regex.compile(r"(?<=[.!?]+[\"'”’)]*)\s+")


def _edit(text: str, rng: np.random.Generator, kind: str, strength: float) -> str:
    words = text.split()
    n = max(1, int(len(words) * strength))
    if kind == "substitute":  # reverse the word; a palindrome ("did", "a") gets a letter appended instead
        for i in rng.choice(len(words), size=min(n, len(words)), replace=False):
            w = words[i]
            words[i] = w[::-1] if normalize_for_dedup(w[::-1]) != normalize_for_dedup(w) else w + "x"
    elif kind == "insert":
        for _ in range(n):
            words.insert(int(rng.integers(0, len(words) + 1)), "very")
    elif kind == "delete":
        drop = set(rng.choice(len(words), size=min(n, len(words)), replace=False).tolist())
        words = [w for i, w in enumerate(words) if i not in drop]
    else:  # swap two adjacent sentences (sentences end in . ! or ?, then whitespace)
        sentences = _SENTENCE_END.split(text.strip())
        if len(sentences) >= 2:
            i = int(rng.integers(0, len(sentences) - 1))
            sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
        return " ".join(sentences)
    return " ".join(words)


def near_duplicate(text: str, rng: np.random.Generator, kind: str, strength: float, tries: int = 10) -> str:
    """A near-copy of `text`: a fraction `strength` of words substituted, inserted or deleted, or two adjacent
    sentences swapped; never an exact duplicate (redrawn while it normalises to the original text)."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"kind must be one of {EDIT_KINDS}, got {kind!r}")
    original = normalize_for_dedup(text)
    for _ in range(tries):
        copy = _edit(text, rng, kind, strength)
        if normalize_for_dedup(copy) != original:
            return copy
    raise ValueError(f"cannot make a {kind} near-copy that differs from {text[:60]!r} (one sentence, or no words?)")


def near_copy(text: str, rng: np.random.Generator, kind: str, strength: float) -> tuple[str, str]:
    """`(near_duplicate(...), kind used)`: a sentence swap falls back to substitution for a text without two
    different sentences."""
    try:
        return near_duplicate(text, rng, kind, strength), kind
    except ValueError:
        if kind != "swap_sentences":
            raise
    return near_duplicate(text, rng, "substitute", strength), "substitute"


def plant_duplicates(records: Sequence[dict[str, Any]], n_exact: int, n_near: int, seed: int = 0,
                     strengths: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.4)) -> list[dict[str, Any]]:
    """Records plus `n_exact` verbatim copies and `n_near` edited copies; copies carry `planted` and `copy_of`.

    A near-copy is never an exact duplicate of its original (a sentence swap falls back to word substitutions
    for a one-sentence document), so exact deduplication removes exactly the `n_exact` copies plus whatever
    duplicates the records already held."""
    rng = np.random.default_rng(seed)
    out = [dict(r) for r in records]
    picks = rng.choice(len(records), size=n_exact + n_near, replace=False)
    for k, i in enumerate(picks):
        src = records[int(i)]
        if k < n_exact:
            text, label = src["text"], "exact"
        else:
            kind = EDIT_KINDS[k % len(EDIT_KINDS)]
            strength = float(rng.choice(strengths))
            text, kind = near_copy(src["text"], rng, kind, strength)
            label = f"{kind}:{strength:g}"
            assert normalize_for_dedup(text) != normalize_for_dedup(src["text"]), label
        out.append({**src, "id": f"{src['id']}#copy{k}", "text": text, "planted": label, "copy_of": src["id"]})
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def plant_pii(records: Sequence[dict[str, Any]], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Copies of the records with a PII sentence appended to `n` of them (field `planted_pii` = its type)."""
    rng = np.random.default_rng(seed)
    out = [dict(r) for r in records]
    for k, i in enumerate(rng.choice(len(out), size=n, replace=False)):
        kind, template, value = PII_SNIPPETS[k % len(PII_SNIPPETS)]
        out[int(i)]["text"] = out[int(i)]["text"].rstrip() + " " + template.format(value)
        out[int(i)]["planted_pii"] = kind
    return out
