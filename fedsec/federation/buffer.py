"""FedBuff's buffer (Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek and Huba, "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022, https://arxiv.org/abs/2106.06639, Algorithm 1): C clients train at once
(``train.clients_per_round``), each on the model of the server step it was dispatched at; the server takes a step
every K arrivals (``server.buffer_size``), each update discounted by its staleness t (server steps since its
dispatch) as (1 + t)^-a (``server.staleness_exponent``; the paper's 1/sqrt(1 + t) at a = 0.5), and dispatches as
many new clients as arrived.

Departures: the paper's server step is w - eta_g (1/K) sum s(t_i) Delta_i; here each discounted update is handed to
``defense.strategy`` (and ``server.optimizer`` after it) as if it were a fresh update of the current model, so any
robust rule runs on the buffer (FedAvg with ``defense.weighting = "uniform"`` is the paper's step at eta_g = 1).
Clients are drawn uniformly from the idle ones (seeded per step), not by a device's own check-in. Hand-written:
Flower's simulation engine runs synchronous rounds only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_DISPATCH_STREAM = 0xFB0F


def staleness_weight(staleness: int, exponent: float) -> float:
    """(1 + t)^-a: the discount of an update ``staleness`` server steps old.

    >>> staleness_weight(0, 0.5), staleness_weight(3, 0.5), staleness_weight(3, 0.0)
    (1.0, 0.5, 1.0)
    """
    return float((1.0 + staleness) ** -exponent)


def dispatch(seed: int, step: int, idle: list[int], want: int) -> list[int]:
    """The ``want`` clients dispatched at server step ``step``: a seeded draw from the ``idle`` ones, sorted.

    >>> dispatch(0, 1, [0, 1, 2, 3], 4)
    [0, 1, 2, 3]
    >>> len(dispatch(0, 2, [4, 5, 6], 2))
    2
    """
    if want <= 0 or not idle:
        return []
    order = np.random.default_rng([seed, _DISPATCH_STREAM, step]).permutation(len(idle))
    return sorted(idle[i] for i in order[:want])


@dataclass(frozen=True)
class BufferSpec:
    """A FedBuff run: K arrivals per server step, the staleness exponent a, C clients in flight."""

    size: int
    staleness_exponent: float
    concurrency: int
