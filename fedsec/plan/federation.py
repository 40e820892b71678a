"""The run's simulated devices from ``[clients]`` and ``train.deadline`` (:mod:`fedsec.federation`): the trace and
speed files are read and checked here, once, so a bad file stops the run before it starts."""

from __future__ import annotations

from fedsec.config import ConfigError, Experiment
from fedsec.federation import BufferSpec, Federation, draw_speeds, read_availability, read_speeds


def configured(e: Experiment) -> bool:
    """Whether the config departs from the ideal federation (every sampled client answers, at once)."""
    c = e.clients
    return bool(c.dropout or c.failure or c.availability or c.speeds or c.speed_sigma or e.train.deadline)


def build_federation(e: Experiment, malicious: tuple[int, ...]) -> Federation | None:
    """The run's :class:`Federation`, or None for the ideal federation (no hook, no extra columns); FedBuff always
    has one (its arrivals are timed by the devices' speeds)."""
    if not configured(e) and e.server.aggregation != "fedbuff":
        return None
    c, n = e.clients, e.data.num_clients
    unavailable = read_availability(c.availability, num_clients=n, rounds=e.rounds) if c.availability else frozenset()
    given = read_speeds(c.speeds, num_clients=n) if c.speeds else None
    return Federation(seed=e.seed, num_clients=n, dropout=c.dropout, failure=c.failure, unavailable=unavailable,
                      speeds=draw_speeds(e.seed, n, median=c.speed, sigma=c.speed_sigma, given=given),
                      deadline=e.train.deadline, protected=frozenset() if c.attackers_drop else frozenset(malicious))


def build_buffer(e: Experiment, min_updates: int) -> BufferSpec | None:
    """FedBuff's buffer (``server.aggregation = "fedbuff"``), checked against what it cannot keep, or None."""
    server, train = e.server, e.train
    if server.aggregation != "fedbuff":
        return None
    assert server.buffer_size is not None  # the section's own check
    k, c = server.buffer_size, train.clients_per_round
    if k > c:
        raise ConfigError(f"server.buffer_size={k}: must be <= train.clients_per_round={c}, the clients in flight")
    if k < min_updates:
        raise ConfigError(f"server.buffer_size={k}: {e.defense.strategy!r} needs at least {min_updates} updates per "
                          "aggregation, and FedBuff aggregates the buffer; raise buffer_size")
    refused = {
        "privacy.mode": ("central" if e.privacy.mode == "central" else None,
                         "central DP's accountant analyses synchronous rounds of Poisson-sampled clients, not a "
                         "buffer of asynchronous arrivals"),
        "encryption.scheme": ("ckks" if e.encryption.scheme == "ckks" else None,
                              "a stale update is re-based on the current model and discounted, which ciphertexts "
                              "of the old model do not allow"),
        "train.deadline": (train.deadline, "FedBuff waits for K arrivals, it has no round deadline"),
        "train.sampling": ("poisson" if e.client_sampling() == "poisson" else None,
                           "FedBuff dispatches clients as others arrive"),
    }
    for key, (value, why) in refused.items():
        if value is not None:
            raise ConfigError(f"{key}={value!r}: not with server.aggregation='fedbuff': {why}")
    return BufferSpec(size=k, staleness_exponent=server.staleness_exponent, concurrency=c)
