"""Loss-threshold membership inference on the final global model, next to the bound epsilon implies.

Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting", CSF 2018 (https://arxiv.org/abs/1709.01604): predict "member" when an example's loss is below the
model's average training loss; the membership advantage is TPR - FPR on a balanced set of members (training
examples) and non-members (held-out test examples). Defaults: up to 2,000 of each, drawn with the run's seed.
The attack itself is :func:`fedsec.audits.lira.loss_threshold_attack` (re-exported here): its ``point`` holds
the paper's operating point, the ROC the other thresholds; :func:`~fedsec.audits.lira.loss_threshold_point` is
the point alone (what every run's membership check reports).

Bound: for an (epsilon, delta)-DP training procedure any membership test on a balanced set has advantage at most
(e^epsilon - 1 + 2 delta) / (e^epsilon + 1) (from TPR <= e^epsilon FPR + delta and its complement, Kairouz, Oh
and Viswanath, ICML 2015; Humphries et al. 2023); Yeom et al.'s looser e^epsilon - 1 follows from it.
"""

from __future__ import annotations

import math

import numpy as np

from .lira import loss_threshold_attack, loss_threshold_point

__all__ = ["advantage_bound", "balanced_sample", "loss_threshold_attack", "loss_threshold_point"]


def advantage_bound(epsilon: float, delta: float) -> float:
    """The largest membership advantage (epsilon, delta)-DP allows on a balanced set (1 without DP)."""
    if not math.isfinite(epsilon):
        return 1.0
    return min(1.0, (math.exp(epsilon) - 1 + 2 * delta) / (math.exp(epsilon) + 1))


def balanced_sample(n_members: int, n_non: int, *, seed: int, limit: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Indices of equally many members and non-members (at most ``limit`` each)."""
    k = min(n_members, n_non, limit)
    rng = np.random.default_rng([seed, 0x313A])
    return np.sort(rng.choice(n_members, k, replace=False)), np.sort(rng.choice(n_non, k, replace=False))
