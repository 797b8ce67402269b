"""Where decode time goes: the machine's peak FLOP/s and memory bandwidth, the FLOPs and bytes of a prefill or a
decode step, and measured times, for a roofline plot (@sec-inference-decode).

The roofline model [@williams2009roofline] bounds the speed of a kernel by min(peak FLOP/s, bandwidth x
arithmetic intensity), where the intensity is FLOPs per byte moved from memory. A decode step at batch B
multiplies every weight matrix by B vectors: about 2 x params x B FLOPs for params x bytes_per_weight bytes
read, an intensity of ~B / 2 for fp32 weights, far below the ~10-100 FLOP/byte at which CPUs and GPUs turn
compute-bound. So decoding one sequence is memory-bound, and batching raises the intensity for free until the
KV cache, which is read once per sequence (intensity ~1 whatever the batch), dominates the traffic at long
contexts. A prefill of T tokens is a matrix-matrix product of intensity ~T / 2: compute-bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmbook.costs.flops import DecodeStep
from llmbook.model import GPT
from llmbook.serve.kvcache import SlotKVCache, forward_slots


def _best_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def peak_flops(n: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Measured FLOP/s of an n x n x n matrix multiply (the compute roof)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / _best_time(lambda: a @ b, repeats)


def memory_bandwidth(mbytes: int = 256, repeats: int = 5) -> float:
    """Measured bytes/s of copying an `mbytes` MB buffer (one read and one write per byte; the memory roof)."""
    src = torch.ones(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_time(lambda: dst.copy_(src), repeats)


def step_cost(model: GPT, batch: int, new_tokens: int, context: int, bytes_per_weight: float = 4.0,
              bytes_per_kv: float = 4.0) -> DecodeStep:
    """Cost of running `new_tokens` tokens per sequence for `batch` sequences that attend to `context` keys each
    (matrix multiplies and attention; norms and activations are small), measured on the model's own layers."""
    c = model.config
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    tokens = batch * new_tokens
    attn = 2 * 2 * c.n_layer * c.n_head * c.head_dim * context * tokens  # q.k scores and p.v, 2 FLOPs per MAC
    kv = 2 * c.n_layer * c.n_kv_head * c.head_dim * context * batch * bytes_per_kv
    return DecodeStep(2 * linear * tokens + attn, linear * bytes_per_weight, kv)


@dataclass(frozen=True)
class Timing:
    """A measured forward pass with its cost."""

    kind: str  # "prefill" or "decode"
    batch: int
    tokens: int  # new tokens per sequence in the pass
    context: int
    seconds: float
    cost: DecodeStep

    @property
    def flops_per_s(self) -> float:
        return self.cost.flops / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.tokens / self.seconds


@torch.no_grad()
def time_prefill(model: GPT, batch: int, length: int, repeats: int = 3) -> Timing:
    """Time one prefill pass of `length` tokens for `batch` sequences into a slot cache."""
    cache = SlotKVCache(model, batch, max(length, 1))
    slots = torch.arange(batch)
    idx = torch.randint(0, model.config.vocab_size, (batch, length))
    pos = torch.arange(length).expand(batch, -1)
    seconds = _best_time(lambda: forward_slots(model, cache, slots, idx, pos, span=length), repeats)
    return Timing("prefill", batch, length, length, seconds, step_cost(model, batch, length, length))


@torch.no_grad()
def time_decode(model: GPT, batch: int, context: int, repeats: int = 5) -> Timing:
    """Time one decode step (one new token per sequence) for `batch` sequences with `context` cached tokens."""
    cache = SlotKVCache(model, batch, context + 1)
    slots = torch.arange(batch)
    idx = torch.randint(0, model.config.vocab_size, (batch, 1))
    pos = torch.full((batch, 1), context)
    seconds = _best_time(lambda: forward_slots(model, cache, slots, idx, pos, span=context + 1), repeats)
    return Timing("decode", batch, 1, context + 1, seconds, step_cost(model, batch, 1, context + 1))


@torch.no_grad()
def decode_tokens_per_s(model: GPT, prompt: list[int], new_tokens: int, mode: str = "slot",
                        step: Callable | None = None) -> float:
    """Greedy decode speed at batch 1: `mode` "concat" (the growing `KVCache` of `GPT.generate`), "slot" (the
    preallocated cache, attending to the filled span) or "static" (the full cache length every step: one shape,
    what `torch.compile` wants; `step` may be a compiled `forward_slots`)."""
    if mode == "concat":
        idx = torch.tensor([prompt])
        model.generate(idx, 2, temperature=0.0)  # warm-up
        start = time.perf_counter()
        model.generate(idx, new_tokens, temperature=0.0)
        return new_tokens / (time.perf_counter() - start)
    if mode not in ("slot", "static"):
        raise ValueError(f"mode must be 'concat', 'slot' or 'static', got {mode!r}")
    cache = SlotKVCache(model, 1, len(prompt) + new_tokens)
    slots = torch.zeros(1, dtype=torch.long)
    step = step or forward_slots
    start = time.perf_counter()
    logits = forward_slots(model, cache, slots, torch.tensor([prompt]), torch.arange(len(prompt))[None],
                           span=len(prompt))[:, -1]
    for i in range(new_tokens - 1):
        p = len(prompt) + i
        nxt = logits.argmax(-1, keepdim=True)
        pos = torch.tensor([[p]])
        if mode == "slot":
            logits = step(model, cache, slots, nxt, pos, span=p + 1)[:, -1]
        else:
            logits = step(model, cache, slots, nxt, pos, None, False)[:, -1]
    return new_tokens / (time.perf_counter() - start)
