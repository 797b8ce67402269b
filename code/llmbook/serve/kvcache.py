"""A preallocated key/value cache with one slot per sequence, for static-shape and continuous-batching decoding
(@sec-inference-batching).

The architecture chapter's `KVCache` grows by concatenation at every step, which reallocates the whole cache
and gives every step a new shape. A server instead allocates, once, room for `n_slots` sequences of up to
`max_len` tokens each, writes each new key and value in place at its position, and lets requests take and
release slots while the others keep decoding. Positions alone say what a query may see: a key in the same
slot at a position not after the query's. Stale entries left by an earlier request (or by draft tokens that
speculative decoding rejected) always sit at later positions, so they are never seen before being overwritten.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor

from llmbook.model import GPT


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory of a CPU (physical RAM) or CUDA device; None where unknown."""
    if device.type == "cpu" and hasattr(os, "sysconf"):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


class SlotKVCache:
    """Keys and values of shape (n_layer, n_slots, n_kv_head, max_len, head_dim), written in place by position."""

    def __init__(self, model: GPT, n_slots: int, max_len: int | None = None, device: str | torch.device | None = None,
                 dtype: torch.dtype | None = None) -> None:
        cfg = model.config
        if not cfg.causal:
            raise ValueError("a KV cache needs a causal model (config.causal=True)")
        if not isinstance(n_slots, int) or n_slots <= 0:
            raise ValueError(f"n_slots must be a positive integer, got {n_slots!r}")
        max_len = cfg.block_size if max_len is None else max_len
        if not isinstance(max_len, int) or max_len <= 0:
            raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
        if cfg.pos_emb == "learned" and max_len > cfg.block_size:
            raise ValueError(f"max_len={max_len} exceeds block_size={cfg.block_size} of the learned position embedding")
        param = next(model.parameters())
        device = param.device if device is None else torch.device(device)
        dtype = param.dtype if dtype is None else dtype
        shape = (cfg.n_layer, n_slots, cfg.n_kv_head, max_len, cfg.head_dim)
        need, have = 2 * math.prod(shape) * dtype.itemsize, device_memory(device)
        if have is not None and need > have:  # e.g. a long-context model: the cache is reserved for max_len tokens
            raise ValueError(f"a KV cache of {n_slots} slots x {max_len} tokens needs {need / 2**30:,.1f} GiB, more "
                             f"than the {have / 2**30:,.1f} GiB of {device.type} memory: use fewer slots or a "
                             f"shorter max_len")
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.n_slots, self.max_len, self.window = n_slots, max_len, cfg.sliding_window
        self.positions = torch.arange(max_len, device=device)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def bind(self, slots: Tensor, pos: Tensor, span: int | None = None, contiguous: bool = False) -> "_BoundSlots":
        """A view for one forward pass of tokens at `pos` (B, T) in `slots` (B,), attending to the first `span` keys.

        `contiguous=True` promises that slots are 0..B-1, which lets attention read a slice instead of a gathered copy.
        """
        return _BoundSlots(self, slots, pos, self.max_len if span is None else span, contiguous)

    def mask(self, pos: Tensor, span: int) -> Tensor:
        """(B, T, span) True where the query at pos may attend to the key at each cached position."""
        k_pos, q_pos = self.positions[:span][None, None, :], pos[:, :, None]
        keep = k_pos <= q_pos
        if self.window is not None:
            keep &= k_pos > q_pos - self.window
        return keep


class _BoundSlots:
    """The cache interface `GPT.forward_positions` calls once per layer: store, then return what to attend to."""

    def __init__(self, cache: SlotKVCache, slots: Tensor, pos: Tensor, span: int, contiguous: bool) -> None:
        self.cache, self.slots, self.pos, self.span, self.contiguous = cache, slots, pos, span, contiguous

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        index = (self.slots[:, None], slice(None), self.pos)  # -> (B, T, H, D) elements of (S, H, max_len, D)
        kc[index] = k.transpose(1, 2).to(kc.dtype)
        vc[index] = v.transpose(1, 2).to(vc.dtype)
        if self.contiguous:
            n = self.slots.shape[0]
            return kc[:n, :, : self.span], vc[:n, :, : self.span]
        return kc[self.slots, :, : self.span], vc[self.slots, :, : self.span]


def forward_slots(model: GPT, cache: SlotKVCache, slots: Tensor, idx: Tensor, pos: Tensor,
                  span: int | None = None, check: bool = True) -> Tensor:
    """Logits (B, T, vocab) for tokens idx (B, T) at positions pos in the given cache slots; updates the cache.

    `span` limits attention to the first `span` cached positions (it must exceed pos.max()); None keeps the
    full `max_len`, a static shape that `torch.compile` can specialise once (@sec-inference-decode).
    `check=False` skips the checks that read values back from the device, for compiled decoding.
    """
    span = cache.max_len if span is None else span
    contiguous = False
    if check:
        if int(pos.max()) >= span or span > cache.max_len:
            raise ValueError(f"position {int(pos.max())} is beyond the cache span {span} (max_len={cache.max_len})")
        n = slots.shape[0]  # slots 0..n-1 are a plain slice of the cache: no gather copy
        contiguous = n <= cache.n_slots and bool((slots == torch.arange(n, device=slots.device)).all())
    bound = cache.bind(slots, pos, span, contiguous)
    return model.forward_positions(idx, pos, cache.mask(pos, span), bound,
                                   cache.positions[:span].expand(idx.shape[0], -1), check=check)
