"""The model-based quality filter: corruptions, hashed n-gram features, the classifier (parity with scikit-learn's
logistic regression on the same features) and precision/recall with Wilson intervals."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from llmbook.data import registry
from llmbook.data.quality import (
    CORRUPTIONS,
    QualityClassifier,
    QualityConfig,
    corrupt,
    featurize,
    join_wrapped_lines,
    ngram_features,
    precision_recall,
    wilson_interval,
)

PARAGRAPH = ("The old man walked to the harbour every morning, and he watched the boats come in with their nets "
             "full of fish. Nobody knew where he had come from, but the children of the village liked him.")


def test_join_wrapped_lines():
    text = "First line\nstill the first paragraph.\n\n  \nSecond one\n  wrapped.\n"
    assert join_wrapped_lines(text) == ["First line still the first paragraph.", "Second one wrapped."]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corruptions_are_seeded_and_change_the_text(kind):
    a = corrupt(PARAGRAPH, np.random.default_rng(0), kind, 0.4)
    assert a == corrupt(PARAGRAPH, np.random.default_rng(0), kind, 0.4)
    assert a != PARAGRAPH


def test_each_corruption_does_what_it_says():
    rng = np.random.default_rng(1)
    words = PARAGRAPH.split()
    shuffled = corrupt(PARAGRAPH, rng, "shuffle_words", 0.5)
    assert Counter(shuffled.split()) == Counter(words)  # the same words, in another order
    noisy = corrupt(PARAGRAPH, rng, "char_noise", 0.1)
    assert len(noisy) == len(PARAGRAPH)
    changed = [(a, b) for a, b in zip(PARAGRAPH, noisy) if a != b]
    assert all(a.isalpha() and b.isalpha() for a, b in changed)  # only letters replaced, by letters
    n_letters = sum(c.isalpha() for c in PARAGRAPH)
    assert 0 < len(changed) <= round(0.1 * n_letters)
    dropped = corrupt(PARAGRAPH, rng, "drop_function_words", 1.0)
    assert "the" not in dropped.lower().split() and "harbour" in dropped and "children" in dropped
    repeated = corrupt(PARAGRAPH, rng, "repeat_phrase", 0.1)
    assert len(repeated.split()) == len(words) + 3 * round(0.1 * len(words))


@pytest.mark.parametrize("kind, strength, text, match", [
    ("typos", 0.1, PARAGRAPH, "kind"),
    ("char_noise", 0.0, PARAGRAPH, "strength"),
    ("char_noise", 1.5, PARAGRAPH, "strength"),
    ("shuffle_words", 0.5, "too short", "at least 4 words"),
    ("char_noise", 0.5, "1 2 3 4 5", "letters"),
])
def test_corrupt_rejects_bad_input(kind, strength, text, match):
    with pytest.raises(ValueError, match=match):
        corrupt(text, np.random.default_rng(0), kind, strength)


def test_ngram_features_by_hand():
    cfg = QualityConfig(buckets=2**20, word_ngrams=2)
    ids, weights = ngram_features("The cat, the", cfg)
    # tokens: the, cat, ",", the -> 4 unigrams + 3 bigrams = 7 grams; "the" occurs twice
    assert len(ids) == 6 and weights.sum() == pytest.approx(1.0)
    assert sorted(weights.tolist()) == pytest.approx(sorted([2 / 7] + [1 / 7] * 5))
    same, _ = ngram_features("THE CAT, THE", cfg)  # lower-cased
    assert ids.tolist() == same.tolist()
    empty_ids, empty_w = ngram_features("", cfg)
    assert len(empty_ids) == 0 and len(empty_w) == 0
    with pytest.raises(ValueError):
        QualityConfig(buckets=0)


def test_featurize_is_a_csr_matrix():
    cfg = QualityConfig(buckets=1024)
    feats = featurize(["a b c", "", "b c d e"], cfg)
    assert len(feats) == 3 and feats.indptr.tolist()[:2] == [0, 5] and feats.indptr[2] == 5
    sparse = pytest.importorskip("scipy.sparse", reason="scipy comes with scikit-learn (test extra)")
    dense = sparse.csr_matrix((feats.values, feats.indices, feats.indptr), shape=(3, 1024)).toarray()
    assert dense.sum(axis=1) == pytest.approx([1.0, 0.0, 1.0])


def test_classifier_learns_a_separable_toy_problem():
    good = ["the cat sat on the mat", "the dog sat on the log", "a bird sat on the tree"] * 5
    bad = ["mat the on sat cat the", "log the on sat dog the", "tree the on sat bird a"] * 5
    clf = QualityClassifier(QualityConfig(buckets=4096, l2=1e-3)).fit(good + bad, [1] * 15 + [0] * 15)
    p = clf.predict_proba(["the cow sat on the mat", "mat the on sat cow the"])
    assert p[0] > 0.5 > p[1]  # word order is visible through the bigrams
    negative, positive = clf.top_features(["on the", "the on", "sat on", "on sat"], k=2)
    assert {g for g, _ in positive} == {"on the", "sat on"} and {g for g, _ in negative} == {"the on", "on sat"}


def test_classifier_rejects_bad_labels():
    clf = QualityClassifier(QualityConfig(buckets=64))
    with pytest.raises(ValueError, match="one label per document"):
        clf.fit(["a", "b"], [1])
    with pytest.raises(ValueError, match="0 .* or 1"):
        clf.fit(["a", "b"], [1, 2])


@pytest.fixture(scope="module")
def labelled(data_dir):
    """Real paragraphs of the TinyStories validation sample (clean) and corrupted copies of other paragraphs."""
    text = registry.fetch("tinystories/tinystories_valid_sample.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in join_wrapped_lines(text) if len(p.split()) >= 30][:240]
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for k, p in enumerate(paragraphs):
        if k % 2 == 0:
            texts.append(p)
            labels.append(1)
        else:
            texts.append(corrupt(p, rng, CORRUPTIONS[(k // 2) % len(CORRUPTIONS)], 0.3))
            labels.append(0)
    return texts, np.array(labels)


def test_logistic_regression_parity_with_scikit_learn(labelled):
    """Same features, same objective (mean log-loss + l2/2 |w|^2 <=> C = 1/(l2 n)): same model."""
    linear_model = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is in the test extra")
    sparse = pytest.importorskip("scipy.sparse")
    texts, labels = labelled
    train, test = slice(0, 180), slice(180, None)
    cfg = QualityConfig(buckets=2**14, l2=1e-3, max_iter=1000)
    clf = QualityClassifier(cfg).fit(texts[train], labels[train])
    feats = featurize(texts, cfg)
    x = sparse.csr_matrix((feats.values, feats.indices, feats.indptr), shape=(len(feats), cfg.buckets))
    ref = linear_model.LogisticRegression(C=1 / (cfg.l2 * 180), tol=1e-12, max_iter=10_000).fit(x[train], labels[train])
    assert clf.predict_proba(texts[test]) == pytest.approx(ref.predict_proba(x[test])[:, 1], abs=1e-6)
    assert clf.weight == pytest.approx(ref.coef_[0], abs=1e-5)
    assert clf.bias == pytest.approx(ref.intercept_[0], abs=1e-5)
    assert ((clf.predict_proba(texts[test]) >= 0.5) == labels[test]).mean() > 0.6  # above chance (0.5) on held-out items


def test_precision_recall_by_hand():
    y_true = [1, 1, 1, 0, 0, 1, 0]
    y_pred = [1, 0, 1, 1, 0, 1, 0]
    pr = precision_recall(y_true, y_pred)
    assert (pr.tp, pr.fp, pr.fn, pr.tn) == (3, 1, 1, 2)
    assert pr.precision == pytest.approx(3 / 4) and pr.recall == pytest.approx(3 / 4)
    assert pr.f1 == pytest.approx(3 / 4)
    none = precision_recall([1, 0], [0, 0])
    assert math.isnan(none.precision) and none.recall == 0.0 and none.f1 == 0.0
    with pytest.raises(ValueError, match="equal length"):
        precision_recall([1, 0], [1])
    with pytest.raises(ValueError, match="only 0 and 1"):
        precision_recall([1, 2], [1, 1])


def test_precision_recall_parity_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is in the test extra")
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    pr = precision_recall(y_true, y_pred)
    assert pr.precision == pytest.approx(metrics.precision_score(y_true, y_pred))
    assert pr.recall == pytest.approx(metrics.recall_score(y_true, y_pred))
    assert pr.f1 == pytest.approx(metrics.f1_score(y_true, y_pred))


def test_wilson_interval_by_hand_and_against_scipy():
    # 8 of 10: centre (0.8 + 1.96^2/20) / (1 + 1.96^2/10), half-width 1.96/(1 + 1.96^2/10) * sqrt(0.016 + 1.96^2/400)
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    stats = pytest.importorskip("scipy.stats", reason="scipy comes with scikit-learn (test extra)")
    for k, n in [(8, 10), (0, 7), (45, 50), (313, 1000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    pr = precision_recall([1] * 10 + [0] * 5, [1] * 8 + [0] * 2 + [1] * 2 + [0] * 3)
    assert pr.recall_interval() == pytest.approx(wilson_interval(8, 10))
    assert pr.precision_interval() == pytest.approx(wilson_interval(8, 10))
