"""ROUGE-N, ROUGE-L and summary-level ROUGE-Lsum from scratch, matching rouge-score (@sec-evaluation-genmetrics)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_VALID = re.compile(r"^[a-z0-9]+$")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass(frozen=True)
class Score:
    """Precision, recall and F1 of one ROUGE variant."""

    precision: float
    recall: float
    fmeasure: float


@lru_cache(maxsize=1)
def porter_stemmer() -> Callable[[str], str]:
    """The Porter stemmer in NLTK's default mode, which is what rouge-score uses; cached."""
    from nltk.stem import porter

    return lru_cache(maxsize=2**16)(porter.PorterStemmer().stem)


def tokenize(text: str, stem: bool = False) -> list[str]:
    """Lower-case, keep [a-z0-9] runs, Porter-stem words longer than 3 characters (Lin 2004's ROUGE-1.5.5)."""
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    if stem:
        stemmer = porter_stemmer()
        tokens = [stemmer(t) if len(t) > 3 else t for t in tokens]
    return [t for t in tokens if _VALID.match(t)]


def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def rouge_n(target: Sequence[str], prediction: Sequence[str], n: int) -> Score:
    """ROUGE-N: clipped n-gram overlap between token lists."""
    t = Counter(tuple(target[i : i + n]) for i in range(len(target) - n + 1))
    p = Counter(tuple(prediction[i : i + n]) for i in range(len(prediction) - n + 1))
    overlap = sum(min(c, p[g]) for g, c in t.items())
    prec, rec = overlap / max(sum(p.values()), 1), overlap / max(sum(t.values()), 1)
    return Score(prec, rec, _f(prec, rec))


def _lcs_table(a: Sequence[str], b: Sequence[str]) -> list[list[int]]:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        row, prev, ai = table[i], table[i - 1], a[i - 1]
        for j in range(1, len(b) + 1):
            row[j] = prev[j - 1] + 1 if ai == b[j - 1] else max(prev[j], row[j - 1])
    return table


def _lcs_indices(ref: Sequence[str], cand: Sequence[str]) -> list[int]:
    # one longest common subsequence, as indices into ref, read back from the DP table
    t = _lcs_table(ref, cand)
    i, j, out = len(ref), len(cand), []
    while i > 0 and j > 0:
        if ref[i - 1] == cand[j - 1]:
            out.append(i - 1)
            i, j = i - 1, j - 1
        elif t[i][j - 1] > t[i - 1][j]:
            j -= 1
        else:
            i -= 1
    return out[::-1]


def rouge_l(target: Sequence[str], prediction: Sequence[str]) -> Score:
    """ROUGE-L: longest common subsequence over whole token lists."""
    if not target or not prediction:
        return Score(0.0, 0.0, 0.0)
    lcs = _lcs_table(target, prediction)[-1][-1]
    prec, rec = lcs / len(prediction), lcs / len(target)
    return Score(prec, rec, _f(prec, rec))


def rouge_lsum(target_sents: Sequence[Sequence[str]], pred_sents: Sequence[Sequence[str]]) -> Score:
    """Summary-level ROUGE-L: union LCS of each reference sentence against all candidate sentences."""
    m, n = sum(map(len, target_sents)), sum(map(len, pred_sents))
    if not target_sents or not pred_sents or not m or not n:
        return Score(0.0, 0.0, 0.0)
    cnt_r = Counter(t for s in target_sents for t in s)
    cnt_c = Counter(t for s in pred_sents for t in s)
    hits = 0
    for ref in target_sents:
        union = sorted(set().union(*(_lcs_indices(ref, c) for c in pred_sents)))
        for tok in (ref[i] for i in union):
            if cnt_c[tok] > 0 and cnt_r[tok] > 0:  # ROUGE-1.5.5 never counts a token twice
                hits += 1
                cnt_c[tok] -= 1
                cnt_r[tok] -= 1
    prec, rec = hits / n, hits / m
    return Score(prec, rec, _f(prec, rec))


def rouge(target: str, prediction: str, types: Sequence[str] = ROUGE_TYPES, stem: bool = True) -> dict[str, Score]:
    """ROUGE scores of one prediction against one reference; rougeLsum splits sentences on newlines."""
    tt, pt = tokenize(target, stem), tokenize(prediction, stem)
    out: dict[str, Score] = {}
    for name in types:
        if name == "rougeL":
            out[name] = rouge_l(tt, pt)
        elif name == "rougeLsum":
            ts = [tokenize(s, stem) for s in target.split("\n") if s]
            ps = [tokenize(s, stem) for s in prediction.split("\n") if s]
            out[name] = rouge_lsum(ts, ps)
        elif re.fullmatch(r"rouge[1-9]", name):
            out[name] = rouge_n(tt, pt, int(name[5:]))
        else:
            raise ValueError(f"unknown ROUGE type {name!r}; use rouge1..rouge9, rougeL or rougeLsum")
    return out


def corpus_rouge(
    targets: Sequence[str], predictions: Sequence[str], types: Sequence[str] = ROUGE_TYPES, stem: bool = True
) -> dict[str, float]:
    """Mean F-measure of each ROUGE type over aligned (reference, prediction) pairs, on a 0-1 scale."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} references but {len(predictions)} predictions")
    if not targets:
        raise ValueError("no segments to score")
    sums = dict.fromkeys(types, 0.0)
    for t, p in zip(targets, predictions):
        for name, s in rouge(t, p, types, stem).items():
            sums[name] += s.fmeasure
    return {name: total / len(targets) for name, total in sums.items()}
