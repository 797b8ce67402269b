"""The mixture-of-experts layer: routing, the load-balancing loss, parity with Mixtral, parameter and FLOP counts."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llmbook.model import GPTConfig
from llmbook.model.moe import (
    MIXTRAL_8X7B,
    MoE,
    MoEConfig,
    layer_flops_per_token,
    layer_params,
    load_balancing_loss,
    model_params,
    route,
    tokens_per_expert,
)

SMALL = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16, mlp="swiglu", mlp_hidden=24,
                  bias=False)


def layer(cfg=SMALL, n_expert=4, top_k=2, seed=0, **kw) -> MoE:
    torch.manual_seed(seed)
    moe = MoE(cfg, MoEConfig(n_expert, top_k, **kw))
    for p in moe.parameters():  # a wider init than GPT's, so the router actually discriminates
        torch.nn.init.normal_(p, std=0.3)
    return moe


@pytest.mark.parametrize("n_expert, top_k", [(4, 1), (4, 2), (8, 3), (3, 3)])
def test_each_token_goes_to_exactly_k_distinct_experts(n_expert, top_k):
    moe = layer(n_expert=n_expert, top_k=top_k)
    out = moe(torch.randn(3, 5, 16))
    assert out.output.shape == (3, 5, 16) and out.expert_index.shape == (15, top_k)
    assert all(len(set(row.tolist())) == top_k for row in out.expert_index)
    assert tokens_per_expert(out.expert_index, n_expert).sum().item() == 15 * top_k
    # the chosen experts are the k most probable ones, best first
    want = out.router_probs.topk(top_k, dim=-1).indices
    assert torch.equal(out.expert_index, want)


def test_output_is_the_weighted_sum_of_the_chosen_experts():
    moe = layer(n_expert=4, top_k=2)
    x = torch.randn(1, 6, 16)
    out = moe(x)
    _, weights, index = route(moe.router(x[0]), 2, renormalize=True)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))
    for t in range(6):
        want = sum(weights[t, s] * moe.experts[int(index[t, s])](x[0, t]) for s in range(2))
        torch.testing.assert_close(out.output[0, t], want, atol=1e-6, rtol=1e-6)


def test_top1_without_renormalisation_scales_by_the_router_probability():
    moe = layer(n_expert=4, top_k=1, renormalize=False)
    x = torch.randn(1, 3, 16)
    out = moe(x)
    p = out.router_probs.max(dim=-1).values
    for t in range(3):
        want = p[t] * moe.experts[int(out.expert_index[t, 0])](x[0, t])
        torch.testing.assert_close(out.output[0, t], want, atol=1e-6, rtol=1e-6)


def test_load_balancing_loss_hand_worked():
    """Four tokens, two experts, top-1: f = (3/4, 1/4), P = (0.65, 0.35), loss = 2 (0.75 0.65 + 0.25 0.35) = 1.15."""
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    index = probs.argmax(-1, keepdim=True)
    assert load_balancing_loss(probs, index, 2).item() == pytest.approx(1.15)


@pytest.mark.parametrize("n_expert, top_k", [(4, 1), (8, 2)])
def test_load_balancing_loss_is_one_for_uniform_routing(n_expert, top_k):
    n = 8 * n_expert
    probs = torch.full((n, n_expert), 1 / n_expert)
    index = torch.stack([(torch.arange(n) + s) % n_expert for s in range(top_k)], dim=1)  # every expert equally
    assert tokens_per_expert(index, n_expert).unique().numel() == 1
    assert load_balancing_loss(probs, index, n_expert).item() == pytest.approx(1.0)


def test_relaxed_load_balancing_loss_is_minimal_at_uniform():
    """With f = P (routing fractions equal to mean probabilities) the loss is E * sum P_i^2 >= 1, = 1 iff uniform.

    With hard top-k counts f can disagree with P, and the loss can dip below 1 (second case below); the
    gradient only flows through P, which it pushes towards uniform.
    """
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        p = torch.softmax(3 * torch.randn(6, generator=g), 0)
        assert 6 * (p * p).sum().item() >= 1 - 1e-6
    assert 6 * ((torch.ones(6) / 6) ** 2).sum().item() == pytest.approx(1.0)
    probs = torch.tensor([[0.34, 0.33, 0.33], [0.34, 0.33, 0.33], [0.0, 0.51, 0.49]])
    assert load_balancing_loss(probs, probs.argmax(-1, keepdim=True), 3).item() < 1.0


def test_load_balancing_loss_gradient_flows_to_the_router_only_through_probabilities():
    moe = layer(n_expert=4, top_k=2)
    moe(torch.randn(2, 8, 16)).aux_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in moe.experts.parameters())


def test_load_balancing_loss_matches_transformers_mixtral():
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    logits = torch.randn(40, 8, generator=torch.Generator().manual_seed(1))
    probs, _, index = route(logits, 2)
    ours = load_balancing_loss(probs, index, 8)
    theirs = mixtral.load_balancing_loss_func((logits,), num_experts=8, top_k=2)
    torch.testing.assert_close(2 * ours, theirs)  # transformers does not divide by top_k


def test_moe_layer_matches_transformers_mixtral_block():
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    from transformers import MixtralConfig

    moe = layer(n_expert=4, top_k=2).double()
    hf = mixtral.MixtralSparseMoeBlock(MixtralConfig(hidden_size=16, intermediate_size=24, num_local_experts=4,
                                                     num_experts_per_tok=2, router_jitter_noise=0.0)).double()
    with torch.no_grad():
        hf.gate.weight.copy_(moe.router.weight)
        for e, expert in enumerate(moe.experts):  # gate_up_proj stacks (gate, up); Llama names: w1 gate, w3 up
            hf.experts.gate_up_proj[e].copy_(torch.cat([expert.w1.weight, expert.w3.weight]))
            hf.experts.down_proj[e].copy_(expert.w2.weight)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(moe(x).output, hf(x), atol=1e-6, rtol=1e-6)  # the router softmax runs in float32


@pytest.mark.parametrize("cfg", [SMALL, GPTConfig(vocab_size=64, block_size=16, n_layer=3, n_head=2, n_embd=16)],
                         ids=["swiglu-nobias", "gelu-bias"])
@pytest.mark.parametrize("n_expert, top_k", [(4, 1), (8, 2)])
def test_parameter_counts_match_the_module(cfg, n_expert, top_k):
    moe = MoE(cfg, MoEConfig(n_expert, top_k))
    count = layer_params(cfg, MoEConfig(n_expert, top_k))
    assert count.total == sum(p.numel() for p in moe.parameters())
    one_expert = sum(p.numel() for p in moe.experts[0].parameters())
    assert count.active == moe.router.weight.numel() + top_k * one_expert
    whole = model_params(cfg, MoEConfig(n_expert, top_k))
    from llmbook.model import GPT

    dense = GPT(cfg)
    mlp = sum(p.numel() for b in dense.blocks for p in b.mlp.parameters())
    assert whole.total == dense.num_params() - mlp + cfg.n_layer * count.total
    assert whole.active == dense.num_params() - mlp + cfg.n_layer * count.active


@pytest.mark.parametrize("n_expert, top_k", [(4, 1), (4, 2), (8, 3)])
def test_flop_count_matches_torch_flop_counter(n_expert, top_k):
    moe = layer(n_expert=n_expert, top_k=top_k)
    x = torch.randn(3, 10, 16)
    with FlopCounterMode(display=False) as counter:
        moe(x)
    assert counter.get_total_flops() == 30 * layer_flops_per_token(SMALL, MoEConfig(n_expert, top_k))


def test_mixtral_counts_match_the_paper():
    """Mixtral 8x7B: 47B parameters in total, 13B active per token [@jiang2024mixtral], as rounded in the paper."""
    count = model_params(*MIXTRAL_8X7B)
    assert count.total == pytest.approx(47e9, rel=0.015)
    assert count.active == pytest.approx(13e9, rel=0.015)


@pytest.mark.parametrize("kw, message", [(dict(n_expert=0), "n_expert must be a positive integer"),
                                         (dict(top_k=3, n_expert=2), "top_k=3 exceeds n_expert=2"),
                                         (dict(top_k=1.5), "top_k must be a positive integer")])
def test_config_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        MoEConfig(**kw)
