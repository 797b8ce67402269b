"""Direct preference optimisation [@rafailov2023dpo] and its IPO variant [@azar2024ipo] (@sec-finetune-dpo).

DPO trains the policy directly on preference pairs: with log-ratios rho = log pi(y|x) - log pi_ref(y|x), the loss is
-log sigmoid(beta (rho_chosen - rho_rejected)), and beta * rho is the *implicit reward* the policy assigns. IPO
replaces the log-sigmoid by a squared distance to a target margin 1 / (2 beta) on the per-token log-ratios, which
stops the margin from growing without bound once the data are separated. Reference log-probabilities come from the
starting (SFT) model and are computed once, before training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmbook.finetune.data import IGNORE, EncodedPair, pad_batch


def sequence_logps(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of log p(target) over the positions whose target is not IGNORE, and how many there are; (B,) each."""
    mask = targets != IGNORE
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(-1), mask.sum(-1)


def dpo_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float,
             loss: str = "dpo", n_chosen: Tensor | None = None, n_rejected: Tensor | None = None
             ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair losses and the implicit rewards beta * (log pi - log pi_ref) of the chosen and rejected responses.

    'dpo': -log sigmoid(beta * (rho_c - rho_r)). 'ipo': ((rho_c / n_c - rho_r / n_r) - 1 / (2 beta))^2 with the
    log-ratios averaged over each response's tokens, as TRL computes it (the squared loss otherwise grows with length).
    """
    rho_c, rho_r = chosen - ref_chosen, rejected - ref_rejected
    if loss == "dpo":
        losses = -F.logsigmoid(beta * (rho_c - rho_r))
    elif loss == "ipo":
        if n_chosen is None or n_rejected is None:
            raise ValueError("the IPO loss needs the number of response tokens (n_chosen, n_rejected)")
        losses = (rho_c / n_chosen.clamp_min(1) - rho_r / n_rejected.clamp_min(1) - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"loss={loss!r} is not one of ('dpo', 'ipo')")
    return losses, beta * rho_c.detach(), beta * rho_r.detach()


class DPOObjective:
    """The trainer objective for DPO/IPO: x = ids (2B, T), chosen rows first; y = targets and reference log-probs."""

    def __init__(self, beta: float = 0.1, loss: str = "dpo") -> None:
        if loss not in ("dpo", "ipo"):
            raise ValueError(f"loss={loss!r} is not one of ('dpo', 'ipo')")
        self.beta, self.loss = beta, loss

    def __call__(self, module: nn.Module, x: Tensor, y: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        logits, _ = module(x)
        logps, counts = sequence_logps(logits, y["targets"])
        (chosen, rejected), (n_c, n_r) = logps.chunk(2), counts.chunk(2)
        ref_c, ref_r = y["ref"].float().unbind(-1)
        losses, r_c, r_r = dpo_loss(chosen, rejected, ref_c, ref_r, self.beta, self.loss, n_c, n_r)
        return losses.mean(), {"reward_chosen": r_c.mean(), "reward_rejected": r_r.mean(),
                               "margin": (r_c - r_r).mean(), "accuracy": (r_c > r_r).float().mean()}


def pair_targets(pairs: Sequence[EncodedPair], pad_id: int) -> tuple[Tensor, Tensor]:
    """Inputs (2B, T-1) and targets (IGNORE outside the responses): the chosen sequences, then the rejected."""
    return pad_batch([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)


def collate(items: Sequence[tuple[EncodedPair, Tensor]], pad_id: int) -> tuple[Tensor, dict[str, Tensor]]:
    """A DPO batch from (pair, reference log-probs (2,)) items."""
    x, targets = pair_targets([p for p, _ in items], pad_id)
    return x, {"targets": targets, "ref": torch.stack([r for _, r in items])}


@torch.no_grad()
def reference_logps(model: nn.Module, pairs: Sequence[EncodedPair], pad_id: int, batch_size: int = 32,
                    precision: str = "fp32") -> Tensor:
    """log pi_ref(chosen | x) and log pi_ref(rejected | x) of every pair, (N, 2), with the model frozen in eval mode
    and under the training run's `precision`, so that at step 0 the policy's log-probabilities equal these."""
    from llmbook.finetune.base import autocast

    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(pairs), batch_size):
        x, targets = pair_targets(pairs[i:i + batch_size], pad_id)
        with autocast(device.type, precision):
            logits = model(x.to(device))[0]
        logps, _ = sequence_logps(logits, targets.to(device))
        out.append(torch.stack(logps.cpu().chunk(2), dim=-1))
    model.train(was)
    return torch.cat(out)


@torch.no_grad()
def implicit_accuracy(model: nn.Module, pairs: Sequence[EncodedPair], ref: Tensor, pad_id: int,
                      batch_size: int = 32, precision: str = "fp32") -> list[float]:
    """Per held-out pair: 1 when the policy's implicit reward ranks chosen above rejected (0.5 on a tie), else 0."""
    now = reference_logps(model, pairs, pad_id, batch_size, precision)
    margin = (now[:, 0] - ref[:, 0]) - (now[:, 1] - ref[:, 1])
    return [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margin.tolist()]
