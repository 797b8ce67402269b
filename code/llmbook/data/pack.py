"""Packing: tokenise documents into memory-mapped token shards and stream (x, y) batches from them (@sec-data-pack).

Layout of a shard directory:

* `train_00000.bin`, `train_00001.bin`, ..., `val_00000.bin`, ...: raw little-endian token ids (`uint16` when
  the vocabulary has fewer than 65,536 entries, else `uint32`), documents concatenated with `eos_id` after each.
* `manifest.json`: dtype, EOS id, tokenizer hash, per-shard token counts, per-split and per-source totals.

Documents are split between train and validation deterministically by position (every k-th document goes to
validation), so the split never depends on hashing or on the order of shards.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmbook.fileio import atomic_write, replace_dir, write_json
from llmbook.progress import progress_bar

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype holding every id of a vocabulary: uint16 below 65,536 entries, else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size > 2**32:
        raise ValueError(f"vocab_size {vocab_size} does not fit in uint32 token ids")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def is_val_document(index: int, val_fraction: float) -> bool:
    """Whether document number `index` goes to validation: evenly spaced, exactly `val_fraction` in the limit."""
    return math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)


class _ShardWriter:
    """Buffers the tokens of one split and writes full shards atomically."""

    def __init__(self, out_dir: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out_dir, self.split, self.dtype, self.shard_tokens = out_dir, split, dtype, shard_tokens
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.written = 0
        self.doc_ends: list[int] = []  # absolute end offsets of documents not yet assigned to a shard
        self.shards: list[dict[str, Any]] = []

    def add(self, ids: np.ndarray) -> None:
        self.buffer.append(ids)
        self.buffered += len(ids)
        self.doc_ends.append(self.written + self.buffered)
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self.buffer)
        head, rest = data[:n], data[n:]
        name = f"{self.split}_{len(self.shards):05d}.bin"
        atomic_write(self.out_dir / name, lambda f: f.write(head.tobytes()), mode="wb")
        self.written += n
        # A document cut by a shard boundary is counted in the shard where it ends (holds its EOS).
        ended = sum(1 for end in self.doc_ends if end <= self.written)
        self.doc_ends = self.doc_ends[ended:]
        self.shards.append({"file": name, "tokens": int(n), "documents": ended})
        self.buffer = [rest] if len(rest) else []
        self.buffered = len(rest)

    def close(self) -> list[dict[str, Any]]:
        if self.buffered:
            self._flush(self.buffered)
        return self.shards


def write_shards(
    texts: Iterable[str | Mapping[str, Any]],
    encode: Callable[[str], list[int]],
    out_dir: str | Path,
    eos_id: int,
    shard_tokens: int = 1 << 24,
    tokenizer_hash: str = "",
    vocab_size: int | None = None,
    val_fraction: float = 0.005,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenise `texts`, append `eos_id` after each document, write shards and `manifest.json` (@sec-data-pack).

    `texts` yields strings or records with a `"text"` (and optional `"source"`) field. `vocab_size` picks the
    dtype (uint16 up to 65,536 ids, else uint32) and bounds the ids; without it the shards are uint16 and an
    id above 65,535 raises ValueError asking for it. Empty documents are skipped and counted. Returns the
    manifest.

    Everything is written into a temporary sibling folder, manifest last, which then replaces `out_dir` by
    renames: a failure at any point leaves the previous shard set of `out_dir` intact and loadable. Other
    files already in `out_dir` (a tokenizer.json) are carried over to the new folder as hard links or copies.
    `out_dir` must be new, a shard folder written here before, or a folder without shard-named files: a
    file, or a folder whose manifest.json or *.bin files are someone else's, is refused (ValueError), never
    moved or overwritten.
    """
    if shard_tokens <= 0:
        raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if eos_id < 0:
        raise ValueError(f"eos_id must be non-negative, got {eos_id}")
    if vocab_size is not None and eos_id >= vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary of size {vocab_size}")
    bound = vocab_size if vocab_size is not None else 2**16  # every id must be < bound
    dtype = token_dtype(bound)
    if eos_id >= bound:
        raise ValueError(f"eos_id {eos_id} does not fit uint16 shards: pass vocab_size")
    out = Path(out_dir)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(out, "tmp")
    try:
        manifest = _write_shards(texts, encode, tmp, eos_id, shard_tokens, tokenizer_hash, vocab_size, val_fraction,
                                 bound, dtype, progress)
        # carried over last, just before the swap: a file changed in `out` while tokenizing is not lost
        for entry in out.iterdir() if out.is_dir() else ():
            if not _SHARD_FILE.fullmatch(entry.name):
                if entry.is_dir():
                    shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy, symlinks=True)
                else:
                    _link_or_copy(entry, tmp / entry.name)
        if out.is_dir():
            shutil.copymode(out, tmp)  # the folder keeps its permissions
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


