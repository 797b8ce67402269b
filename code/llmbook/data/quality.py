"""A model-based quality filter: fastText-style hashed word n-grams and a linear classifier (@sec-data-quality).

Production pipelines score documents with a small classifier next to the heuristic filters: GPT-3 and LLaMA
kept web pages that looked like reference text, FineWeb-Edu those a classifier rated educational, DCLM those a
fastText model rated highly. Here the labels come from real book paragraphs (clean) and
machine-corrupted versions of other paragraphs (corrupted), so the classifier learns exactly what the corruptions
change; precision and recall on held-out books say how well it does that, with Wilson intervals.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import regex
import torch

# Machine-made corruptions of clean text, each a stand-in for a kind of web junk (@sec-data-quality).
CORRUPTIONS = ("shuffle_words", "char_noise", "drop_function_words", "repeat_phrase")

_FUNCTION_WORDS = frozenset(
    "the a an of to in and or but that which who is was are were be been it its he she they we you i his her "
    "their our your my at on by for with from as this these those there then than so not no".split()
)
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_TOKEN = regex.compile(r"\p{L}+|\p{N}+|[^\s\p{L}\p{N}]")


def join_wrapped_lines(text: str) -> list[str]:
    """Paragraphs of a hard-wrapped text (blank-line separated), each joined into one line."""
    paragraphs = regex.split(r"\n[ \t]*\n", text)
    return [" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs if p.strip()]


def corrupt(text: str, rng: np.random.Generator, kind: str, strength: float) -> str:
    """A corrupted copy of `text`; `strength` in (0, 1] sets how much of it is damaged.

    `shuffle_words`: a fraction of the word positions permuted among themselves (word salad, spun text);
    `char_noise`: a fraction of the letters replaced by random letters (OCR errors, obfuscated spam);
    `drop_function_words`: each function word dropped with probability `strength` (keyword lists);
    `repeat_phrase`: a 3-word phrase of the text inserted at random places, one copy per 1/strength words
    (keyword stuffing).
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    words = text.split()
    if len(words) < 4:
        raise ValueError(f"text needs at least 4 words to corrupt, got {len(words)}")
    if kind == "shuffle_words":
        k = max(2, round(strength * len(words)))
        picked = np.sort(rng.choice(len(words), size=k, replace=False))
        moved = picked[rng.permutation(k)]
        out = list(words)
        for dst, src in zip(picked, moved):
            out[dst] = words[src]
        return " ".join(out)
    if kind == "char_noise":
        chars = list(text)
        letters = [i for i, c in enumerate(chars) if c.isalpha()]
        if not letters:
            raise ValueError("char_noise needs a text with letters")
        for i in rng.choice(letters, size=max(1, round(strength * len(letters))), replace=False):
            chars[i] = _LETTERS[int(rng.integers(len(_LETTERS)))]
        return "".join(chars)
    if kind == "drop_function_words":
        bare = [w.lower().strip(".,;:!?\"'“”‘’") for w in words]
        return " ".join(w for w, b in zip(words, bare) if b not in _FUNCTION_WORDS or rng.random() >= strength)
    start = int(rng.integers(len(words) - 2))
    phrase = words[start : start + 3]
    out = list(words)
    for _ in range(max(1, round(strength * len(words)))):
        at = int(rng.integers(len(out) + 1))
        out[at:at] = phrase
    return " ".join(out)


@dataclass(frozen=True)
class QualityConfig:
    """Features and training of the classifier: word n-grams up to `word_ngrams`, hashed into `buckets`; L2 penalty
    `l2` and at most `max_iter` L-BFGS iterations (60 is where held-out accuracy levels off on the chapter's data;
    the parity test runs to convergence)."""

    buckets: int = 2**18
    word_ngrams: int = 2
    l2: float = 1e-6
    max_iter: int = 60

    def __post_init__(self) -> None:
        if self.buckets < 1 or self.word_ngrams < 1:
            raise ValueError(f"buckets and word_ngrams must be positive, got {self.buckets}, {self.word_ngrams}")
        if self.l2 < 0 or self.max_iter < 1:
            raise ValueError(f"l2 must be >= 0 and max_iter >= 1, got {self.l2}, {self.max_iter}")


def tokens(text: str) -> list[str]:
    """The units of the n-grams: lower-cased runs of letters, runs of digits, and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def ngram_features(text: str, cfg: QualityConfig) -> tuple[np.ndarray, np.ndarray]:
    """`(bucket ids, weights)` of a text's word n-grams (`tokens` joined by spaces): counts divided by their
    total, as fastText averages its n-gram embeddings. Hashing with CRC-32 keeps ids the same in every process."""
    words = tokens(text)
    grams = [" ".join(words[i : i + n]) for n in range(1, cfg.word_ngrams + 1) for i in range(len(words) - n + 1)]
    if not grams:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    ids = np.array([zlib.crc32(g.encode("utf-8", "surrogatepass")) % cfg.buckets for g in grams], dtype=np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    return unique, counts / len(grams)


@dataclass(frozen=True)
class Features:
    """A batch of documents' features in compressed sparse row form (`scipy.sparse.csr_matrix` layout)."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    n_features: int

    def __len__(self) -> int:
        return len(self.indptr) - 1


