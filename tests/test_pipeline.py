"""The curation pipeline on real text with planted problems: everything planted is found, counts add up."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from llmbook.data import planted
from llmbook.data.dedup import MinHashConfig, jaccard, shingles
from llmbook.data.filters import FilterConfig
from llmbook.data.pipeline import prepare, resolve_filters
from llmbook.data.sources import load_corpus, load_inputs


@pytest.fixture(scope="module")
def stories(data_dir):
    return list(itertools.islice(load_corpus("tinystories"), 300))


def test_planted_duplicates_and_pii_are_labelled(stories):
    docs = planted.plant_duplicates(stories, n_exact=5, n_near=10, seed=0)
    assert len(docs) == 315
    copies = [d for d in docs if "planted" in d]
    assert Counter(d["planted"] == "exact" for d in copies) == Counter({True: 5, False: 10})
    by_id = {d["id"]: d for d in stories}
    for d in copies:
        if d["planted"] == "exact":
            assert d["text"] == by_id[d["copy_of"]]["text"]
        else:
            assert 0 < jaccard(shingles(d["text"]), shingles(by_id[d["copy_of"]]["text"])) < 1
    with_pii = planted.plant_pii(stories, n=16, seed=0)
    assert sum("planted_pii" in d for d in with_pii) == 16
    with pytest.raises(ValueError, match="kind"):
        planted.near_duplicate("a b c", np.random.default_rng(0), "shuffle", 0.1)


def test_prepare_finds_what_was_planted(stories):
    dirty = planted.plant_duplicates(planted.plant_pii(stories, n=16, seed=2), n_exact=10, n_near=0, seed=1)
    kept, report = prepare(dirty, filter_config=FilterConfig(min_words=20), progress=False)
    assert report["input_documents"] == len(dirty) == report["kept_documents"] + sum(report["removed"].values())
    kept_ids = {r["id"] for r in kept}
    copies = [d for d in dirty if d.get("planted") == "exact"]
    survivors = [(d["id"] in kept_ids) + (d["copy_of"] in kept_ids) for d in copies]
    assert max(survivors) == 1  # never both; none when the text failed a filter (copy and original alike)
    assert report["removed"]["exact_duplicates"] >= sum(survivors) >= 5
    assert len({r["text"] for r in kept}) == len(kept)
    values = [v for _, _, v in planted.PII_SNIPPETS]
    assert not any(v in r["text"] for r in kept for v in values)
    assert sum(report["pii"]["spans"].values()) >= sum("planted_pii" in r for r in kept)


def test_prepare_near_duplicates_against_planted_truth(stories):
    dirty = planted.plant_duplicates(stories, n_exact=0, n_near=40, seed=4, strengths=(0.01, 0.02, 0.05, 0.3, 0.5))
    # Threshold 0.7 with false negatives weighted up (16 bands x 8 rows): pairs at J >= 0.8 are found.
    cfg = MinHashConfig(threshold=0.7, false_positive_weight=0.3, false_negative_weight=0.7)
    kept, report = prepare(dirty, filters="none", minhash=cfg, pii=False, progress=False)
    kept_ids = {r["id"] for r in kept}
    by_id = {d["id"]: d for d in dirty}
    near = [d for d in dirty if d.get("planted", "exact") != "exact"]
    sims = {d["id"]: jaccard(shingles(d["text"]), shingles(by_id[d["copy_of"]]["text"])) for d in near}
    clear_dups = [d for d in near if sims[d["id"]] >= 0.8]
    clear_distinct = [d for d in near if sims[d["id"]] < 0.5]
    assert len(clear_dups) >= 10 and len(clear_distinct) >= 5
    for d in clear_dups:  # recall: exactly one of copy and original survives
        assert (d["id"] in kept_ids) + (d["copy_of"] in kept_ids) == 1, d["planted"]
    for d in clear_distinct:  # precision: far-apart copies are both kept
        assert d["id"] in kept_ids and d["copy_of"] in kept_ids, d["planted"]
    # Everything MinHash removed is a planted copy or the original of one (TinyStories has no other near-dups).
    involved = {d["id"] for d in near} | {d["copy_of"] for d in near}
    removed = {d["id"] for d in dirty if d["id"] not in kept_ids}
    assert removed <= involved and len(removed) == report["removed"]["near_duplicates"]
    assert report["removed"]["exact_duplicates"] == 0  # no near-copy is an exact copy


def test_prepare_options_and_errors(stories):
    kept, report = prepare(stories[:20], filters="none", dedup=(), pii=False, progress=False)
    assert len(kept) == 20 and report["removed"] == {"unreadable": 0, "quality_filters": 0}
    assert resolve_filters("word_count, language") == ["word_count", "language"]
    with pytest.raises(ValueError, match="unknown filters"):
        resolve_filters("word_count,nope")
    with pytest.raises(ValueError, match="dedup"):
        prepare(stories[:2], dedup=("fuzzy",), progress=False)
    with pytest.raises(ValueError, match="empty corpus"):
        prepare([], progress=False)


def test_load_inputs_checks_every_input_first(tmp_path, data_dir):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    with pytest.raises(FileNotFoundError):
        load_inputs([str(tmp_path / "a.txt"), str(tmp_path / "missing.txt")]).__next__()
    assert [r["text"] for r in load_inputs([str(tmp_path / "a.txt")])] == ["one", "two"]
    with pytest.raises(ValueError, match="no input"):
        next(load_inputs([]))
