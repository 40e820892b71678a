"""The seeded schedule of a run: who trains in which round, with which seed, who is malicious and when.

Built once by the run plan (:mod:`fedsec.plan`) and handed to the server and the clients, which never work it out
again. Malicious partition ids are ``attack.client_ids`` or ``round(attack.fraction * data.num_clients)`` ids drawn
with a generator seeded by the experiment seed (independent of the sampling and training streams), so the same
config always attacks with the same clients; they are recorded in clients.csv and summary.json. The clients of
round r are drawn with a generator seeded by (seed, r), so every process that holds the schedule agrees on them:
exactly ``clients_per_round`` of them (``sampling="fixed"``), or each client independently with probability
q = clients_per_round / num_clients (``sampling="poisson"``, what the central-DP accountants analyse; a round's
cohort varies and may be empty). :mod:`fedsec.privacy.sampling` checks its inputs and calls these same draws.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


def sample_partitions(seed: int, server_round: int, num_clients: int, k: int) -> list[int]:
    """The partitions that train in ``server_round``: k of num_clients, seeded by (seed, round), sorted."""
    return list(_sample(seed, server_round, num_clients, k))


@functools.lru_cache(maxsize=4096)
def _sample(seed: int, server_round: int, num_clients: int, k: int) -> tuple[int, ...]:
    rng = np.random.default_rng([seed, server_round])
    return tuple(sorted(int(p) for p in rng.choice(num_clients, size=k, replace=False)))


def poisson_partitions(seed: int, server_round: int, num_clients: int, q: float) -> list[int]:
    """The partitions that train in ``server_round`` under Poisson sampling: each of num_clients independently
    with probability q, seeded by (seed, round); sorted, possibly empty."""
    return list(_poisson(seed, server_round, num_clients, q))


@functools.lru_cache(maxsize=4096)
def _poisson(seed: int, server_round: int, num_clients: int, q: float) -> tuple[int, ...]:
    rng = np.random.default_rng([seed, server_round])
    return tuple(int(p) for p in np.flatnonzero(rng.random(num_clients) < q))


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1, dtype=np.uint64)[0] >> 1)


def draw_malicious(seed: int, num_clients: int, *, fraction: float, client_ids: list[int] | None) -> list[int]:
    """Sorted malicious partition ids: the given ids, or round(fraction * num_clients) drawn from the seed."""
    if client_ids is not None:
        return sorted(client_ids)
    k = int(round(fraction * num_clients))
    rng = np.random.default_rng([seed, 0xA77AC])
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


@dataclass(frozen=True)
class Schedule:
    """Rounds, sampling, client seeds and the attack window of one run (small: it travels with every message)."""

    seed: int
    rounds: int
    num_clients: int
    clients_per_round: int
    malicious: tuple[int, ...] = ()
    attack_start: int = 1
    attack_end: int | None = None  # None: the last round
    sampling: str = "fixed"  # "fixed" (exactly clients_per_round) or "poisson" (rate clients_per_round / num_clients)

    @property
    def sample_rate(self) -> float:
        """q = clients_per_round / num_clients: each client's chance to train in a round."""
        return self.clients_per_round / self.num_clients

    def sampled(self, server_round: int) -> list[int]:
        """The partitions that train in ``server_round`` (sorted; under Poisson sampling possibly empty)."""
        if self.sampling == "poisson":
            return poisson_partitions(self.seed, server_round, self.num_clients, self.sample_rate)
        return sample_partitions(self.seed, server_round, self.num_clients, self.clients_per_round)

    def client_seed(self, server_round: int, partition_id: int) -> int:
        return client_seed(self.seed, server_round, partition_id)

    def attack_active(self, server_round: int) -> bool:
        """Whether attackers act in ``server_round`` (attack.start_round..attack.end_round)."""
        if not self.malicious:
            return False
        end = self.attack_end if self.attack_end is not None else self.rounds
        return self.attack_start <= server_round <= end

    def is_malicious(self, partition_id: int | None) -> bool:
        return partition_id in self.malicious

    def attacker_rank(self, partition_id: int) -> int:
        """Position of ``partition_id`` among the malicious ids (0..f-1)."""
        return self.malicious.index(partition_id)

    def sampled_attackers(self, server_round: int) -> list[int]:
        """The attackers sampled in ``server_round`` (colluders know who of them was picked)."""
        return sorted(set(self.sampled(server_round)) & set(self.malicious))

    def participation(self, partition_id: int) -> int:
        """In how many of the planned rounds ``partition_id`` is sampled."""
        return sum(partition_id in self.sampled(r) for r in range(1, self.rounds + 1))
