"""Bulyan: a Byzantine-resilient selection, then a coordinate-wise trimmed mean around the median.

El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed Learning in Byzantium", ICML 2018,
https://proceedings.mlr.press/v80/mhamdi18a.html (arXiv: https://arxiv.org/abs/1802.07927).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_int, require_clients
from ._order import map_sorted_chunks, rank_weights, window_counts
from .base import RobustStrategy
from .multikrum import multikrum_select

#: (updates (n, d), *, num_malicious, num_selected) -> indices (num_selected,) of the kept updates
SelectionRule = Callable[..., torch.Tensor]


def bulyan_needed(num_malicious: int) -> int:
    """Smallest n Bulyan accepts: n >= 4f+3."""
    return 4 * num_malicious + 3


def bulyan_aggregate(
    updates: torch.Tensor, *, num_malicious: int, select: SelectionRule = multikrum_select
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bulyan over updates (n, d) with n >= 4f+3, without NaN.

    1. ``select`` keeps theta = n - 2f updates (default: the theta lowest Krum scores, :func:`multikrum_select`).
    2. In every coordinate, average the beta = theta - 2f kept values closest to the coordinate-wise median of
       the kept updates (mean of the two middle values for even theta).

    Returns the aggregate (d,) and the weights (n,): the fraction of coordinates in which the client's value was
    among the beta averaged, times 1/beta (they sum to 1; 0 for clients not selected in step 1).

    The beta values closest to the median are a run of consecutive ranks of the sorted kept values, ranks
    [l, l + beta) with l = #{i < 2f : median - v_(i) > v_(i + beta) - median}, so step 2 sorts each column (chunk
    by chunk, by the sorting network of :mod:`fedsec.strategies._order`, which says why) and reads l off the
    sorted values. Ties in distance to the median go to the smaller value; equal values are ranked by client
    (partition id) order, as a stable sort would.
    """
    n, d = updates.shape
    require_clients("Bulyan", n, bulyan_needed(num_malicious), "n >= 4f+3")
    theta = n - 2 * num_malicious
    beta = theta - 2 * num_malicious
    selected = select(updates, num_malicious=num_malicious, num_selected=theta)  # (theta,)
    kept = torch.sort(torch.as_tensor(selected, device=updates.device)).values  # in client order
    low, high = (theta - 1) // 2, theta // 2
    trimmed = theta - beta
    ranks = torch.arange(theta, device=updates.device)[:, None]
    aggregate = torch.empty(d, dtype=updates.dtype, device=updates.device)

    def visit(columns: slice, values: torch.Tensor, ordered: torch.Tensor) -> torch.Tensor:
        median = (ordered[low] + ordered[high]) / 2
        # right[i]: rank i + beta is nearer the median than rank i (ties: the smaller value stays); monotone in i
        right = (median - ordered[:trimmed]) > (ordered[beta:] - median)  # (2f, w)
        start = right.sum(dim=0, dtype=torch.int64)  # (w,) the first rank averaged
        if trimmed <= beta:  # ranks [2f, beta) are always in; of each pair (i, i + beta), i < 2f, exactly one is
            total = torch.sum(ordered[trimmed:beta], dim=0, out=aggregate[columns])
            total += torch.where(right, ordered[beta:], ordered[:trimmed]).sum(dim=0)
        else:
            window = (ranks >= start) & (ranks < start + beta)
            total = torch.sum(torch.where(window, ordered, 0.0), dim=0, out=aggregate[columns])
        total.div_(beta)
        return window_counts(values, ordered, start, start + beta)

    counts = map_sorted_chunks(updates, visit, rows=kept)
    weights = torch.zeros(n, dtype=updates.dtype, device=updates.device)
    weights[kept] = rank_weights(counts, 1.0 / beta, d, updates.dtype)
    return aggregate, weights



class BulyanParams(Params):
    """``[defense]`` keys of ``strategy = "bulyan"``."""

    num_malicious: int | None = Field(
        None, ge=0, le=100_000,
        description="f the rule assumes (default: the attack's expected attackers per round, else 0); at most 100,000."
    )

class Bulyan(RobustStrategy):
    """Bulyan: Multi-Krum keeps n - 2f updates, then each coordinate averages the n - 4f values nearest its median.

    Parameters
    ----------
    num_malicious : int (default: 0)
        f, the number of Byzantine clients the rule assumes per round (config key ``defense.num_malicious``).
    select : Callable (default: :func:`~fedsec.strategies.multikrum.multikrum_select`)
        The selection stage: ``select(updates, *, num_malicious, num_selected) -> indices``; any
        Byzantine-resilient rule with that signature can replace Multi-Krum.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    n >= 4f+3 valid updates; a round with fewer is skipped and recorded (:attr:`min_valid_updates` = 4f+3).
    Selection keeps theta = n - 2f updates; the Krum scores use n - f - 2 neighbours; each coordinate then
    averages beta = theta - 2f = n - 4f values closest to the median of the theta kept ones. Works on updates;
    every step commutes with adding the global model. The reported weight is the fraction of coordinates where the
    client's value was averaged, divided by beta (0 = not selected, or never near the median).

    Differences
    -----------
    The paper selects the theta updates by running Krum recursively (remove the winner, rescore the rest);
    like Flower's ``Bulyan`` (default ``select_multikrum``), fedsec scores once and keeps the theta lowest
    Krum scores. The averages are unweighted (``num-examples`` ignored), as in Flower and the paper. With the
    default selection the aggregate equals Flower's (up to rounding of near-tied Krum scores, which fedsec
    compares in float64). Where two values are equally far from the median and only one can be averaged, the
    smaller one is (Flower's ``argpartition`` and a ``topk`` leave this to the implementation), and equal values
    are ranked by partition id, which decides who is credited in the reported weights. The step-2 columns are
    sorted by a sorting network over chunks of coordinates (:mod:`fedsec.strategies._order`), not by
    ``torch.sort``/``topk``, several times slower on the (n, d) layout; the kept updates are gathered chunk by
    chunk, never copied as a whole.
    """

    Params = BulyanParams
    family = "krum"
    description = 'Bulyan: Multi-Krum then trimmed mean around the median (El Mhamdi et al. 2018)'

    def __init__(self, *, num_malicious: int = 0, select: SelectionRule = multikrum_select, **kwargs: Any) -> None:
        self.num_malicious = check_int("Bulyan", "num_malicious", num_malicious, low=0)
        self.select = select
        super().__init__(**kwargs)
        self.min_valid_updates = bulyan_needed(self.num_malicious)

    def describe(self) -> str:
        name = getattr(self.select, "__name__", type(self.select).__name__)
        return f"Bulyan(num_malicious={self.num_malicious}, select={name}; n >= 4f+3 = {self.min_valid_updates})"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return bulyan_aggregate(updates, num_malicious=self.num_malicious, select=self.select)
