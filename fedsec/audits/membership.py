"""Loss-threshold membership inference on the final global model, next to the bound epsilon implies.

Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting", CSF 2018 (https://arxiv.org/abs/1709.01604): predict "member" when an example's loss is below the
model's average training loss; the membership advantage is TPR - FPR on a balanced set of members (training
examples) and non-members (held-out test examples). Defaults: up to 2,000 of each, drawn with the run's seed.

Bound: for an (epsilon, delta)-DP training procedure any membership test on a balanced set has advantage at most
(e^epsilon - 1 + 2 delta) / (e^epsilon + 1) (from TPR <= e^epsilon FPR + delta and its complement, Kairouz, Oh
and Viswanath, ICML 2015; Humphries et al. 2023); Yeom et al.'s looser e^epsilon - 1 follows from it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def advantage_bound(epsilon: float, delta: float) -> float:
    """The largest membership advantage (epsilon, delta)-DP allows on a balanced set (1 without DP)."""
    if not math.isfinite(epsilon):
        return 1.0
    return min(1.0, (math.exp(epsilon) - 1 + 2 * delta) / (math.exp(epsilon) + 1))


@torch.no_grad()
def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([F.cross_entropy(model(x[i : i + 2048]), y[i : i + 2048], reduction="none")
                      for i in range(0, x.shape[0], 2048)])


def loss_threshold_attack(
    model: nn.Module,
    members: tuple[torch.Tensor, torch.Tensor],
    non_members: tuple[torch.Tensor, torch.Tensor],
    *,
    threshold: float | None = None,
) -> dict[str, float]:
    """TPR, FPR and advantage of "loss < threshold" (default: the members' mean loss, Yeom et al.)."""
    member_loss = _losses(model, *members)
    other_loss = _losses(model, *non_members)
    tau = float(member_loss.mean()) if threshold is None else threshold
    tpr = float((member_loss < tau).double().mean())
    fpr = float((other_loss < tau).double().mean())
    return {"mia_tpr": tpr, "mia_fpr": fpr, "mia_advantage": tpr - fpr, "mia_threshold": tau}


def balanced_sample(n_members: int, n_non: int, *, seed: int, limit: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Indices of equally many members and non-members (at most ``limit`` each)."""
    k = min(n_members, n_non, limit)
    rng = np.random.default_rng([seed, 0x313A])
    return np.sort(rng.choice(n_members, k, replace=False)), np.sort(rng.choice(n_non, k, replace=False))
