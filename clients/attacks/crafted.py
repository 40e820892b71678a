"""Attacks that craft one malicious update from benign updates: ALIE, IPM, min-max, min-sum.

What the attackers know decides the benign rows (``attack.knowledge``): "colluding" (default): the honest
updates the round's sampled attackers compute on their own data, shared among them (:mod:`.collusion`);
"omniscient": every honest update of the round, realised on the server just before aggregation
(:mod:`fedsec.omniscient`). Every attacker of a round sends the same crafted update, as in the papers.
"""

from __future__ import annotations

import torch

from fedsec.config import AttackConfig

from .alie import alie_update, alie_z
from .ipm import ipm_update
from .minmax import optimised_update


def craft_update(config: AttackConfig, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> torch.Tensor:
    """The malicious update (d,) from benign rows (m, d); ``num_clients`` / ``num_attackers`` are the round's n, f."""
    match config.kind:
        case "alie":
            z = config.z if config.z is not None else alie_z(num_clients, num_attackers)
            return alie_update(benign, z)
        case "ipm":
            return ipm_update(benign, config.epsilon)
        case "minmax" | "minsum":
            return optimised_update(benign, objective=config.kind, perturbation=config.perturbation)
    raise ValueError(f"attack.kind={config.kind!r} does not craft from benign updates")
