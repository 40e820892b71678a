"""The threat model of a run: which clients are malicious and when they act.

Malicious partition ids are ``attack.client_ids`` or ``round(attack.fraction * data.num_clients)`` ids drawn
with a generator seeded by the experiment seed (independent of the sampling and training streams), so the same
config always attacks with the same clients; they are recorded in clients.csv and summary.json.
"""

from __future__ import annotations

import numpy as np

from fedsec.config import Experiment


def malicious_clients(experiment: Experiment) -> list[int]:
    """Sorted malicious partition ids (empty without an attack)."""
    attack, n = experiment.attack, experiment.data.num_clients
    if attack.kind == "none":
        return []
    if attack.client_ids is not None:
        return sorted(attack.client_ids)
    k = int(round(attack.fraction * n))
    rng = np.random.default_rng([experiment.seed, 0xA77AC])
    return sorted(int(c) for c in rng.choice(n, size=k, replace=False))


def attack_active(experiment: Experiment, server_round: int) -> bool:
    """Whether attackers act in ``server_round`` (attack.start_round..attack.end_round)."""
    attack = experiment.attack
    if attack.kind == "none":
        return False
    end = attack.end_round if attack.end_round is not None else experiment.rounds
    return attack.start_round <= server_round <= end
