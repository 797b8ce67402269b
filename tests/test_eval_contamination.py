"""n-gram contamination detection: planted leaks are found, paraphrase-level noise is not, real splits are checked."""

from __future__ import annotations

import json

import pytest

from llmbook.eval.contamination import ContaminationIndex, drop_contaminated, normalize_words, read_documents


def _gsm8k(data_file, name, limit=None):
    with data_file(f"gsm8k/{name}").open(encoding="utf-8") as f:
        return [json.loads(line)["question"] for line in list(f)[:limit]]


def test_planted_leaks_are_found_and_dropped(data_file):
    test_q = _gsm8k(data_file, "test_dev.jsonl", 60)
    corpus = data_file("tinyshakespeare/input.txt").read_text(encoding="utf-8")[:200_000].split("\n\n")
    leaked = [3, 17, 42]
    # leaks are embedded mid-document, re-cased and with punctuation changed: normalisation must see through it
    docs = corpus + [f"Some forum post. {test_q[i].upper().replace(',', ' ;')} Thanks!" for i in leaked]
    rep = ContaminationIndex({"gsm8k": test_q}, n=13).scan(docs).report()["gsm8k"]
    assert rep.contaminated == leaked
    assert rep.fraction == pytest.approx(3 / 60)
    assert all(rep.overlap[i] == pytest.approx(1.0) for i in leaked)
    clean = drop_contaminated(test_q, rep)
    assert len(clean) == 57 and test_q[17] not in clean


def test_partial_overlap_threshold_and_short_items():
    item = " ".join(f"w{i}" for i in range(30))  # 18 distinct 13-grams
    doc = " ".join(f"w{i}" for i in range(14))  # contains exactly 2 of them
    idx = ContaminationIndex({"t": [item, "tiny item"]}, n=13, min_hits=3).scan([doc, "a tiny item here"])
    rep = idx.report()["t"]
    assert rep.overlap[0] == pytest.approx(2 / 18) and 0 not in rep.contaminated
    assert rep.contaminated == [1]  # shorter than n: matched as a whole
    skip = ContaminationIndex({"t": ["tiny item"]}, short_items="skip").scan(["a tiny item"]).report()["t"]
    assert skip.contaminated == []


def test_gsm8k_train_vs_test_is_clean_at_13_grams(data_file):
    # the GSM8K authors wrote disjoint train/test problems: a real corpus with (almost) no leakage
    test_q = _gsm8k(data_file, "test_dev.jsonl", 100)
    rep = ContaminationIndex({"gsm8k": test_q}).scan(_gsm8k(data_file, "train.jsonl", 2000)).report()["gsm8k"]
    assert rep.fraction < 0.05


def test_non_ascii_items_are_scored_and_wordless_items_unscorable(data_file):
    zho = data_file("flores200/zho_Hans.dev").read_text(encoding="utf-8").splitlines()[:20]
    rus = "Москва является столицей России и крупнейшим городом страны по численности населения и площади территории"
    items = zho + [rus, "", "?!"]
    docs = [f"转载：{zho[4]} 谢谢", "ПРОСТО ТЕКСТ. " + rus.upper(), "nothing to see"]
    rep = ContaminationIndex({"t": items}, n=13).scan(docs).report()["t"]
    assert rep.contaminated == [4, 20]
    assert rep.unscorable == [21, 22] and rep.to_dict()["n_unscorable"] == 2
    assert normalize_words("Straße ＡＢＣ 北京") == ["strasse", "abc", "北", "京"]  # NFKC + casefold, CJK per character


def test_read_documents_joins_lines_until_a_blank_line():
    assert list(read_documents(["a b\n", "c\n", "\n", "\n", "d\n"])) == ["a b\nc\n", "d\n"]


def test_validation_errors():
    assert normalize_words("Hello, World! 42x") == ["hello", "world", "42x"]
    with pytest.raises(ValueError, match="short_items"):
        ContaminationIndex({"t": []}, short_items="drop")
    rep = ContaminationIndex({"t": ["a b"]}).report()["t"]
    with pytest.raises(ValueError, match="task 't'"):
        drop_contaminated([1, 2], rep)
