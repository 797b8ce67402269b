"""Scaling laws: Chinchilla's compute-optimal allocation and Kaplan et al.'s laws (@sec-costs-scaling)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmbook.costs.flops import _positive

PF_DAY = 1e15 * 86400  # FLOPs in one petaflop/s-day, Kaplan et al.'s unit of compute


@dataclass(frozen=True)
class ChinchillaFit:
    """L(N, D) = E + A/N^alpha + B/D^beta, fitted by Hoffmann et al.'s approach 3 [@hoffmann2022chinchilla]."""

    E: float = 1.69
    A: float = 406.4
    B: float = 410.7
    alpha: float = 0.34
    beta: float = 0.28

    def loss(self, n_params, n_tokens):
        """Predicted pre-training loss (nats/token on their data) for N parameters and D tokens."""
        n, d = np.asarray(n_params, dtype=float), np.asarray(n_tokens, dtype=float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta


@dataclass(frozen=True)
class KaplanFit:
    """Kaplan et al.'s L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, N without embeddings [@kaplan2020scaling]."""

    alpha_n: float = 0.076
    alpha_d: float = 0.095
    n_c: float = 8.8e13
    d_c: float = 5.4e13

    def loss(self, n_params, n_tokens):
        n, d = np.asarray(n_params, dtype=float), np.asarray(n_tokens, dtype=float)
        return ((self.n_c / n) ** (self.alpha_n / self.alpha_d) + self.d_c / d) ** self.alpha_d


CHINCHILLA = ChinchillaFit()
KAPLAN = KaplanFit()
TOKENS_PER_PARAM = 20  # Chinchilla's rule of thumb for compute-optimal training [@hoffmann2022chinchilla]


@dataclass(frozen=True)
class Allocation:
    """How to spend a compute budget: model size and training tokens, with C = 6·N·D."""

    flops: float
    params: float
    tokens: float
    method: str

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.params


def chinchilla_optimal(flops: float, method: str = "rule") -> Allocation:
    """Compute-optimal N and D for a budget C = 6·N·D.

    `rule`: D = 20·N, so N = sqrt(C / 120). `fit`: minimise the fitted L(N, D) analytically,
    N = G·(C/6)^(beta/(alpha+beta)) with G = (alpha·A / (beta·B))^(1/(alpha+beta)).
    """
    c = _positive("flops", flops)
    if method == "rule":
        n = (c / (6 * TOKENS_PER_PARAM)) ** 0.5
    elif method == "fit":
        f = CHINCHILLA
        g = (f.alpha * f.A / (f.beta * f.B)) ** (1 / (f.alpha + f.beta))
        n = g * (c / 6) ** (f.beta / (f.alpha + f.beta))
    else:
        raise ValueError(f"method must be 'rule' or 'fit', got {method!r}")
    return Allocation(flops=c, params=n, tokens=c / (6 * n), method=f"chinchilla-{method}")


def kaplan_optimal(flops: float) -> Allocation:
    """Kaplan et al.'s compute-efficient size N = 1.3e9 · C^0.73, C in PF-days (their Table 5), and D = C / (6N).

    [@kaplan2020scaling]
    """
    c = _positive("flops", flops)
    n = 1.3e9 * (c / PF_DAY) ** 0.73
    return Allocation(flops=c, params=n, tokens=c / (6 * n), method="kaplan")


def isoflop_curve(flops: float, params: np.ndarray, fit: ChinchillaFit = CHINCHILLA) -> np.ndarray:
    """Predicted loss of each model size when the budget fixes D = C / (6N) (one iso-FLOP profile)."""
    n = np.asarray(params, dtype=float)
    return fit.loss(n, _positive("flops", flops) / (6 * n))
