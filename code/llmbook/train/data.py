"""From a named corpus to packed token shards and rank-sharded loaders for the trainer (@sec-scale-trainer).

The corpora are read with `llmbook.data.sources` (files of the data registry), a byte-level BPE is
trained on them with `llmbook.tokenizer`, and the documents are packed with `llmbook.data.pack`. The result is cached under `$LLMBOOK_CACHE` (default
`~/.cache/llmbook`) in a folder named by the settings, so later runs start instantly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from llmbook.fileio import replace_dir
from llmbook.data.pack import MANIFEST, TokenLoader, write_shards
from llmbook.fileio import file_sha256
from llmbook.data.sources import load_corpus
from llmbook.train.checkpoint import atomic_write_text
from llmbook.train.config import DataConfig

EOS = "<|endoftext|>"
PREPARE_TIMEOUT = timedelta(hours=6)  # the other ranks wait this long for rank 0 to tokenize a large corpus


def cache_root(cfg: DataConfig) -> Path:
    """Where prepared shards live: `data.cache_dir`, else $LLMBOOK_CACHE, else ~/.cache/llmbook."""
    return Path(cfg.cache_dir or os.environ.get("LLMBOOK_CACHE", "") or Path.home() / ".cache" / "llmbook")


def documents(cfg: DataConfig) -> Iterator[dict]:
    """Records of the configured corpora, one after the other, cut off after `max_chars` characters if set."""
    used = 0
    for name in cfg.datasets:
        for record in load_corpus(name):
            if cfg.max_chars:
                record = {**record, "text": record["text"][: cfg.max_chars - used]}
            used += len(record["text"])
            yield record
            if cfg.max_chars and used >= cfg.max_chars:
                return


def shard_dir_for(cfg: DataConfig) -> Path:
    """Where `prepare` keeps (or will keep) the shards of a config: a cache folder named by the settings."""
    if cfg.shard_dir:
        return Path(cfg.shard_dir)
    key = json.dumps([cfg.datasets, cfg.tokenizer_vocab, cfg.max_chars, cfg.val_fraction])
    return cache_root(cfg) / "shards" / f"{'+'.join(cfg.datasets)}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def prepare(cfg: DataConfig, progress: bool = False) -> Path:
    """Return a shard directory for the config, building it (tokenizer + shards) if it is not cached yet."""
    if cfg.shard_dir:
        path = Path(cfg.shard_dir)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"[data] shard_dir {path} holds no {MANIFEST}")
        return path
    from llmbook.tokenizer import train_hf_tokenizer
    from llmbook.tokenizer.hf import special_tokens_as_text

    out = shard_dir_for(cfg)
    if (out / MANIFEST).is_file():
        return out
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")  # built aside, renamed into place when complete
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        tokenizer = train_hf_tokenizer((r["text"] for r in documents(cfg)), cfg.tokenizer_vocab, special_tokens=(EOS,))
        atomic_write_text(tmp / "tokenizer.json", tokenizer.to_str())
        special_tokens_as_text(tokenizer)  # a literal <|endoftext|> in a document is text; EOS comes from the packer
        write_shards(documents(cfg), lambda text: tokenizer.encode(text).ids, tmp, eos_id=tokenizer.token_to_id(EOS),
                     vocab_size=tokenizer.get_vocab_size(), val_fraction=cfg.val_fraction,
                     tokenizer_hash=file_sha256(tmp / "tokenizer.json"), progress=progress)
        replace_dir(tmp, out)  # over a leftover without a manifest (crashed before the old code's last write)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def token_loaders(cfg: DataConfig, main: bool = True):
    """A loader factory `(split, rank, world_size, seed) -> TokenLoader` over the prepared shards.

    Rank 0 prepares the shards while the other ranks wait at a barrier of a CPU (gloo) group whose
    timeout (`PREPARE_TIMEOUT`) allows for tokenizing a large corpus; the default one would fire first.
    """
    group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT) if dist.is_initialized() else None
    shard_dir = prepare(cfg) if main else None
    if group is not None:
        dist.barrier(group=group)
        dist.destroy_process_group(group)
        shard_dir = shard_dir or prepare(cfg)

    def make(split: str, rank: int, world_size: int, seed: int) -> TokenLoader:
        return TokenLoader(shard_dir, cfg.batch_size, cfg.block_size, seed=seed, rank=rank,
                           world_size=world_size, split=split)

    return make
