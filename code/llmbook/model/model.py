"""A configurable decoder-only transformer (GPT-2 and Llama shapes) in one readable file (@sec-architecture).

Names follow the papers and nanoGPT: `wte`/`wpe` token and position embeddings, `blocks` of
(attention, MLP) with residual connections, `ln_f` and `lm_head`. Every option is a field of `GPTConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from llmbook.kernels import attention, naive_attention
from llmbook.model.config import GPTConfig


# ----------------------------------------------------------------------------------------------- positions
def sinusoidal_embedding(pos: Tensor, dim: int) -> Tensor:
    """The fixed sin/cos position code of the original transformer [@vaswani2017attention] for integer positions."""
    i = torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32)
    angle = pos[..., None].float() / (10000.0 ** (i / dim))
    emb = torch.zeros(*pos.shape, dim, device=pos.device)
    emb[..., 0::2] = torch.sin(angle)
    emb[..., 1::2] = torch.cos(angle[..., : dim // 2])
    return emb


def rope_cos_sin(pos: Tensor, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos and sin of the RoPE angles pos * base^(-2i/d) [@su2021roformer], shaped (..., T, head_dim)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim))
    angle = pos[..., None].float() * inv_freq
    angle = torch.cat([angle, angle], dim=-1)  # "rotate half" layout, as in Hugging Face Llama
    return angle.cos(), angle.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) of x (B, H, T, D) by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def alibi_slopes(n_head: int) -> Tensor:
    """Per-head ALiBi slopes [@press2022alibi]: a geometric sequence, interleaved when n_head is not a power of 2."""
    def powers(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]
    closest = 2 ** math.floor(math.log2(n_head))
    slopes = powers(closest)
    if closest != n_head:
        slopes += powers(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes)


def alibi_bias(slopes: Tensor, q_pos: Tensor, k_pos: Tensor, causal: bool) -> Tensor:
    """The ALiBi score bias -slope * distance, shaped (B, H, T_q, T_k) from positions (B, T_q) and (B, T_k)."""
    dist = q_pos[:, None, :, None] - k_pos[:, None, None, :]
    dist = dist if causal else dist.abs()
    return -slopes.to(q_pos.device)[None, :, None, None] * dist.float()


# ------------------------------------------------------------------------------------------------- layers
def make_norm(config: GPTConfig) -> nn.Module:
    """LayerNorm [@ba2016layernorm] or RMSNorm [@zhang2019rmsnorm] over the model width."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class CausalSelfAttention(nn.Module):
    """Multi-head, grouped-query or multi-query attention [@ainslie2023gqa] with one fused q/k/v projection."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.c_attn = nn.Linear(config.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=config.bias)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, bias: Tensor | None,
                mask: Tensor | None = None, cache: "KVCache | None" = None, layer: int = 0,
                weights: list[Tensor] | None = None) -> Tensor:
        """Attention over x (B, T, C); given a `weights` list, runs the naive kernel and appends its probabilities."""
        b, t, _ = x.shape
        q, k, v = self.c_attn(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1)
        q = q.view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        cfg = self.config
        if weights is not None:  # GPT.attention_weights asked for the probabilities
            y, w = naive_attention(q, k, v, cfg.causal, None, cfg.sliding_window, None, bias, return_weights=True)
            weights.append(w)
        elif cache is None:  # "auto" resolves to sdpa when there is a score bias (ALiBi)
            y = attention(q, k, v, causal=cfg.causal, impl=cfg.attn_impl, window=cfg.sliding_window, bias=bias)
        else:  # incremental decoding: causality, padding and window all come from positions in `mask`
            k, v = cache.append(layer, k, v)
            y = attention(q, k, v, causal=False, impl="naive" if cfg.attn_impl == "naive" else "sdpa", mask=mask,
                          bias=bias)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, self.n_head * self.head_dim))


class MLP(nn.Module):
    """Position-wise feed-forward: GELU [@hendrycks2016gelu] (GPT-2) or SwiGLU [@shazeer2020glu] (Llama)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        if self.swiglu:  # Llama names: w1 gate, w3 up, w2 down
            self.w1 = nn.Linear(config.n_embd, config.ffn_dim, bias=config.bias)
            self.w3 = nn.Linear(config.n_embd, config.ffn_dim, bias=config.bias)
            self.w2 = nn.Linear(config.ffn_dim, config.n_embd, bias=config.bias)
        else:
            self.c_fc = nn.Linear(config.n_embd, config.ffn_dim, bias=config.bias)
            self.c_proj = nn.Linear(config.ffn_dim, config.n_embd, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.swiglu:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's tanh approximation


class Block(nn.Module):
    """One transformer block: attention then MLP, each inside a residual connection, pre- or post-norm."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.ln_1, self.attn = make_norm(config), CausalSelfAttention(config)
        self.ln_2, self.mlp = make_norm(config), MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, bias: Tensor | None,
                mask: Tensor | None = None, cache: "KVCache | None" = None, layer: int = 0,
                weights: list[Tensor] | None = None) -> Tensor:
        if self.pre_norm:  # x + f(norm(x)): the residual stream is never normalised (GPT-2, Llama)
            x = x + self.drop(self.attn(self.ln_1(x), rope, bias, mask, cache, layer, weights))
            return x + self.drop(self.mlp(self.ln_2(x)))
        x = self.ln_1(x + self.drop(self.attn(x, rope, bias, mask, cache, layer, weights)))  # norm(x + f(x)): 2017, BERT
        return self.ln_2(x + self.drop(self.mlp(x)))


# -------------------------------------------------------------------------------------------------- cache
@dataclass
class KVCache:
    """Keys and values of every layer for the tokens seen so far, with their positions and a validity flag.

    `pos` (B, S) is each cached token's position and `valid` (B, S) is False for left padding. With a sliding
    window only the last `window` tokens are kept (@sec-architecture-kvcache).
    """

    k: list[Tensor | None]
    v: list[Tensor | None]
    pos: Tensor
    valid: Tensor

    @classmethod
    def empty(cls, n_layer: int, batch: int, device: torch.device) -> "KVCache":
        return cls([None] * n_layer, [None] * n_layer, torch.zeros(batch, 0, dtype=torch.long, device=device),
                   torch.zeros(batch, 0, dtype=torch.bool, device=device))

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v

    def evict(self, keep: int) -> None:
        """Drop all but the last `keep` tokens (sliding-window attention never looks further back)."""
        if self.pos.shape[1] > keep:
            self.k = [k[:, :, -keep:] for k in self.k]
            self.v = [v[:, :, -keep:] for v in self.v]
            self.pos, self.valid = self.pos[:, -keep:], self.valid[:, -keep:]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)


# -------------------------------------------------------------------------------------------------- model
class GPT(nn.Module):
    """Decoder-only transformer language model; with `config.causal=False` a bidirectional masked-LM encoder."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config) if config.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        if config.pos_emb == "alibi":
            self.register_buffer("alibi", alibi_slopes(config.n_head), persistent=False)
        self.apply(self._init_weights)
        # GPT-2 [@radford2019gpt2]: scale the init of each residual-branch output projection by 1/sqrt(2 n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters counted once (tied weights are shared); `non_embedding` leaves out wte and wpe."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return n

    def _trunk(self, idx: Tensor, pos: Tensor, mask: Tensor | None = None, cache: KVCache | None = None,
               k_pos: Tensor | None = None, weights: list[Tensor] | None = None) -> Tensor:
        """Embeddings and blocks up to the final norm; `pos` (B, T) are the tokens' positions."""
        cfg = self.config
        x = self.wte(idx)
        if cfg.pos_emb == "learned":
            x = x + self.wpe(pos)
        elif cfg.pos_emb == "sinusoidal":
            x = x + sinusoidal_embedding(pos, cfg.n_embd).to(x.dtype)
        rope = None
        if cfg.pos_emb == "rope":
            cos, sin = rope_cos_sin(pos, cfg.head_dim, cfg.rope_base)
            rope = (cos[:, None], sin[:, None])  # broadcast over heads
        bias = None
        if cfg.pos_emb == "alibi":
            bias = alibi_bias(self.alibi, pos, pos if k_pos is None else k_pos, cfg.causal)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, bias, mask, cache, i, weights)
        return self.ln_f(x)

    def _check_positions(self, last: int) -> None:
        if self.config.pos_emb == "learned" and last >= self.config.block_size:
            raise ValueError(f"position {last} is beyond block_size={self.config.block_size} "
                             f"of the learned position embedding")

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, vocab) for token ids idx (B, T); with targets, also the mean cross-entropy (-100 ignored)."""
        if idx.ndim != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        self._check_positions(idx.shape[1] - 1)
        pos = torch.arange(idx.shape[1], device=idx.device).expand(idx.shape[0], -1)
        logits = self.lm_head(self._trunk(idx, pos))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    def hidden_states(self, idx: Tensor) -> Tensor:
        """The final-norm hidden states (B, T, n_embd) for token ids idx: the features a bi-encoder pools
        into a sentence embedding (@sec-applications-dense)."""
        if idx.ndim != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        self._check_positions(idx.shape[1] - 1)
        return self._trunk(idx, torch.arange(idx.shape[1], device=idx.device).expand(idx.shape[0], -1))

    @torch.no_grad()
    def attention_weights(self, idx: Tensor) -> list[Tensor]:
        """The attention probabilities (B, H, T, T) of every layer for token ids idx, computed with the naive kernel."""
        if idx.ndim != 2:
            raise ValueError(f"idx must be (batch, time) token ids, got shape {tuple(idx.shape)}")
        self._check_positions(idx.shape[1] - 1)
        weights: list[Tensor] = []
        self._trunk(idx, torch.arange(idx.shape[1], device=idx.device).expand(idx.shape[0], -1), weights=weights)
        return weights

    def forward_cached(self, idx: Tensor, cache: KVCache, valid: Tensor | None = None) -> Tensor:
        """Logits for new tokens idx (B, T) given the cache of earlier ones; updates the cache (@sec-architecture-kvcache).

        `valid` (B, T) marks real tokens (False for left padding); positions count real tokens only, so a
        padded prompt gets the same positions as the unpadded one.
        """
        if not self.config.causal:
            raise ValueError("a KV cache needs a causal model (config.causal=True)")
        b, t = idx.shape
        valid = torch.ones(b, t, dtype=torch.bool, device=idx.device) if valid is None else valid.bool()
        start = torch.zeros(b, 1, dtype=torch.long, device=idx.device)
        if cache.pos.shape[1]:  # the next position after the last real token (padding never advances it)
            start = cache.pos.masked_fill(~cache.valid, -1).amax(dim=1, keepdim=True) + 1
        pos = (start + valid.long().cumsum(dim=1) - 1).clamp(min=0)
        self._check_positions(int(pos.max()))
        n_old = cache.pos.shape[1]
        cache.pos, cache.valid = torch.cat([cache.pos, pos], 1), torch.cat([cache.valid, valid], 1)
        q_pos, k_pos = pos[:, :, None], cache.pos[:, None, :]
        keep = cache.valid[:, None, :] & (k_pos <= q_pos)
        if self.config.sliding_window is not None:
            keep &= k_pos > q_pos - self.config.sliding_window
        own = torch.arange(n_old + t, device=idx.device)[None, None, :] == \
            (n_old + torch.arange(t, device=idx.device))[None, :, None]
        keep |= own & ~valid[:, :, None]  # a padding query attends to itself only, so no row is empty
        x = self._trunk(idx, pos, keep[:, None], cache, cache.pos)
        if self.config.sliding_window is not None:
            cache.evict(self.config.sliding_window)
        return self.lm_head(x)

    def forward_positions(self, idx: Tensor, pos: Tensor, mask: Tensor, cache, k_pos: Tensor,
                          check: bool = True) -> Tensor:
        """Logits for tokens idx (B, T) at positions pos (B, T) through an external cache (@sec-inference-batching).

        `cache.append(layer, k, v)` stores the new keys and values and returns all keys and values to attend to,
        whose positions are k_pos (B, S); mask (B, T, S) is True where a query may attend. The serving engine's
        preallocated slot cache (`llmbook.serve.kvcache`) runs the model through this method. `check=False` skips
        the position check, which reads a value back from the device (a graph break under `torch.compile`).
        """
        if check:
            self._check_positions(int(pos.max()))
        return self.lm_head(self._trunk(idx, pos, mask[:, None], cache, k_pos))

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, stop: int | list[int] | None = None,
                 generator: torch.Generator | None = None, attention_mask: Tensor | None = None,
                 use_cache: bool = True, return_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Continue each row of idx (B, T) by up to max_new_tokens tokens (@sec-architecture-kvcache).

        temperature=0 (or below GREEDY_BELOW) is greedy decoding; top_k and top_p (nucleus) truncate the
        distribution before sampling with `generator`. Runs in eval mode (no dropout) without gradients and restores the
        model's training mode afterwards. Batched prompts of different lengths are left-padded, with
        `attention_mask` (B, T) 1 for real tokens. A row that emits a token in `stop` is finished and is
        filled with that token; generation ends when every row is finished. `use_cache=False` recomputes
        the whole sequence at every step (the slow reference). With return_logits, also returns the
        (B, n_new, vocab) logits each new token was drawn from.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k <= 0:
            raise ValueError(f"top_k must be a positive integer or None, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        was_training = self.training
        self.eval()  # dropout off while decoding; the caller's mode is restored afterwards
        try:
            return self._decode(idx, max_new_tokens, temperature, top_k, top_p, stop, generator, attention_mask,
                                use_cache, return_logits)
        finally:
            self.train(was_training)

    def _decode(self, idx: Tensor, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None,
                stop: int | list[int] | None, generator: torch.Generator | None, attention_mask: Tensor | None,
                use_cache: bool, return_logits: bool) -> Tensor | tuple[Tensor, Tensor]:
        """The decoding loop of `generate` (arguments already validated, model in eval mode)."""
        stops = torch.tensor([stop] if isinstance(stop, int) else list(stop or []), device=idx.device)
        valid = torch.ones_like(idx, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        fill = torch.zeros_like(idx[:, 0])
        cache = KVCache.empty(self.config.n_layer, idx.shape[0], idx.device)
        logits = self.forward_cached(idx, cache, valid)[:, -1]
        tokens, seen = idx, []
        for step in range(max_new_tokens):
            seen.append(logits)
            nxt = sample(logits, temperature, top_k, top_p, generator)
            nxt = torch.where(finished, fill, nxt)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            valid = torch.cat([valid, torch.ones_like(nxt[:, None], dtype=torch.bool)], dim=1)
            if len(stops):
                newly = torch.isin(nxt, stops) & ~finished
                fill = torch.where(newly, nxt, fill)
                finished |= newly
                if bool(finished.all()):
                    break
            if step + 1 == max_new_tokens:
                break
            if use_cache:
                logits = self.forward_cached(nxt[:, None], cache)[:, -1]
            else:
                cache = KVCache.empty(self.config.n_layer, idx.shape[0], idx.device)
                logits = self.forward_cached(tokens, cache, valid)[:, -1]
        if return_logits:
            empty = torch.zeros(idx.shape[0], 0, self.config.vocab_size, device=idx.device)
            return tokens, torch.stack(seen, dim=1) if seen else empty
        return tokens


GREEDY_BELOW = 1e-5  # temperatures below this are treated as 0: dividing logits by them overflows float32


def sample(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """One token id per row of logits (B, vocab): greedy when temperature < GREEDY_BELOW, else top-k/top-p sampling.

    top_k keeps every token whose logit ties with the k-th largest, so a tie may keep more than k tokens.
    The draw uses `generator` on its own device (a CPU generator works with CUDA logits, at the cost of a
    copy); the result is on the logits' device.
    """
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    probs = truncate_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    if generator is not None and generator.device.type != probs.device.type:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)


def truncate_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Logits (B, vocab) with -inf outside the top-k tokens (ties kept) and outside the nucleus of mass top_p."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest prefix reaching top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Token ids (B, T_max) and attention mask (B, T_max) for prompts of different lengths, padded on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("left_pad needs at least one prompt and no empty prompt")
    t = max(len(p) for p in prompts)
    idx = torch.tensor([[pad_id] * (t - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return idx, mask


def mask_tokens(idx: Tensor, mask_id: int, vocab_size: int, prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT's masked-LM corruption [@devlin2019bert] for an encoder (`causal=False`) (@sec-architecture-families).

    Each token is chosen with probability `prob`; a chosen token becomes `mask_id` 80% of the time, a random
    token 10%, and stays 10%. Returns (inputs, targets) with targets -100 except at chosen positions.
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    chosen = torch.rand(idx.shape, generator=generator, device=idx.device) < prob
    how = torch.rand(idx.shape, generator=generator, device=idx.device)
    random_tokens = torch.randint(0, vocab_size, idx.shape, generator=generator, device=idx.device)
    inputs = torch.where(chosen & (how < 0.8), mask_id, idx)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_tokens, inputs)
    return inputs, torch.where(chosen, idx, -100)
