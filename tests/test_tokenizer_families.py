"""Tokenizer families and comparison metrics: hand-worked examples, and the `tokenizers` trainers behind each family."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from llmbook.data import registry
from llmbook.tokenizer import (
    FAMILIES,
    bytes_per_token,
    chars_per_token,
    fertility,
    jaccard,
    surface_vocab,
    train_family,
    unk_id,
    unknown_rate,
)
from llmbook.tokenizer.families import surface_form, token_text

def one_per_word(text: str) -> list[int]:
    """An encoder that emits one token per whitespace-separated word."""
    return list(range(len(text.split())))


def word_level(vocab: list[str]) -> Tokenizer:
    """A word-level tokenizer with a hand-written vocabulary; id 0 is `<unk>`."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", *vocab])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_compression_and_fertility_by_hand():
    texts = ["ab cd", "é"]  # 5 + 1 characters, 5 + 2 UTF-8 bytes, 3 words, 3 tokens
    assert chars_per_token(one_per_word, texts) == pytest.approx(6 / 3)
    assert bytes_per_token(one_per_word, texts) == pytest.approx(7 / 3)
    assert fertility(one_per_word, texts) == pytest.approx(1.0)
    assert fertility(lambda s: list(s), ["ab cd"]) == pytest.approx(5 / 2)  # characters: 5 tokens for 2 words
    with pytest.raises(ValueError, match="no tokens"):
        chars_per_token(one_per_word, [""])


def test_unknown_rate_by_hand():
    tok = word_level(["the", "cat"])
    assert tok.encode("the cat sat").ids == [1, 2, 0]
    assert unknown_rate(tok, ["the cat sat"], unk_id=0) == pytest.approx(1 / 3)
    assert unknown_rate(tok, ["the cat sat", "the dog ran"], unk_id=0) == pytest.approx(3 / 6)
    assert unknown_rate(tok, ["the cat sat"], unk_id=None) == 0.0  # a tokenizer without an unknown token


def test_jaccard_by_hand():
    assert jaccard({"a", "b", "c"}, {"b", "c", "d"}) == pytest.approx(2 / 4)
    assert jaccard(["a", "a", "b"], ["b"]) == pytest.approx(1 / 2)  # sets: duplicates do not count
    assert jaccard({"a"}, {"b"}) == 0.0
    assert jaccard(set(), set()) == 1.0


@pytest.mark.parametrize("token, family, surface", [
    ("Ġthe", "byte_bpe", "the"),        # GPT-2's printable stand-in for the space byte
    ("the", "byte_bpe", "the"),
    ("Ã©", "byte_bpe", "é"),            # the two bytes of é (c3 a9) as printable characters
    ("Ã", "byte_bpe", "\\xc3"),         # half a UTF-8 sequence keeps its byte as an escape
    ("Ġ", "byte_bpe", ""),
    ("##ing", "wordpiece", "ing"),
    ("walk", "wordpiece", "walk"),
    ("▁the", "unigram", "the"),
    ("ing", "unigram", "ing"),
    (" ", "char", " "),
    ("cat", "word", "cat"),
])
def test_surface_form_removes_each_familys_marker(token, family, surface):
    assert surface_form(token, family) == surface


def test_token_text_keeps_markers_and_shows_partial_bytes():
    assert token_text("Ġthe", "byte_bpe") == " the"
    assert token_text("Ã", "byte_bpe") == "\\xc3"
    assert token_text("##ing", "wordpiece") == "##ing" and token_text("▁the", "unigram") == "▁the"


def test_surface_form_rejects_unknown_family():
    with pytest.raises(ValueError, match="family"):
        surface_form("x", "morfessor")
    with pytest.raises(ValueError, match="family"):
        token_text("x", "morfessor")
    with pytest.raises(ValueError, match="family"):
        train_family("morfessor", ["x"], 100)


@pytest.fixture(scope="module")
def stories(data_dir) -> list[str]:
    """The first 200 kB of the TinyStories sample, cut into stories."""
    text = registry.fetch("tinystories/tinystories_train_sample.txt").read_text(encoding="utf-8")[:200_000]
    return [s for s in text.split("\n") if s.strip()]


@pytest.fixture(scope="module")
def trained(stories) -> dict[str, Tokenizer]:
    return {family: train_family(family, stories, vocab_size=1000) for family in FAMILIES}


def test_each_family_is_trained_by_the_tokenizers_library(trained, stories):
    unseen = "Ein kleines Mädchen fand 東京"
    for family, tok in trained.items():
        assert isinstance(tok, Tokenizer)
        assert tok.get_vocab_size() <= 1000
        if family != "word":  # the other families cover every character of their training text
            assert unknown_rate(tok, stories, unk_id(tok, family)) == 0.0, family
        rate = unknown_rate(tok, [unseen], unk_id(tok, family))
        if family == "byte_bpe":
            assert unk_id(tok, family) is None and rate == 0.0  # every byte is in the vocabulary
            assert tok.decode(tok.encode(unseen).ids) == unseen  # lossless round trip
        else:
            assert rate > 0, family  # characters it never saw (ä, 東, 京) become the unknown token
    assert trained["char"].encode("a cat").tokens == ["a", " ", "c", "a", "t"]
    assert trained["word"].encode("a little girl!").tokens == ["a", "little", "girl", "!"]
    assert trained["wordpiece"].encode("a little girl").tokens == ["a", "little", "girl"]
    assert trained["unigram"].encode("a little girl").tokens == ["▁a", "▁little", "▁girl"]
    assert trained["byte_bpe"].encode("a little girl").tokens == ["a", "Ġlittle", "Ġgirl"]


def test_surface_vocab_leaves_out_specials_and_markers(trained):
    for family, tok in trained.items():
        vocab = surface_vocab(tok, family)
        assert "" not in vocab and "[UNK]" not in vocab and "<unk>" not in vocab
        assert jaccard(vocab, surface_vocab(tok, family)) == 1.0
    assert "little" in surface_vocab(trained["word"], "word")
    assert {"a", "e", "t"} <= surface_vocab(trained["char"], "char") <= surface_vocab(trained["unigram"], "unigram") | {" ", "\n"}
    # "little" is a whole token for subword families trained on this text, whatever their marker
    assert all("little" in surface_vocab(trained[f], f) for f in ("byte_bpe", "wordpiece", "unigram"))
