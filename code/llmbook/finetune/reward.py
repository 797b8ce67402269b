"""A reward model: the chat model's trunk with a scalar head, trained on preference pairs with the Bradley-Terry
loss -log sigmoid(r(chosen) - r(rejected)) [@ouyang2022instructgpt] (@sec-finetune-reward).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmbook.finetune.data import EncodedPair, Example
from llmbook.model import GPT


class RewardModel(nn.Module):
    """r(conversation) = w . h_last + b: the final hidden state (after the last norm) of the last token, projected.

    The language-model head is replaced by the identity, so `gpt(ids)` returns hidden states.
    """

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = copy.deepcopy(gpt)
        self.gpt.lm_head = nn.Identity()
        self.head = nn.Linear(gpt.config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1 / (gpt.config.n_embd + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.gpt.blocks

    def forward(self, idx: Tensor, last: Tensor) -> Tensor:
        """Rewards (B,) of token ids (B, T), read at position `last` (B,) of each row (right padding ignored)."""
        hidden, _ = self.gpt(idx)
        return self.head(hidden[torch.arange(idx.shape[0], device=idx.device), last]).squeeze(-1)


def bradley_terry_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected): the negative log-likelihood of the human preferences."""
    return -F.logsigmoid(chosen - rejected).mean()


class RewardObjective:
    """The trainer objective: x = ids (2B, T) with the chosen rows first, y = {"last": (2B,)} (@sec-finetune-reward)."""

    def __call__(self, module: nn.Module, x: Tensor, y: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        rewards = module(x, y["last"])
        chosen, rejected = rewards.float().chunk(2)
        loss = bradley_terry_loss(chosen, rejected)
        return loss, {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean().detach()}


def pair_batch(pairs: Sequence[EncodedPair], pad_id: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Right-padded ids (2B, T) of the chosen then the rejected sequences, and each row's last index."""
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    t = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r.ids)] = torch.tensor(r.ids)
    return ids, {"last": torch.tensor([len(r.ids) - 1 for r in rows])}


@torch.no_grad()
def score(model: RewardModel, examples: Sequence[Example], pad_id: int, batch_size: int = 32) -> list[float]:
    """Rewards of encoded conversations (prompt + response), in batches, in eval mode."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        t = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), t), pad_id, dtype=torch.long)
        for j, e in enumerate(chunk):
            ids[j, :len(e.ids)] = torch.tensor(e.ids)
        last = torch.tensor([len(e.ids) - 1 for e in chunk])
        out += model(ids.to(device), last.to(device)).float().tolist()
    model.train(was)
    return out


def pairwise_accuracy(model: RewardModel, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int = 32
                      ) -> list[float]:
    """Per pair: 1 if the model scores the chosen response higher, 0.5 on a tie, else 0 (for an interval)."""
    chosen = score(model, [p.chosen for p in pairs], pad_id, batch_size)
    rejected = score(model, [p.rejected for p in pairs], pad_id, batch_size)
    return [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)]


def score_responses(model: RewardModel, fmt, tokenizer, prompts: Sequence[list[dict[str, str]]],
                    responses: Sequence[str], pad_id: int, max_prompt: int, max_response: int) -> list[float]:
    """The reward model's score of each response to its prompt, encoded as in training (@sec-finetune-eval)."""
    from llmbook.finetune.data import encode_response

    examples = []
    for prompt, response in zip(prompts, responses, strict=True):
        p, r = encode_response(fmt, tokenizer, prompt, response)
        ids = p[-max_prompt:] + r[:max_response]
        examples.append(Example(tuple(ids), (0,) * len(ids)))
    return score(model, examples, pad_id)
