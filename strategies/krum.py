"""Krum: keep the single update closest to its neighbours.

Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
Descent", NeurIPS 2017, https://proceedings.neurips.cc/paper/2017/hash/f4b9ec30ad9f68f89b29639786cb62ef-Abstract.html
(arXiv: https://arxiv.org/abs/1703.02757). Krum is :class:`~fedsec.strategies.multikrum.MultiKrum` with m = 1;
this module adds no logic.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from fedsec.registry import Params

from .multikrum import MultiKrum


class KrumParams(Params):
    """``[defense]`` keys of ``strategy = "krum"``."""

    num_malicious: int | None = Field(
        None, ge=0, le=100_000,
        description="f the rule assumes (default: the attack's expected attackers per round, else 0); at most 100,000."
    )

class Krum(MultiKrum):
    """Krum: the aggregate is the one update with the lowest Krum score.

    Parameters
    ----------
    num_malicious : int (default: 0)
        f, the number of Byzantine clients the rule assumes per round (config key ``defense.num_malicious``).
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    n >= 2f+3 valid updates (2f+2 < n); a round with fewer is skipped and recorded. Each update is scored by
    the sum of squared L2 distances to its n - f - 2 nearest other updates (as Flower's ``Krum``). Works on
    updates; selection by distances is the same on client weights.

    Differences
    -----------
    As :class:`~fedsec.strategies.multikrum.MultiKrum` with m = 1: Flower scores ``max(1, n - f - 2)``
    neighbours and never refuses a round; fedsec skips rounds with n < 2f+3. Otherwise the result is Flower's.
    """

    Params = KrumParams
    family = "krum"
    description = 'Krum: the update closest to its n-f-2 nearest neighbours (Blanchard et al. 2017)'
    uses_counts = False  # one update is selected: its count does not matter

    def __init__(self, *, num_malicious: int = 0, **kwargs: Any) -> None:
        super().__init__(num_malicious=num_malicious, num_selected=1, **kwargs)

    def describe(self) -> str:
        return f"Krum(num_malicious={self.num_malicious}; n >= 2f+3 = {self.min_valid_updates})"
