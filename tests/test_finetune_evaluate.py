"""Evaluation helpers, measured memory and streaming: batched completion stops where it should and equals
token-by-token decoding, win rates and paired differences count as specified, and LoRA's measured training
memory is below full fine-tuning's."""

from __future__ import annotations

import pytest
import torch

from llmbook.finetune.evaluate import accuracy, complete, paired_difference, win_rate
from llmbook.finetune.interactive import stream
from llmbook.finetune.lora import LoRAConfig, apply_lora
from llmbook.finetune.memory import measure_training_memory
from llmbook.finetune.synthetic import Item
from llmbook.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()


def test_complete_matches_one_prompt_at_a_time_and_cuts_at_stop(model):
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    batched = complete(model, prompts, 6, stop_ids=[])
    for p, out in zip(prompts, batched):
        single = model.generate(torch.tensor([p]), 6, temperature=0.0)[0, len(p):].tolist()
        assert out == single
    stop = batched[0][2]
    cut = complete(model, prompts[:1], 6, stop_ids=[stop])[0]
    assert cut == batched[0][:batched[0].index(stop) + 1]


def test_stream_yields_the_greedy_continuation(model):
    greedy = complete(model, [[1, 2, 3]], 5, stop_ids=[])[0]
    assert list(stream(model, [1, 2, 3], 5, stop_ids=[], temperature=0.0)) == greedy
    stop = greedy[1]
    assert list(stream(model, [1, 2, 3], 5, stop_ids=[stop], temperature=0.0)) == greedy[:greedy.index(stop)]
    assert len(list(stream(model, list(range(30)), 10, stop_ids=[], temperature=0.0))) == 2  # the context ends


def test_win_rate_and_paired_difference():
    wins = win_rate([2.0, 1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 0.0])
    assert wins.value == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert wins.ci_low <= wins.value <= wins.ci_high
    diff = paired_difference([1, 1, 0, 1], [0, 1, 0, 0])
    assert diff.value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal lengths"):
        win_rate([1.0], [])


def test_accuracy_by_family():
    items = [Item("add", "What is 1 + 1?", "2"), Item("add", "What is 2 + 2?", "4"), Item("sub", "What is 3 - 1?", "2")]
    acc = accuracy(items, ["2", " 5 ", "2"])
    assert acc.correct == (1.0, 0.0, 1.0) and acc.by_family["add"].value == 0.5 and acc.by_family["sub"].value == 1
    with pytest.raises(ValueError, match="3 items but 2 answers"):
        accuracy(items, ["2", "4"])


def test_lora_needs_less_training_memory_than_full_fine_tuning(model):
    x = torch.randint(0, 40, (4, 16))
    full = measure_training_memory(model, x, x)
    adapted = GPT(model.config)
    adapted.load_state_dict(model.state_dict())
    apply_lora(adapted, LoRAConfig(r=2))
    small = measure_training_memory(adapted, x, x)
    n_params = sum(p.numel() for p in model.parameters())
    assert full.gradients == 4 * n_params and full.optimizer >= 2 * 4 * n_params  # fp32 grads, two AdamW moments
    assert small.gradients < full.gradients / 5 and small.optimizer < full.optimizer / 5
    assert full.activations > 0 and small.total < full.total
    qlora = GPT(model.config)
    qlora.load_state_dict(model.state_dict())
    apply_lora(qlora, LoRAConfig(r=2, quantize="nf4", blocksize=32))
    assert measure_training_memory(qlora, x, x).weights < small.weights
