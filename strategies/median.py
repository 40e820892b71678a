"""Coordinate-wise median.

Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
ICML 2018, https://proceedings.mlr.press/v80/yin18a.html (arXiv: https://arxiv.org/abs/1803.01498). Flower ships
the same rule as ``FedMedian``.
"""

from __future__ import annotations

from typing import Any

import torch

from fedsec.registry import NoParams

from ._order import map_sorted_chunks, rank_weights, window_counts
from .base import RobustStrategy


def coordinate_median(updates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise median; for even n the mean of the two middle values (as ``numpy.median``).

    updates: (n, d), n >= 1, without NaN. Returns the aggregate (d,) and the weights (n,): the fraction of
    coordinates in which the client's value is the median (each of the two middle values counts 1/2 for even n);
    they sum to 1. Ranks are those of a stable sort: among equal values the lower row counts first.

    The columns are sorted chunk by chunk by a sorting network (:mod:`fedsec.strategies._order`, which says why):
    ``torch.sort(updates, dim=0)`` gives the same values and ranks; with it this kernel was about 10x slower at
    n = 100, d = 1.6M on a 2-core CPU (``benchmarks/bench_strategies.py`` times the rules).
    """
    n, d = updates.shape
    low, high = (n - 1) // 2, n // 2
    aggregate = torch.empty(d, dtype=updates.dtype, device=updates.device)

    def visit(columns: slice, values: torch.Tensor, ordered: torch.Tensor) -> torch.Tensor:
        torch.add(ordered[low], ordered[high], out=aggregate[columns]).div_(2)
        return window_counts(values, ordered, low, high + 1)

    counts = map_sorted_chunks(updates, visit)
    return aggregate, rank_weights(counts, 1.0 / (high - low + 1), d, updates.dtype)


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
    value is the median (1/2 for each middle value when n is even), so weight 0 means never used; where several
    clients hold the median value, the ranks are those of a stable sort (lower partition id first). The columns
    are sorted by a sorting network over chunks of coordinates (:mod:`fedsec.strategies._order`), not by
    ``torch.sort``, which is several times slower on the (n, d) layout.

    Differences
    -----------
    None from Flower's ``FedMedian`` (even n: mean of the two middle values, as ``numpy.median``).
    ``torch.median`` would return the lower middle value instead, so it is not used. ``num-examples`` is ignored,
    as in Flower and the paper.
    """

    Params = NoParams
    family = "coordinate"
    description = 'coordinate-wise median (Yin et al. 2018)'

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def describe(self) -> str:
        return "Median(coordinate-wise)"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return coordinate_median(updates)
