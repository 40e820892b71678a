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
from pydantic import Field

from fedsec.registry import Params

from .base import Attack


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


class ALIEParams(Params):
    """``[attack]`` keys of ``kind = "alie"``."""

    z: float | None = Field(None, ge=-1e3, le=1e3,
                            description="z in [-1000, 1000] (default: the paper's z_max from n and f).")


class ALIE(Attack):
    """Every attacker of a round sends the update crafted from the benign updates it knows (``knowledge``)."""

    kind = "alie"
    description = 'A Little Is Enough (Baruch et al. 2019): mean - z*std of benign updates (z: default from n, f)'
    Params = ALIEParams
    crafts_from_benign = True

    def craft(self, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> torch.Tensor:
        z = self.params.z if self.params.z is not None else alie_z(num_clients, num_attackers)
        return alie_update(benign, z)
