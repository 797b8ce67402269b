"""The production path: Hugging Face `tokenizers` with the same byte-level pre-tokenisation (@sec-data-bpe-fast)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from llmbook.fileio import atomic_write
from llmbook.tokenizer.pretokenize import bytes_to_unicode, resolve_pattern

if TYPE_CHECKING:
    from llmbook.tokenizer.bpe import BPETokenizer


def byte_level_pre_tokenizer(pattern: str = "gpt4") -> pre_tokenizers.PreTokenizer:
    """Split with our regex (isolating each match), then map bytes to GPT-2's printable characters."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(resolve_pattern(pattern)), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_hf_tokenizer(
    texts: str | Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = ("<|endoftext|>",),
    pattern: str = "gpt4",
    progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE with the Rust `tokenizers` trainer (special tokens get the first ids)."""
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(f"vocab_size must be at least 256 + {len(special_tokens)} special tokens, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level_pre_tokenizer(pattern)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    tok.train_from_iterator([texts] if isinstance(texts, str) else texts, trainer=trainer)
    return tok


def export_bpe(bpe: BPETokenizer, path: str | Path) -> Path:
    """Write a from-scratch `BPETokenizer` as `tokenizer.json` with identical ids, merges and pre-tokenisation."""
    b2u = bytes_to_unicode()

    def token_str(data: bytes) -> str:
        return "".join(b2u[b] for b in data)

    vocab = {token_str(v): i for i, v in bpe.vocab.items() if i < bpe.n_regular}
    merges = [(token_str(bpe.vocab[a]), token_str(bpe.vocab[b])) for a, b in bpe.merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = byte_level_pre_tokenizer(bpe.pattern)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(bpe.special_tokens))
    for s, i in bpe.special_tokens.items():
        if tok.token_to_id(s) != i:
            raise ValueError(f"special token {s!r} got id {tok.token_to_id(s)} in the export, expected {i}")
    return save_hf_tokenizer(tok, path)


def save_hf_tokenizer(tok: Tokenizer, path: str | Path) -> Path:
    """Write a `tokenizers.Tokenizer` as `tokenizer.json` atomically (a crash never leaves half a file)."""
    text = tok.to_str(pretty=False)
    return atomic_write(path, lambda f: f.write(text))


def tokenizer_file(path: str | Path) -> Path:
    """The `tokenizer.json` that `path` names: the file itself, or the one inside a folder; must exist."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist")
    return path


def special_tokens_as_text(tok: Tokenizer) -> Tokenizer:
    """Make `tok` encode special-token strings found in raw text as ordinary text, and return it (@sec-data-bpe).

    By default `tokenizers` turns a literal `<|endoftext|>` inside a document into the end-of-text id, so a
    web page that mentions it would gain a document boundary. Special ids come only from the pipeline (the
    packer appends EOS after each document), exactly as `BPETokenizer.encode` does by default. The setting is
    not saved in tokenizer.json, so every loader applies it.
    """
    tok.encode_special_tokens = True
    return tok


def load_hf_tokenizer(path: str | Path) -> Tokenizer:
    """Load a `tokenizer.json` (or the one in a folder) that encodes special-token strings in text as text.

    A missing, non-UTF-8 or malformed file raises FileNotFoundError or ValueError naming it."""
    file = tokenizer_file(path)
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises a bare Exception with the JSON parser's message
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{file}: not a valid tokenizer.json ({first[:160]})") from None
    return special_tokens_as_text(tok)
