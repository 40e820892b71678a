"""The simulated devices of a federation: who is reachable in a round, who fails mid-round, when each reply arrives.

Every draw is seeded by the experiment seed (and the round), so the same config gives the same dropouts, failures
and speeds in every process and after ``--resume``; nothing sleeps: arrival times are simulated seconds.

- Dropout (``clients.dropout`` = p): a sampled client is unreachable at the start of a round with probability p,
  independently per (round, client), so the round is sent to the others only; an availability trace
  (``clients.availability``) marks (round, client) pairs unreachable exactly. This is the client-dropout model of
  Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning", CCS 2017, and of the
  trace-driven availability of Lai et al., "FedScale", ICML 2022; unlike FedScale, the seeded sample is not redrawn
  from the available clients: the cohort shrinks, which is what a robust rule's n >= 2f + 3 faces.
- Mid-round failure (``clients.failure`` = p): the client got the model and trained, but its reply is lost.
- Stragglers: client i computes at s_i examples per simulated second (drawn once, log-normal with median
  ``clients.speed`` and sigma ``clients.speed_sigma``, or read from ``clients.speeds``); its reply arrives after
  work_i / s_i seconds, work_i = local_epochs x its partition size (one pass under FedSGD). With ``train.deadline``
  = D, replies arriving after D are dropped (the synchronous deadline of Bonawitz et al., "Towards Federated
  Learning at Scale: System Design", MLSys 2019). A round lasts D when a reply was late or lost and D is set, else
  until its last reply.
- Malicious clients stay online and on time unless ``clients.attackers_drop`` (an attacker controls its devices).

Hand-written (no library simulates this inside Flower's message loop): a few seeded NumPy draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# independent streams of the experiment seed for each kind of draw (as schedule.draw_malicious does)
_DROPOUT_STREAM, _FAILURE_STREAM, _SPEED_STREAM = 0xD50F, 0xFA11, 0x5BEED


@dataclass(frozen=True)
class Federation:
    """The devices of one run. ``unavailable``: (round, client) pairs the trace marks offline; ``speeds``: examples
    per simulated second, one per client; ``protected``: clients the environment never drops or delays."""

    seed: int
    num_clients: int
    dropout: float = 0.0
    failure: float = 0.0
    unavailable: frozenset[tuple[int, int]] = frozenset()
    speeds: tuple[float, ...] = ()
    deadline: float | None = None
    protected: frozenset[int] = frozenset()

    def absent(self, server_round: int, sampled: list[int]) -> dict[int, str]:
        """The sampled clients that cannot be reached at the start of ``server_round``, each with the reason.

        >>> Federation(seed=0, num_clients=4, unavailable=frozenset({(1, 2)})).absent(1, [0, 2, 3])
        {2: 'dropped: unavailable in the trace'}
        """
        out: dict[int, str] = {}
        draws = self._uniform(_DROPOUT_STREAM, server_round) if self.dropout else None
        for pid in sampled:
            if pid in self.protected:
                continue
            if (server_round, pid) in self.unavailable:
                out[pid] = "dropped: unavailable in the trace"
            elif draws is not None and draws[pid] < self.dropout:
                out[pid] = f"dropped: unreachable at the start of the round (clients.dropout={self.dropout:g})"
        return out

    def fails(self, server_round: int, pid: int) -> bool:
        """Whether ``pid``'s reply of ``server_round`` is lost mid-round."""
        if not self.failure or pid in self.protected:
            return False
        return bool(self._uniform(_FAILURE_STREAM, server_round)[pid] < self.failure)

    def arrival(self, pid: int, work: float) -> float:
        """Simulated seconds until ``pid``'s reply arrives, for ``work`` examples processed.

        >>> Federation(seed=0, num_clients=2, speeds=(100.0, 10.0)).arrival(1, work=50)
        5.0
        """
        return work / self.speeds[pid]

    def late(self, pid: int, arrival: float) -> bool:
        """Whether a reply arriving at ``arrival`` misses the deadline (never for a protected client)."""
        return self.deadline is not None and arrival > self.deadline and pid not in self.protected

    def _uniform(self, stream: int, server_round: int) -> np.ndarray:
        return np.random.default_rng([self.seed, stream, server_round]).random(self.num_clients)


def draw_speeds(seed: int, num_clients: int, *, median: float, sigma: float,
                given: dict[int, float] | None = None) -> tuple[float, ...]:
    """Each client's speed: log-normal with ``median`` and ``sigma`` (all ``median`` when sigma is 0), then the
    ``given`` ones (a speeds file) in their place.

    >>> draw_speeds(0, 3, median=10.0, sigma=0.0, given={1: 2.5})
    (10.0, 2.5, 10.0)
    """
    if sigma:
        speeds = median * np.exp(sigma * np.random.default_rng([seed, _SPEED_STREAM]).standard_normal(num_clients))
    else:
        speeds = np.full(num_clients, median)
    for pid, speed in (given or {}).items():
        speeds[pid] = speed
    return tuple(float(s) for s in speeds)
