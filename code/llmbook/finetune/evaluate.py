"""Evaluation before and after each stage, with the evaluation chapter's statistics (@sec-finetune-eval):
task accuracy on held-out synthetic items, win rates under a judge, and the alignment tax in bits per byte.
Every number comes with a 95% bootstrap interval (`llmbook.eval.harness.summarize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from llmbook.eval.harness import MetricValue, paired_difference, summarize  # noqa: F401 (re-exported)
from llmbook.finetune.chat import ChatFormat, encode_text, special_tokens
from llmbook.finetune.synthetic import Item, check
from llmbook.model import left_pad


@torch.no_grad()
def complete(model: nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int],
             temperature: float = 0.0, generator: torch.Generator | None = None, pad_id: int = 0,
             batch_size: int = 64) -> list[list[int]]:
    """The tokens each prompt is continued with, up to and including the first stop id (greedy at temperature 0).

    Prompts are left-padded into batches and decoded with the KV cache (`GPT.generate`); with learned position
    embeddings the answer is cut where the context ends.
    """
    device = next(model.parameters()).device
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[i:i + batch_size]]
        idx, mask = left_pad(chunk, pad_id)
        room = model.config.block_size - idx.shape[1] if model.config.pos_emb == "learned" else max_new_tokens
        if room <= 0:
            raise ValueError(f"a prompt of {idx.shape[1]} tokens leaves no room in a context of "
                             f"{model.config.block_size}")
        tokens = model.generate(idx.to(device), min(max_new_tokens, room), temperature=temperature,
                                stop=list(stop_ids), generator=generator, attention_mask=mask.to(device))
        for row in tokens[:, idx.shape[1]:].tolist():
            cut = next((j for j, t in enumerate(row) if t in stop_ids), None)
            out.append(row if cut is None else row[:cut + 1])
    return out


def decode(tokenizer: Any, ids: Sequence[int], stop_ids: Sequence[int] = ()) -> str:
    """Text of an answer, without its stop token (special tokens inside it are dropped)."""
    ids = [i for i in ids if i not in stop_ids]
    if hasattr(tokenizer, "get_added_tokens_decoder"):
        return tokenizer.decode(ids, skip_special_tokens=True)
    specials = set(special_tokens(tokenizer).values())
    return tokenizer.decode([i for i in ids if i not in specials])


def chat_answers(model: nn.Module, tokenizer: Any, fmt: ChatFormat, conversations: Sequence[list[dict[str, str]]],
                 max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0, max_prompt: int | None = None
                 ) -> list[str]:
    """The model's answers to chat prompts (each ends with a user turn), greedy unless `temperature` > 0."""
    stop = fmt.stop_ids(tokenizer)
    prompts = [fmt.encode(tokenizer, c, add_generation_prompt=True)[0] for c in conversations]
    if max_prompt:
        prompts = [p[-max_prompt:] for p in prompts]
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    ids = complete(model, prompts, max_new_tokens, stop, temperature, gen, pad_id=stop[0])
    return [decode(tokenizer, a, stop) for a in ids]


def plain_completions(model: nn.Module, tokenizer: Any, texts: Sequence[str], eos_id: int, max_new_tokens: int = 32,
                      stop: str = "\n\n", max_prompt: int | None = None) -> list[str]:
    """A base model's greedy continuations of plain-text prompts (no chat tokens), cut at `stop` or end of text;
    prompts keep their last `max_prompt` tokens."""
    prompts = [encode_text(tokenizer, t)[-max_prompt if max_prompt else 0:] for t in texts]
    ids = complete(model, prompts, max_new_tokens, [eos_id], pad_id=eos_id)
    return [decode(tokenizer, a, [eos_id]).split(stop)[0].strip() for a in ids]


def plain_answers(model: nn.Module, tokenizer: Any, items: Sequence[Item], eos_id: int, max_new_tokens: int = 24
                  ) -> list[str]:
    """A base model's answers without a chat format: the prompt 'Question: ...\nAnswer:', up to a blank line."""
    return [a.split("\nQuestion:")[0].strip() for a in plain_completions(
        model, tokenizer, [f"Question: {i.prompt}\nAnswer:" for i in items], eos_id, max_new_tokens)]


@dataclass(frozen=True)
class Accuracy:
    """Task accuracy with its interval, overall and per family, and the per-item results (for paired tests)."""

    overall: MetricValue
    by_family: dict[str, MetricValue]
    correct: tuple[float, ...]
    answers: tuple[str, ...]


def accuracy(items: Sequence[Item], answers: Sequence[str], iters: int = 1000) -> Accuracy:
    """Check each answer against its item and summarise (mean, stderr, 95% bootstrap interval)."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    correct = [float(check(i, a)) for i, a in zip(items, answers)]
    families = sorted({i.family for i in items})
    by = {f: summarize([c for i, c in zip(items, correct) if i.family == f], iters) for f in families}
    return Accuracy(summarize(correct, iters), by, tuple(correct), tuple(answers))


def task_accuracy(model: nn.Module, tokenizer: Any, fmt: ChatFormat, items: Sequence[Item],
                  max_new_tokens: int = 24) -> Accuracy:
    """Greedy chat answers to held-out items, checked (@sec-finetune-eval)."""
    return accuracy(items, chat_answers(model, tokenizer, fmt, [i.messages(with_answer=False) for i in items],
                                        max_new_tokens))


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], iters: int = 1000) -> MetricValue:
    """How often a's answer beats b's on the same prompt under a judge's scores (a tie counts one half)."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"win rates need equal lengths, got {len(scores_a)} and {len(scores_b)}")
    return summarize([1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(scores_a, scores_b)], iters)


def bits_per_byte(model: nn.Module, tokenizer: Any, texts: Sequence[str], eos_id: int, batch_size: int = 16):
    """Bits per byte of held-out text under `model` (`llmbook.eval.perplexity`): the alignment tax's yardstick."""
    from llmbook.eval.models import LLMBookLM
    from llmbook.eval.perplexity import perplexity

    device = str(next(model.parameters()).device)
    return perplexity(LLMBookLM(model, tokenizer, eot_id=eos_id, batch_size=batch_size, device=device), list(texts))
