"""Decode cost accounting: FLOPs and bytes of prefill and decode steps follow the formulas of @sec-inference-decode,
and the measuring helpers run on any model (no timed assertions: speeds live in bench/serve.py)."""

from __future__ import annotations

import math

import pytest
import torch

from llmbook.model import GPT, GPTConfig
from llmbook.serve import roofline as rf


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)).eval()


def test_step_cost_formulas(model):
    c = model.config
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    one = rf.step_cost(model, batch=1, new_tokens=1, context=10)
    assert one.flops == 2 * linear + 4 * c.n_layer * c.n_embd * 10
    assert one.weight_bytes == 4 * linear
    assert one.kv_bytes == 2 * c.n_layer * c.n_kv_head * c.head_dim * 10 * 4
    # batching multiplies the FLOPs, not the weight bytes: intensity grows with the batch
    eight = rf.step_cost(model, batch=8, new_tokens=1, context=10)
    assert eight.weight_bytes == one.weight_bytes and eight.intensity > 5 * one.intensity
    # int8 weights are a quarter of the fp32 bytes
    assert rf.step_cost(model, 1, 1, 10, bytes_per_weight=1).weight_bytes == one.weight_bytes / 4


def test_machine_roofs_are_positive():
    assert math.isfinite(rf.peak_flops(n=128, repeats=1)) and rf.peak_flops(n=128, repeats=1) > 0
    assert rf.memory_bandwidth(mbytes=4, repeats=1) > 0


def test_timings_carry_their_costs(model):
    pre = rf.time_prefill(model, batch=2, length=16, repeats=1)
    dec = rf.time_decode(model, batch=2, context=16, repeats=1)
    assert pre.kind == "prefill" and pre.tokens == 16 and pre.cost == rf.step_cost(model, 2, 16, 16)
    assert dec.kind == "decode" and dec.tokens_per_s > 0 and dec.cost.intensity < pre.cost.intensity


@pytest.mark.parametrize("mode", ["concat", "slot", "static"])
def test_decode_speed_modes_run(model, mode):
    assert rf.decode_tokens_per_s(model, [1, 2, 3], 5, mode) > 0


def test_decode_speed_rejects_unknown_modes(model):
    with pytest.raises(ValueError, match="mode"):
        rf.decode_tokens_per_s(model, [1], 2, "warp")
