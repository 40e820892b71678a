"""A Little Is Enough (ALIE).

Baruch, Baruch and Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed Learning", NeurIPS 2019
(https://arxiv.org/abs/1902.06156). Every attacker sends mean - z * std of the benign updates it knows
(coordinate-wise), small enough per coordinate to pass robust rules yet consistently biased. Default z from n
clients and f attackers as in the paper: s = floor(n/2 + 1) - f supporters are needed, and
z = Phi^-1((n - s) / n); ``attack.z`` overrides it.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch


def alie_z(n: int, f: int) -> float:
    """The paper's z_max for n clients of which f are attackers (0 when the attackers cannot shift the median)."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0 < p < 1:
        return 0.0
    return NormalDist().inv_cdf(p)


def alie_update(benign: torch.Tensor, z: float) -> torch.Tensor:
    """mean - z * std over the rows of ``benign`` (m, d); returns (d,). With one row, std is 0."""
    mean = benign.mean(dim=0)
    if benign.shape[0] < 2:
        return mean
    return mean - z * benign.std(dim=0, unbiased=True)
