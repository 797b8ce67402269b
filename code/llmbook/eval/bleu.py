"""Corpus BLEU and chrF from scratch, matching sacrebleu's defaults (@sec-evaluation-genmetrics)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

SMOOTH_DEFAULTS: dict[str, float | None] = {"none": None, "floor": 0.1, "add-k": 1.0, "exp": None}

# mteval-v13a's language-dependent regexes, applied in order (sacrebleu's `13a` tokenizer).
_13A_RULES = [
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # split most punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period/comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # period/comma unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
]
_PUNCTS = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


@lru_cache(maxsize=2**16)
def tokenize_13a(line: str) -> str:
    """Tokenize one segment like mteval-v13a (WMT's standard), so BLEU is comparable across papers."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, repl in _13A_RULES:
        line = pattern.sub(repl, line)
    return " ".join(line.split())


TOKENIZERS = {"13a": tokenize_13a, "none": lambda s: s}


@dataclass(frozen=True)
class BLEUScore:
    """Corpus BLEU on sacrebleu's 0-100 scale with its sufficient statistics."""

    score: float
    precisions: tuple[float, ...]
    bp: float
    sys_len: int
    ref_len: int
    correct: tuple[float, ...]
    total: tuple[float, ...]


def _ngrams(tokens: Sequence[str], min_n: int, max_n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(min_n, max_n + 1) for i in range(len(tokens) - n + 1))


def _closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
    # closest reference length; ties go to the shorter reference (mteval / sacrebleu)
    return min(ref_lens, key=lambda r: (abs(hyp_len - r), r))


def _check_streams(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str) or not references or isinstance(references[0], str):
        raise ValueError("hypotheses must be a list of strings and references a list of reference streams")
    for k, stream in enumerate(references):
        if len(stream) != len(hypotheses):
            raise ValueError(f"reference stream {k} has {len(stream)} segments, hypotheses have {len(hypotheses)}")


def bleu_statistics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    lowercase: bool = False,
    tokenize: str = "13a",
    max_ngram_order: int = 4,
) -> tuple[int, int, list[int], list[int]]:
    """Sufficient statistics of corpus BLEU: (sys_len, ref_len, clipped matches, totals) per n-gram order."""
    _check_streams(hypotheses, references)
    if tokenize not in TOKENIZERS:
        raise ValueError(f"tokenize={tokenize!r} is not one of {sorted(TOKENIZERS)}")
    tok = TOKENIZERS[tokenize]

    def prep(s: str) -> list[str]:
        return tok((s.lower() if lowercase else s).rstrip()).split()

    sys_len = ref_len = 0
    correct, total = [0] * max_ngram_order, [0] * max_ngram_order
    for i, hyp in enumerate(hypotheses):
        refs = [stream[i] for stream in references if stream[i] is not None]
        ref_counts: Counter = Counter()
        ref_lens = []
        for ref in refs:
            toks = prep(ref)
            ref_lens.append(len(toks))
            for g, c in _ngrams(toks, 1, max_ngram_order).items():
                ref_counts[g] = max(ref_counts[g], c)  # clip by the max count over references
        hyp_toks = prep(hyp)
        sys_len += len(hyp_toks)
        ref_len += _closest_ref_len(len(hyp_toks), ref_lens)
        for g, c in _ngrams(hyp_toks, 1, max_ngram_order).items():
            total[len(g) - 1] += c
            correct[len(g) - 1] += min(c, ref_counts.get(g, 0))
    return sys_len, ref_len, correct, total


def bleu_from_statistics(
    sys_len: int,
    ref_len: int,
    correct: Sequence[float],
    total: Sequence[float],
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    effective_order: bool = False,
) -> BLEUScore:
    """BLEU = BP * exp(mean log p_n) with Chen & Cherry (2014) smoothing (@sec-evaluation-genmetrics)."""
    if smooth_method not in SMOOTH_DEFAULTS:
        raise ValueError(f"smooth_method={smooth_method!r} is not one of {sorted(SMOOTH_DEFAULTS)}")
    if smooth_value is None:
        smooth_value = SMOOTH_DEFAULTS[smooth_method]
    order = len(correct)
    correct, total = list(correct), list(total)
    bp = 1.0 if sys_len >= ref_len else (math.exp(1 - ref_len / sys_len) if sys_len > 0 else 0.0)
    precisions = [0.0] * order
    if not any(correct):
        return BLEUScore(0.0, tuple(precisions), bp, sys_len, ref_len, tuple(correct), tuple(total))
    mteval_factor, eff_order = 1.0, order
    for n in range(order):
        if smooth_method == "add-k" and n > 0:
            correct[n] += smooth_value
            total[n] += smooth_value
        if total[n] == 0:
            break
        if effective_order:
            eff_order = n + 1
        if correct[n] == 0:
            if smooth_method == "exp":  # NIST geometric sequence: 1/2, 1/4, ... of a match
                mteval_factor *= 2
                precisions[n] = 100.0 / (mteval_factor * total[n])
            elif smooth_method == "floor":
                precisions[n] = 100.0 * smooth_value / total[n]
        else:
            precisions[n] = 100.0 * correct[n] / total[n]
    log_sum = sum(math.log(p) if p > 0 else -9999999999 for p in precisions[:eff_order])
    score = bp * math.exp(log_sum / eff_order)
    return BLEUScore(score, tuple(precisions), bp, sys_len, ref_len, tuple(correct), tuple(total))


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    smooth_method: str = "exp",
    smooth_value: float | None = None,
    lowercase: bool = False,
    tokenize: str = "13a",
    max_ngram_order: int = 4,
    effective_order: bool = False,
) -> BLEUScore:
    """Corpus BLEU (Papineni et al. 2002) over aligned segments; `references` is a list of reference streams."""
    stats = bleu_statistics(hypotheses, references, lowercase, tokenize, max_ngram_order)
    return bleu_from_statistics(*stats, smooth_method, smooth_value, effective_order)


