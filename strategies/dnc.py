"""Divide-and-Conquer (DnC): drop the updates that project most on the top singular direction of random
coordinate subsets.

Shejwalkar and Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses for
Federated Learning", NDSS 2021, https://www.ndss-symposium.org/ndss-paper/manipulating-the-byzantine-optimizing-
model-poisoning-attacks-and-defenses-for-federated-learning/ (Algorithm 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_float, check_int, require_clients
from .base import RobustStrategy


def dnc_removed_per_iteration(num_malicious: int, filter_frac: float) -> int:
    """floor(c f): how many updates each DnC iteration marks as bad."""
    return math.floor(filter_frac * num_malicious + 1e-9)


def dnc_outlier_scores(updates: torch.Tensor, coordinates: torch.Tensor | None = None) -> torch.Tensor:
    """s_i = ((u_i - mu) . v)^2 on the given coordinates, shape (n,).

    updates: (n, d); coordinates: long tensor of column indices (None = all). mu is the mean of the (subsampled)
    updates and v the top right singular vector of the centred matrix (its sign does not matter).
    """
    sub = updates if coordinates is None else updates[:, coordinates]
    centred = sub - sub.mean(dim=0, keepdim=True)
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    return (centred @ v).square()


def dnc_select(
    updates: torch.Tensor,
    *,
    num_malicious: int,
    iterations: int = 5,
    subsample_dim: int = 10_000,
    filter_frac: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask (n,) of the updates (n, d) that no iteration marked as bad.

    Each of the ``iterations`` draws b = min(``subsample_dim``, d) distinct coordinates on the CPU from
    ``generator`` (all d without a draw when b >= d), scores the updates with :func:`dnc_outlier_scores` and marks
    the floor(c f) highest scores (ties: the higher index is marked) as bad. Needs n >= floor(c f) + 1. The mask
    can be empty when the iterations mark different updates.
    """
    n, d = updates.shape
    removed = dnc_removed_per_iteration(num_malicious, filter_frac)
    require_clients("DnC", n, removed + 1, "n >= floor(c*f)+1")
    good = torch.ones(n, dtype=torch.bool, device=updates.device)
    if removed == 0:
        return good
    b = min(subsample_dim, d)
    for _ in range(iterations):
        coordinates = None if b >= d else torch.randperm(d, generator=generator)[:b].sort().values
        scores = dnc_outlier_scores(updates, None if coordinates is None else coordinates.to(updates.device))
        order = torch.sort(scores, stable=True).indices  # ascending; the last `removed` are bad
        good[order[n - removed :]] = False
    return good


def dnc_aggregate(updates: torch.Tensor, *, num_malicious: int, **select: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform mean of the updates (n, d) kept by :func:`dnc_select`; ``select``: its other keys (``iterations``,
    ``subsample_dim``, ``filter_frac``, ``generator``), with its defaults.

    Returns the aggregate (d,) and the weights (n,): 1/|kept| for the kept updates, 0 for the others; the zero
    update and zero weights when nothing is kept.
    """
    good = dnc_select(updates, num_malicious=num_malicious, **select)
    count = int(good.sum())
    weights = good.to(updates.dtype) / max(count, 1)
    return weights @ updates, weights



class DnCParams(Params):
    """``[defense]`` keys of ``strategy = "dnc"``."""

    num_malicious: int | None = Field(
        None, ge=0, le=100_000,
        description="f the rule assumes (default: the attack's expected attackers per round, else 0); at most 100,000."
    )
    iterations: int | None = Field(None, ge=1, le=1000,
                                   description="iterations, 1..1,000 (default: the rule's own, 5).")
    subsample_dim: int = Field(10_000, ge=1, le=100_000_000,
                               description="coordinates sampled per iteration, 1..1e8 (capped at the model size).")
    filter_frac: float = Field(1.0, gt=0, le=100,
                               description="c in (0, 100]: removes c x num_malicious updates per iteration.")

class DnC(RobustStrategy):
    """Divide-and-Conquer: remove the updates with the largest projections on the top singular vector of
    randomly subsampled, centred updates; average the rest.

    Parameters
    ----------
    num_malicious : int (default: 0)
        f, the number of malicious clients assumed per round (config key ``defense.num_malicious``).
    iterations : int (default: 5)
        Number of random coordinate subsets (the paper's niters; config key ``defense.iterations``).
    subsample_dim : int (default: 10000)
        b, coordinates drawn per iteration, capped at the model size d (config key ``defense.subsample_dim``).
    filter_frac : float (default: 1.0)
        c > 0; each iteration removes floor(c f) updates (config key ``defense.filter_frac``).
    seed : int (default: 0)
        Seeds the torch.Generator the coordinate subsets are drawn from (config key ``defense.seed``); the
        stream continues across rounds.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    n >= floor(c f) + 1 valid updates (:attr:`min_valid_updates`); a round with fewer is skipped and recorded.
    The paper assumes f < n/2 so that the top singular direction is the malicious one. Works on updates. An
    update survives only if no iteration marks it (the good sets are intersected), so between n - iterations *
    floor(c f) and n - floor(c f) updates are kept; the kept ones are averaged uniformly.

    Differences
    -----------
    The good sets of the iterations are intersected starting from all n updates. When b >= d every iteration
    uses all coordinates (nothing is drawn), so the iterations agree. The removal count floor(c f) rounds c f
    down. ``num-examples`` is ignored, as in the paper. If the intersection is empty the global model stays.
    Flower has no DnC strategy.
    """

    Params = DnCParams
    family = "selection"
    description = 'Divide-and-Conquer: SVD outlier filtering (Shejwalkar & Houmansadr 2021)'

    def __init__(
        self,
        *,
        num_malicious: int = 0,
        iterations: int = 5,
        subsample_dim: int = 10_000,
        filter_frac: float = 1.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.num_malicious = check_int("DnC", "num_malicious", num_malicious, low=0)
        self.iterations = check_int("DnC", "iterations", iterations, low=1)
        self.subsample_dim = check_int("DnC", "subsample_dim", subsample_dim, low=1)
        self.filter_frac = check_float("DnC", "filter_frac", filter_frac, low=0.0, low_open=True)
        self.seed = check_int("DnC", "seed", seed, low=0)
        self.generator = torch.Generator().manual_seed(self.seed)
        super().__init__(**kwargs)
        self.min_valid_updates = dnc_removed_per_iteration(self.num_malicious, self.filter_frac) + 1

    def describe(self) -> str:
        return (
            f"DnC(num_malicious={self.num_malicious}, iterations={self.iterations}, "
            f"subsample_dim={self.subsample_dim}, filter_frac={self.filter_frac:g}, seed={self.seed}; "
            f"n >= floor(c*f)+1 = {self.min_valid_updates})"
        )

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dnc_aggregate(updates, num_malicious=self.num_malicious, iterations=self.iterations,
                             subsample_dim=self.subsample_dim, filter_frac=self.filter_frac, generator=self.generator)
