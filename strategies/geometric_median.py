"""Geometric median by the smoothed Weiszfeld algorithm (RFA, robust federated aggregation).

Pillutla, Kakade and Harchaoui, "Robust Aggregation for Federated Learning", IEEE Transactions on Signal
Processing 70, 2022, https://doi.org/10.1109/TSP.2022.3153135 (arXiv: https://arxiv.org/abs/1912.13445).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_float, check_int
from ._linalg import distances_to
from .base import RobustStrategy


def geometric_median(
    updates: torch.Tensor, num_examples: torch.Tensor, *, iterations: int, smoothing: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate example-weighted geometric median, argmin_v sum_i alpha_i ||v - u_i||, alpha_i = n_i / sum n.

    Starts at the weighted mean and runs ``iterations`` smoothed Weiszfeld steps:
    beta_i = alpha_i / max(smoothing, ||v - u_i||), v <- sum_i beta_i u_i / sum_i beta_i.

    updates: (n, d); num_examples: (n,). Returns v (d,) and the normalised beta (n,) of the last step, so that
    v = weights @ updates exactly (weights sum to 1; with iterations = 0 they are alpha).

    Guarded: the weights are computed in float64 from distances in which an overflow counts as the dtype's
    largest finite value, so no finite input gives a NaN. Each step reads the updates twice: once for the
    distances, chunk by chunk without an (n, d) temporary
    (:func:`fedsec.strategies._linalg.distances_to`), once for the weighted mean.
    """
    alpha = num_examples.to(torch.float64)
    weights = (alpha / alpha.sum()).to(updates.dtype)
    aggregate = weights @ updates
    big = torch.finfo(updates.dtype).max
    for _ in range(iterations):
        # a distance that overflows the updates' dtype counts as its largest finite value (beta stays > 0 and the
        # ratios in float64 stay finite), so a huge but finite update gets a tiny weight instead of a 0/0 NaN
        distances = distances_to(updates, aggregate).nan_to_num(nan=big, posinf=big).clamp_min(smoothing)
        beta = alpha / distances.to(torch.float64)
        weights = (beta / beta.sum()).to(updates.dtype)
        aggregate = weights @ updates
    return aggregate, weights



class GeometricMedianParams(Params):
    """``[defense]`` keys of ``strategy = "geometric_median"``."""

    iterations: int | None = Field(None, ge=1, le=1000,
                                   description="iterations, 1..1,000 (default: the rule's own, 3).")

class GeometricMedian(RobustStrategy):
    """RFA: the (example-weighted) geometric median of the updates, by smoothed Weiszfeld iterations.

    Parameters
    ----------
    iterations : int (default: 3)
        Weiszfeld steps per round, >= 1 (config key ``defense.iterations``). The paper observes that a few
        steps suffice in practice; every step costs one weighted average.
    smoothing : float (default: 1e-6)
        nu > 0, the smoothing of the Weiszfeld weights: distances below nu count as nu, so an aggregate that lands
        on an update does not divide by zero.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    Breakdown point 1/2 of the total weight: robust while the Byzantine clients hold less than half of the
    examples (their reported ``num-examples``, which they can inflate). No f is configured; any n >= 1 is
    aggregated. Works on updates; the geometric median commutes with adding the global model. The reported
    weight is the client's normalised Weiszfeld weight beta_i in the last step (the aggregate is exactly
    sum_i weight_i u_i), so a far outlier gets a small but non-zero weight.

    Differences
    -----------
    Flower has no geometric-median strategy. A fixed number of iterations is run (no tolerance-based early
    stop), so every round costs the same and the result is reproducible.
    """

    Params = GeometricMedianParams
    family = "robust_mean"
    description = 'geometric median by smoothed Weiszfeld, RFA (Pillutla et al. 2022)'
    uses_counts = True  # the alpha_i of the weighted geometric median

    def __init__(self, *, iterations: int = 3, smoothing: float = 1e-6, **kwargs: Any) -> None:
        self.iterations = check_int("GeometricMedian", "iterations", iterations, low=1)
        self.smoothing = check_float("GeometricMedian", "smoothing", smoothing, low=0.0, low_open=True)
        super().__init__(**kwargs)

    def describe(self) -> str:
        return f"GeometricMedian(iterations={self.iterations}, smoothing={self.smoothing:g})"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return geometric_median(updates, num_examples, iterations=self.iterations, smoothing=self.smoothing)
