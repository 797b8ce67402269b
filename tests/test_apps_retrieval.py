"""Retrieval parts of @sec-applications: chunking, BM25 (against bm25s), exact search (against FAISS), fusion, the
bi-encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llmbook.apps.bm25 import BM25, BM25Config, analyze
from llmbook.apps.chunking import chunk_by_paragraph, chunk_by_tokens
from llmbook.apps.embed import BiEncoder, ContrastiveConfig, info_nce, read_mrpc, train_contrastive
from llmbook.apps.fusion import reciprocal_rank_fusion
from llmbook.apps.index import ExactIndex, faiss_index, recall_at_k, top_k
from llmbook.data import registry

TEXT = "one two three four five six seven eight nine ten"


# ---- chunking -------------------------------------------------------------------------------------------

def test_token_windows_overlap_and_cover_the_text():
    chunks = chunk_by_tokens(TEXT, size=4, overlap=1)
    assert [c.text for c in chunks] == ["one two three four", "four five six seven", "seven eight nine ten"]
    assert all(TEXT[c.start : c.end] == c.text for c in chunks)
    assert [c.text for c in chunk_by_tokens(TEXT, size=4, overlap=0)] == [
        "one two three four", "five six seven eight", "nine ten"]
    assert [c.text for c in chunk_by_tokens("a b", size=4, overlap=2)] == ["a b"]
    assert chunk_by_tokens("   ", size=4) == []


def test_token_windows_with_subword_offsets():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    chunks = chunk_by_tokens("Hi, there. Bye!", 3, 1, spans=lambda t: tok.encode(t).offsets)
    assert [c.text for c in chunks] == ["Hi, there", "there. Bye", "Bye!"]


@pytest.mark.parametrize("size,overlap", [(0, 0), (3, 3), (3, -1)])
def test_token_window_settings_are_checked(size, overlap):
    with pytest.raises(ValueError):
        chunk_by_tokens(TEXT, size, overlap)


def test_paragraph_chunks_merge_short_and_split_long():
    text = "Alpha one.\n\nBeta two.\n\n\n" + "line\n" * 30 + "\nEnd."
    chunks = chunk_by_paragraph(text, max_chars=30)
    assert chunks[0].text == "Alpha one.\n\nBeta two."  # two short paragraphs merged (21 chars)
    assert all(len(c.text) <= 30 for c in chunks)
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert chunks[-1].text.endswith("End.")
    assert "".join(c.text for c in chunks).count("line") == 30  # nothing lost
    assert [c.text for c in chunk_by_paragraph("x" * 25, max_chars=10)] == ["x" * 10, "x" * 10, "x" * 5]


# ---- BM25 -------------------------------------------------------------------------------------------------

def test_bm25_on_a_hand_computed_case():
    docs = [["cat", "sat"], ["dog", "dog", "ran"], ["cat"]]
    bm = BM25.fit(docs, BM25Config(k1=1.2, b=0.5))
    n, avgdl = 3, 6 / 3
    idf_cat = np.log1p((n - 2 + 0.5) / (2 + 0.5))
    expected = [idf_cat * 1 / (1 + 1.2 * (0.5 + 0.5 * 2 / avgdl)), 0.0, idf_cat * 1 / (1 + 1.2 * (0.5 + 0.5 * 1 / avgdl))]
    assert np.allclose(bm.scores(["cat"]), expected, rtol=1e-6)
    ids, scores = bm.search(["cat", "unknown"], 3)
    assert ids.tolist() == [2, 0, 1] and scores[-1] == 0  # the shorter document wins; the miss comes last


def test_analyzer_lowercases_and_drops_stopwords_and_single_letters():
    assert analyze("The Cat and a DOG: 42 x") == ["cat", "dog", "42"]


def test_bm25_matches_bm25s_on_xsum():
    bm25s = pytest.importorskip("bm25s", reason="bm25s is in the test extra: pip install -e '.[test]'")
    docs = [json.loads(line) for line in registry.fetch("xsum/xsum_dev_dev.jsonl").open(encoding="utf-8")]
    corpus = [analyze(d["dialogue"]) for d in docs]
    ours = BM25.fit(corpus)
    ref = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    ref.index(corpus, show_progress=False)
    for d in docs[:50]:
        q = analyze(d["summary"])
        q = q + q[:2]  # a repeated query term counts twice on both sides
        np.testing.assert_allclose(ours.scores(q), ref.get_scores(q), rtol=1e-5, atol=1e-5)


def test_bm25_rejects_bad_settings():
    with pytest.raises(ValueError):
        BM25Config(b=1.5)
    with pytest.raises(ValueError):
        BM25.fit([])


# ---- top-k, exact search, FAISS -------------------------------------------------------------------------------

def test_top_k_orders_by_score_then_lower_index():
    s = np.array([0.5, 0.9, 0.5, 0.9, 0.1])
    assert top_k(s, 3).tolist() == [1, 3, 0]
    assert top_k(s, 10).tolist() == [1, 3, 0, 2, 4]
    with pytest.raises(ValueError):
        top_k(s, 0)


def test_exact_search_is_brute_force():
    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(500, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
    scores, ids = ExactIndex(x).search(q, 5, batch=3)
    for row, qv in zip(ids, q):
        assert row.tolist() == np.argsort(-(x @ qv), kind="stable")[:5].tolist()
    assert np.allclose(scores, np.take_along_axis(q @ x.T, ids, 1))


def test_same_up_to_ties():
    from llmbook.apps.index import same_up_to_ties

    ids_a, s = np.array([[4, 2, 7, 9]]), np.array([[0.9, 0.5, 0.5, 0.1]])
    assert same_up_to_ties(ids_a, s, np.array([[4, 7, 2, 9]]), s).all()  # a tie inside the list, other order
    assert not same_up_to_ties(ids_a, s, np.array([[4, 2, 8, 9]]), s).any()  # a different item inside
    s2 = np.array([[0.9, 0.5, 0.3, 0.3]])
    assert same_up_to_ties(np.array([[4, 2, 7, 9]]), s2, np.array([[4, 2, 7, 11]]), s2).all()  # tie cut at k
    assert not same_up_to_ties(ids_a, s, ids_a, s + 0.1).any()


def test_exact_and_faiss_flat_agree_on_duplicated_vectors():
    pytest.importorskip("faiss", reason="faiss-cpu is in the test extra: pip install -e '.[test]'")
    from llmbook.apps.index import same_up_to_ties

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x[100:150] = x[:50]  # duplicated documents: exact ties
    q = rng.normal(size=(20, 16)).astype(np.float32)
    es, ei = ExactIndex(x).search(q, 30)
    fs, fi = faiss_index(x, "flat").search(q, 30)
    assert same_up_to_ties(ei, es, fi, fs).all()
    for row in ei:  # our tie rule: of two equal scores, the lower id first
        for a, b in zip(row, row[1:]):
            if abs(a - b) == 100 and a % 100 < 50:
                assert a < b


def test_faiss_flat_returns_the_exact_top_k_and_hnsw_ivf_approximate_it():
    pytest.importorskip("faiss", reason="faiss-cpu is in the test extra: pip install -e '.[test]'")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.normal(size=(50, 32)).astype(np.float32)
    exact_scores, exact = ExactIndex(x).search(q, 10)
    flat_scores, flat = faiss_index(x, "flat").search(q, 10)
    assert (flat == exact).all()  # continuous random vectors: no exact ties
    assert np.allclose(flat_scores, exact_scores, atol=1e-5)
    assert recall_at_k(faiss_index(x, "hnsw", ef_search=128).search(q, 10)[1], exact) > 0.9
    assert recall_at_k(faiss_index(x, "ivf", nlist=16, nprobe=16).search(q, 10)[1], exact) == 1.0  # all cells
    with pytest.raises(ValueError):
        faiss_index(x, "lsh")


# ---- fusion ---------------------------------------------------------------------------------------------

def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["b", "c", "d"]], k=60)
    assert fused[:2] == ["b", "c"]  # 1/62 + 1/61 beats 1/61 alone ...
    assert fused[2:] == ["a", "d"]  # ... and a (1/61) beats d (1/63)
    assert reciprocal_rank_fusion([[2, 1], [1, 2]]) == [1, 2]  # equal totals: the smaller item first
    assert reciprocal_rank_fusion([[3, 1, 2]], limit=2) == [3, 1]
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a", "a"]])


# ---- the bi-encoder -------------------------------------------------------------------------------------

def tiny_encoder(seed: int = 0) -> BiEncoder:
    from tokenizers import Tokenizer, models, pre_tokenizers

    from llmbook.model import GPT, GPTConfig

    words = "[PAD] the cat dog sat ran on a mat big red small car bus road stop".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=len(words), block_size=16, n_layer=1, n_head=2, n_embd=16))
    return BiEncoder(model, tok, max_tokens=8)


def test_embeddings_are_unit_length_and_ignore_padding():
    enc = tiny_encoder()
    texts = ["the cat", "the big red dog sat on a mat"]
    together = enc.encode(texts)
    alone = np.stack([enc.encode([t])[0] for t in texts])
    assert np.allclose(together, alone, atol=1e-6)  # padded in a batch = encoded alone
    assert np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-6)


def test_info_nce_is_low_when_pairs_match():
    a = torch.nn.functional.normalize(torch.randn(8, 4), dim=-1)
    assert info_nce(a, a, 0.05) < 0.1 < info_nce(a, a.roll(1, 0), 0.05)
    assert torch.isclose(info_nce(a, a.roll(1, 0), 1.0), info_nce(a.roll(1, 0), a, 1.0))  # symmetric


def test_contrastive_training_learns_which_sentences_pair():
    enc = tiny_encoder()
    pairs = [("the cat sat", "a cat sat on a mat"), ("the dog ran", "a dog ran on the road"),
             ("the big car", "a big red car"), ("the bus stop", "a small bus stop")] * 4
    queries, keys = [p[0] for p in pairs[:4]], [p[1] for p in pairs[:4]]
    losses = train_contrastive(enc, pairs, ContrastiveConfig(steps=60, batch_size=4, lr=3e-3, warmup_steps=1))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    sims = enc.encode(queries) @ enc.encode(keys).T
    assert (sims.argmax(1) == np.arange(4)).all()


def test_read_mrpc(tmp_path):
    rows = read_mrpc(registry.fetch("mrpc/msr_paraphrase_train.txt"))
    assert len(rows) == 4076 and {r[0] for r in rows} == {0, 1}
    assert rows[0][1].startswith("Amrozi accused his brother") and '"' in rows[0][1]
    bad = tmp_path / "bad.txt"
    bad.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n2\t1\t2\ta\tb\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_mrpc(bad)
