"""Coordinate-wise median.

Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
ICML 2018, https://proceedings.mlr.press/v80/yin18a.html (arXiv: https://arxiv.org/abs/1803.01498). Flower ships
the same rule as ``FedMedian``.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import RobustStrategy


def rank_weights(order: torch.Tensor, rank_coefficients: torch.Tensor) -> torch.Tensor:
    """Per-client weights of an order-statistic rule: the mean over coordinates of the coefficient each client's
    value got in the aggregate.

    order: (n, d), ``order[r, j]`` = the client holding rank r in coordinate j (``torch.sort(..., dim=0).indices``);
    rank_coefficients: (n,), the coefficient of rank r in every coordinate. Returns (n,), summing to
    ``rank_coefficients.sum()``.
    """
    coefficients = torch.zeros(order.shape, dtype=rank_coefficients.dtype, device=order.device)
    coefficients.scatter_(0, order, rank_coefficients[:, None].expand_as(coefficients))
    return coefficients.mean(dim=1)


def coordinate_median(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise median; for even n the mean of the two middle values (as ``numpy.median``).

    updates: (n, d). Returns the aggregate (d,) and the weights (n,): the fraction of coordinates in which the
    client's value is the median (each of the two middle values counts 1/2 for even n); they sum to 1.
    """
    n = updates.shape[0]
    values, order = torch.sort(updates, dim=0, stable=True)
    low, high = (n - 1) // 2, n // 2
    rank_coefficients = torch.zeros(n, dtype=updates.dtype, device=updates.device)
    rank_coefficients[low] += 0.5
    rank_coefficients[high] += 0.5
    return (values[low] + values[high]) / 2, rank_weights(order, rank_coefficients)


class Median(RobustStrategy):
    """Coordinate-wise median of the updates (unweighted).

    Parameters
    ----------
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    Tolerates f < n/2 Byzantine updates per coordinate (breakdown point 1/2); no f is configured and any
    n >= 1 is aggregated. Works on updates; the median commutes with adding the global model, so this equals
    the median of the client weights. The reported weight of a client is the fraction of coordinates where its
    value is the median (1/2 for each middle value when n is even), so weight 0 means never used.

    Differences
    -----------
    None from Flower's ``FedMedian`` (even n: mean of the two middle values, as ``numpy.median``).
    ``torch.median`` would return the lower middle value instead, so it is not used. ``num-examples`` is ignored,
    as in Flower and the paper.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def describe(self) -> str:
        return "Median(coordinate-wise)"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return coordinate_median(updates)
