"""Speculative decoding: a small draft model proposes k tokens, the target model checks them in one forward pass
(@sec-inference-speculative).

Decoding a memory-bound model costs about the same for 1 token as for k+1 tokens in one pass, so if a cheap
draft guesses right, the target emits several tokens per pass. The acceptance rule of Leviathan et al.
[@leviathan2023speculative] and Chen et al. [@chen2023accelerating] keeps the output distribution exactly the
target's: accept draft token x with probability min(1, p(x) / q(x)); on rejection, sample from the residual
max(0, p - q) renormalised. At temperature 0 this reduces to "accept while the draft's token is the
target's argmax", so greedy output is token-for-token the target's own greedy output. Both models keep their
keys and values in a `SlotKVCache`; rejected draft tokens are rolled back simply by decoding over their
positions again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmbook.model import GPT
from llmbook.model.model import GREEDY_BELOW
from llmbook.serve.kvcache import SlotKVCache, forward_slots


@dataclass
class SpeculativeStats:
    """Counts over one generation: proposed and accepted draft tokens and target forward passes."""

    proposed: int = 0
    accepted: int = 0
    target_passes: int = 0
    draft_passes: int = 0
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.proposed, 1)

    @property
    def tokens_per_target_pass(self) -> float:
        return self.new_tokens / max(self.target_passes, 1)


def _probs(logits: Tensor, temperature: float) -> Tensor:
    return torch.softmax(logits.float() / temperature, dim=-1)


class _Runner:
    """One model with a one-slot cache and the number of leading tokens whose keys and values it holds."""

    def __init__(self, model: GPT, max_len: int) -> None:
        self.model, self.cache, self.done = model, SlotKVCache(model, 1, max_len), 0
        self.slot = torch.zeros(1, dtype=torch.long, device=self.cache.k.device)

    def feed(self, tokens: list[int]) -> Tensor:
        """Run the tokens after the first `done` ones; returns their logits (T, vocab)."""
        new = tokens[self.done:]
        pos = torch.arange(self.done, len(tokens), device=self.slot.device)[None]
        logits = forward_slots(self.model, self.cache, self.slot, torch.tensor([new], device=self.slot.device), pos,
                               span=len(tokens))[0]
        self.done = len(tokens)
        return logits


@torch.no_grad()
def speculative_generate(target: GPT, draft: GPT, prompt: list[int], max_new_tokens: int, k: int = 4,
                         temperature: float = 0.0, generator: torch.Generator | None = None,
                         eos_id: int | None = None) -> tuple[list[int], SpeculativeStats]:
    """Generate up to max_new_tokens after `prompt` with `target`'s distribution, drafting k tokens at a time.

    Returns the new tokens (ending at eos_id, if emitted) and the acceptance statistics.
    """
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError("target and draft must share the vocabulary (the same tokenizer)")
    if k <= 0 or max_new_tokens <= 0 or not prompt:
        raise ValueError(f"need k > 0, max_new_tokens > 0 and a prompt; got k={k}, max_new_tokens={max_new_tokens}")
    max_len = len(prompt) + max_new_tokens  # every pass stays below this position: drafts stop one short of it
    for m in (target, draft):
        if m.config.pos_emb == "learned" and max_len > m.config.block_size:
            raise ValueError(f"prompt + max_new_tokens = {max_len} exceeds block_size {m.config.block_size}")
    t_run, d_run = _Runner(target.eval(), max_len), _Runner(draft.eval(), max_len)
    greedy = temperature < GREEDY_BELOW
    tokens, stats = list(prompt), SpeculativeStats()
    limit = len(prompt) + max_new_tokens
    while len(tokens) < limit:
        n_draft = min(k, limit - len(tokens) - 1)
        proposal, q_probs = [], []
        if n_draft > 0:  # the draft proposes n_draft tokens, one pass each
            logits = d_run.feed(tokens)[-1]
            for i in range(n_draft):
                if greedy:
                    nxt = int(logits.argmax())
                else:
                    q = _probs(logits, temperature)
                    nxt = int(torch.multinomial(q, 1, generator=generator))
                    q_probs.append(q)
                proposal.append(nxt)
                stats.draft_passes += 1
                if i + 1 < n_draft:
                    logits = d_run.feed(tokens + proposal)[-1]
        base = len(tokens)
        t_logits = t_run.feed(tokens + proposal)[-(len(proposal) + 1):]  # predictions for each proposal + one more
        stats.target_passes += 1
        stats.proposed += len(proposal)
        accepted, extra = 0, None
        for i, x in enumerate(proposal):
            if greedy:
                ok = int(t_logits[i].argmax()) == x
            else:
                p = _probs(t_logits[i], temperature)
                u = torch.rand((), generator=generator, device=p.device)
                ok = bool(u < torch.clamp(p[x] / q_probs[i][x], max=1.0))
            if not ok:
                if greedy:
                    extra = int(t_logits[i].argmax())
                else:
                    residual = torch.clamp(_probs(t_logits[i], temperature) - q_probs[i], min=0)
                    extra = int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
                break
            accepted += 1
        if extra is None:  # every proposal accepted: the target's next prediction comes for free
            last = t_logits[len(proposal)]
            extra = int(last.argmax()) if greedy else int(torch.multinomial(_probs(last, temperature), 1,
                                                                             generator=generator))
        stats.accepted += accepted
        tokens += proposal[:accepted] + [extra]
        t_run.done = min(t_run.done, base + accepted)  # keys and values past the accepted tokens are stale
        d_run.done = min(d_run.done, base + accepted)
        if eos_id is not None and eos_id in tokens[base:]:
            tokens = tokens[: tokens.index(eos_id, base) + 1]
            break
    out = tokens[len(prompt): limit]
    stats.new_tokens = len(out)
    return out, stats


@torch.no_grad()
def autoregressive_generate(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float = 0.0,
                            generator: torch.Generator | None = None) -> list[int]:
    """Plain decoding, one target pass per token, on the same slot cache: the baseline speculative decoding beats."""
    runner = _Runner(model.eval(), len(prompt) + max_new_tokens)
    tokens = list(prompt)
    while len(tokens) < len(prompt) + max_new_tokens:
        logits = runner.feed(tokens)[-1]
        tokens.append(int(logits.argmax()) if temperature < GREEDY_BELOW else
                      int(torch.multinomial(_probs(logits, temperature), 1, generator=generator)))
    return tokens[len(prompt):]
