"""Deduplication: exact hashing, MinHash parity with datasketch, LSH precision/recall on planted near-duplicates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.lsh import _optimal_param

from llmbook.data.dedup import (
    MinHashConfig,
    clusters,
    exact_duplicates,
    jaccard,
    lsh_candidate_pairs,
    minhash_signatures,
    near_duplicates,
    optimal_bands,
    shingles,
)
from llmbook.data.planted import EDIT_KINDS, near_copy, near_duplicate, plant_duplicates
from llmbook.data.sources import load_corpus


@pytest.fixture(scope="module")
def planted(data_dir):
    """300 real TinyStories documents plus 150 mutated copies of varying strength."""
    base = [r["text"] for r in itertools.islice(load_corpus("tinystories"), 300)]
    rng = np.random.default_rng(0)
    docs = list(base)
    for k in range(150):
        kind = EDIT_KINDS[k % len(EDIT_KINDS)]
        docs.append(near_copy(base[k], rng, kind, strength=float(rng.choice([0.01, 0.03, 0.06, 0.15, 0.3])))[0])
    sets = [shingles(d) for d in docs]
    truth = {(i, j): jaccard(sets[i], sets[j]) for i in range(len(docs)) for j in range(i + 1, len(docs))}
    return docs, truth


def test_planted_near_copies_are_never_exact_duplicates():
    rng = np.random.default_rng(0)
    assert near_duplicate("Did a bob see a noon? Wow.", rng, "substitute", 0.1) != "Did a bob see a noon? Wow."
    swapped = near_duplicate("First one. Second one! Third one? Fourth.", rng, "swap_sentences", 0.1)
    assert sorted(swapped.split()) == sorted("First one. Second one! Third one? Fourth.".split())
    with pytest.raises(ValueError, match="cannot make"):
        near_duplicate("Only one sentence here", rng, "swap_sentences", 0.1)
    # Short, palindromic and one-sentence documents: exact dedup must find exactly the verbatim copies.
    texts = [f"{t} {w}" for w in ("ada", "bob", "otto", "anna", "did") for t in
             ("Only one sentence", "A b a. A b a.", "Did a noon, did.", "Wow! Mom? Dad.")]
    records = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    planted = plant_duplicates(records, n_exact=3, n_near=15, seed=3)
    assert int((~exact_duplicates(r["text"] for r in planted)).sum()) == 3


def test_exact_duplicates_ignore_case_whitespace_and_punctuation():
    keep = exact_duplicates(["Hello, world!", "hello   WORLD", "Hello world?", "Goodbye"])
    assert keep.tolist() == [True, False, False, True]


def test_signatures_equal_datasketch_bit_for_bit(planted):
    docs = planted[0][:50]
    cfg = MinHashConfig(num_perm=64, seed=7, threshold=0.7)
    ours = minhash_signatures(docs, cfg)
    for doc, sig in zip(docs, ours):
        m = MinHash(num_perm=64, seed=7)
        m.update_batch([s.encode() for s in shingles(doc)])
        assert np.array_equal(m.hashvalues, sig)


def test_jaccard_estimates_match_datasketch_and_truth(planted):
    docs, truth = planted
    cfg = MinHashConfig(num_perm=128, threshold=0.7)
    sig = minhash_signatures(docs, cfg)
    pairs = [(k, 300 + k) for k in range(150)]
    ours = np.array([(sig[i] == sig[j]).mean() for i, j in pairs])
    sketches = []
    for d in docs:
        m = MinHash(num_perm=128)
        m.update_batch([s.encode() for s in shingles(d)])
        sketches.append(m)
    theirs = np.array([sketches[i].jaccard(sketches[j]) for i, j in pairs])
    exact = np.array([truth[p] for p in pairs])
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    # The estimator's standard deviation is sqrt(J(1-J)/num_perm) <= 0.044; the mean error must be small.
    assert np.abs(ours - exact).mean() < 0.03 and np.abs(ours - exact).max() < 0.2


def test_lsh_precision_recall_against_brute_force(planted):
    """Truth = pairs with exact Jaccard >= threshold. Pairs within ±0.1 of the threshold may go either way."""
    docs, truth = planted
    t = 0.7
    # Equal weights give 14x9 bands, whose S-curve still misses ~5% of pairs at J = 0.83; weighting false
    # negatives more (16x8) moves the curve left so that pairs clearly above the threshold are found.
    cfg = MinHashConfig(num_perm=128, threshold=t, false_positive_weight=0.3, false_negative_weight=0.7)
    assert (cfg.bands, cfg.rows) == (16, 8)
    result = near_duplicates(docs, cfg)
    found = {tuple(p) for p in result.pairs.tolist()}
    clear_pos = {p for p, j in truth.items() if j >= t + 0.1}
    clear_neg = {p for p, j in truth.items() if j < t - 0.1}
    assert len(clear_pos) >= 40
    recall = len(found & clear_pos) / len(clear_pos)
    precision = 1 - len(found & clear_neg) / max(len(found), 1)
    assert recall >= 0.98 and precision >= 0.98, (recall, precision)
    strict_pos = {p for p, j in truth.items() if j >= t}
    strict_recall = len(found & strict_pos) / len(strict_pos)
    strict_precision = len(found & strict_pos) / max(len(found), 1)
    assert strict_recall >= 0.9 and strict_precision >= 0.9, (strict_recall, strict_precision)


def test_lsh_recall_at_least_datasketch(planted):
    docs, truth = planted
    cfg = MinHashConfig(num_perm=128, threshold=0.7)
    sig = minhash_signatures(docs, cfg)
    ours = {tuple(p) for p in lsh_candidate_pairs(sig, cfg.bands, cfg.rows).tolist()}
    lsh = MinHashLSH(threshold=0.7, num_perm=128, params=(cfg.bands, cfg.rows))
    theirs = set()
    for i, d in enumerate(docs):
        m = MinHash(num_perm=128)
        m.update_batch([s.encode() for s in shingles(d)])
        theirs |= {(j, i) for j in lsh.query(m)}
        lsh.insert(i, m)
    assert ours == theirs  # same signatures and bands: the same candidates


def test_clusters_keep_one_document_each():
    labels = clusters(6, np.array([[0, 3], [3, 5], [1, 2]]))
    assert labels.tolist() == [0, 1, 1, 0, 4, 0]
    docs = ["the quick brown fox jumps over the lazy dog again and again"] * 3 + ["something else entirely different here ok"]
    result = near_duplicates(docs, MinHashConfig(num_perm=32, threshold=0.8, ngram=3))
    assert result.keep.tolist() == [True, False, False, True]
    assert result.report() == {"documents": 4, "candidate_pairs": 3, "pairs": 3, "clusters": 1, "removed": 2}


def test_big_buckets_are_linked_as_stars():
    sig = np.zeros((500, 8), dtype=np.uint32)
    pairs = lsh_candidate_pairs(sig, bands=2, rows=4, max_bucket=100)
    assert len(pairs) == 499 and (pairs[:, 0] == 0).all()
    assert (clusters(500, pairs) == 0).all()


def test_config_validation_and_optimal_bands():
    for threshold, num_perm in [(0.5, 64), (0.7, 128), (0.8, 128), (0.9, 256)]:
        assert optimal_bands(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
    assert optimal_bands(0.8, 128, false_positive_weight=0.1, false_negative_weight=0.9) == _optimal_param(0.8, 128, 0.1, 0.9)
    with pytest.raises(ValueError, match="bands"):
        MinHashConfig(num_perm=16, bands=8, rows=4)
    with pytest.raises(ValueError, match="threshold"):
        MinHashConfig(threshold=0)
    assert minhash_signatures([""], MinHashConfig(num_perm=4)).tolist() == [[2**32 - 1] * 4]
