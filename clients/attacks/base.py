"""What an attack can do to a malicious client's round, and the context it gets."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttackContext:
    """One malicious client in one round."""

    server_round: int
    partition_id: int
    attacker_rank: int  # position of this client among the malicious ids (0..f-1)
    num_classes: int
    data_max: float  # largest input value of the dataset (a "white" pixel after normalisation)
    generator: torch.Generator  # seeded by (seed, round, partition id)


class Attack:
    """Base attack: honest behaviour. Data-poisoning attacks override :meth:`poison_data`, model-poisoning
    attacks :meth:`poison_update`; both may."""

    kind = "none"

    def poison_data(self, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The local training data the attacker trains on."""
        return x, y

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        """The update (trained - global arrays, flattened) the attacker sends."""
        return update
