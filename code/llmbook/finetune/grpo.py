"""Reinforcement learning with verifiable rewards: GRPO [@shao2024deepseekmath] (@sec-finetune-grpo).

For each prompt the policy samples a group of G answers; a checker scores each (1 right, 0 wrong); an answer's
advantage is its reward minus the group mean, divided by the group's standard deviation, so no value model is
needed. Each answer token then gets PPO's clipped surrogate [@schulman2017ppo] with that advantage, minus beta
times an estimate of the KL divergence to the reference (SFT) model. The rollout loader samples with the current
policy and hands the trainer batches like any other loader; `iterations > 1` reuses a batch for several steps, which
is when the probability ratio moves away from 1 and the clipping matters.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from llmbook.finetune.chat import ChatFormat
from llmbook.finetune.config import GRPOConfig
from llmbook.finetune.data import IGNORE, Example, pad_batch
from llmbook.finetune.evaluate import complete, decode
from llmbook.finetune.synthetic import Item, reward


def group_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """(r - mean of its group) / (std of its group + eps) for rewards shaped (prompts, group); 0 for uniform groups."""
    return (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + eps)


def token_logps(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> Tensor:
    """log p(target) at every position (B, T) under softmax(logits / temperature), the distribution the answers
    were sampled from; 0 where the target is IGNORE."""
    mask = targets != IGNORE
    logps = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logps.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask


def grpo_loss(logps: Tensor, old_logps: Tensor, ref_logps: Tensor, advantages: Tensor, mask: Tensor, clip: float,
              kl: float) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO objective: per token -min(ratio A, clip(ratio) A) + kl * KL_k3, averaged over each answer's tokens,
    then over answers. KL_k3 = exp(ref - logp) - (ref - logp) - 1 is an unbiased, positive estimate of KL(pi || ref)."""
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    log_r = ref_logps - logps
    kl_t = torch.exp(log_r) - log_r - 1
    per_token = (-surrogate + kl * kl_t) * mask
    n = mask.sum(dim=1).clamp_min(1)
    loss = (per_token.sum(dim=1) / n).mean()
    clipped = ((ratio - 1).abs() > clip) & mask.bool()
    total = mask.sum().clamp_min(1)
    return loss, {"kl": (kl_t * mask).sum().detach() / total, "clip_fraction": clipped.sum().float() / total}


class GRPOObjective:
    """The trainer objective: x = ids (N, T-1); y = targets, advantages, old and reference log-probs, rewards."""

    def __init__(self, clip: float = 0.2, kl: float = 0.04, temperature: float = 1.0) -> None:
        self.clip, self.kl, self.temperature = clip, kl, temperature

    def __call__(self, module: nn.Module, x: Tensor, y: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        logps = token_logps(module(x)[0], y["targets"], self.temperature)
        mask = (y["targets"] != IGNORE).float()
        old = y.get("old_logps")  # absent when each rollout is used once: the sampling policy is this one (as TRL)
        old = logps.detach() if old is None else old
        loss, metrics = grpo_loss(logps, old, y["ref_logps"], y["advantages"], mask, self.clip, self.kl)
        return loss, {**metrics, "reward": y["rewards"].mean(), "completion_tokens": mask.sum(1).mean()}


@torch.no_grad()
def per_token_logps(model: nn.Module, x: Tensor, targets: Tensor, temperature: float = 1.0,
                    precision: str = "fp32") -> Tensor:
    """`token_logps` of a model in eval mode without gradients, under the training run's `precision`."""
    from llmbook.finetune.base import autocast

    was = model.training
    model.eval()
    with autocast(x.device.type, precision):
        logits = model(x)[0]
    model.train(was)
    return token_logps(logits, targets, temperature)


class RolloutLoader:
    """Batches of sampled, scored answers for the trainer: `batch_size` prompts x `group_size` samples each.

    A batch is used for `iterations` optimizer steps before new answers are sampled. The state (how many batches
    were drawn, and the batch in use with how often it was used) resumes the prompt order, the sampling seeds and a
    batch interrupted between its steps, so a resumed run continues as the uninterrupted one would.
    """

    def __init__(self, policy: nn.Module, reference: nn.Module, fmt: ChatFormat, tokenizer: Any, items: Sequence[Item],
                 cfg: GRPOConfig, pad_id: int, seed: int = 0, precision: str = "fp32") -> None:
        self.policy, self.reference, self.fmt, self.tokenizer = policy, reference.eval(), fmt, tokenizer
        self.items, self.cfg, self.pad_id, self.seed, self.precision = list(items), cfg, pad_id, seed, precision
        self.stop_ids = fmt.stop_ids(tokenizer)
        self.drawn, self.uses = 0, 0
        self.batch: tuple[Tensor, dict[str, Tensor]] | None = None

    def next_batch(self) -> tuple[Tensor, dict[str, Tensor]]:
        if self.batch is None or self.uses >= self.cfg.iterations:
            self.batch, self.uses = self.rollout(self.drawn), 0
            self.drawn += 1
        self.uses += 1
        return self.batch

    def rollout(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Sample `group_size` answers to each of `batch_size` prompts, score them and compute advantages."""
        cfg = self.cfg
        prompts = random.Random(f"{self.seed}-{index}").sample(self.items, cfg.batch_size)
        device = next(self.policy.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + index)
        prompt_ids = [self.fmt.encode(self.tokenizer, item.messages(with_answer=False), add_generation_prompt=True)[0]
                      for item in prompts for _ in range(cfg.group_size)]
        answers = complete(self.policy, prompt_ids, cfg.max_new_tokens, self.stop_ids, cfg.temperature, generator,
                           pad_id=self.pad_id)
        rewards = torch.tensor([reward(item, decode(self.tokenizer, ans, self.stop_ids))
                                for item, ans in zip((i for i in prompts for _ in range(cfg.group_size)), answers)])
        advantages = group_advantages(rewards.view(cfg.batch_size, cfg.group_size)).flatten()
        examples = [Example(tuple(p + a), (0,) * len(p) + (1,) * len(a)) for p, a in zip(prompt_ids, answers)]
        x, targets = pad_batch(examples, self.pad_id)
        x, targets = x.to(device), targets.to(device)
        y = {"targets": targets, "advantages": advantages.to(device), "rewards": rewards.to(device),
             "ref_logps": per_token_logps(self.reference, x, targets, cfg.temperature, self.precision)}
        if cfg.iterations > 1:  # the steps after the first on this batch need the sampling policy's log-probs
            y["old_logps"] = per_token_logps(self.policy, x, targets, cfg.temperature, self.precision)
        return x, y

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"drawn": self.drawn, "seed": self.seed, "uses": self.uses}
        if self.batch is not None and self.uses < self.cfg.iterations:  # steps left on it: saved with the trainer
            state["batch"] = self.batch
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drawn, self.seed = state["drawn"], state["seed"]
        self.batch, self.uses = state.get("batch"), state.get("uses", 0) if "batch" in state else 0
