"""What the model computes for one prompt: next-token logits, attention weights and the logit lens
(@sec-architecture-explorer).

The capture adds nothing to `GPT.forward`: `GPT.attention_weights` already runs the naive kernel when the
probabilities are wanted, and PyTorch forward hooks on the blocks read the residual stream on the way, so
the normal forward path is neither changed nor slowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmbook.model import GPT


@dataclass
class Trace:
    """One prompt through the model: `attention` (n_layer, n_head, T, T), `residuals` (n_layer + 1, T, n_embd),
    the stream entering the first block and after each block, and `lens_logits` (n_layer + 1, T, vocab)."""

    ids: list[int]
    attention: Tensor
    residuals: Tensor
    lens_logits: Tensor

    @property
    def logits(self) -> Tensor:
        """The model's next-token logits (T, vocab): the logit lens after the last block is the output itself."""
        return self.lens_logits[-1]


def logit_lens(model: GPT, residuals: Tensor) -> Tensor:
    """Read each residual-stream state as the output would [@nostalgebraist2020lens]: final norm, then unembedding."""
    return model.lm_head(model.ln_f(residuals)).float()


@torch.no_grad()
def trace(model: GPT, ids: Sequence[int]) -> Trace:
    """Run token ids through `model` once (eval mode, naive attention), keeping attention weights and residuals."""
    if not model.config.causal:
        raise ValueError("the explorer shows next-token predictions, which need a causal model (config.causal=True)")
    ids = [int(i) for i in ids]
    if not ids:
        raise ValueError("trace needs at least one token id")
    if min(ids) < 0 or max(ids) >= model.config.vocab_size:
        raise ValueError(f"token ids must be in [0, {model.config.vocab_size}), got {min(ids)}..{max(ids)}")
    device = next(model.parameters()).device
    stream: list[Tensor] = []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda module, args: stream.append(args[0]))]
    hooks += [block.register_forward_hook(lambda module, args, out: stream.append(out)) for block in model.blocks]
    was_training = model.training
    model.eval()  # no dropout: the explorer shows what the model predicts
    try:
        weights = model.attention_weights(torch.tensor([ids], device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    residuals = torch.cat(stream)  # (n_layer + 1, T, C): batch of one
    return Trace(ids, torch.cat(weights).float().cpu(), residuals.float().cpu(),
                 logit_lens(model, residuals).cpu())


def previous_token_scores(attention: Tensor) -> Tensor:
    """Mean attention weight each head (n_layer, n_head) puts on the token just before the query, over queries
    1..T-1: near 1 for a "previous-token head", about 1/position for uniform attention."""
    t = attention.shape[-1]
    if t < 2:
        raise ValueError("previous-token scores need at least two tokens")
    return attention.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)