def featurize(texts: Sequence[str], cfg: QualityConfig) -> Features:
    """Hashed n-gram features of every text, stacked row by row."""
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of documents, not a single string")
    rows = [ngram_features(t, cfg) for t in texts]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(ids) for ids, _ in rows])
    indices = np.concatenate([ids for ids, _ in rows]) if rows else np.zeros(0, dtype=np.int64)
    values = np.concatenate([v for _, v in rows]) if rows else np.zeros(0)
    return Features(indptr, indices, values, cfg.buckets)


class QualityClassifier:
    """Logistic regression on hashed n-gram features: p(clean | text) = sigmoid(w . x + b) (@sec-data-quality).

    Trained by minimising the mean log-loss plus (l2 / 2) |w|^2 with full-batch L-BFGS in float64, the objective
    of scikit-learn's `LogisticRegression(C=1 / (l2 * n))`, so the two agree (tests/test_quality.py).
    """

    def __init__(self, config: QualityConfig | None = None):
        self.config = config or QualityConfig()
        self.weight = np.zeros(self.config.buckets)
        self.bias = 0.0

    @staticmethod
    def _tensors(feats: Features) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row of each stored value, its bucket, the value) as tensors, computed once per batch."""
        rows = torch.from_numpy(np.repeat(np.arange(len(feats)), np.diff(feats.indptr)))
        return rows, torch.from_numpy(feats.indices), torch.from_numpy(feats.values)

    @staticmethod
    def _logits(n: int, rows: torch.Tensor, buckets: torch.Tensor, values: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        """w . x + b for every row of a sparse batch: gather the weights, scale, add up per row."""
        return torch.zeros(n, dtype=torch.float64).index_add_(0, rows, weight[buckets] * values) + bias

    def fit(self, texts: Sequence[str] | Features, labels: Sequence[int]) -> QualityClassifier:
        """Train on texts (or their features) with labels 1 = clean, 0 = low quality; returns self."""
        feats = texts if isinstance(texts, Features) else featurize(texts, self.config)
        y = torch.tensor(np.asarray(labels), dtype=torch.float64)
        if len(y) != len(feats) or len(y) == 0:
            raise ValueError(f"need one label per document, got {len(y)} labels for {len(feats)} documents")
        if not set(y.tolist()) <= {0.0, 1.0}:
            raise ValueError("labels must be 0 (low quality) or 1 (clean)")
        weight = torch.zeros(self.config.buckets, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
        rows, buckets, values = self._tensors(feats)
        opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=self.config.max_iter, history_size=20,
                                tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            logits = self._logits(len(feats), rows, buckets, values, weight, bias)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            loss = loss + 0.5 * self.config.l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = weight.detach().numpy().copy(), float(bias.detach())
        return self

    def predict_proba(self, texts: Sequence[str] | Features) -> np.ndarray:
        """Probability that each text is clean prose."""
        feats = texts if isinstance(texts, Features) else featurize(texts, self.config)
        logits = self._logits(len(feats), *self._tensors(feats), torch.from_numpy(self.weight),
                              torch.tensor(self.bias, dtype=torch.float64))
        return torch.sigmoid(logits).numpy()

    def top_features(self, vocabulary: Sequence[str], k: int = 10) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The `k` n-grams of `vocabulary` with the most negative and the most positive weights (hash collisions
        share a weight, so a bucket speaks for every n-gram hashed into it)."""
        grams = sorted(set(vocabulary))
        ids = np.array([zlib.crc32(g.encode("utf-8", "surrogatepass")) % self.config.buckets for g in grams])
        order = np.argsort(self.weight[ids], kind="stable")
        pick = lambda idx: [(grams[i], float(self.weight[ids[i]])) for i in idx]  # noqa: E731
        return pick(order[:k]), pick(order[::-1][:k])


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PrecisionRecall:
    """Confusion counts of a binary decision, precision and recall with 95% Wilson intervals."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else math.nan

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else math.nan

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp else 0.0

    def precision_interval(self) -> tuple[float, float]:
        return wilson_interval(self.tp, self.tp + self.fp)

    def recall_interval(self) -> tuple[float, float]:
        return wilson_interval(self.tp, self.tp + self.fn)


def precision_recall(y_true: Sequence[int], y_pred: Sequence[int]) -> PrecisionRecall:
    """Count true/false positives and negatives of predictions against labels (1 = positive class)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D and of equal length, got shapes {t.shape} and {p.shape}")
    for name, a in (("y_true", t), ("y_pred", p)):
        if not set(np.unique(a).tolist()) <= {0, 1}:
            raise ValueError(f"{name} must hold only 0 and 1")
    return PrecisionRecall(tp=int(((t == 1) & (p == 1)).sum()), fp=int(((t == 0) & (p == 1)).sum()),
                           fn=int(((t == 1) & (p == 0)).sum()), tn=int(((t == 0) & (p == 0)).sum()))
