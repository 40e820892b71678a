"""The colluding attackers' rendezvous: a named Ray actor where they share the honest updates they compute.

Each attacker of a round needs the honest updates of all the round's sampled attackers. It reads them from the
board, and computes (and posts) the ones not there yet by training on that colluder's partition with that
colluder's seed: colluders share their data, and a client's honest update is deterministic, so whoever computes
it gets the same numbers. Nobody ever waits on another attacker, so fewer Ray actors than attackers cannot
deadlock, and the result does not depend on scheduling. The board lives in Ray's object store and works across
the nodes of a cluster; without Ray (or without a board) every attacker computes what it needs itself.
"""

from __future__ import annotations

import numpy as np


class CollusionBoard:
    """Honest updates by (round, partition id); keeps only the newest round."""

    def __init__(self) -> None:
        self.round = -1
        self.updates: dict[int, np.ndarray] = {}

    def get(self, server_round: int, partition_id: int) -> np.ndarray | None:
        return self.updates.get(partition_id) if server_round == self.round else None

    def put(self, server_round: int, partition_id: int, update: np.ndarray) -> None:
        if server_round > self.round:
            self.round, self.updates = server_round, {}
        if server_round == self.round:
            self.updates[partition_id] = update


def start_board(name: str):
    """Create the named board actor (from the driver); the driver kills it when the run ends (or it ends with the Ray
    session)."""
    import ray

    return ray.remote(num_cpus=0)(CollusionBoard).options(name=name, lifetime=None).remote()


def find_board(name: str | None):
    """The board actor named ``name`` from inside a worker, or None."""
    if not name:
        return None
    try:
        import ray

        return ray.get_actor(name) if ray.is_initialized() else None
    except ValueError:
        return None
