"""Mimic: every attacker copies one honest client's update.

Karimireddy, He and Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via Bucketing", ICLR 2022
(https://arxiv.org/abs/2006.09365), Section 6 / Appendix "Mimic attack". Under heterogeneous data a robust rule
that discards outliers keeps the majority's view; by all sending a copy of one honest client i*, the attackers make
that client's data look like the majority and the rest like outliers, biasing the model towards i* without ever
sending an update that is not a real one. i* = argmax_i |z^T (x_i - mu)|, z the top principal direction of the
benign updates x_i (mean mu).

Departures: the paper estimates z online across rounds by power iteration over the stream of good updates; here z
is computed exactly, each round, from the benign updates the attackers know (``knowledge``: their own honest updates
when colluding, every honest update when omniscient), and the sign of z is not fixed, so i* is the most extreme
client along z in either direction. No keys.
"""

from __future__ import annotations

import torch

from .base import Attack


def mimic_target(benign: torch.Tensor) -> int:
    """i*: the row of ``benign`` (m, d) farthest from the mean along the top principal direction.

    >>> mimic_target(torch.tensor([[0.0, 0.0], [1.0, 0.1], [-3.0, 0.0]]))
    2
    """
    centered = benign - benign.mean(dim=0, keepdim=True)
    if benign.shape[0] < 2 or not bool(centered.abs().sum() > 0):
        return 0
    # the top right singular vector of the centered rows (m x d, m small): from the m x m Gram matrix's top
    # eigenvector u, z is proportional to centered^T u, so the projections centered @ z are proportional to Gram @ u
    gram = (centered.double() @ centered.double().T)
    _, vectors = torch.linalg.eigh(gram)
    projections = gram @ vectors[:, -1]
    return int(projections.abs().argmax())


class Mimic(Attack):
    """Every attacker of a round sends the update of the honest client :func:`mimic_target` picks."""

    kind = "mimic"
    description = "Mimic (Karimireddy et al. 2022): every attacker copies the most extreme honest update"
    crafts_from_benign = True

    def craft(self, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> torch.Tensor:
        return benign[mimic_target(benign)].clone()
