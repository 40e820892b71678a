"""The malicious client's round: an honest local training run with the attack's hooks around it.

- Data-poisoning attacks replace the local data before training (:meth:`Attack.poison_data`).
- Model-poisoning attacks replace the update after it (:meth:`Attack.poison_update`, on the flattened update =
  trained arrays - received global arrays).
- Crafting attacks (ALIE, IPM, min-max, min-sum) that collude build the update from the honest updates of the
  round's sampled attackers (:mod:`fedsec.clients.attacks.collusion`); omniscient ones train honestly and the
  server swaps in the crafted update before aggregation (:mod:`fedsec.clients.attacks.omniscient`).
- Attacks that adapt to a benign reference (``needs_benign_reference``: the constrained backdoor, Neurotoxin,
  constrain-and-scale) first train a clean update on their own data and get their sampled colluders' (the same
  board), train with their own objective term (:meth:`Attack.local_objective`) and finish with
  :meth:`poison_with_reference`.

The reply carries full arrays (global + malicious update), like an honest one.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord

from fedsec.arrays import model_to_record, record_to_vector, vector_to_record
from fedsec.protocol import NUM_EXAMPLES_KEY

from .attacks.base import AttackContext
from .attacks.collusion import find_board
from .honest import client_data, honest_train
from .spec import ClientSpec


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
    spec: ClientSpec, arrays: ArrayRecord, *, server_round: int, partition_id: int
) -> tuple[ArrayRecord, MetricRecord]:
    """The attacker's arrays and metrics for this round."""
    attack, schedule = spec.attack, spec.schedule
    data = client_data(spec)
    seed = schedule.client_seed(server_round, partition_id)
    ctx = AttackContext(
        server_round=server_round,
        partition_id=partition_id,
        attacker_rank=schedule.attacker_rank(partition_id),
        num_classes=data.data.num_classes,
        data_max=data.data_max,
        generator=torch.Generator().manual_seed(seed ^ 0xBAD),
    )
    benign = None
    if getattr(attack, "needs_benign_reference", False):  # the honest updates it knows: its own clean one, and its
        own = honest_update(spec, arrays, server_round, partition_id)  # sampled colluders' (from the board)
        colluders = schedule.sampled_attackers(server_round) or [partition_id]
        benign = colluders_updates(spec, arrays, server_round, colluders, (partition_id, own))
    model, metrics = honest_train(
        spec,
        arrays,
        server_round=server_round,
        partition_id=partition_id,
        poison=lambda x, y, _g: attack.poison_data(x, y, ctx),
        objective=attack.local_objective(benign),
    )
    global_vector = record_to_vector(arrays)
    update = record_to_vector(model_to_record(model)) - global_vector
    claimed = attack.report_examples(metrics[NUM_EXAMPLES_KEY])
    if claimed != metrics[NUM_EXAMPLES_KEY]:  # metadata poisoning (count_lie): the reply claims another count
        metrics[NUM_EXAMPLES_KEY] = int(claimed) if float(claimed).is_integer() and claimed < 2**63 else float(claimed)
    if attack.omniscient:  # the server crafts it from all honest updates
        return vector_to_record(global_vector + update, like=arrays), metrics
    if attack.colluding:
        colluders = schedule.sampled_attackers(server_round)
        benign = colluders_updates(spec, arrays, server_round, colluders, (partition_id, update))
        crafted = attack.craft(benign, num_clients=schedule.clients_per_round, num_attackers=len(colluders))
        return vector_to_record(global_vector + crafted, like=arrays), metrics
    if benign is not None:
        poisoned = attack.poison_with_reference(update, ctx, benign=benign)
    else:
        poisoned = attack.poison_update(update, ctx)
    return vector_to_record(global_vector + poisoned, like=arrays), metrics