def sentence_bleu(hypothesis: str, references: Sequence[str], **kwargs) -> BLEUScore:
    """Sentence-level BLEU with effective order (sacrebleu's sentence_score default)."""
    kwargs.setdefault("effective_order", True)
    return corpus_bleu([hypothesis], [[r] for r in references], **kwargs)


def _split_punct_words(sent: str) -> list[str]:
    # chrF++'s primitive word tokenisation: peel one punctuation mark off either end
    out: list[str] = []
    for w in sent.split():
        if len(w) == 1:
            out.append(w)
        elif w[-1] in _PUNCTS:
            out += [w[:-1], w[-1]]
        elif w[0] in _PUNCTS:
            out += [w[0], w[1:]]
        else:
            out.append(w)
    return out


def _chrf_ngrams(sent: str, char_order: int, word_order: int, whitespace: bool) -> list[Counter]:
    line = sent if whitespace else "".join(sent.split())
    grams = [Counter(line[i : i + n] for i in range(len(line) - n + 1)) for n in range(1, char_order + 1)]
    if word_order:
        words = _split_punct_words(sent)
        grams += [Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1)) for n in range(1, word_order + 1)]
    return grams


def _chrf_f(stats: Sequence[float], beta: float, eps_smoothing: bool) -> float:
    eps, factor, order = 1e-16, beta**2, len(stats) // 3
    score = avg_prec = avg_rec = 0.0
    effective = 0
    for i in range(order):
        n_hyp, n_ref, n_match = stats[3 * i : 3 * i + 3]
        prec = n_match / n_hyp if n_hyp > 0 else eps
        rec = n_match / n_ref if n_ref > 0 else eps
        denom = factor * prec + rec
        score += ((1 + factor) * prec * rec / denom) if denom > 0 else eps
        if n_hyp > 0 and n_ref > 0:
            avg_prec += prec
            avg_rec += rec
            effective += 1
    if eps_smoothing:
        return 100 * score / order
    if effective == 0:
        return 0.0
    avg_prec, avg_rec = avg_prec / effective, avg_rec / effective
    if avg_prec + avg_rec == 0:
        return 0.0
    return 100 * (1 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec)


def corpus_chrf(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    char_order: int = 6,
    word_order: int = 0,
    beta: float = 2,
    lowercase: bool = False,
    whitespace: bool = False,
    eps_smoothing: bool = False,
) -> float:
    """Corpus chrF (Popović 2015; chrF++ with word_order=2) on a 0-100 scale, sacrebleu-compatible."""
    _check_streams(hypotheses, references)
    order = char_order + word_order
    totals = [0] * (3 * order)
    for i, hyp in enumerate(hypotheses):
        hyp = hyp.lower() if lowercase else hyp
        hyp_grams = _chrf_ngrams(hyp, char_order, word_order, whitespace)
        best, best_f = None, -1.0
        for stream in references:
            if stream[i] is None:
                continue
            ref = stream[i].lower() if lowercase else stream[i]
            stats: list[int] = []
            for h, r in zip(hyp_grams, _chrf_ngrams(ref, char_order, word_order, whitespace)):
                match = sum(min(c, r[g]) for g, c in h.items() if g in r)
                stats += [sum(h.values()) if r else 0, sum(r.values()), match]
            f = _chrf_f(stats, beta, eps_smoothing)
            if f > best_f:  # pick the reference with the best sentence-level F
                best, best_f = stats, f
        totals = [a + b for a, b in zip(totals, best or [0] * (3 * order))]
    return _chrf_f(totals, beta, eps_smoothing)
