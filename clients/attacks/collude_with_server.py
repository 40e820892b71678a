"""Collusion with a curious server: k clients help the server read one honest client's update.

The attack every secure-aggregation scheme that releases a sum is exposed to (Bonawitz et al., "Practical Secure
Aggregation for Privacy-Preserving Machine Learning", CCS 2017, section 1: the sum of the honest inputs is what any
set of colluding clients and server learn; Pasquini, Francati and Ateniese, "Eluding Secure Aggregation in Federated
Learning via Model Inconsistency", CCS 2022, for a server that shapes what is aggregated): the server keeps only the
victim's reply and the colluders' in a round (it withholds the other honest replies, as a network loss would), the
colluders send a zero update (under CKKS a signed Enc(0)), and the released sum is the victim's update alone. The
colluders are the run's malicious clients (``attack.fraction`` / ``attack.client_ids``); the server's side is the
round hook :mod:`fedsec.hooks.collusion`, which measures what it recovered against the victim's true update.

Under the CKKS key authority (``encryption.scheme = "ckks"``) the authority releases sums of at least
``encryption.min_clients`` signed members, once per round: min_clients - 1 colluders suffice. Central DP on the
released sum (``privacy.mode = "central"``) leaves the server the victim's update plus the noise; in plaintext the
server reads the victim's update without any help.

Default: ``victim`` = the lowest partition id that is not a colluder.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsec.registry import Params

from .base import Attack, AttackContext


def zero_update(update: torch.Tensor) -> torch.Tensor:
    """The colluder's contribution: nothing (the global model sent back), so that the sum is the victim's.

    >>> zero_update(torch.tensor([1.0, -2.0])).tolist()
    [0.0, 0.0]
    """
    return torch.zeros_like(update)


class ColludeWithServerParams(Params):
    """``[attack]`` keys of ``kind = "collude_with_server"``."""

    victim: int | None = Field(None, ge=0, le=10_000_000, description="The honest client whose update the server "
                               "recovers (default: the lowest partition id that is not a colluder).")


class ColludeWithServer(Attack):
    """Colluding clients that send a zero update so that the released sum is the victim's."""

    kind = "collude_with_server"
    description = ("k colluders send a zero update and a curious server keeps only theirs and the victim's: the "
                   "released sum is the victim's update (victim)")
    Params = ColludeWithServerParams

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return zero_update(update)
