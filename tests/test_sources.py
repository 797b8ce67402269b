"""Sources: separator rules, JSONL/Parquet readers with counted skips, named corpora and the seeded mixture."""

from __future__ import annotations

import gzip
import itertools
import json
from collections import Counter

import pytest

from llmbook.data import registry
from llmbook.fileio import file_sha256
from llmbook.data.sources import (NAMED, document_weights, load_corpus, mixture, read_hf, read_jsonl,
                                  read_parquet, read_text, split_documents)

TEXT = "First para\nline two\n\n\nSecond para\n\nThird\nstory two starts\n"


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("line", ["First para", "line two", "Second para", "Third", "story two starts"]),
        ("paragraph", ["First para\nline two", "Second para", "Third\nstory two starts"]),
        ("story", ["First para", "line two\n\n\nSecond para\n\nThird", "story two starts"]),
        ("file", ["First para\nline two\n\n\nSecond para\n\nThird\nstory two starts"]),
    ],
)
def test_separator_rules(rule, expected):
    assert list(split_documents(TEXT.splitlines(keepends=True), rule)) == expected


def test_wikitext_rule_starts_an_article_at_each_title():
    lines = [" \n", " = A = \n", " \n", " text a \n", " = = Sub = = \n", " more a \n", " = B = \n", " text b \n"]
    docs = list(split_documents(lines, "wikitext"))
    assert len(docs) == 2 and docs[0].startswith(" = A =") and "Sub" in docs[0] and docs[1].startswith(" = B =")
    with pytest.raises(ValueError, match="separator"):
        list(split_documents(lines, "nope"))


def test_read_text_compressed_and_bad_bytes(tmp_path):
    path = tmp_path / "c.txt.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"caf\xc3\xa9\n\nbad \xff byte\n")
    recs = list(read_text(path))
    assert [r["text"] for r in recs][0] == "café"
    assert recs[1]["encoding_errors"] == 1 and recs[1]["id"] == "c:1" and recs[1]["source"] == "c"


def test_jsonl_bad_lines_raise_or_are_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = ['{"text": "ok", "lang": "en"}', "not json", "[1, 2]", '{"body": "x"}', '{"text": 3}', "", '{"text": "ok2", "id": "z"}']
    path.write_text("\n".join(lines))
    skips = Counter()
    recs = list(read_jsonl(path, skips=skips))
    assert [r["text"] for r in recs] == ["ok", "ok2"] and recs[0]["lang"] == "en" and recs[1]["id"] == "z"
    assert skips == Counter({"invalid_json": 1, "not_an_object": 1, "no_text_string": 2})
    with pytest.raises(ValueError, match=r"d.jsonl:2: invalid json"):
        list(read_jsonl(path))


def test_parquet_streams_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b", None], "n": [1, 2, 3]}), tmp_path / "p.parquet", row_group_size=2)
    skips = Counter()
    recs = list(read_parquet(tmp_path / "p.parquet", batch_size=1, skips=skips))
    assert [(r["text"], r["n"]) for r in recs] == [("a", 1), ("b", 2)]
    assert skips == {"no_text_string": 1}  # the null row is counted, not dropped silently
    with pytest.raises(ValueError, match="row 2: no text string"):
        list(read_parquet(tmp_path / "p.parquet"))
    skips = Counter()
    assert len(list(load_corpus(tmp_path / "p.parquet", skips=skips))) == 2 and skips == {"no_text_string": 1}
    with pytest.raises(ValueError, match="no column"):
        list(read_parquet(tmp_path / "p.parquet", text_field="body"))


