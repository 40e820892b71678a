"""Nearest Neighbor Mixing (NNM): each update becomes the mean of its n - f nearest updates.

Allouah, Farhadkhani, Guerraoui, Gupta, Pinot and Stephan, "Fixing by Mixing: A Recipe for Optimal Byzantine ML
under Heterogeneity", AISTATS 2023, https://proceedings.mlr.press/v206/allouah23a.html
(arXiv: https://arxiv.org/abs/2302.01772). ByzFL ships it as ``byzfl.NNM``.
"""

from __future__ import annotations

import torch

from ..multikrum import pairwise_squared_distances
from .base import PreAggregator, PreOutput, half_of_n


def nearest_neighbor_mixing(updates: torch.Tensor, *, num_malicious: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace every row by the mean of its n - f nearest rows (L2), itself included.

    updates: (n, d) with n > 2f. Returns the mixed rows (n, d) in the updates' dtype and device, and the mixing
    matrix (n, n), float64: M[i, j] = 1/(n-f) when j is one of the n - f neighbours of i, else 0 (each row sums to
    1; mixed = M @ updates). Distances are :func:`~fedsec.strategies.multikrum.pairwise_squared_distances` (float64);
    a row is always its own neighbour, and among equally distant rows the lower index is taken first.
    """
    n = updates.shape[0]
    why = half_of_n("NNM", n, num_malicious)
    if why is not None:
        raise ValueError(why)
    k = n - num_malicious
    distances = pairwise_squared_distances(updates)
    distances.fill_diagonal_(-1.0)  # itself first, even next to an identical update
    neighbours = torch.sort(distances, dim=1, stable=True).indices[:, :k]
    mixing = torch.zeros((n, n), dtype=torch.float64, device=updates.device)
    mixing.scatter_(1, neighbours, 1.0 / k)
    return mixing.to(updates.dtype) @ updates, mixing


class NNM(PreAggregator):
    """Nearest Neighbor Mixing: each update is replaced by the mean of its n - f nearest updates.

    Parameters
    ----------
    num_malicious : int (default: the rule's f)
        f (``defense.pre`` entry key ``num_malicious``); each update is mixed with its n - f nearest neighbours.

    Assumptions
    -----------
    n > 2f (n >= 2f+1) updates, the paper's setting (fewer than half Byzantine); a round with fewer is skipped.
    Works on updates; mixing commutes with adding the global model. One row per client comes out, in order, so
    the rule after it still sees one row per client. Each row carries its own client's ``num-examples``.
    Client weight (``accepted``): sum over the rule's rows j of w_j / (n-f) for every row whose neighbourhood
    holds the client; a client that is no selected row's neighbour gets 0.

    Differences
    -----------
    ByzFL's ``NNM`` accepts any f < n; fedsec requires n > 2f, where the paper's guarantee holds. ByzFL breaks
    ties between equally distant neighbours by ``argpartition`` (arbitrary); fedsec keeps the row itself and then
    lower indices first, so a result never depends on the sort's internals. Equal to ByzFL's otherwise (tested on
    random inputs within 1e-6).
    """

    name = "nnm"
    description = "Nearest Neighbor Mixing: each update -> mean of its n-f nearest (Allouah et al. 2023)"

    def problem(self, n: int) -> str | None:
        return half_of_n("NNM", n, self.num_malicious)

    def transform(self, updates: torch.Tensor, num_examples: torch.Tensor, *, server_round: int) -> PreOutput:
        mixed, mixing = nearest_neighbor_mixing(updates, num_malicious=self.num_malicious)
        return PreOutput(mixed, num_examples, mixing)

    def describe(self) -> str:
        return f"NNM(f={self.num_malicious}; n >= 2f+1)"
