"""Converters rebuild the data folder's converted files from upstream schemas: each is checked on a small
fixture written in that upstream schema, and against the registry where the package alone can rebuild a file."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import itertools
import json

import pytest

from llmbook.data import convert, registry, sources


def test_head_keeps_lines_byte_for_byte_and_ends_with_a_newline():
    assert convert.head([b"a\r\nb\nc"], 2) == b"a\r\nb\n"
    assert convert.head([b"a\nb\nc"], 3) == b"a\nb\nc\n"
    with pytest.raises(ValueError, match="fewer than the 4"):
        convert.head([b"a\nb\nc"], 4)
    assert convert.gunzip_head([gzip.compress(b'{"task_id": "HumanEval/0"}\n{"x": 1}\n')], 1) == b'{"task_id": "HumanEval/0"}\n'


def test_jsonl_id_range_selects_mbpp_splits():
    lines = [json.dumps({"task_id": i, "text": f"t{i}"}).encode() + b"\n" for i in (1, 2, 10, 11, 511)]
    data = b"".join(lines)[:-1]  # upstream's last line has no newline
    assert convert.jsonl_id_range([data], "task_id", 1, 10) == b"".join(lines[:3])
    assert convert.jsonl_id_range([data], "task_id", 500, 600) == lines[4]
    with pytest.raises(ValueError, match="line 1: field 'task_id' is 'x'"):
        convert.jsonl_id_range([b'{"task_id": "x"}\n'], "task_id", 1, 2)


def _klosax(items):
    return bz2.compress("".join(f"{q}\n{label}\n" + "".join(e + "\n" for e in ends) for q, label, ends in items).encode())


def test_hellaswag_from_the_six_line_text_dump():
    items = [(f"Activity {i}: context number {i}, caf\u00e9. the person", str(i % 4), [f"end {i}{c}" for c in "abcd"])
             for i in range(10)]
    out = [json.loads(line) for line in convert.hellaswag_klosax([_klosax(items)], 5).decode().splitlines()]
    assert [d["idx"] for d in out] == [0, 2, 4, 6, 8]
    assert out[1] == {"idx": 2, "activity_label": "Activity 2", "query": items[2][0], "endings": items[2][2], "label": 2}
    assert "café" in convert.hellaswag_klosax([_klosax(items)], 1).decode()  # UTF-8, not \u escapes
    with pytest.raises(ValueError, match="item 0: malformed"):
        convert.hellaswag_klosax([_klosax([("no separator", "1", ["a", "b", "c", "d"])])], 1)
    with pytest.raises(ValueError, match="not a multiple of 6"):
        convert.hellaswag_klosax([bz2.compress(b"a\nb\n")], 1)


def test_piqa_merges_records_and_labels():
    valid = b'{"goal": "g0", "sol1": "a", "sol2": "b"}\n{"goal": "g1", "sol1": "c", "sol2": "d"}\n'
    out = convert.piqa_merge([valid, b"1\n0\n"], 2).decode().splitlines()
    assert json.loads(out[0]) == {"idx": 0, "goal": "g0", "sol1": "a", "sol2": "b", "label": 1}
    assert list(json.loads(out[1])) == ["idx", "goal", "sol1", "sol2", "label"]
    with pytest.raises(ValueError, match="2 records but 1 labels"):
        convert.piqa_merge([valid, b"1\n"], 1)


def test_mmlu_merges_subject_csvs():
    header = b"question,choice0,choice1,choice2,choice3,answer\r\n"
    algebra = header + b'"Which?\r\nI. one",1,2,3,4,0\r\n'
    anatomy = header + b'Bones?,"a, b",c,d,e,3\r\n'
    out = convert.mmlu_merge([algebra, anatomy], ["abstract_algebra", "anatomy"])
    assert out == (b"subject,question,choice0,choice1,choice2,choice3,answer\r\n"
                   b'abstract_algebra,"Which?\nI. one",1,2,3,4,0\r\nanatomy,Bones?,"a, b",c,d,e,3\r\n')
    with pytest.raises(ValueError, match="MMLU anatomy: header"):
        convert.mmlu_merge([algebra, b"q,a\r\n"], ["abstract_algebra", "anatomy"])


def test_arc_drops_the_retrieval_field():
    doc = {"id": "X_1", "question": {"stem": "Why?", "choices": [{"text": "a", "label": "A", "para": "retrieved"}]},
           "answerKey": "A"}
    out = convert.arc_strip_para([json.dumps(doc).encode() + b"\n\n"])
    assert out == b'{"id": "X_1", "question": {"stem": "Why?", "choices": [{"text": "a", "label": "A"}]}, "answerKey": "A"}\n'


PG_BOOK = (
    "\ufeffThe Project Gutenberg EBook of A Test, by Someone\r\n\r\nThis eBook is for the use of anyone.\r\n\r\n"
    "*** START OF THIS PROJECT GUTENBERG EBOOK\r\nA TEST ***\r\n\r\n\r\nProduced by A Volunteer and the Online\r\n"
    "Distributed Proofreading Team\r\n\r\n\r\n\r\nA TEST\r\n\r\nby Someone\r\n\r\n"
    "Transcriber\u2019s note: this Project Gutenberg edition fixes typos.\r\n\r\n\r\n\r\n"
    "  CHAPTER I.\r\n\r\nIt was a dark night\x97and cold.\r\n" + "More text here.\r\n\r\n" * 200 +
    "The last line mentions Gutenberg, and stays.\r\n\r\n\r\n"
    "    *** END OF THIS PROJECT GUTENBERG EBOOK A TEST ***\r\n\r\nLicence text that must go.\r\n"
)


def test_gutenberg_cleaning_keeps_only_the_book():
    text = convert.gutenberg_clean(PG_BOOK.encode("utf-8"))
    assert text.startswith("A TEST\n\nby Someone\n\n\n\n  CHAPTER I.\n\nIt was a dark night\u2014and cold.\n")
    assert text.endswith("More text here.\n\nThe last line mentions Gutenberg, and stays.\n")
    assert "Produced by" not in text and "Transcriber" not in text and "Licence" not in text and "\r" not in text
    with pytest.raises(ValueError, match="START OF"):
        convert.gutenberg_clean(b"no markers at all\n")
    with pytest.raises(ValueError, match="END OF"):
        convert.gutenberg_clean(b"*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody\n")


def test_gutenberg_manifest_is_rebuilt_from_the_book_list():
    entry = registry.registry().files["gutenberg/manifest.tsv"]
    data = convert.gutenberg_manifest()
    assert hashlib.sha256(data).hexdigest() == entry.sha256 and len(data) == entry.size
    books = convert.gutenberg_books()
    assert len(books) == len(entry_inputs := registry.registry().files["gutenberg/gutenberg_en.txt.xz"].inputs)
    assert all(r.sha256 == b.source_sha256 and b.source_commit in r.urls[0] for b, r in zip(books, entry_inputs))
    corpus = convert.gutenberg_text(["one\n", "two\n"])
    assert corpus == b"one\n\n\n\ntwo\n"


def test_gutenberg_sample_downloads_only_the_books_it_reads(tmp_path, monkeypatch):
    """Without a local corpus, each book is fetched when the reader reaches it, cleaned and checked."""
    monkeypatch.delenv("LLMBOOK_DATA", raising=False)
    monkeypatch.delenv("LLMBOOK_DATA_MIRROR", raising=False)
    monkeypatch.setenv("LLMBOOK_CACHE", str(tmp_path))
    raw = PG_BOOK.encode("utf-8")
    clean = convert.gutenberg_clean(raw)
    book = convert.Book(1, "A Test", "Someone", len(clean.encode()), hashlib.sha256(clean.encode()).hexdigest(),
                        "o/r", "b.txt", "c" * 40, "d" * 40, hashlib.sha256(raw).hexdigest(), len(raw))
    fetched = []

    def fake_upstream(remote, progress=True):
        fetched.append(remote)
        path = tmp_path / "raw.txt"
        path.write_bytes(raw)
        return path

    monkeypatch.setattr(convert, "gutenberg_books", lambda: [book, book, book])
    monkeypatch.setattr(registry, "upstream", fake_upstream)
    records = list(itertools.islice(sources.load_corpus("gutenberg", max_docs=2), 5))
    assert [r["text"] for r in records] == [clean, clean] and records[0]["title"] == "A Test" and len(fetched) == 2
    monkeypatch.setattr(convert, "gutenberg_books", lambda: [convert.Book(**{**book.__dict__, "sha256_text": "0" * 64})])
    with pytest.raises(registry.ChecksumMismatch, match="Gutenberg book 1 \\(cleaned\\).*expected 0{64}"):
        next(sources.load_corpus("gutenberg"))
