"""KV-cache generation: cached decoding equals recomputing the whole sequence; sampling, padding, stop tokens.

Tolerance for logits: 1e-5 absolute in float32 (the cache changes only the order of floating-point sums).
"""

from __future__ import annotations

import pytest
import torch

from llmbook import costs
from llmbook.model import GPT, GPTConfig, KVCache, left_pad, sample

TINY = dict(vocab_size=50, block_size=64, n_layer=2, n_head=4, n_embd=32)
VARIANTS = {
    "gpt2": {},
    "llama-gqa-rope": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_kv_head=2, rope_base=500.0),
    "mqa-alibi": dict(pos_emb="alibi", n_kv_head=1),
    "sinusoidal": dict(pos_emb="sinusoidal"),
    "sliding-window": dict(pos_emb="rope", n_kv_head=2, sliding_window=5),
}


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **kw})).eval()


def greedy_by_recompute(model: GPT, prompt: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: run the plain forward over the whole sequence for every new token."""
    seq, logits = prompt, []
    with torch.no_grad():
        for _ in range(n):
            last = model(seq)[0][:, -1]
            logits.append(last)
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return seq, torch.stack(logits, 1)


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_equals_recompute(name):
    model = tiny(**VARIANTS[name])
    prompt = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    tokens, logits = model.generate(prompt, 12, temperature=0, return_logits=True)
    ref_tokens, ref_logits = greedy_by_recompute(model, prompt, 12)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    slow, slow_logits = model.generate(prompt, 12, temperature=0, use_cache=False, return_logits=True)
    assert torch.equal(slow, tokens)
    torch.testing.assert_close(slow_logits, logits, atol=1e-5, rtol=0)


def test_sliding_window_evicts_cache():
    model = tiny(**VARIANTS["sliding-window"])
    cache = KVCache.empty(2, 1, torch.device("cpu"))
    with torch.no_grad():
        model.forward_cached(torch.randint(0, 50, (1, 9)), cache)
        assert cache.pos.shape[1] == 5 and cache.k[0].shape[2] == 5
        model.forward_cached(torch.tensor([[3]]), cache)
    assert cache.pos[0].tolist() == [5, 6, 7, 8, 9]
    assert cache.nbytes() == costs.kv_cache_bytes(model.config, batch=1, seq_len=5, bytes_per_value=4)


@pytest.mark.parametrize("name", ["gpt2", "llama-gqa-rope", "mqa-alibi", "sliding-window"])
def test_left_padded_batch_matches_single_prompts(name):
    model = tiny(**VARIANTS[name])
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [42]]
    idx, mask = left_pad(prompts, pad_id=0)
    assert mask.tolist()[0] == [0] * 6 + [1] * 3
    batch, batch_logits = model.generate(idx, 6, temperature=0, attention_mask=mask, return_logits=True)
    for row, p in enumerate(prompts):
        single, single_logits = greedy_by_recompute(model, torch.tensor([p]), 6)
        assert batch[row, idx.shape[1]:].tolist() == single[0, len(p):].tolist()
        torch.testing.assert_close(batch_logits[row], single_logits[0], atol=1e-5, rtol=0)


def test_seeded_sampling_is_reproducible():
    model = tiny(**VARIANTS["llama-gqa-rope"])
    prompt = torch.tensor([[1, 2, 3]])
    runs = [model.generate(prompt, 10, temperature=1.0, top_k=20, top_p=0.9,
                           generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_top_k_and_top_p_truncate():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    p = torch.softmax(logits, -1)[0]  # 0.64, 0.24, ...: the nucleus of 0.7 is the first two tokens
    assert p[0] < 0.7 <= p[0] + p[1]
    draws = {int(sample(logits, 1.0, top_p=0.7, generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(sample(logits, 0.0)) == 0
    assert {int(sample(logits, 1.0, top_p=0.5, generator=g)) for _ in range(50)} == {0}


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 0.0]]).expand(4000, 2)
    g = torch.Generator().manual_seed(0)
    hot = sample(logits, 2.0, generator=g).float().mean()
    cold = sample(logits, 0.25, generator=g).float().mean()
    assert cold < hot  # fraction of the less likely token 1 falls as temperature falls


def test_stop_tokens_finish_rows():
    model = tiny()
    prompt = torch.randint(0, 50, (2, 4), generator=torch.Generator().manual_seed(5))
    free = model.generate(prompt, 8, temperature=0)
    stop = int(free[1, -2])  # row 1 switches to this token late; row 0 never generates it
    assert stop not in free[0, 4:].tolist() and int(free[1, 4]) != stop
    out = model.generate(prompt, 8, temperature=0, stop=[stop])
    first = (out[1, 4:] == stop).nonzero()[0].item()
    assert first >= 1 and torch.equal(out[1, : 4 + first + 1], free[1, : 4 + first + 1])
    assert (out[1, 4 + first:] == stop).all()  # a finished row is filled with its stop token
    assert out.shape[1] == free.shape[1]  # row 0 never stops, so generation runs to max_new_tokens
    assert torch.equal(out[0], free[0])  # and row 0 is unaffected by row 1 finishing


def test_generate_uses_eval_mode_and_restores_training():
    model = tiny(dropout=0.5).train()
    prompt = torch.tensor([[1, 2, 3]])
    a, b = model.generate(prompt, 6, temperature=0), model.generate(prompt, 6, temperature=0)
    assert torch.equal(a, b) and model.training  # no dropout while decoding; training mode restored
    assert torch.equal(a, model.eval().generate(prompt, 6, temperature=0)) and not model.training


def test_tiny_temperature_is_greedy():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    assert sample(logits, 1e-9).tolist() == [1, 0]
    assert sample(logits, 1e-30, generator=torch.Generator().manual_seed(0)).tolist() == [1, 0]


def test_top_k_keeps_ties():
    logits = torch.tensor([[2.0, 2.0, 2.0, 0.0]])
    g = torch.Generator().manual_seed(0)
    assert {int(sample(logits, 1.0, top_k=1, generator=g)) for _ in range(100)} == {0, 1, 2}


def test_generate_errors():
    model = tiny()
    prompt = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 2, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 2, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="block_size"):
        model.generate(prompt, 70, temperature=0)
    with pytest.raises(ValueError, match="empty prompt"):
        left_pad([[1], []])
    assert model.generate(prompt, 0).tolist() == [[1, 2]]


def test_cache_size_matches_costs():
    model = tiny(**VARIANTS["llama-gqa-rope"])
    cache = KVCache.empty(2, 3, torch.device("cpu"))
    with torch.no_grad():
        model.forward_cached(torch.randint(0, 50, (3, 11)), cache)
    assert cache.nbytes() == costs.kv_cache_bytes(model.config, batch=3, seq_len=11, bytes_per_value=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("impl", ["sdpa", "triton"])
def test_cuda_bf16_generation_matches_recompute(impl):
    """On a GPU in bfloat16: cached greedy decoding gives the tokens of recomputing the whole sequence, and
    logits within a 2e-2 relative-norm error."""
    model = tiny(**VARIANTS["llama-gqa-rope"], n_embd=128, attn_impl=impl).cuda().to(torch.bfloat16)
    prompt = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0)).cuda()
    tokens, logits = model.generate(prompt, 8, temperature=0, return_logits=True)
    ref_tokens, ref_logits = greedy_by_recompute(model, prompt, 8)
    assert torch.equal(tokens, ref_tokens)
    err = ((logits.float() - ref_logits.float()).norm() / ref_logits.float().norm()).item()
    assert err < 2e-2, err  # bf16 rounds differently with and without the cache, never by a wrong row


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_generator_with_cuda_logits():
    logits = torch.randn(4, 50, device="cuda")
    a = sample(logits, 1.0, generator=torch.Generator().manual_seed(0))
    b = sample(logits.cpu(), 1.0, generator=torch.Generator().manual_seed(0))
    assert a.device.type == "cuda" and torch.equal(a.cpu(), b)
