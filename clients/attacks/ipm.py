"""Inner-product manipulation (IPM).

Xie, Koyejo and Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product Manipulation", UAI 2019
(https://arxiv.org/abs/1903.03936). Attackers send -epsilon times the mean of the benign updates, so that the
aggregate's inner product with the true update turns negative. Default ``epsilon = 0.5`` (the paper uses 0.1
against Krum and large values, e.g. 100, against median-type rules).
"""

from __future__ import annotations

import torch


def ipm_update(benign: torch.Tensor, epsilon: float) -> torch.Tensor:
    """-epsilon * mean over the rows of ``benign`` (m, d); returns (d,)."""
    return -epsilon * benign.mean(dim=0)