def test_load_corpus_by_path_and_errors(tmp_path):
    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "hi"}) + "\n")
    assert [r["text"] for r in load_corpus(tmp_path / "x.jsonl")] == ["hi"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_corpus(tmp_path / "missing.txt")


def test_named_corpora(data_dir):
    stories = list(load_corpus("tinystories"))
    assert len(stories) > 1000 and all(r["source"] == "tinystories" for r in stories)
    assert stories[0]["text"].startswith("One day, a little girl named Lily") and stories[1]["text"].startswith("Once upon")
    wiki = list(load_corpus("wikitext2"))
    assert wiki[0]["text"].startswith(" = Homarus gammarus =")
    books = list(itertools.islice(load_corpus("gutenberg"), 2))
    assert books[0]["title"].startswith("Alice") and books[0]["id"] == "gutenberg:11" and len(books[0]["text"]) > 100_000
    assert [len(list(load_corpus(name, max_docs=3))) for name in ("tinystories", "gutenberg")] == [3, 3]


def test_hub_corpora_stream_a_sample_through_the_registry(monkeypatch):
    from llmbook.data import sources

    calls = []
    monkeypatch.setattr(sources, "read_hf", lambda *args, **kw: calls.append((args, kw)) or iter(()))
    with pytest.raises(registry.DataUnavailable, match="fineweb-edu.*LLMBOOK_OFFLINE"):  # tests never stream the hub
        load_corpus("fineweb-edu", max_docs=5)
    assert calls == []
    monkeypatch.delenv("LLMBOOK_OFFLINE")
    list(load_corpus("fineweb-edu", max_docs=5))
    assert calls[0][0][:4] == ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", "text")
    assert calls[0][1]["max_docs"] == 5 and calls[0][1]["revision"]
    with pytest.raises(FileNotFoundError, match="not a corpus name.*fineweb-edu.*tinystories-hub"):
        load_corpus("fineweb")


def test_wikitext_download_is_the_local_variant(data_dir):
    """The registry downloads WikiText-2 byte-identical to the local copy: the tokenised variant (wiki.valid.tokens)."""
    local = registry.fetch(NAMED["wikitext2"][0])
    assert "<unk>" in local.read_text(encoding="utf-8") and " @-@ " in local.read_text(encoding="utf-8")
    entry = registry.registry().files[NAMED["wikitext2"][0]]
    assert entry.sha256 == file_sha256(local)


def test_mixture_is_seeded_and_weighted():
    streams = {"a": lambda: ({"text": f"a{i}", "source": "a"} for i in range(10_000)),
               "b": lambda: ({"text": f"b{i}", "source": "b"} for i in range(10_000))}
    first = [r["text"] for r in mixture(streams, {"a": 3, "b": 1}, seed=1, max_docs=2000)]
    again = [r["text"] for r in mixture(streams, {"a": 3, "b": 1}, seed=1, max_docs=2000)]
    assert first == again
    share = sum(t.startswith("a") for t in first) / len(first)
    assert abs(share - 0.75) < 0.04
    small = {"a": lambda: iter([{"text": "a"}] * 3), "b": lambda: iter([{"text": "b"}] * 100)}
    assert len(list(mixture(small, {"a": 1, "b": 1}, seed=0))) == 103  # "drop": all of both, a runs out first
    restarted = list(mixture(small, {"a": 1, "b": 1}, seed=0, exhausted="restart", max_docs=150))
    assert sum(r["text"] == "a" for r in restarted) > 50  # the small source is up-sampled
    with pytest.raises(ValueError, match="weights"):
        list(mixture(small, {"a": 1}))


def test_document_weights_hit_token_shares():
    # hand-worked: equal token shares, documents of 100 and 10 tokens -> draw b ten times as often as a
    assert document_weights({"a": 0.5, "b": 0.5}, {"a": 100, "b": 10}) == pytest.approx({"a": 1 / 11, "b": 10 / 11})
    # shares need not sum to one; equal lengths leave the shares as they are
    assert document_weights({"a": 3, "b": 1}, {"a": 7, "b": 7}) == pytest.approx({"a": 0.75, "b": 0.25})
    # the mixture drawn with these weights gives each source its share of the tokens (seeded, 20,000 draws)
    lengths = {"a": 200, "b": 20, "c": 5}
    streams = {n: (lambda n=n: ({"text": "x " * lengths[n], "source": n} for _ in iter(int, 1))) for n in lengths}
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    drawn = list(mixture(streams, document_weights(shares, lengths), seed=0, max_docs=20_000))
    tokens = Counter()
    for r in drawn:
        tokens[r["source"]] += len(r["text"].split())
    total = sum(tokens.values())
    assert {n: tokens[n] / total for n in shares} == pytest.approx(shares, abs=0.02)
    # per-document weights equal to the shares would instead give "a" far more than its share
    naive = Counter()
    for r in mixture(streams, shares, seed=0, max_docs=20_000):
        naive[r["source"]] += len(r["text"].split())
    assert naive["a"] / sum(naive.values()) > 0.8


@pytest.mark.parametrize("shares, lengths, match", [
    ({"a": 1}, {"b": 1}, "name"),
    ({"a": -1, "b": 2}, {"a": 1, "b": 1}, "non-negative"),
    ({"a": 1, "b": 1}, {"a": 0, "b": 1}, "positive"),
])
def test_document_weights_rejects_bad_input(shares, lengths, match):
    with pytest.raises(ValueError, match=match):
        document_weights(shares, lengths)


def test_hf_datasets_streams_local_files(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"doc {i}", "n": i}) for i in range(5)) + "\n")
    recs = list(read_hf("json", data_files=str(path), source="local"))
    assert [r["text"] for r in recs] == [f"doc {i}" for i in range(5)]
    assert recs[0]["id"] == "local:0" and recs[0]["source"] == "local"


def test_hf_datasets_counts_rows_without_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["a", None, "b"]) + "\n")
    skips = Counter()
    assert [r["text"] for r in read_hf("json", data_files=str(path), skips=skips)] == ["a", "b"]
    assert skips == {"no_text_string": 1}
    with pytest.raises(ValueError, match="row 1: no text string"):
        list(read_hf("json", data_files=str(path)))
