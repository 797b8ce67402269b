"""Knowledge distillation: the loss equals its definition through `torch.nn.functional.kl_div`, reduces to cross-entropy
without a teacher, and training a student on the teacher's soft targets lowers its KL to the teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from serve_fixtures import trained
from train_fixtures import synthetic_texts

from llmbook.model import GPT
from llmbook.serve.distill import DistillConfig, distillation_loss, token_batches, train_student


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (2.0, 0.9), (4.0, 1.0)])
def test_loss_equals_kl_div_definition(temperature, alpha):
    torch.manual_seed(0)
    s, t, y = torch.randn(2, 5, 11), torch.randn(2, 5, 11), torch.randint(0, 11, (2, 5))
    loss, parts = distillation_loss(s, t, y, temperature, alpha)
    kd = F.kl_div(F.log_softmax(s.reshape(-1, 11) / temperature, -1), F.log_softmax(t.reshape(-1, 11) / temperature, -1),
                  log_target=True, reduction="batchmean") * temperature**2
    ce = F.cross_entropy(s.reshape(-1, 11), y.reshape(-1))
    torch.testing.assert_close(loss, alpha * kd + (1 - alpha) * ce)
    assert parts["kd"] == pytest.approx(kd.item(), rel=1e-5)


def test_without_teacher_the_loss_is_cross_entropy():
    s, y = torch.randn(3, 7), torch.randint(0, 7, (3,))
    loss, parts = distillation_loss(s, None, y)
    torch.testing.assert_close(loss, F.cross_entropy(s, y))
    assert parts["kd"] == 0.0


def test_token_batches_are_deterministic_windows():
    ids = list(range(1000))
    a, b = token_batches(ids, 4, 16, seed=3), token_batches(ids, 4, 16, seed=3)
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, xa + 1)
    with pytest.raises(ValueError, match="tokens"):
        next(token_batches(list(range(10)), 2, 16))


def _kl_to_teacher(student, teacher, x):
    with torch.no_grad():
        return F.kl_div(F.log_softmax(student(x)[0], -1).flatten(0, 1), F.log_softmax(teacher(x)[0], -1).flatten(0, 1),
                        log_target=True, reduction="batchmean").item()


def test_distilled_student_is_closer_to_the_teacher_than_the_same_student_trained_on_labels():
    teacher, tok = trained()
    ids = [i for t in synthetic_texts(200, seed=9) for i in tok.encode(t).ids]
    held = next(token_batches(ids, 16, 32, seed=99))[0]
    students = {}
    for alpha in (0.0, 0.9):
        torch.manual_seed(0)
        student = GPT(teacher.config.__class__(**{**teacher.config.to_dict(), "n_layer": 1, "n_embd": 16}))
        config = DistillConfig(steps=40, lr=1e-2, warmup_steps=4, alpha=alpha, temperature=2.0)
        history = train_student(student, token_batches(ids, 8, 32, seed=0), config,
                                teacher=teacher if alpha else None)
        assert history[-1]["ce"] < history[0]["ce"]
        students[alpha] = _kl_to_teacher(student, teacher, held)
    assert students[0.9] < students[0.0]


def test_distill_config_and_vocab_checks():
    for bad in (dict(steps=0), dict(alpha=1.5), dict(temperature=0), dict(warmup_steps=300)):
        with pytest.raises(ValueError):
            DistillConfig(**bad)
    teacher, _ = trained()
    other = GPT(teacher.config.__class__(**{**teacher.config.to_dict(), "vocab_size": 99}))
    with pytest.raises(ValueError, match="vocab_size"):
        train_student(other, iter([]), DistillConfig(steps=1, warmup_steps=0), teacher=teacher)
    with pytest.raises(ValueError, match="ran out"):
        train_student(teacher, iter([]), DistillConfig(steps=1, warmup_steps=0))
