"""The extraction test of @sec-applications-memorization on a model that has memorised one text exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmbook.eval import memorization as mem
from llmbook.eval.models import CausalLM

SECRET = list(range(1, 41))  # the memorised token sequence


class LookupLM(CausalLM):
    """Predicts the token that follows the last one in SECRET (a perfect memoriser of that one text);
    anywhere else it predicts token 0."""

    def __init__(self, fast: bool):
        super().__init__(lambda s: [int(t) for t in s.split()], lambda ids: " ".join(map(str, ids)), eot_id=99,
                         max_length=64)
        self.fast = fast

    def logits(self, ids):
        out = torch.full((*ids.shape, 100), -10.0)
        for b in range(ids.shape[0]):
            for t in range(ids.shape[1]):
                tok = int(ids[b, t])
                nxt = tok + 1 if 1 <= tok < 40 else 0
                out[b, t, nxt] = 10.0
        return out

    def greedy_ids(self, ids, max_tokens, stop=()):
        # the fast path of a backend that stopped at end-of-text: too short, so the test decodes token by token
        return [] if self.fast else None


@pytest.mark.parametrize("fast", [False, True])
def test_training_text_is_extracted_and_other_text_is_not(fast):
    lm = LookupLM(fast)
    train = [" ".join(map(str, SECRET))]
    other = [" ".join(map(str, [50 + (i % 30) for i in range(40)]))]
    got = mem.extraction_test(lm, train, prefix=10, suffix=8)
    assert len(got) == 1 and got[0].exact and got[0].matched == 8 and got[0].generated == SECRET[10:18]
    miss = mem.extraction_test(lm, other, prefix=10, suffix=8)
    assert not miss[0].exact and miss[0].matched == 0


def test_partial_matches_and_short_texts():
    lm = LookupLM(False)
    text = " ".join(map(str, SECRET[:15] + [77, 78, 79, 80, 81]))  # memorised for 5 tokens after the prefix
    r = mem.extraction_test(lm, [text, "1 2 3"], prefix=10, suffix=8)
    assert len(r) == 1  # the 3-token text is too short and skipped
    assert r[0].matched == 5 and not r[0].exact
    s = mem.summarize_extractions(r + mem.extraction_test(lm, [" ".join(map(str, SECRET))], 10, 8), iters=200)
    assert (s.n, s.exact) == (2, 1) and s.exact_rate[0] == 0.5 and s.matched_tokens.value == pytest.approx(6.5)
    with pytest.raises(ValueError):
        mem.extraction_test(lm, [text], prefix=60, suffix=8)
    with pytest.raises(ValueError):
        mem.summarize_extractions([])


def test_occurrences_count_documents():
    assert mem.occurrences(["once upon", "dragon"], ["once upon a time", "once upon a hill", "a cat"]).tolist() == [2, 0]


def test_book_model_fast_path_agrees_with_the_slow_loop():
    from llmbook.eval.models import LLMBookLM
    from llmbook.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16))
    lm = LLMBookLM(model, tokenizer=_Ids(), eot_id=49)
    ids = list(np.random.default_rng(0).integers(0, 49, 10))
    fast = mem.greedy_continuation(lm, ids, 6)
    slow = [int(t) for t in _slow(lm, ids, 6)]
    assert fast == slow


class _Ids:
    def encode(self, s):
        return [int(t) for t in s.split()]

    def decode(self, ids):
        return " ".join(map(str, ids))


def _slow(lm, ids, n):
    out = []
    for _ in range(n):
        out.append(int(lm.next_token_logits(ids + out).argmax()))
    return out
