"""The malicious client's round: an honest local training run with the attack's hooks around it.

- Data-poisoning attacks replace the local data before training (:meth:`Attack.poison_data`).
- Model-poisoning attacks replace the update after it (:meth:`Attack.poison_update`, on the flattened update =
  trained arrays - received global arrays).
- Crafting attacks (ALIE, IPM, min-max, min-sum) with ``knowledge = "colluding"`` build the update from the honest
  updates of the round's sampled attackers (:mod:`fedsec.clients.attacks.collusion`); with "omniscient" the
  client trains honestly and the server swaps in the crafted update before aggregation.

The reply carries full arrays (global + malicious update), like an honest one.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord

from fedsec.clients.attacks.base import Attack, AttackContext
from fedsec.clients.attacks.collusion import find_board
from fedsec.clients.attacks.crafted import craft_update
from fedsec.clients.honest import ClientSpec, client_seed, honest_train
from fedsec.config import COLLUDING_ATTACKS
from fedsec.federated_data import worker_data
from fedsec.records import model_to_record, record_to_vector, vector_to_record
from fedsec.threat import malicious_clients


def sampled_attackers(spec: ClientSpec, server_round: int) -> list[int]:
    """The attackers sampled in ``server_round`` (colluders know who of them was picked)."""
    from fedsec.server_app import sample_partitions

    experiment = spec.experiment
    sampled = sample_partitions(
        experiment.seed, server_round, experiment.data.num_clients, experiment.train.clients_per_round
    )
    return sorted(set(sampled) & set(malicious_clients(experiment)))


def honest_update(spec: ClientSpec, arrays: ArrayRecord, server_round: int, partition_id: int) -> torch.Tensor:
    """The flattened honest update partition ``partition_id`` computes in ``server_round``."""
    model, _ = honest_train(spec, arrays, server_round=server_round, partition_id=partition_id)
    return record_to_vector(model_to_record(model)) - record_to_vector(arrays)


def colluders_updates(
    spec: ClientSpec, arrays: ArrayRecord, server_round: int, colluders: list[int], own: tuple[int, torch.Tensor]
) -> torch.Tensor:
    """Honest updates (m, d) of ``colluders``: from the board, else computed here (and posted)."""
    board = find_board(spec.board_name)
    own_id, own_update = own
    if board is not None:
        board.put.remote(server_round, own_id, own_update.numpy())
    rows = []
    for pid in colluders:
        if pid == own_id:
            rows.append(own_update)
            continue
        known = None
        if board is not None:
            import ray

            known = ray.get(board.get.remote(server_round, pid))
        if known is None:
            update = honest_update(spec, arrays, server_round, pid)
            if board is not None:
                board.put.remote(server_round, pid, update.numpy())
        else:
            update = torch.from_numpy(np.array(known, copy=True))
        rows.append(update)
    return torch.stack(rows)


def malicious_train(
    spec: ClientSpec, arrays: ArrayRecord, *, server_round: int, partition_id: int, attack: Attack, attacker_rank: int
) -> tuple[ArrayRecord, MetricRecord]:
    """The attacker's arrays and metrics for this round."""
    experiment = spec.experiment
    config = experiment.attack
    data = worker_data(spec.data_ref, experiment)
    seed = client_seed(experiment.seed, server_round, partition_id)
    ctx = AttackContext(
        server_round=server_round,
        partition_id=partition_id,
        attacker_rank=attacker_rank,
        num_classes=data.data.num_classes,
        data_max=data.data_max,
        generator=torch.Generator().manual_seed(seed ^ 0xBAD),
    )
    model, metrics = honest_train(
        spec,
        arrays,
        server_round=server_round,
        partition_id=partition_id,
        poison=lambda x, y, _g: attack.poison_data(x, y, ctx),
    )
    global_vector = record_to_vector(arrays)
    update = record_to_vector(model_to_record(model)) - global_vector
    if config.kind in COLLUDING_ATTACKS:
        if config.knowledge == "omniscient":  # the server crafts it from all honest updates
            return vector_to_record(global_vector + update, like=arrays), metrics
        colluders = sampled_attackers(spec, server_round)
        benign = colluders_updates(spec, arrays, server_round, colluders, (partition_id, update))
        crafted = craft_update(
            config, benign, num_clients=experiment.train.clients_per_round, num_attackers=len(colluders)
        )
        return vector_to_record(global_vector + crafted, like=arrays), metrics
    poisoned = attack.poison_update(update, ctx)
    return vector_to_record(global_vector + poisoned, like=arrays), metrics
