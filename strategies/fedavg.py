"""Federated Averaging over validated, stacked updates.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data", AISTATS 2017,
https://arxiv.org/abs/1602.05629. The aggregate is the example-weighted mean of the client updates; applied to the
global model it equals Flower's ``FedAvg`` (weighted mean of the client arrays), since the weights sum to 1.
"""

from __future__ import annotations

import torch

from fedsec.registry import NoParams

from .base import RobustStrategy


def fedavg_aggregate(updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Example-weighted mean.

    updates: (n, d); num_examples: (n,). Returns the aggregate (d,) and the weights (n,), which sum to 1.
    """
    weights = num_examples.to(updates.dtype) / num_examples.sum()
    return weights @ updates, weights


class FedAvg(RobustStrategy):
    """Federated Averaging (no defense): every valid update counts, weighted by its number of examples.

    Parameters
    ----------
    All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    No Byzantine clients: a single malicious update can move the aggregate arbitrarily far.

    Differences
    -----------
    Unlike Flower's ``FedAvg``, replies that are malformed or non-finite are rejected before averaging and
    recorded in :attr:`last_report` instead of being averaged in or failing the round.
    """

    Params = NoParams
    description = 'Federated Averaging, no defense (McMahan et al. 2017)'
    uses_counts = True

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fedavg_aggregate(updates, num_examples)
