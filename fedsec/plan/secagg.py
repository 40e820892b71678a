"""``encryption.scheme = "secagg+"`` checked against what Flower's SecAgg+ cannot do, and its parameters."""

from __future__ import annotations

from fedsec.clients.attacks import Attack
from fedsec.config import ConfigError, Experiment
from fedsec.crypto.secaggplus import SecAggPlusParams

from .checks import used_weighting


def check_secagg(e: Experiment, attack: Attack) -> SecAggPlusParams | None:
    """The run's SecAgg+ parameters, or None when it does not use SecAgg+; a config SecAgg+ cannot run is refused
    with the reason (the server sees only the unmasked weighted average)."""
    if e.encryption.scheme != "secagg+":
        return None
    why_not = {
        "defense.strategy": (e.defense.strategy if e.defense.strategy != "fedavg" else None,
                             "robust rules need each client's update, and SecAgg+ reveals only the sum; use 'fedavg'"),
        "attack.knowledge": ("omniscient" if attack.omniscient else None,
                             "the omniscient attack is realised on the server, which cannot read masked updates; use "
                             "knowledge='colluding'"),
        "attack.kind": ("collude_with_server" if e.attack.kind == "collude_with_server" else None,
                        "the curious-server attack is modelled for the CKKS key authority (docs/encryption.md)"),
        "privacy.mode": ("central" if e.privacy.mode == "central" else None,
                         "DP-FedAvg clips each update on the server, which SecAgg+ hides; use privacy.mode='local'"),
        "server.aggregation": ("fedbuff" if e.server.aggregation == "fedbuff" else None,
                               "FedBuff re-bases and discounts each stale update, which masking hides"),
        "backend.messages": ("cohort" if e.backend.messages == "cohort" else None,
                             "SecAgg+ runs between Flower nodes, so each client needs its own node; use 'per_client' "
                             "or 'auto'"),
        "train.deadline": (e.train.deadline, "a late masked vector is already in the sum when the deadline passes; "
                           "clients.failure simulates replies that never arrive"),
        "train.clients_per_round": (e.train.clients_per_round if e.train.clients_per_round < 3 else None,
                                    "SecAgg+ needs at least 3 clients a round (2 reveal each other's update)"),
    }
    for key, (value, why) in why_not.items():
        if value is not None:
            raise ConfigError(f"{key}={value!r}: not with encryption.scheme='secagg+': {why}")
    enc = e.encryption
    return SecAggPlusParams(num_shares=enc.num_shares, reconstruction_threshold=enc.reconstruction_threshold,
                            clipping_range=enc.clipping_range, quantization_range=enc.quantization_range,
                            weighted=used_weighting(e) == "reported")
