"""Bulyan: a Byzantine-resilient selection, then a coordinate-wise trimmed mean around the median.

El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed Learning in Byzantium", ICML 2018,
https://proceedings.mlr.press/v80/mhamdi18a.html (arXiv: https://arxiv.org/abs/1802.07927).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._checks import check_int, require_clients
from .base import RobustStrategy
from .median import coordinate_median
from .multikrum import multikrum_select

#: (updates (n, d), *, num_malicious, num_selected) -> indices (num_selected,) of the kept updates
SelectionRule = Callable[..., torch.Tensor]


def bulyan_needed(num_malicious: int) -> int:
    """Smallest n Bulyan accepts: n >= 4f+3."""
    return 4 * num_malicious + 3


def bulyan_aggregate(
    updates: torch.Tensor, *, num_malicious: int, select: SelectionRule = multikrum_select
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bulyan over updates (n, d) with n >= 4f+3.

    1. ``select`` keeps theta = n - 2f updates (default: the theta lowest Krum scores, :func:`multikrum_select`).
    2. In every coordinate, average the beta = theta - 2f kept values closest to the coordinate-wise median of
       the kept updates.

    Returns the aggregate (d,) and the weights (n,): the fraction of coordinates in which the client's value was
    among the beta averaged, times 1/beta (they sum to 1; 0 for clients not selected in step 1).
    """
    n = updates.shape[0]
    require_clients("Bulyan", n, bulyan_needed(num_malicious), "n >= 4f+3")
    theta = n - 2 * num_malicious
    beta = theta - 2 * num_malicious
    selected = select(updates, num_malicious=num_malicious, num_selected=theta)  # (theta,)
    kept = updates[selected]  # (theta, d)
    median, _ = coordinate_median(kept)
    closest = torch.topk((kept - median).abs(), beta, dim=0, largest=False).indices  # (beta, d)
    aggregate = torch.gather(kept, 0, closest).mean(dim=0)
    used = torch.zeros_like(kept).scatter_(0, closest, 1.0 / beta)  # (theta, d) coefficient per kept value
    weights = torch.zeros(n, dtype=updates.dtype, device=updates.device)
    weights[selected] = used.mean(dim=1)
    return aggregate, weights


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
    default selection the aggregate equals Flower's (up to float32 rounding of near-tied scores).
    """

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
