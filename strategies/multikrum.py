"""Multi-Krum: average the m updates with the lowest Krum scores.

Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017, https://proceedings.neurips.cc/paper/2017/hash/f4b9ec30ad9f68f89b29639786cb62ef-Abstract.html
(arXiv: https://arxiv.org/abs/1703.02757). Krum is Multi-Krum with m = 1 (:mod:`fedsec.strategies.krum`); Bulyan
reuses :func:`multikrum_select` as its first stage (:mod:`fedsec.strategies.bulyan`).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, Field

from fedsec.registry import Params

from ._checks import check_int, require_clients
from ._linalg import gram_matrix
from .base import RobustStrategy, StrategyContext


def krum_needed(num_malicious: int, num_selected: int = 1) -> int:
    """Smallest n Multi-Krum accepts: the paper's n >= 2f+3 (i.e. 2f+2 < n), and at least m updates to pick."""
    return max(2 * num_malicious + 3, num_selected)


def pairwise_squared_distances(updates: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances between the rows of ``updates`` (n, d), shape (n, n), float64, symmetric, zero diagonal.

    Computed from the Gram matrix, ||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b (one matrix product per chunk of
    columns in the updates' dtype, summed in float64: :func:`fedsec.strategies._linalg.gram_matrix`), clamped at
    0. ``torch.cdist`` does the same with one float32 product over all d columns when n > 25, and is 4-5x slower
    on a CPU at n = 100, d = 1.6M. So that the subtraction does not cancel, every update is first shifted by the
    update with the median norm (distances do not change): a component shared by all updates drops out, and one
    far outlier cannot inflate the others (a shifted update is at most its norm plus the median norm long).
    """
    n = updates.shape[0]
    center = int(torch.argsort(torch.linalg.vector_norm(updates, dim=1), stable=True)[(n - 1) // 2]) if n else None
    gram = gram_matrix(updates, shift_row=center)
    squared = gram.diagonal()
    distances = (squared[:, None] + squared[None, :] - 2.0 * gram).clamp_min_(0.0)
    distances = (distances + distances.T) / 2  # exactly symmetric
    return distances.fill_diagonal_(0.0)


def krum_scores(updates: torch.Tensor, *, num_malicious: int) -> torch.Tensor:
    """Krum score of each update: the sum of squared L2 distances to its n - f - 2 nearest other updates.

    updates: (n, d) with n >= 2f+3. Returns the scores, shape (n,), in the updates' dtype and device (computed in
    float64 from :func:`pairwise_squared_distances`).
    """
    return _krum_scores(updates, num_malicious=num_malicious).to(updates.dtype)


def _krum_scores(updates: torch.Tensor, *, num_malicious: int) -> torch.Tensor:
    """:func:`krum_scores` in float64."""
    n = updates.shape[0]
    require_clients("Krum", n, krum_needed(num_malicious), "n >= 2f+3")
    distances = pairwise_squared_distances(updates)
    distances.fill_diagonal_(float("inf"))  # a client is not its own neighbour
    nearest = torch.topk(distances, n - num_malicious - 2, dim=1, largest=False).values
    return nearest.sum(dim=1)


def multikrum_select(updates: torch.Tensor, *, num_malicious: int, num_selected: int) -> torch.Tensor:
    """Indices of the ``num_selected`` updates with the lowest Krum scores, best first (ties: lower index first).

    updates: (n, d) with n >= max(2f+3, m). Returns a long tensor of shape (m,) on the updates' device.
    """
    require_clients("Multi-Krum", updates.shape[0], krum_needed(num_malicious, num_selected), "n >= max(2f+3, m)")
    scores = _krum_scores(updates, num_malicious=num_malicious)  # float64: near-equal scores keep their order
    return torch.sort(scores, stable=True).indices[:num_selected]


def multikrum_aggregate(
    updates: torch.Tensor, num_examples: torch.Tensor, *, num_malicious: int, num_selected: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Example-weighted mean of the Multi-Krum selection.

    updates: (n, d); num_examples: (n,). Returns the aggregate (d,) and the weights (n,): the selected clients'
    shares of their examples (summing to 1), 0 for the others.
    """
    selected = multikrum_select(updates, num_malicious=num_malicious, num_selected=num_selected)
    mask = torch.zeros_like(num_examples, dtype=updates.dtype)
    mask[selected] = 1.0
    weights = mask * num_examples.to(updates.dtype)
    weights = weights / weights.sum()
    if 4 * selected.numel() <= updates.shape[0]:  # few rows (Krum: one): read only those
        return weights[selected] @ updates[selected], weights
    return weights @ updates, weights



class MultiKrumParams(Params):
    """``[defense]`` keys of ``strategy = "multikrum"``."""

    num_malicious: int | None = Field(
        None, ge=0, le=100_000,
        description="f the rule assumes (default: the attack's expected attackers per round, else 0); at most 100,000."
    )
    num_selected: int | None = Field(None, ge=1, le=100_000,
                                     description="m updates kept (default: n - f; at most 100,000).")

class MultiKrum(RobustStrategy):
    """Multi-Krum: keep the m updates closest to their neighbours, average them weighted by examples.

    Parameters
    ----------
    num_malicious : int (default: 0)
        f, the number of Byzantine clients the rule assumes per round (config key ``defense.num_malicious``).
    num_selected : int (default: 1)
        m, how many updates are kept (config key ``defense.num_selected``); m = 1 is Krum.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    n >= 2f+3 valid updates (the paper's 2f+2 < n) and n >= m; a round with fewer is skipped and recorded
    (:attr:`min_valid_updates` = max(2f+3, m)). Each update is scored by the sum of squared L2 distances to
    its n - f - 2 nearest other updates (as Flower's ``select_multikrum``). Works on updates; since only
    distances and a convex combination are used, this equals scoring and averaging the client weights.

    Differences
    -----------
    The selected updates are averaged weighted by ``num-examples``, as Flower's ``MultiKrum`` does; the paper
    averages them uniformly. Flower scores ``max(1, n - f - 2)`` neighbours and aggregates whatever n it gets;
    fedsec skips rounds with n < max(2f+3, m) instead. Whenever n >= 2f+3 the aggregate equals Flower's
    (up to rounding of near-tied scores; fedsec's distances are more accurate: Gram matrices summed in float64
    over column chunks after a shift by the median-norm update, :func:`pairwise_squared_distances`, where
    Flower's are one float32 product over the raw weights). Ties in score go to the lower partition id.
    """

    Params = MultiKrumParams
    family = "krum"
    description = 'Multi-Krum: mean of the m lowest Krum scores'
    uses_counts = True  # the selected updates are averaged with their (policy-adjusted) counts

    def __init__(self, *, num_malicious: int = 0, num_selected: int = 1, **kwargs: Any) -> None:
        rule = type(self).__name__
        self.num_malicious = check_int(rule, "num_malicious", num_malicious, low=0)
        self.num_selected = check_int(rule, "num_selected", num_selected, low=1)
        super().__init__(**kwargs)
        self.min_valid_updates = krum_needed(self.num_malicious, self.num_selected)

    @classmethod
    def config_kwargs(cls, params: BaseModel, context: StrategyContext) -> dict[str, Any]:
        """As the base class; ``num_selected`` defaults to max(1, clients_per_round - f)."""
        kwargs = super().config_kwargs(params, context)
        if "num_selected" in cls.Params.model_fields and kwargs.get("num_selected") is None:
            kwargs["num_selected"] = max(1, context.clients_per_round - kwargs["num_malicious"])
        return kwargs

    def describe(self) -> str:
        return (
            f"MultiKrum(num_malicious={self.num_malicious}, num_selected={self.num_selected}; "
            f"n >= max(2f+3, m) = {self.min_valid_updates})"
        )

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return multikrum_aggregate(
            updates, num_examples, num_malicious=self.num_malicious, num_selected=self.num_selected
        )
