"""Inner-product manipulation (IPM).

Xie, Koyejo and Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product Manipulation", UAI 2019
(https://arxiv.org/abs/1903.03936). Attackers send -epsilon times the mean of the benign updates, so that the
aggregate's inner product with the true update turns negative. Default ``epsilon = 0.5`` (the paper uses 0.1
against Krum and large values, e.g. 100, against median-type rules).
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsec.registry import Params

from .base import Attack


def ipm_update(benign: torch.Tensor, epsilon: float) -> torch.Tensor:
    """-epsilon * mean over the rows of ``benign`` (m, d); returns (d,)."""
    return -epsilon * benign.mean(dim=0)


class IPMParams(Params):
    """``[attack]`` keys of ``kind = "ipm"``."""

    epsilon: float = Field(0.5, gt=0, le=1e6, description="scale of the negated benign mean, in (0, 1e6].")


class IPM(Attack):
    """Every attacker of a round sends the update crafted from the benign updates it knows (``knowledge``)."""

    kind = "ipm"
    description = 'inner-product manipulation (Xie et al. 2019): -epsilon x mean of benign updates (epsilon)'
    Params = IPMParams
    crafts_from_benign = True

    def craft(self, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> torch.Tensor:
        return ipm_update(benign, self.params.epsilon)
