"""Real Flower messages for tests that exercise strategies outside a running ServerApp (use the
``server_identity`` fixture of conftest.py: Flower takes a message's ids from the process's TaskIdentity)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict


def arrays_of(values: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of float32 copies of ``values``."""
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in values.items()})


def _instruction(node_id: int) -> Message:
    return Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=node_id, message_type=MessageType.TRAIN)


def reply(
    node_id: int, partition_id: int, values: dict[str, np.ndarray], num_examples: float = 10, *, node: str = ""
) -> Message:
    """A client's train reply: arrays, num-examples, partition id, train loss (and the Ray node, if given)."""
    content = RecordDict({
        "arrays": arrays_of(values),
        "metrics": MetricRecord({"num-examples": num_examples, "partition-id": partition_id, "train_loss": 1.0}),
    })
    if node:
        content["info"] = ConfigRecord({"node": node})
    return Message(content=content, reply_to=_instruction(node_id))


def error_reply(node_id: int, reason: str = "ClientAppException\nboom: CUDA out of memory") -> Message:
    """The reply Flower makes when a ClientApp raised."""
    return Message(Error(code=0, reason=reason), reply_to=_instruction(node_id))


def started(strategy, global_arrays: ArrayRecord):
    """``strategy`` after configure_train of round 1 with ``global_arrays`` (what aggregate_train compares with)."""
    strategy.node_sampler = lambda r: []
    list(strategy.configure_train(1, global_arrays, ConfigRecord(), grid=None))
    return strategy
