"""Coordinate-wise trimmed mean.

Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
ICML 2018, https://proceedings.mlr.press/v80/yin18a.html (arXiv: https://arxiv.org/abs/1803.01498). Flower ships
the same rule as ``FedTrimmedAvg`` (its ``beta`` is our ``trim_ratio``).
"""

from __future__ import annotations

from logging import WARNING
from typing import Any

import torch
from flwr.supercore import log
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_float, require_clients
from ._order import map_sorted_chunks, rank_weights, window_counts
from .base import RobustStrategy


def trim_count(n: int, trim_ratio: float) -> int:
    """Values cut from each end of every coordinate: ``int(trim_ratio * n)``, as Flower and scipy."""
    return int(trim_ratio * n)


def trimmed_mean(updates: torch.Tensor, *, num_trimmed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate-wise mean after removing the ``num_trimmed`` smallest and largest values of each coordinate.

    updates: (n, d) with n >= 2 * num_trimmed + 1, without NaN. Returns the aggregate (d,) and the weights (n,):
    the fraction of coordinates in which the client's value was kept, times 1/(n - 2k); they sum to 1. Ranks are
    those of a stable sort (equal values ranked by row), as ``torch.sort(updates, dim=0, stable=True)``.

    The columns are sorted chunk by chunk by a sorting network (:mod:`fedsec.strategies._order`, which says why);
    ``torch.sort(updates, dim=0)`` gives the same values and ranks; with it this kernel was about 10x slower at
    n = 100, d = 1.6M on a 2-core CPU (``benchmarks/bench_strategies.py`` times the rules).
    """
    n, d = updates.shape
    require_clients("TrimmedMean", n, 2 * num_trimmed + 1, "n >= 2k+1")
    kept = n - 2 * num_trimmed
    aggregate = torch.empty(d, dtype=updates.dtype, device=updates.device)

    def visit(columns: slice, values: torch.Tensor, ordered: torch.Tensor) -> torch.Tensor:
        torch.mean(ordered[num_trimmed : n - num_trimmed], dim=0, out=aggregate[columns])
        return window_counts(values, ordered, num_trimmed, n - num_trimmed)

    counts = map_sorted_chunks(updates, visit)
    return aggregate, rank_weights(counts, 1.0 / kept, d, updates.dtype)



class TrimmedMeanParams(Params):
    """``[defense]`` keys of ``strategy = "trimmed_mean"``."""

    trim_ratio: float = Field(0.2, ge=0, lt=0.5, description="share cut from each end.")

class TrimmedMean(RobustStrategy):
    """Coordinate-wise trimmed mean: drop the k = int(trim_ratio * n) lowest and highest values, average the rest.

    Parameters
    ----------
    trim_ratio : float (default: 0.2)
        Fraction cut from each end of every coordinate, 0 <= trim_ratio < 0.5 (config key ``defense.trim_ratio``;
        Flower's ``beta``).
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    Tolerates f <= k = int(trim_ratio * n) Byzantine values per coordinate; k is recomputed from each round's
    number of valid updates n, so n - 2k >= 1 always holds. A round where k = 0 although trim_ratio > 0 (too few
    updates) trims nothing; this is logged as a warning. Works on updates; trimming commutes with adding the
    global model. The reported weight is the fraction of coordinates where the client's value was kept, divided
    by n - 2k (weights sum to 1; 0 = trimmed everywhere).

    Differences
    -----------
    None from Flower's ``FedTrimmedAvg`` (same count ``int(beta * n)``, unweighted mean). ``num-examples`` is
    ignored, as in Flower and the paper. Implementation: the columns are sorted by a sorting network over chunks
    of coordinates (:mod:`fedsec.strategies._order`), not by ``torch.sort``, which is several times slower on the
    (n, d) layout; where equal values straddle a trimming edge, which clients count as kept follows a stable
    sort (lower partition id at the lower rank).
    """

    Params = TrimmedMeanParams
    family = "coordinate"
    description = 'coordinate-wise trimmed mean (Yin et al. 2018)'

    def __init__(self, *, trim_ratio: float = 0.2, **kwargs: Any) -> None:
        self.trim_ratio = check_float("TrimmedMean", "trim_ratio", trim_ratio, low=0.0, high=0.5)
        super().__init__(**kwargs)

    def describe(self) -> str:
        return f"TrimmedMean(trim_ratio={self.trim_ratio}; k = int(trim_ratio * n) per side)"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = trim_count(updates.shape[0], self.trim_ratio)
        if k == 0 and self.trim_ratio > 0:
            n = updates.shape[0]
            log(WARNING, "TrimmedMean: trim_ratio=%s trims nothing with n=%s updates", self.trim_ratio, n)
        return trimmed_mean(updates, num_trimmed=k)
