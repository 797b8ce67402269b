"""From a named corpus to packed token shards and rank-sharded loaders for the trainer (@sec-scale-trainer).

The corpus is read from `$LLMBOOK_DATA`, a byte-level BPE is trained on it with `llmbook.tokenizer`, and the
documents are packed with `llmbook.data.pack`. The result is cached under `$LLMBOOK_CACHE` (default
`~/.cache/llmbook`) in a folder named by the settings, so later runs start instantly.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist

from llmbook.data.pack import MANIFEST, TokenLoader, file_sha256, write_shards
from llmbook.train.config import DataConfig

EOS = "<|endoftext|>"
TINYSTORIES = ("tinystories/tinystories_train_sample.txt", "tinystories/tinystories_valid_sample.txt")


def data_root() -> Path:
    """The local copy of the shared data sets, named by the LLMBOOK_DATA environment variable."""
    root = os.environ.get("LLMBOOK_DATA", "")
    if not root or not Path(root).is_dir():
        raise FileNotFoundError("set LLMBOOK_DATA to the folder holding the book's data sets (see the README)")
    return Path(root)


def cache_root(cfg: DataConfig) -> Path:
    """Where prepared shards live: `data.cache_dir`, else $LLMBOOK_CACHE, else ~/.cache/llmbook."""
    return Path(cfg.cache_dir or os.environ.get("LLMBOOK_CACHE", "") or Path.home() / ".cache" / "llmbook")


def documents(cfg: DataConfig) -> Iterator[str]:
    """Documents of the corpus: TinyStories paragraphs, or whole Gutenberg books (cut by the manifest's offsets)."""
    root, budget = data_root(), cfg.max_chars or None
    if cfg.dataset == "tinystories":
        text = "\n\n".join((root / name).read_text(encoding="utf-8") for name in TINYSTORIES)
        docs = (p.strip() for p in text[:budget].split("\n\n"))
        yield from (d for d in docs if d)
        return
    raw = lzma.decompress((root / "gutenberg" / "gutenberg_en.txt.xz").read_bytes())
    rows = (root / "gutenberg" / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    header = rows[0].split("\t")
    used = 0
    for row in rows[1:]:
        meta = dict(zip(header, row.split("\t")))
        start, length = int(meta["byte_offset"]), int(meta["byte_length"])
        book = raw[start:start + length].decode("utf-8")
        if budget is not None:
            book = book[: budget - used]
        used += len(book)
        if book.strip():
            yield book
        if budget is not None and used >= budget:
            return


def prepare(cfg: DataConfig, progress: bool = False) -> Path:
    """Return a shard directory for the config, building it (tokenizer + shards) if it is not cached yet."""
    if cfg.shard_dir:
        path = Path(cfg.shard_dir)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"[data] shard_dir {path} holds no {MANIFEST}")
        return path
    from llmbook.tokenizer import train_hf_tokenizer

    key = json.dumps([cfg.dataset, cfg.tokenizer_vocab, cfg.max_chars, cfg.val_fraction], sort_keys=True)
    out = cache_root(cfg) / "shards" / f"{cfg.dataset}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / MANIFEST).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_hf_tokenizer(documents(cfg), cfg.tokenizer_vocab, special_tokens=(EOS,))
    tokenizer.save(str(out / "tokenizer.json"))
    write_shards(documents(cfg), lambda text: tokenizer.encode(text).ids, out, eos_id=tokenizer.token_to_id(EOS),
                 vocab_size=tokenizer.get_vocab_size(), val_fraction=cfg.val_fraction,
                 tokenizer_hash=file_sha256(out / "tokenizer.json"), progress=progress)
    return out


def token_loaders(cfg: DataConfig, main: bool = True):
    """A loader factory `(split, rank, world_size, seed) -> TokenLoader` over the prepared shards.

    Rank 0 prepares the shards while the other ranks wait at a barrier.
    """
    shard_dir = prepare(cfg) if main else None
    if dist.is_initialized():
        dist.barrier()
        shard_dir = shard_dir or prepare(cfg)

    def make(split: str, rank: int, world_size: int, seed: int) -> TokenLoader:
        return TokenLoader(shard_dir, cfg.batch_size, cfg.block_size, seed=seed, rank=rank,
                           world_size=world_size, split=split)

    return make
