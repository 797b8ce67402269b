"""Dense retrieval: a bi-encoder made from the book's language model, trained contrastively on paraphrase
pairs with in-batch negatives (@sec-applications-dense).

A sentence embedding is the mean of the model's final hidden states over the text's tokens, scaled to unit
length, so an inner product is a cosine similarity. Training pulls the two sentences of a paraphrase pair
together and pushes each away from the other sentences of the batch (InfoNCE, as in DPR [@karpukhin2020dpr]
and SimCSE [@gao2021simcse]).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.progress import progress_bar


class BiEncoder(nn.Module):
    """Mean-pooled, L2-normalised hidden states of a `llmbook.model.GPT` as text embeddings.

    Texts are right-padded; with causal attention a real token never attends to the padding after it, and
    the mean runs over real tokens only, so padding changes no embedding.
    """

    def __init__(self, model: nn.Module, tokenizer, max_tokens: int | None = None, pad_id: int = 0):
        super().__init__()
        self.model, self.tokenizer, self.pad_id = model, tokenizer, pad_id
        self.max_tokens = min(max_tokens or model.config.block_size, model.config.block_size)

    def token_ids(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids[: self.max_tokens]
        return ids or [self.pad_id]  # an empty text embeds as the padding token

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded token ids (B, T) and the mask of real tokens."""
        rows = [self.token_ids(t) for t in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        return ids, mask

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        h = self.model.hidden_states(ids)
        m = mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-length float32 embeddings (n, n_embd), computed in batches of similar length."""
        was_training = self.training
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.model.config.n_embd), dtype=np.float32)
        for a in range(0, len(order), batch_size):
            idx = order[a : a + batch_size]
            out[idx] = self(*self.batch([texts[i] for i in idx])).float().cpu().numpy()
        self.train(was_training)
        return out


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` must pick row i of `b` among all rows of `b`, and vice versa."""
    logits = a @ b.T / temperature
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


@dataclass(frozen=True)
class ContrastiveConfig:
    """Settings of `train_contrastive`; temperature 0.05 as in SimCSE."""

    steps: int = 150
    batch_size: int = 64
    lr: float = 1e-3
    temperature: float = 0.05
    warmup_steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"need steps >= 1 and batch_size >= 2 (in-batch negatives), got {self.steps}, "
                             f"{self.batch_size}")
        if not self.temperature > 0 or not self.lr > 0:
            raise ValueError(f"temperature and lr must be > 0, got {self.temperature}, {self.lr}")


def train_contrastive(encoder: BiEncoder, pairs: Sequence[tuple[str, str]], config: ContrastiveConfig = ContrastiveConfig(),
                      log: Callable[[dict], None] | None = None) -> list[float]:
    """Fine-tune the encoder on (text, paraphrase) pairs; returns the loss of every step.

    Batches are drawn without replacement from a seeded shuffle (reshuffled each epoch); the learning rate
    warms up linearly and then follows a cosine to zero.
    """
    if len(pairs) < config.batch_size:
        raise ValueError(f"{len(pairs)} pairs are fewer than one batch of {config.batch_size}")
    rng = np.random.default_rng(config.seed)
    opt = torch.optim.AdamW(encoder.model.parameters(), lr=config.lr, weight_decay=0.0)
    encoder.train()
    order, pos, losses = rng.permutation(len(pairs)), 0, []
    for step in progress_bar(range(config.steps), desc="contrastive", unit="step"):
        if pos + config.batch_size > len(order):
            order, pos = rng.permutation(len(pairs)), 0
        chosen = [pairs[i] for i in order[pos : pos + config.batch_size]]
        pos += config.batch_size
        warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
        lr = config.lr * warm * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        a = encoder(*encoder.batch([p[0] for p in chosen]))
        b = encoder(*encoder.batch([p[1] for p in chosen]))
        loss = info_nce(a, b, config.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log is not None:
            log({"step": step + 1, "loss": losses[-1], "lr": lr})
    encoder.eval()
    return losses


def read_mrpc(path: str | Path) -> list[tuple[int, str, str]]:
    """MRPC's TSV with its header: (label, sentence 1, sentence 2), label 1 = paraphrase.

    The file starts with a byte-order mark, in the book's copy one that was itself re-encoded as UTF-8
    ('ï»¿'); both forms are skipped. The sentences are Penn-Treebank tokenised with `<QUOTE>` for quotation marks; those become '"'.
    """
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().lstrip("\ufeff").removeprefix("\u00ef\u00bb\u00bf").rstrip("\r\n").split("\t")
        if header[:1] != ["Quality"]:
            raise ValueError(f"{path}: line 1 is not the MRPC header (Quality, #1 ID, #2 ID, #1 String, #2 String)")
        for n, line in enumerate(f, start=2):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != 5 or fields[0] not in ("0", "1"):
                raise ValueError(f"{path}: line {n}: expected 5 tab-separated fields with Quality 0 or 1")
            s1, s2 = (s.replace("<QUOTE>", '"') for s in fields[3:])
            rows.append((int(fields[0]), s1, s2))
    return rows
