"""Speculative decoding: greedy output is token for token the target's own greedy output, a perfect draft is always
accepted, and sampled output follows the target's distribution (rejection sampling)."""

from __future__ import annotations

import pytest
import torch

from serve_fixtures import trained

from llmbook.model import GPT, GPTConfig
from llmbook.serve import speculative
from llmbook.serve.speculative import speculative_generate


@pytest.fixture(scope="module")
def models():
    target, tok = trained()
    torch.manual_seed(3)
    draft = GPT(GPTConfig(**{**target.config.to_dict(), "n_layer": 1, "n_embd": 16})).eval()
    return target, draft, tok


@pytest.mark.parametrize("k", [1, 3, 6])
def test_greedy_speculative_output_equals_the_targets_greedy_output(models, k):
    target, draft, tok = models
    for text in ("the cat sat", "once upon a time there lived", "big"):
        prompt = tok.encode(text).ids
        ref = target.generate(torch.tensor([prompt]), 30, temperature=0)[0, len(prompt):].tolist()
        out, stats = speculative_generate(target, draft, prompt, 30, k=k)
        assert out == ref
        assert stats.new_tokens == 30 and 0 <= stats.accepted <= stats.proposed
        assert stats.target_passes <= 30


def test_the_plain_baseline_equals_greedy_generate(models):
    target, _, tok = models
    prompt = tok.encode("the cat").ids
    ref = target.generate(torch.tensor([prompt]), 20, temperature=0)[0, len(prompt):].tolist()
    assert speculative.autoregressive_generate(target, prompt, 20) == ref


def test_a_perfect_draft_is_always_accepted(models):
    target, _, tok = models
    prompt = tok.encode("the dog").ids
    out, stats = speculative_generate(target, target, prompt, 25, k=4)
    assert stats.acceptance_rate == 1.0 and stats.tokens_per_target_pass == pytest.approx(25 / stats.target_passes)
    assert stats.target_passes == 5  # 4 accepted + 1 free token per pass


def test_generation_stops_at_end_of_text(models):
    target, draft, tok = models
    prompt = tok.encode("the cat").ids
    ref = target.generate(torch.tensor([prompt]), 30, temperature=0)[0, len(prompt):].tolist()
    eos = ref[5]  # pretend the sixth token ends the text
    out, _ = speculative_generate(target, draft, prompt, 30, k=3, eos_id=eos)
    assert out == ref[: ref.index(eos) + 1]


def test_sampled_first_token_follows_the_target_distribution():
    torch.manual_seed(0)
    cfg = dict(vocab_size=6, block_size=8, n_layer=1, n_head=1, n_embd=8)
    target, draft = GPT(GPTConfig(**cfg)).eval(), GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # sharpen the random models; target and draft then disagree clearly (TV ~0.2)
        target.lm_head.weight.mul_(10)
        draft.lm_head.weight.mul_(-10)
        p = torch.softmax(target(torch.tensor([[1, 2]]))[0][0, -1], -1)
    gen = torch.Generator().manual_seed(0)
    n = 1500
    counts = torch.zeros(6)
    for _ in range(n):
        out, _ = speculative_generate(target, draft, [1, 2], 2, k=1, temperature=1.0, generator=gen)
        counts[out[0]] += 1
    assert (counts / n - p).abs().sum() / 2 < 0.05  # total variation distance, ~4 standard errors


def test_bad_arguments(models):
    target, draft, tok = models
    with pytest.raises(ValueError, match="k > 0"):
        speculative_generate(target, draft, [1], 5, k=0)
    with pytest.raises(ValueError, match="block_size"):
        speculative_generate(target, draft, [1] * 60, 10)
    other = GPT(GPTConfig(**{**target.config.to_dict(), "vocab_size": 7}))
    with pytest.raises(ValueError, match="vocabulary"):
        speculative_generate(target, other, [1], 5)
