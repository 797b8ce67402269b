"""Pruning: masks equal PyTorch's own pruning utilities, sparsity is what was asked, and 2:4 keeps two of every four."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as torch_prune

from serve_fixtures import trained

from llmbook.serve.prune import magnitude_mask, n_m_mask, prune_model, sparsity_of


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_mask_equals_torch_l1_unstructured(sparsity):
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 32)
    ours = magnitude_mask(lin.weight, sparsity)
    torch_prune.l1_unstructured(lin, "weight", amount=sparsity)
    assert torch.equal(ours, lin.weight_mask.bool())


def test_two_four_mask_equals_torch_ao_weight_norm_sparsifier():
    from torch.ao.pruning import WeightNormSparsifier

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    w = model[0].weight.detach().clone()
    sparsifier = WeightNormSparsifier(sparsity_level=1.0, sparse_block_shape=(1, 4), zeros_per_block=2)
    sparsifier.prepare(model, [{"tensor_fqn": "0.weight"}])
    sparsifier.step()
    peer = model[0].parametrizations.weight[0].mask.bool()
    ours = n_m_mask(w)
    assert torch.equal(ours, peer)
    assert (ours.reshape(16, 8, 4).sum(-1) == 2).all()


def test_prune_model_reaches_the_asked_sparsity_and_keeps_the_head():
    model, _ = trained()
    head = model.lm_head.weight.clone()
    achieved = prune_model(model, "magnitude", 0.6)
    assert all(abs(s - 0.6) < 0.01 for s in achieved.values())
    assert abs(sparsity_of(model) - 0.6) < 0.01 and torch.equal(model.lm_head.weight, head)
    model, _ = trained()
    prune_model(model, "2:4")
    assert sparsity_of(model) == 0.5


@pytest.mark.parametrize("kwargs", [dict(method="random"), dict(sparsity=1.0), dict(sparsity=-0.1)])
def test_prune_rejects_bad_settings(kwargs):
    model, _ = trained()
    with pytest.raises(ValueError):
        prune_model(model, **{"method": "magnitude", "sparsity": 0.5, **kwargs})


def test_n_m_mask_rejects_widths_not_divisible_by_m():
    with pytest.raises(ValueError, match="multiple"):
        n_m_mask(torch.randn(4, 6))
