"""Five tokenizer families trained on the same text with the `tokenizers` library (@sec-data-tokenizers).

Byte-level BPE (GPT-2 onwards), WordPiece (BERT), Unigram (SentencePiece, T5, Llama 1-2), and the two extremes,
characters and whole words. Each family has its own way to mark where a word starts (a leading space byte, `▁`)
or continues (`##`); `surface_form` removes the marker so vocabularies can be compared as sets of strings.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from llmbook.tokenizer.hf import train_hf_tokenizer
from llmbook.tokenizer.pretokenize import bytes_to_unicode

FAMILIES = ("byte_bpe", "wordpiece", "unigram", "char", "word")
# The unknown token of each family; byte-level BPE has none, since every byte is in its vocabulary.
UNK = {"byte_bpe": None, "wordpiece": "[UNK]", "unigram": "<unk>", "char": "<unk>", "word": "<unk>"}


def train_family(family: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a tokenizer of `family` on `texts` with at most `vocab_size` entries (special tokens included).

    No normaliser anywhere, so every family sees exactly the same characters. WordPiece splits words at
    whitespace and punctuation as BERT does (the `tokenizers` WordPiece trainer learns BPE merges and converts
    them); Unigram replaces spaces by `▁` as SentencePiece does; `char` keeps the most frequent characters, `word`
    the most frequent words (runs of word characters and runs of punctuation).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    texts = list(texts)
    if family == "byte_bpe":
        return train_hf_tokenizer(texts, vocab_size, special_tokens=())
    unk = UNK[family]
    if family == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[unk], show_progress=False)
    elif family == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=[unk], unk_token=unk,
                                          show_progress=False)
    else:
        tok = Tokenizer(models.WordLevel(unk_token=unk))
        tok.pre_tokenizer = (pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated") if family == "char"
                             else pre_tokenizers.Whitespace())
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=[unk], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def unk_id(tok: Tokenizer, family: str) -> int | None:
    """Id of the family's unknown token in `tok`, or None for byte-level BPE."""
    return None if UNK[family] is None else tok.token_to_id(UNK[family])


def token_text(token: str, family: str) -> str:
    """A vocabulary entry as readable text, markers kept: byte-level BPE entries are GPT-2's printable stand-ins for
    bytes, so they are mapped back to bytes and decoded (a partial UTF-8 sequence keeps its bytes as `\\x..`
    escapes); the other families' entries are text already."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if family != "byte_bpe":
        return token
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    return bytes(u2b[c] for c in token).decode("utf-8", "backslashreplace")


def surface_form(token: str, family: str) -> str:
    """The text a vocabulary entry stands for, without the family's word-boundary marker: the leading space of
    a byte-level BPE entry (`token_text`), the leading `▁` of a Unigram piece, the `##` of a WordPiece
    continuation."""
    text = token_text(token, family)
    marker = {"byte_bpe": " ", "unigram": "▁", "wordpiece": "##"}.get(family, "")
    return text[len(marker):] if marker and text.startswith(marker) else text


def surface_vocab(tok: Tokenizer, family: str) -> set[str]:
    """The set of strings a trained tokenizer's vocabulary covers: markers removed, special tokens and the
    bare marker (an empty string) left out."""
    specials = {t.content for t in tok.get_added_tokens_decoder().values()}
    forms = {surface_form(t, family) for t in tok.get_vocab(with_added_tokens=False) if t not in specials}
    forms.discard("")
    return forms
