"""Knowledge distillation: train a small student on a teacher's softened next-token distributions
(@sec-inference-distill).

Hinton et al. [@hinton2015distilling] train the student to match the teacher's probabilities at temperature
T, softmax(z / T), which carry how the teacher ranks *wrong* answers too ("dark knowledge"), as well as the
data's one-hot labels:

    loss = alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * CE(labels, p_student)

The T^2 keeps the soft term's gradient on the same scale as the hard term's when T changes. With alpha = 0
and no teacher, `train_student` is ordinary language-model training, the baseline that distillation must beat
on the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
import dataclasses
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from llmbook.model import GPT, GPTConfig
from llmbook.train.config import OptimConfig
from llmbook.train.optim import lr_at, set_lr


@dataclass(frozen=True)
class DistillConfig:
    """Student training settings; alpha = 0 trains on the labels only (the no-teacher baseline)."""

    steps: int = 200
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    temperature: float = 1.0
    alpha: float = 0.9
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps <= 0:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not self.lr > 0 or not self.temperature > 0:
            raise ValueError(f"lr and temperature must be positive, got lr={self.lr!r}, temperature={self.temperature!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def make_student(teacher: GPTConfig, n_layer: int, n_head: int, n_embd: int, seed: int = 0) -> GPT:
    """A smaller GPT with the teacher's vocabulary, context and block design, freshly initialised from `seed`."""
    config = dataclasses.replace(teacher, n_layer=n_layer, n_head=n_head, n_kv_head=None, n_embd=n_embd,
                                 mlp_hidden=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(config)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, temperature: float = 1.0,
                      alpha: float = 0.9) -> tuple[Tensor, dict[str, float]]:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE, averaged over tokens; also returns both terms."""
    v = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, v)
    ce = F.cross_entropy(s, targets.reshape(-1))
    if teacher_logits is None or alpha == 0:
        return ce, {"ce": ce.item(), "kd": 0.0}
    t = teacher_logits.float().reshape(-1, v)
    log_p_teacher = F.log_softmax(t / temperature, dim=-1)
    log_p_student = F.log_softmax(s / temperature, dim=-1)
    kd = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean() * temperature**2
    return alpha * kd + (1 - alpha) * ce, {"ce": ce.item(), "kd": kd.item()}


def train_student(student: GPT, batches: Iterable[tuple[Tensor, Tensor]], config: DistillConfig,
                  teacher: GPT | None = None, log: Callable[[dict], None] | None = None) -> list[dict]:
    """Train `student` in place for `config.steps` batches (AdamW, warmup then cosine); returns the loss history."""
    if teacher is not None and teacher.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"teacher vocab_size={teacher.config.vocab_size} != student vocab_size="
                         f"{student.config.vocab_size}: distillation needs the same tokenizer")
    device = next(student.parameters()).device
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    schedule = OptimConfig(lr=config.lr, min_lr=0.1 * config.lr, warmup_steps=config.warmup_steps, schedule="cosine")

    if teacher is not None:
        teacher.eval()
    student.train()
    history = []
    for step, (x, y) in zip(range(config.steps), batches):
        x, y = x.to(device), y.to(device)
        set_lr(opt, lr_at(step, schedule, config.steps))
        teacher_logits = None
        if teacher is not None and config.alpha > 0:
            with torch.no_grad():
                teacher_logits = teacher(x)[0]
        logits, _ = student(x)
        loss, parts = distillation_loss(logits, teacher_logits, y, config.temperature, config.alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), config.grad_clip)
        opt.step()
        record = {"step": step + 1, "loss": loss.item(), **parts}
        history.append(record)
        if log is not None:
            log(record)
    if len(history) < config.steps:
        raise ValueError(f"the batches ran out after {len(history)} of {config.steps} steps")
    student.eval()
    return history


def token_batches(ids: list[int] | Tensor, batch_size: int, block_size: int, seed: int = 0
                  ) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless (x, y) batches of random `block_size` windows of a token stream, y shifted by one; seeded, so the
    student with and without a teacher see the same tokens in the same order."""
    data = torch.as_tensor(ids, dtype=torch.long)
    if data.numel() <= block_size + 1:
        raise ValueError(f"need more than {block_size + 1} tokens to cut windows, got {data.numel()}")
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(block_size + 1)
    while True:
        starts = torch.randint(0, data.numel() - block_size - 1, (batch_size,), generator=gen)
        windows = data[starts[:, None] + offsets]
        yield windows[:, :-1], windows[:, 1:]
