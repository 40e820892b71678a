"""The honest fedsec client: a Flower Message-API ClientApp that trains locally with SGD.

``train`` receives the global arrays, trains ``train.local_epochs`` epochs of SGD with momentum on the client's
partition (mini-batches from a generator seeded by (seed, round, partition id), so reruns are identical), and
replies with the full model arrays, ``num-examples``, its training loss, its partition id and the Ray node it ran
on. ``evaluate`` reports the received model's loss and accuracy on the client's partition. ``query`` answers the
server's start-up handshake with the partition id, so the server can map Flower's random node ids to
partitions. The ClientApp itself (honest and malicious clients in one app) is built in :mod:`fedsec.clients.app`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsec.config import Experiment
from fedsec.federated_data import WorkerData, worker_data
from fedsec.models import build_model
from fedsec.records import load_record
from fedsec.strategies.base import NODE_KEY, NUM_EXAMPLES_KEY, PARTITION_ID_KEY
from fedsec.training import train_local

DataPoison = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ClientSpec:
    """Everything a client needs, small enough to travel with every message: the experiment and a data handle."""

    experiment: Experiment
    data_ref: Any = None  # ray.ObjectRef to FederatedData, or None to load from disk in the worker
    board_name: str | None = None  # the colluding attackers' named Ray actor, if any
    crypto_ref: Any = None  # CKKS client context (Ray ObjectRef or bytes) under encryption.scheme = "ckks"


def client_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1, dtype=np.uint64)[0] >> 1)


def current_node() -> str:
    """The Ray node id this process runs on (the hostname outside Ray)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside a Ray worker the hostname is the best we have
        pass
    return socket.gethostname()


def partition_of(context: Context) -> int:
    return int(context.node_config["partition-id"])


def round_of(message: Message) -> int:
    return int(message.content["config"]["server-round"])


def local_model(spec: ClientSpec, data: WorkerData, arrays: ArrayRecord) -> torch.nn.Module:
    model = build_model(spec.experiment.model.name, data.data.input_shape, data.data.num_classes)
    load_record(model, arrays)
    return model.to(data.device)


def honest_train(
    spec: ClientSpec,
    arrays: ArrayRecord,
    *,
    server_round: int,
    partition_id: int,
    poison: DataPoison | None = None,
) -> tuple[torch.nn.Module, MetricRecord]:
    """Train the global ``arrays`` on partition ``partition_id``'s data; returns the trained model and metrics.

    Deterministic in (seed, round, partition id). ``poison(x, y, generator)`` (a malicious client's data
    poisoning) replaces the local data before training.
    """
    experiment, train = spec.experiment, spec.experiment.train
    data = worker_data(spec.data_ref, experiment)
    model = local_model(spec, data, arrays)
    x, y = data.client_tensors(partition_id)
    seed = client_seed(experiment.seed, server_round, partition_id)
    torch.manual_seed(seed)
    if poison is not None:
        x, y = poison(x, y, torch.Generator().manual_seed(seed ^ 0x5EED))
    result = train_local(
        model,
        x,
        y,
        epochs=train.local_epochs,
        batch_size=train.batch_size,
        lr=train.lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        generator=torch.Generator().manual_seed(seed),
    )
    metrics = MetricRecord(
        {NUM_EXAMPLES_KEY: result.num_examples, "train_loss": result.loss, PARTITION_ID_KEY: partition_id}
    )
    return model, metrics


def train_reply(message: Message, arrays: ArrayRecord, metrics: MetricRecord) -> Message:
    """The reply of a train message: full model arrays, metrics (with num-examples), and the Ray node."""
    content = RecordDict({"arrays": arrays, "metrics": metrics, "info": ConfigRecord({NODE_KEY: current_node()})})
    return Message(content=content, reply_to=message)
