"""The malicious client's round: an honest local training run with the attack's hooks around it.

Data-poisoning attacks replace the local data before training (:meth:`Attack.poison_data`); model-poisoning
attacks replace the update after it (:meth:`Attack.poison_update`, on the flattened update = trained arrays -
received global arrays); the reply carries full arrays (global + poisoned update), like an honest one.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord

from fedsec.clients.attacks.base import Attack, AttackContext
from fedsec.clients.honest import ClientSpec, client_seed, honest_train, partition_of
from fedsec.federated_data import worker_data
from fedsec.records import model_to_record, record_to_vector, vector_to_record


def malicious_train(
    spec: ClientSpec, message: Message, context: Context, *, attack: Attack, attacker_rank: int
) -> tuple[ArrayRecord, MetricRecord]:
    """Train with the attack's data poisoning, then apply its update poisoning; return arrays and metrics."""
    experiment = spec.experiment
    data = worker_data(spec.data_ref, experiment)
    partition_id = partition_of(context)
    server_round = int(message.content["config"]["server-round"])
    seed = client_seed(experiment.seed, server_round, partition_id)
    ctx = AttackContext(
        server_round=server_round,
        partition_id=partition_id,
        attacker_rank=attacker_rank,
        num_classes=data.data.num_classes,
        data_max=data.data_max,
        generator=torch.Generator().manual_seed(seed ^ 0xBAD),
    )
    model, metrics = honest_train(spec, message, context, poison=lambda x, y, _g: attack.poison_data(x, y, ctx))
    global_arrays = message.content["arrays"]
    global_vector = record_to_vector(global_arrays)
    update = record_to_vector(model_to_record(model)) - global_vector
    poisoned = attack.poison_update(update, ctx)
    return vector_to_record(global_vector + poisoned, like=global_arrays), metrics
