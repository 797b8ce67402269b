"""The step-by-step attention of `llmbook.model.attention` against PyTorch's SDPA and nn.MultiheadAttention.

Tolerances: float64 inputs, so every comparison holds to 1e-10 or better unless stated.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmbook.kernels import attention as kernel_attention
from llmbook.model import GPT, GPTConfig
from llmbook.model.attention import (
    CrossAttention,
    attention_scores,
    causal_mask,
    masked_softmax,
    merge_heads,
    multi_head_attention,
    repeat_kv,
    scaled_dot_product_attention,
    sliding_window_mask,
    split_heads,
)

ATOL = 1e-10


def qkv(b=2, h=4, h_kv=4, t_q=7, t_k=7, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, t_q, d, generator=g, dtype=torch.float64),
            torch.randn(b, h_kv, t_k, d, generator=g, dtype=torch.float64),
            torch.randn(b, h_kv, t_k, d, generator=g, dtype=torch.float64))


def test_scores_are_scaled_dot_products():
    q, k, _ = qkv()
    s = attention_scores(q, k)
    assert s.shape == (2, 4, 7, 7)
    assert s[1, 2, 3, 5].item() == pytest.approx((q[1, 2, 3] @ k[1, 2, 5]).item() / 8**0.5, abs=ATOL)


def test_causal_mask_is_lower_triangular_and_end_aligned():
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())
    # one new query after 3 cached keys (decoding) sees all 4 keys
    assert causal_mask(1, 4).all()
    assert torch.equal(causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))


def test_masked_softmax_rows_sum_to_one_and_hide_the_future():
    q, k, _ = qkv()
    p = masked_softmax(attention_scores(q, k), causal_mask(7, 7))
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 4, 7, dtype=torch.float64), atol=ATOL, rtol=0)
    assert (p.triu(diagonal=1) == 0).all()


@pytest.mark.parametrize("t_q, t_k", [(7, 7), (1, 9), (3, 9)])
def test_step_by_step_equals_sdpa_causal(t_q, t_k):
    q, k, v = qkv(t_q=t_q, t_k=t_k)
    ours = scaled_dot_product_attention(q, k, v, causal_mask(t_q, t_k))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t_q, t_k))
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    if t_q == t_k:
        torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=ATOL, rtol=0)


@pytest.mark.parametrize("h, h_kv", [(4, 4), (4, 2), (4, 1), (6, 3)])
def test_grouped_query_by_repeat_equals_sdpa_gqa(h, h_kv):
    q, k, v = qkv(h=h, h_kv=h_kv)
    ours = scaled_dot_product_attention(q, repeat_kv(k, h // h_kv), repeat_kv(v, h // h_kv), causal_mask(7, 7))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)
    # query head i uses K/V head i // (h / h_kv)
    head = h - 1
    one = scaled_dot_product_attention(q[:, head], k[:, head // (h // h_kv)], v[:, head // (h // h_kv)],
                                       causal_mask(7, 7))
    torch.testing.assert_close(ours[:, head], one, atol=ATOL, rtol=0)


@pytest.mark.parametrize("window", [1, 3, 7, 20])
def test_sliding_window_equals_sdpa_with_explicit_mask(window):
    q, k, v = qkv(t_q=11, t_k=11)
    mask = sliding_window_mask(11, 11, window)
    explicit = torch.tensor([[i - window < j <= i for j in range(11)] for i in range(11)])
    assert torch.equal(mask, explicit)
    ours = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=explicit), atol=ATOL, rtol=0)
    torch.testing.assert_close(ours, kernel_attention(q, k, v, causal=True, impl="naive", window=window),
                               atol=ATOL, rtol=0)
    assert mask.sum(-1).max().item() == min(window, 11)  # no query sees more than `window` keys


def test_sliding_window_rejects_bad_sizes():
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="window must be a positive integer"):
            sliding_window_mask(4, 4, bad)


def test_heads_split_and_merge_round_trip():
    x = torch.randn(2, 5, 12)
    assert split_heads(x, 3).shape == (2, 3, 5, 4)
    assert torch.equal(merge_heads(split_heads(x, 3)), x)
    with pytest.raises(ValueError, match="not divisible"):
        split_heads(x, 5)


def test_multi_head_attention_equals_the_models_attention_module():
    """The printed step-by-step version reproduces GPT's fused attention (no RoPE, no biases) with its weights."""
    cfg = GPTConfig(vocab_size=32, block_size=16, n_layer=1, n_head=4, n_kv_head=2, n_embd=32, bias=False,
                    pos_emb="learned")
    torch.manual_seed(0)
    attn = GPT(cfg).double().blocks[0].attn
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    w_q, w_k, w_v = attn.c_attn.weight.split([32, 16, 16], dim=0)
    ours = multi_head_attention(x, w_q, w_k, w_v, attn.c_proj.weight, 4, 2, causal_mask(9, 9))
    torch.testing.assert_close(ours, attn(x, None, None), atol=ATOL, rtol=0)


def test_multi_head_attention_rejects_bad_grouping():
    w = torch.randn(8, 8)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        multi_head_attention(torch.randn(1, 3, 8), w, w, w, w, n_head=4, n_kv_head=3)


def test_cross_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    cross = CrossAttention(16, 4).double()
    ref = torch.nn.MultiheadAttention(16, 4, bias=False, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([cross.q.weight, cross.k.weight, cross.v.weight]))
        ref.out_proj.weight.copy_(cross.o.weight)
    x, memory = torch.randn(3, 5, 16, dtype=torch.float64), torch.randn(3, 8, 16, dtype=torch.float64)
    want, want_w = ref(x, memory, memory, average_attn_weights=False)
    torch.testing.assert_close(cross(x, memory), want, atol=ATOL, rtol=0)
    torch.testing.assert_close(cross.weights(x, memory), want_w, atol=ATOL, rtol=0)
    # padding of the encoder input: torch's key_padding_mask is True for padding, ours True for real tokens
    real = torch.ones(3, 8, dtype=torch.bool)
    real[0, 5:] = False
    real[2, 1:] = False
    want_padded, _ = ref(x, memory, memory, key_padding_mask=~real)
    torch.testing.assert_close(cross(x, memory, real), want_padded, atol=ATOL, rtol=0)


def test_cross_attention_output_does_not_depend_on_padding_contents():
    torch.manual_seed(0)
    cross = CrossAttention(8, 2)
    x, memory = torch.randn(1, 3, 8), torch.randn(1, 6, 8)
    real = torch.tensor([[True, True, True, True, False, False]])
    changed = memory.clone()
    changed[:, 4:] = 100.0
    torch.testing.assert_close(cross(x, memory, real), cross(x, changed, real))
    with pytest.raises(ValueError, match="not divisible"):
        CrossAttention(10, 3)
