"""The data CLI end to end: prepare -> tokenizer train -> data tokenize -> TokenLoader, and its error handling."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from llmbook.cli import main
from llmbook.data.pack import TokenLoader
from llmbook.fileio import file_sha256
from llmbook.tokenizer import BPETokenizer

SENTENCES = [
    "The fox slept under the old oak tree until noon.", "A small boat drifted across the quiet lake.",
    "Grandma baked bread with honey and seeds on Sunday.", "The train to the city was late again that morning.",
    "Children built a castle of snow in the park.", "The lighthouse keeper counted the ships at night.",
    "Rain fell on the roof and the cat watched from the window.", "A farmer planted corn in the long field by the river.",
    "The library smelled of paper, dust and old leather.", "Two birds argued loudly over a piece of bread.",
    "The baker woke up before the sun to light the oven.", "Music from the street band filled the square.",
    "She wrote a letter to her brother who lived by the sea.", "The mountain path was steep and covered in stones.",
    "An old clock in the hall struck twelve times.", "The garden was full of bees and yellow flowers.",
    "He fixed the bicycle with a wrench and some string.", "The children laughed as the puppy chased its tail.",
    "Snow covered the village and the roads were closed.", "A red kite flew high above the green hill.",
    "The teacher read a story about a brave little mouse.", "Lanterns glowed along the river during the festival.",
    "The fisherman mended his nets on the wooden pier.", "A storm was coming, so they closed the shutters.",
]


def story(i: int) -> str:
    """A distinct document: 8 of the sentences, chosen and ordered by `i` (low Jaccard between documents)."""
    import random

    return " ".join(random.Random(i).sample(SENTENCES, 8))


STORY = (
    "Tom had a red ball. He liked to throw the ball to his dog, and the dog ran after it every time. One day "
    "the ball went into the pond. Tom was sad, but his dog jumped into the water and brought the ball back. "
    "Tom hugged his dog and said that he was the best friend in the whole world. They played until the sun set."
)


@pytest.fixture()
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    lines = [json.dumps({"text": STORY, "source": "stories"})]
    lines += [json.dumps({"text": story(i), "source": "stories"}) for i in range(7)]
    lines.append(json.dumps({"text": STORY.upper(), "source": "stories"}))  # exact duplicate after normalisation
    lines.append(json.dumps({"text": STORY.replace("red", "blue") + " The end.", "source": "stories"}))  # near duplicate
    lines.append(json.dumps({"text": story(7) + " Write to zed@example.com.", "source": "stories"}))
    lines.append(json.dumps({"text": "too short <|endoftext|>", "source": "stories"}))
    lines.append("this line is not json")
    lines.append(json.dumps(["a list"]))
    lines.append(json.dumps({"body": "no text field"}))
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    raw = tmp_path / "raw.txt"
    raw.write_bytes(b"Bad bytes caf\xe9 \xff here. " + story(8).encode() + b"\n\n" + story(9).encode())
    return path, raw


def test_prepare_counts_add_up(corpus, tmp_path, capsys):
    path, raw = corpus
    assert main(["data", "prepare", "--input", str(path), "--input", str(raw), "--out", str(tmp_path / "cur"),
                 "--pii", "--min-words", "20", "--threshold", "0.7"]) == 0
    report = json.loads((tmp_path / "cur" / "report.json").read_text())
    kept = [json.loads(line) for line in (tmp_path / "cur" / "curated.jsonl").read_text().splitlines()]
    assert report["input_documents"] == 17 == report["kept_documents"] + sum(report["removed"].values())
    assert report["removed"] == {"unreadable": 3, "quality_filters": 1, "exact_duplicates": 1, "near_duplicates": 1}
    assert report["unreadable"] == {"invalid_json": 1, "not_an_object": 1, "no_text_string": 1}
    assert report["encoding_repaired_documents"] == 1
    assert report["minhash"]["examples"][0]["removed"] == "stories:9"  # the edited copy of the first story
    assert report["pii"] == {"documents_redacted": 1, "spans": {"EMAIL": 1}}
    assert len(kept) == report["kept_documents"] == 11
    assert any("<EMAIL>" in r["text"] for r in kept) and not any("zed@example.com" in r["text"] for r in kept)
    assert any("caf\ufffd" in r["text"] for r in kept)  # the bad byte became U+FFFD, nothing crashed
    assert "kept 11" in capsys.readouterr().out


@pytest.mark.parametrize("impl", ["scratch", "hf"])
def test_train_tokenize_and_load(corpus, tmp_path, impl):
    path, _ = corpus
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--input", str(path), "--vocab-size", "300", "--out", str(out), "--impl", impl]) == 0
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 300
    if impl == "scratch":
        bpe = BPETokenizer.load(out / "bpe.json")
        assert tok.encode(STORY).ids == bpe.encode(STORY)
    shards = tmp_path / "shards"
    assert main(["data", "tokenize", "--tokenizer", str(out / "tokenizer.json"), "--input", str(path),
                 "--out", str(shards), "--val-fraction", "0.1"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["unreadable"]["invalid_json"] == 1
    assert manifest["documents_with_literal_eos"] == 1
    assert manifest["documents"] == 12 and manifest["eos_id"] == tok.token_to_id("<|endoftext|>")
    x, y = TokenLoader(shards, batch_size=2, block_size=16).next_batch()
    assert x.shape == (2, 16)
    # --tokenizer may name the folder: same tokenizer, same hash as the file itself
    assert main(["data", "tokenize", "--tokenizer", str(out), "--input", str(path), "--out", str(tmp_path / "s2"),
                 "--val-fraction", "0.1"]) == 0
    manifest2 = json.loads((tmp_path / "s2" / "manifest.json").read_text())
    assert manifest2["tokenizer_hash"] == manifest["tokenizer_hash"] == file_sha256(out / "tokenizer.json")
    assert manifest2["tokens"] == manifest["tokens"]


def test_filter_overrides(corpus, tmp_path):
    path, _ = corpus
    assert main(["data", "prepare", "--input", str(path), "--out", str(tmp_path / "a"), "--set", "min_words=1",
                 "--set", "languages=en,de", "--dedup", "none"]) == 0
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["filters"]["config"]["min_words"] == 1 and report["filters"]["config"]["languages"] == ["en", "de"]
    assert report["filters"]["filters"]["word_count"]["documents"] == 0
    for bad in ("min_words", "nope=3", "min_words=many", "max_top_ngram_chars_fraction=1"):
        assert main(["data", "prepare", "--input", str(path), "--out", str(tmp_path / "b"), "--set", bad]) == 2


def test_user_errors_exit_2(tmp_path, capsys):
    assert main(["data", "prepare", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n\n")
    assert main(["data", "prepare", "--input", str(tmp_path / "empty.txt"), "--out", str(tmp_path)]) == 2
    assert "empty corpus" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--input", str(tmp_path / "empty.txt"), "--vocab-size", "300", "--out", str(tmp_path)]) == 2
    assert main(["tokenizer", "train", "--input", str(tmp_path / "empty.txt"), "--vocab-size", "10", "--out", str(tmp_path)]) == 2
    assert "at least 257" in capsys.readouterr().err
    assert main(["data", "prepare", "--input", str(tmp_path / "empty.txt"), "--out", str(tmp_path), "--dedup", "fuzzy"]) == 2
    assert main(["data", "tokenize", "--tokenizer", str(tmp_path / "nope.json"), "--input", "x", "--out", str(tmp_path)]) == 2


def test_prepare_takes_a_sample_of_a_named_corpus(data_dir, tmp_path, capsys):
    assert main(["data", "prepare", "--input", "tinystories", "--max-docs", "7", "--dedup", "none",
                 "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["input_documents"] == 7
    assert main(["data", "prepare", "--input", "tinystories", "--max-docs", "0", "--out", str(tmp_path)]) == 2
    assert "--max-docs must be a positive number" in capsys.readouterr().err

LITERAL_DOCS = ["The model card says that <|endoftext|> ends a document, and so it does.",
                "<|endoftext|> at the very start, then a story about a red ball.",
                "A plain story about a dog, a pond and a ball, with no special text at all.",
                "Two of them: <|endoftext|><|endoftext|> and the end."]


def _eos_split(ids: list[int], eos: int) -> list[list[int]]:
    docs, cur = [], []
    for i in ids:
        if i == eos:
            docs.append(cur)
            cur = []
        else:
            cur.append(i)
    assert not cur, "the stream must end with EOS"
    return docs


@pytest.mark.parametrize("impl", ["scratch", "hf"])
def test_a_literal_end_of_text_in_a_document_is_text_not_a_boundary(tmp_path, impl):
    """Special ids come only from the pipeline (EOS after each document), never from raw text, in the from-scratch
    BPE and in the `tokenizers` path alike, with identical ids."""
    import numpy as np

    from llmbook.tokenizer.hf import load_hf_tokenizer

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in LITERAL_DOCS * 3))
    tok_dir, shards = tmp_path / "tok", tmp_path / "shards"
    assert main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(tok_dir),
                 "--impl", impl]) == 0
    assert main(["data", "tokenize", "--input", str(corpus), "--tokenizer", str(tok_dir), "--out", str(shards),
                 "--val-fraction", "0"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    eos = manifest["eos_id"]
    ids = np.fromfile(shards / "train_00000.bin", dtype=manifest["dtype"]).tolist()
    docs = _eos_split(ids, eos)
    assert len(docs) == manifest["documents"] == 12 and manifest["documents_with_literal_eos"] == 9
    tok = load_hf_tokenizer(tok_dir)
    assert [tok.decode(d) for d in docs] == LITERAL_DOCS * 3  # the literal survives as text
    if impl == "scratch":  # the exported tokenizer.json gives exactly the from-scratch ids
        bpe = BPETokenizer.load(tok_dir / "bpe.json")
        assert docs == [bpe.encode(t) for t in LITERAL_DOCS * 3]
    assert eos not in tok.encode("a prompt with <|endoftext|> inside").ids  # generate and eval load it the same way


def test_the_trainers_own_shards_treat_a_literal_end_of_text_as_text(tmp_path):
    import numpy as np

    from llmbook.train.config import DataConfig
    from llmbook.train.data import prepare

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in LITERAL_DOCS * 5))
    shards = prepare(DataConfig(datasets=[str(corpus)], tokenizer_vocab=300, val_fraction=0.2,
                                cache_dir=str(tmp_path / "cache")))
    manifest = json.loads((shards / "manifest.json").read_text())
    eos = manifest["eos_id"]
    for split in ("train", "val"):
        ids = np.concatenate([np.fromfile(shards / s["file"], dtype=manifest["dtype"])
                              for s in manifest["splits"][split]["shards"]]).tolist()
        assert ids.count(eos) == manifest["splits"][split]["documents"]


def test_pii_never_leaves_the_pipeline_unredacted(tmp_path, capsys):
    """With --pii, the report's examples of removed documents, ids and every other string are redacted, including
    an e-mail that the 160-character example cut would split."""
    card, email, ip = "4111 1111 1111 1111", "zed@example.com", "10.1.2.3"
    long_mail = "x" * 150 + " write to " + email  # the e-mail straddles character 160
    records = [{"text": f"Pay with {card} now", "id": f"from {email}"},  # too short: a filtered-out example
               {"text": long_mail, "id": "long"},
               {"text": f"Server {ip} mailed josé@exämple.de " + STORY, "author": email, "id": "kept"}]
    path = tmp_path / "pii.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out = tmp_path / "cur"
    assert main(["data", "prepare", "--input", str(path), "--out", str(out), "--pii", "--min-words", "20",
                 "--dedup", "none"]) == 0
    written = (out / "report.json").read_text() + (out / "curated.jsonl").read_text()
    captured = capsys.readouterr()
    for secret in (card, "4111", email, "zed@", ip, "josé@"):
        assert secret not in written + captured.out + captured.err, secret
    report = json.loads((out / "report.json").read_text())
    examples = [e for f in report["filters"]["filters"].values() for e in f["examples"]]
    assert {"id": "from <EMAIL>", "text": "Pay with <CREDIT_CARD> now"} in examples
    kept = [json.loads(line) for line in (out / "curated.jsonl").read_text().splitlines()]
    assert kept[0]["author"] == "<EMAIL>" and "<IP_ADDRESS>" in kept[0]["text"]
    # without --pii the same run keeps the text as it is (the redaction is what removed it above)
    assert main(["data", "prepare", "--input", str(path), "--out", str(tmp_path / "raw"), "--min-words", "20",
                 "--dedup", "none"]) == 0
    assert card in (tmp_path / "raw" / "report.json").read_text()