_SHARD_FILE = re.compile(rf"(?:{'|'.join(SPLITS)})_\d{{5}}\.bin|{re.escape(MANIFEST)}|\..*\.tmp")


def _check_replaceable(out: Path) -> None:
    """Refuse an `out_dir` that is a file, or a folder holding shard-named files without our manifest."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory; refusing to replace a file with token shards")
    if not out.is_dir():
        return
    try:
        read_manifest(out)
        return  # our own earlier output: replaced as a whole
    except (FileNotFoundError, ValueError):
        pass
    clash = sorted(e.name for e in out.iterdir() if _SHARD_FILE.fullmatch(e.name) and not e.name.startswith("."))
    if clash:
        raise ValueError(f"{out} holds {clash[0]} but no valid shard manifest: not a shard folder written by "
                         "write_shards; refusing to replace it (choose a new or empty folder)")


def _new_sibling(out: Path, kind: str) -> Path:
    """A new, empty folder `.NAME.KIND-XXXXXXXX` beside `out`, with the umask's permissions (mkdtemp's are 0700)."""
    while True:
        path = out.parent / f".{out.name}.{kind}-{os.urandom(4).hex()}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link `src` to `dst` (instant, no extra space), or copy it where links are not possible."""
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _write_shards(texts: Iterable[str | Mapping[str, Any]], encode: Callable[[str], list[int]], out: Path, eos_id: int,
                  shard_tokens: int, tokenizer_hash: str, vocab_size: int | None, val_fraction: float, bound: int,
                  dtype: np.dtype, progress: bool) -> dict[str, Any]:
    max_id = eos_id
    writers = {split: _ShardWriter(out, split, dtype, shard_tokens) for split in SPLITS}
    sources: dict[str, dict[str, int]] = {}
    n_docs = skipped_empty = 0
    for item in progress_bar(texts, desc="tokenize", unit="doc", progress=progress):
        if isinstance(item, str):
            text, source = item, "unknown"
        elif isinstance(item, Mapping) and isinstance(item.get("text"), str):
            text, source = item["text"], str(item.get("source", "unknown"))
        else:
            raise ValueError(f"document {n_docs + skipped_empty} is neither a string nor a record with a 'text' string")
        if not text:
            skipped_empty += 1
            continue
        ids = np.asarray(encode(text), dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= bound):
            bad = int(ids.max()) if ids.max() >= bound else int(ids.min())
            hint = f"vocab_size {vocab_size}" if vocab_size is not None else "uint16 shards: pass vocab_size"
            raise ValueError(f"token id {bad} does not fit {hint}")
        if len(ids):
            max_id = max(max_id, int(ids.max()))
        ids = np.append(ids, eos_id).astype(dtype)
        split = "val" if is_val_document(n_docs, val_fraction) else "train"
        writers[split].add(ids)
        stats = sources.setdefault(source, {"documents": 0, "tokens": 0})
        stats["documents"] += 1
        stats["tokens"] += int(len(ids))
        n_docs += 1
    if n_docs == 0:
        raise ValueError("no non-empty documents to tokenize (empty corpus)")
    splits = {}
    for split, writer in writers.items():
        shards = writer.close()
        splits[split] = {
            "tokens": sum(s["tokens"] for s in shards),
            "documents": sum(s["documents"] for s in shards),
            "shards": shards,
        }
    manifest = {
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "eos_id": int(eos_id),
        "vocab_size": vocab_size,
        "max_token_id": max_id,
        "tokenizer_hash": tokenizer_hash,
        "shard_tokens": int(shard_tokens),
        "val_fraction": float(val_fraction),
        "documents": n_docs,
        "skipped_empty": skipped_empty,
        "tokens": sum(s["tokens"] for s in splits.values()),
        "splits": splits,
        "sources": dict(sorted(sources.items())),
    }
    write_json(out / MANIFEST, manifest)
    return manifest


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """Load and check `manifest.json` of a shard directory, with a clear error when it is missing."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a complete shard directory (run write_shards first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # not UTF-8, not JSON
        raise ValueError(f"{path}: not a shard manifest ({' '.join(str(err).split())[:120]})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        manifest = manifest if isinstance(manifest, dict) else {}
        raise ValueError(f"{path}: unsupported format_version {manifest.get('format_version')!r}")
    return manifest


class TokenLoader:
    """Deterministic, resumable, rank-sharded (x, y) batches from token shards (@sec-data-pack).

    Each epoch cuts the split's token stream (documents joined by EOS, shards concatenated) into windows of
    `block_size + 1` tokens, starting at an offset drawn from the seed and the epoch, and visits them in a
    seeded random order. Global step `s` uses windows `[s*B*W, (s+1)*B*W)` of that order, of which rank `r`
    takes the `r`-th slice of `B`: ranks never share a window, and every rank computes the same order without
    communicating. An incomplete global batch at the end of an epoch is dropped. The state is
    `(epoch, step)` plus the settings it depends on, so a resumed loader yields exactly the batches the
    uninterrupted one would.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        batch_size: int,
        block_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        split: str = "train",
    ):
        for name, value in (("batch_size", batch_size), ("block_size", block_size), ("world_size", world_size)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.shard_dir = Path(shard_dir)
        self.manifest = read_manifest(shard_dir)
        self.batch_size, self.block_size, self.seed = batch_size, block_size, seed
        self.rank, self.world_size, self.split = rank, world_size, split
        dtype = np.dtype(self.manifest["dtype"])
        self._shards = []
        for shard in self.manifest["splits"][split]["shards"]:
            path = self.shard_dir / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * dtype.itemsize:
                raise ValueError(f"{path} is missing or does not hold {shard['tokens']} tokens as the manifest says")
            self._shards.append(np.memmap(path, dtype=dtype, mode="r"))
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])
        self.tokens = int(self._starts[-1])
        global_batch = batch_size * world_size
        if (self.tokens - block_size) // block_size < global_batch:  # the fewest windows any epoch offset gives
            raise ValueError(
                f"split {split!r} has {self.tokens} tokens: too few for one global batch of "
                f"{global_batch} windows of {block_size + 1} tokens"
            )
        self.epoch = 0
        self.step = 0
        self._order_epoch = -1
        self._order = np.zeros(0, dtype=np.int64)
        self._offset = 0

    @property
    def steps_per_epoch(self) -> int:
        """Number of global batches in the current epoch (it varies by at most one with the epoch's offset)."""
        self._ensure_order()
        return len(self._order) // (self.batch_size * self.world_size)

    def _ensure_order(self) -> None:
        if self._order_epoch == self.epoch:
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        self._offset = int(rng.integers(0, self.block_size))
        n_windows = (self.tokens - 1 - self._offset) // self.block_size
        self._order = rng.permutation(n_windows)
        self._order_epoch = self.epoch

    def _window(self, start: int) -> np.ndarray:
        stop = start + self.block_size + 1
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        parts = []
        i = first
        while start < stop:
            local = start - self._starts[i]
            take = min(stop - start, len(self._shards[i]) - local)
            parts.append(self._shards[i][local : local + take])
            start += take
            i += 1
        return np.concatenate(parts) if len(parts) > 1 else np.asarray(parts[0])

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this rank's next `(x, y)`, int64 tensors of shape (batch_size, block_size), y = x shifted by one."""
        if self.step >= self.steps_per_epoch:
            self.epoch += 1
            self.step = 0
            self._ensure_order()
        global_batch = self.batch_size * self.world_size
        lo = self.step * global_batch + self.rank * self.batch_size
        windows = self._order[lo : lo + self.batch_size]
        rows = np.stack([self._window(self._offset + int(w) * self.block_size) for w in windows]).astype(np.int64)
        self.step += 1
        data = torch.from_numpy(rows)
        return data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate batches forever (epochs roll over); stop with `itertools.islice` or a step budget."""
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """Position and settings needed to resume exactly; identical on every rank, so any rank's copy works."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "world_size": self.world_size,
            "split": self.split,
            "tokens": self.tokens,
            "tokenizer_hash": self.manifest.get("tokenizer_hash", ""),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from `state_dict()`; refuses a state saved with different settings or different shards."""
        for key in ("seed", "batch_size", "block_size", "world_size", "split", "tokens", "tokenizer_hash"):
            mine = self.state_dict()[key]
            if key in state and state[key] != mine:
                raise ValueError(f"cannot resume: state has {key}={state[key]!r} but this loader has {mine!r}")
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
