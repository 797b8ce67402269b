"""Planted problems for demonstrations: near-duplicates and PII inserted into real text with known labels (@sec-data-pipeline).

Real corpora do not say which of their documents are duplicates or hold personal data, so to *see* what the
pipeline removes, the chapter plants both with a seed and checks the pipeline finds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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


def near_duplicate(text: str, rng: np.random.Generator, kind: str, strength: float) -> str:
    """A near-copy of `text`: a fraction `strength` of words substituted, inserted or deleted, or two sentences swapped."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"kind must be one of {EDIT_KINDS}, got {kind!r}")
    words = text.split()
    n = max(1, int(len(words) * strength))
    if kind == "substitute":
        for i in rng.choice(len(words), size=min(n, len(words)), replace=False):
            words[i] = words[i][::-1]
    elif kind == "insert":
        for _ in range(n):
            words.insert(int(rng.integers(0, len(words) + 1)), "very")
    elif kind == "delete":
        drop = set(rng.choice(len(words), size=min(n, len(words)), replace=False).tolist())
        words = [w for i, w in enumerate(words) if i not in drop]
    else:
        sentences = text.split(". ")
        if len(sentences) > 2:
            i = int(rng.integers(0, len(sentences) - 1))
            sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
        return ". ".join(sentences)
    return " ".join(words)


def plant_duplicates(records: Sequence[dict[str, Any]], n_exact: int, n_near: int, seed: int = 0,
                     strengths: Sequence[float] = (0.02, 0.05, 0.1, 0.2, 0.4)) -> list[dict[str, Any]]:
    """Records plus `n_exact` verbatim copies and `n_near` edited copies; copies carry `planted` and `copy_of`."""
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
            text, label = near_duplicate(src["text"], rng, kind, strength), f"{kind}:{strength:g}"
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
