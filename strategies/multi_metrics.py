"""Multi-metrics: score each update by three distances to the others, whitened; average the best-scored share.

Huang, Li, Chen, Shi and Gao, "Multi-metrics Adaptively Identifies Backdoors in Federated Learning", ICCV 2023
(https://arxiv.org/abs/2303.06601; the authors' code: github.com/siquanhuang/Multi-metrics, ``defense.py``). For
each update g_i and every other g_j: the squared cosine distance (1 - cos(g_i, g_j))^2, the Manhattan distance
||g_i - g_j||_1 and the length difference | ||g_i|| - ||g_j|| |, each summed over j, give x_i in R^3; with Sigma the
covariance of the x_i over the round's clients, the score is (x_i - c)^T Sigma^-1 (x_i - c) (the "dynamic
weighting" that whitens the three metrics). The ``keep`` share of clients with the lowest scores (default 0.3, the
authors' code's p) is averaged, weighted by examples; the others are flagged (weight 0), so detection precision and
recall apply.

What the server must know: nothing beyond the round's plaintext updates (no root data, no history, no f).
Departures: c, the centre the scores are measured from, is the features' coordinate-wise median (``center =
true``, the default); the authors' code takes c = 0 (``center = false``), an uncentred form under which every
client, honest or not, sits far from the origin in the directions of low variance, and which on
``tests/test_multi_metrics.py``'s case scores a 5x-boosted update and a flipped one among the honest ones. It runs on
updates (client model - global model), as fedsec's rules do; the authors' code scores the client models' weights
(distances are the same; the cosine and length terms are taken on updates here, as in the paper's notation g_i). A
singular Sigma (identical features) uses its pseudo-inverse. Scores are float64.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_float, require_clients
from ._linalg import gram_matrix
from .base import RobustStrategy


def multi_metrics_features(updates: torch.Tensor) -> torch.Tensor:
    """x_i = (sum_j (1 - cos_ij)^2, sum_j ||g_i - g_j||_1, sum_j | ||g_i|| - ||g_j|| |) for the rows of ``updates``
    (n, d); returns (n, 3) float64.

    >>> multi_metrics_features(torch.tensor([[1.0, 0.0], [0.0, 2.0]])).tolist()
    [[1.0, 3.0, 1.0], [1.0, 3.0, 1.0]]
    """
    gram = gram_matrix(updates)
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    cosine = gram / (norms[:, None] * norms[None, :]).clamp_min(torch.finfo(torch.float64).tiny)
    cosine_distance = (1.0 - cosine) ** 2
    cosine_distance.fill_diagonal_(0.0)
    manhattan = torch.cdist(updates.double(), updates.double(), p=1)  # one (n, n) result; n is a round's clients
    length = (norms[:, None] - norms[None, :]).abs()
    return torch.stack([cosine_distance.sum(dim=1), manhattan.sum(dim=1), length.sum(dim=1)], dim=1)


def multi_metrics_scores(updates: torch.Tensor, *, center: bool = True) -> torch.Tensor:
    """(x_i - c)^T Sigma^-1 (x_i - c), Sigma the covariance (n - 1) of the features over the rows and c their
    coordinate-wise median (``center``) or 0 (the authors' code); (n,) float64."""
    features = multi_metrics_features(updates)
    inverse = torch.linalg.pinv(torch.cov(features.T))
    if center:
        features = features - features.median(dim=0).values
    return torch.einsum("ij,jk,ik->i", features, inverse, features)


def multi_metrics_aggregate(updates: torch.Tensor, num_examples: torch.Tensor, *, keep: float, center: bool = True
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The example-weighted mean of the max(1, int(keep x n)) lowest-scored updates, and the weights (n,)."""
    n = updates.shape[0]
    require_clients("Multi-metrics", n, 3, "n >= 3 (a covariance over the clients)")
    scores = multi_metrics_scores(updates, center=center)
    chosen = torch.sort(scores, stable=True).indices[: max(1, int(keep * n))]
    weights = torch.zeros(n, dtype=updates.dtype, device=updates.device)
    weights[chosen] = num_examples.to(updates.dtype)[chosen]
    weights = weights / weights.sum()
    return weights @ updates, weights


class MultiMetricsParams(Params):
    """``[defense]`` keys of ``strategy = "multi_metrics"``."""

    keep: float = Field(0.3, gt=0, le=1, description="Share of the round's clients kept, lowest scores first "
                        "(the authors' code: 0.3).")
    center: bool = Field(True, description="Measure the scores from the features' median (false: from 0, as the "
                         "authors' code does).")


class MultiMetrics(RobustStrategy):
    """Multi-metrics (Huang et al. 2023): keep the ``keep`` share of updates with the lowest whitened scores.

    Parameters
    ----------
    keep : float (default: 0.3)
        Share of the round's updates kept (config key ``defense.keep``); at least one is.
    center : bool (default: True)
        Scores measured from the features' median; False: from 0, as the authors' code.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy`.

    Assumptions
    -----------
    n >= 3 valid updates (the three features need a covariance over the clients); fewer: the round is skipped.
    The malicious updates are fewer than the share dropped and differ from the benign ones in at least one metric.
    """

    Params = MultiMetricsParams
    family = "selection"
    description = "Multi-metrics (Huang et al. 2023): cosine, Manhattan and length distances, whitened; keep the best"
    uses_counts = True

    def __init__(self, *, keep: float = 0.3, center: bool = True, **kwargs: Any) -> None:
        self.keep = check_float("MultiMetrics", "keep", keep, low=0.0, high=1.0, low_open=True, high_open=False)
        self.center = bool(center)
        super().__init__(**kwargs)
        self.min_valid_updates = 3

    def describe(self) -> str:
        return f"MultiMetrics(keep={self.keep:g}, center={self.center})"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return multi_metrics_aggregate(updates, num_examples, keep=self.keep, center=self.center)
