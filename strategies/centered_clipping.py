"""Centered clipping: clip the updates around a center that carries over from the previous round.

Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021,
https://proceedings.mlr.press/v139/karimireddy21a.html (arXiv: https://arxiv.org/abs/2012.10333).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_float, check_int
from ._linalg import distances_to, weighted_differences
from .base import RobustStrategy
from .norm_clipping import clip_scales


def centered_clip(
    updates: torch.Tensor, center: torch.Tensor, *, clip_norm: float, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``iterations`` steps of v <- v + (1/n) sum_i min(1, tau / ||u_i - v||) (u_i - v), starting at ``center``.

    updates: (n, d); center: (d,) (moved to the updates' device and dtype); tau = ``clip_norm``. Returns v (d,) and
    the weights (n,): (1/n) * min(1, tau / ||u_i - v||) of the last step, i.e. the client's share shrunk by its
    clipping factor (they sum to 1 only when nothing was clipped).

    Each step reads the updates twice, chunk by chunk, without an (n, d) temporary for u_i - v: once for the
    norms (:func:`fedsec.strategies._linalg.distances_to`), once for the weighted sum
    (:func:`~fedsec.strategies._linalg.weighted_differences`).
    """
    n = updates.shape[0]
    aggregate = center.to(device=updates.device, dtype=updates.dtype)
    weights = torch.full((n,), 1.0 / n, dtype=updates.dtype, device=updates.device)
    for _ in range(iterations):
        weights = clip_scales(distances_to(updates, aggregate), clip_norm) / n
        aggregate = aggregate + weighted_differences(updates, aggregate, weights)
    return aggregate, weights



class CenteredClippingParams(Params):
    """``[defense]`` keys of ``strategy = "centered_clipping"``."""

    clip_norm: float = Field(1.0, gt=0, le=1e6, description="L2 clipping bound, in (0, 1e6].")
    iterations: int | None = Field(None, ge=1, le=1000,
                                   description="iterations, 1..1,000 (default: the rule's own, 1).")

class CenteredClipping(RobustStrategy):
    """Centered clipping (CC): clip updates to radius tau around the previous round's aggregate update.

    Parameters
    ----------
    clip_norm : float (default: 1.0)
        tau > 0, the clipping radius around the center (config key ``defense.clip_norm``).
    iterations : int (default: 1)
        L >= 1, clipping steps per round (config key ``defense.iterations``); each step re-centres on the
        previous step's result.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    No f is configured and nothing is rejected: each update moves the aggregate by at most tau / n per step,
    which bounds what a minority of Byzantine clients can do when tau is of the order of the honest spread.
    Works on updates. The center is the aggregate update of the last aggregated round (zero before the first,
    and again whenever the model size changes); a skipped round leaves it unchanged. The reported weight is
    (1/n) min(1, tau / ||u_i - v||) of the last step.

    Differences
    -----------
    The paper clips worker *momenta* around the previous aggregated momentum; fedsec's clients send updates
    after local training, so the previous aggregate update plays the momentum's role (no momentum is added on
    the server). The average is uniform (``num-examples`` ignored), as in the paper. Flower has no CC strategy.
    """

    Params = CenteredClippingParams
    family = "robust_mean"
    description = 'centered clipping (Karimireddy et al. 2021)'

    def __init__(self, *, clip_norm: float = 1.0, iterations: int = 1, **kwargs: Any) -> None:
        self.clip_norm = check_float("CenteredClipping", "clip_norm", clip_norm, low=0.0, low_open=True)
        self.iterations = check_int("CenteredClipping", "iterations", iterations, low=1)
        self.center: torch.Tensor | None = None
        super().__init__(**kwargs)

    def describe(self) -> str:
        return f"CenteredClipping(clip_norm={self.clip_norm:g}, iterations={self.iterations})"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        center = self.center
        if center is None or center.shape != updates.shape[1:]:
            center = torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
        aggregate, weights = centered_clip(updates, center, clip_norm=self.clip_norm, iterations=self.iterations)
        self.center = aggregate.detach().clone()
        return aggregate, weights
