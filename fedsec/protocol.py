"""What travels between fedsec's server and its clients: message keys, typed client statuses, reply parsing.

One module for both sides, so neither imports the other. A train reply carries

- ``"arrays"``: the full model arrays after local training (an ArrayRecord), as Flower's own ClientApps send, or,
  under CKKS, a ConfigRecord ``"ckks"`` with ``"chunks"`` (list of ciphertext bytes) and no ArrayRecord;
- ``"metrics"``: a MetricRecord with ``num-examples``, ``partition-id``, ``train_loss`` and what applies
  (``epsilon``, ``noise_multiplier``, ``encrypt_seconds``, ...);
- ``"info"``: a ConfigRecord with the Ray ``node`` that ran the client and the client's ``status``.

A client that declines to train (its next round would overspend its privacy budget) replies normally with
``status = "refused"`` and a ``reason``, and no arrays: a status, not an error string for the server to parse.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

PARTITION_ID_KEY = "partition-id"
NUM_EXAMPLES_KEY = "num-examples"
NODE_KEY = "node"  # in the reply's "info" ConfigRecord: the Ray node that ran the client
STATUS_KEY = "status"  # in "info": a ClientStatus value
REASON_KEY = "reason"  # in "info": why a client refused
ROUND_KEY = "server-round"  # in the train message's "config" ConfigRecord
ARRAYS_RECORD = "arrays"
METRICS_RECORD = "metrics"
INFO_RECORD = "info"
CONFIG_RECORD = "config"
CKKS_RECORD = "ckks"  # under encryption: ConfigRecord with CHUNKS_KEY
CHUNKS_KEY = "chunks"
SIGNATURE_KEY = "signature"  # in the "ckks" ConfigRecord: the client's Ed25519 signature (64 bytes)
CKKS_WEIGHT_KEY = "ckks-weight"  # in the metrics: the factor the client multiplied its update by before encrypting
DP_HISTORY_KEYS = ("dp-noise", "dp-rate", "dp-steps")  # in "info": a DP client's accountant history after the round


class ClientStatus(StrEnum):
    """How a client answered a train message."""

    TRAINED = "trained"  # arrays (or ciphertexts) follow
    REFUSED = "refused"  # declined on purpose (privacy budget); no arrays, a reason
    FAILED = "failed"  # the client raised (Flower's error reply)


@dataclass
class ParsedReply:
    """A train reply read once: who sent it, what it says, and its content."""

    node_id: int
    status: ClientStatus
    partition_id: int | None = None
    node: str = ""
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    content: RecordDict | None = None

    @property
    def num_examples(self) -> float | None:
        value = self.metrics.get(NUM_EXAMPLES_KEY)
        return float(value) if isinstance(value, int | float) else None


def partition_of_reply(message: Message) -> int | None:
    """The finite partition id a reply reports, else None."""
    return None if message.has_error() else _partition_in(message.content.values())


def _partition_in(records: Iterable[Any]) -> int | None:
    """The first finite partition id among the MetricRecords of ``records`` (a RecordDict's values, in order; one
    pass: RecordDict's typed views rebuild a dict on every access)."""
    for record in records:
        if isinstance(record, MetricRecord):
            value = record.get(PARTITION_ID_KEY)
            if isinstance(value, int | float) and math.isfinite(value):
                return int(value)
    return None


def reply_sort_key(message: Message) -> tuple[int, int]:
    """Sort key of replies: partition id when the client reported one, then node id (reproducible order)."""
    partition_id = partition_of_reply(message)
    return (partition_id if partition_id is not None else 2**62), message.metadata.src_node_id


def parse_reply(message: Message) -> ParsedReply:
    """Read a train reply: a failed client's error, a refusal, or the content with its numeric metrics."""
    node_id = message.metadata.src_node_id
    if message.has_error():
        lines = message.error.reason.strip().splitlines()
        return ParsedReply(node_id, ClientStatus.FAILED, reason=lines[-1] if lines else "unknown error")
    content = message.content
    records = list(content.values())  # read once: RecordDict's typed views rebuild a dict on every access
    metrics: dict[str, float] = {}
    info: dict = {}
    for record in records:
        if isinstance(record, MetricRecord):
            metrics.update({k: v for k, v in record.items() if isinstance(v, int | float)})
        elif isinstance(record, ConfigRecord):
            info.update(record)
    node = info.get(NODE_KEY)
    status = info.get(STATUS_KEY, ClientStatus.TRAINED.value)
    try:
        status = ClientStatus(status)
    except ValueError:
        status = ClientStatus.TRAINED
    return ParsedReply(
        node_id=node_id,
        status=status,
        partition_id=_partition_in(records),
        node=node if isinstance(node, str) else "",
        reason=str(info.get(REASON_KEY, "")),
        metrics=metrics,
        content=content,
    )


def _info(node: str, dp_history: list[tuple[float, float, int]] | None) -> ConfigRecord:
    info: dict = {NODE_KEY: node}
    if dp_history:
        info.update(zip(DP_HISTORY_KEYS, ([float(h[0]) for h in dp_history], [float(h[1]) for h in dp_history],
                                          [int(h[2]) for h in dp_history]), strict=True))
    return ConfigRecord(info)


def dp_history_of(message: Message) -> list[tuple[float, float, int]] | None:
    """The accountant history a DP client reported in its reply (None if it reported none)."""
    if message.has_error():
        return None
    for record in message.content.config_records.values():
        if DP_HISTORY_KEYS[0] in record:
            return list(zip(*(record[k] for k in DP_HISTORY_KEYS), strict=True))
    return None


def train_reply(message: Message, arrays: ArrayRecord, metrics: MetricRecord, *, node: str,
                dp_history: list[tuple[float, float, int]] | None = None) -> Message:
    """A client's train reply: full model arrays, metrics (with num-examples), the Ray node and, for a DP client,
    its accountant history (so the server can checkpoint it)."""
    content = RecordDict({ARRAYS_RECORD: arrays, METRICS_RECORD: metrics, INFO_RECORD: _info(node, dp_history)})
    return Message(content=content, reply_to=message)


def encrypted_reply(message: Message, chunks: list[bytes], metrics: MetricRecord, *, node: str,
                    dp_history: list[tuple[float, float, int]] | None = None) -> Message:
    """A client's train reply under CKKS: ciphertext chunks instead of arrays."""
    content = RecordDict({CKKS_RECORD: ConfigRecord({CHUNKS_KEY: chunks}), METRICS_RECORD: metrics,
                          INFO_RECORD: _info(node, dp_history)})
    return Message(content=content, reply_to=message)


def refusal_reply(message: Message, *, partition_id: int, reason: str, node: str,
                  metrics: dict[str, float] | None = None) -> Message:
    """A client's refusal to train (no arrays): its partition id, a reason, and what it reports."""
    record = MetricRecord({PARTITION_ID_KEY: partition_id, **(metrics or {})})
    info = ConfigRecord({NODE_KEY: node, STATUS_KEY: ClientStatus.REFUSED.value, REASON_KEY: reason})
    return Message(content=RecordDict({METRICS_RECORD: record, INFO_RECORD: info}), reply_to=message)


def server_round_of(message: Message) -> int:
    """The round a train message belongs to."""
    return int(message.content[CONFIG_RECORD][ROUND_KEY])


# ---------------------------------------------------------------------------------------------------- cohorts
# In cohort mode (``backend.messages``, :mod:`fedsec.server.cohorts`) one train message carries several logical
# clients: the content every client would have received, plus a ConfigRecord COHORT_RECORD with their partition ids.
# The reply holds each client's reply records under COHORT_SEP-prefixed names ("3|arrays" is the arrays of the
# cohort's 4th client), or an ERROR_RECORD for a client that raised.
COHORT_RECORD = "cohort"
COHORT_IDS_KEY = "partition-ids"
COHORT_SEP = "|"
ERROR_RECORD = "error"  # in a cohort reply, per failed client: ConfigRecord {"code": int, "reason": str}


def cohort_ids(message: Message) -> list[int] | None:
    """The partition ids a cohort train message carries, or None for a message to one client."""
    if not message.has_content() or COHORT_RECORD not in message.content:
        return None
    return [int(p) for p in message.content[COHORT_RECORD][COHORT_IDS_KEY]]


def cohort_reply(message: Message, replies: list[Message | tuple[int, str]]) -> Message:
    """The reply to a cohort message: each client's reply content (or ``(code, reason)`` of its failure), in the
    order of the message's partition ids."""
    records: dict = {}
    for i, reply in enumerate(replies):
        if isinstance(reply, tuple):
            records[f"{i}{COHORT_SEP}{ERROR_RECORD}"] = ConfigRecord({"code": int(reply[0]), "reason": str(reply[1])})
            continue
        for name, record in reply.content.items():
            records[f"{i}{COHORT_SEP}{name}"] = record
    return Message(content=RecordDict(records), reply_to=message)


def split_cohort_reply(reply: Message, size: int) -> list[RecordDict | tuple[int, str]]:
    """The ``size`` client replies a cohort reply holds: each client's RecordDict, or ``(code, reason)`` where the
    client failed or its entry is missing."""
    parts: list[dict] = [{} for _ in range(size)]
    for name, record in reply.content.items():
        index, sep, key = name.partition(COHORT_SEP)
        if sep and index.isdigit() and int(index) < size:
            parts[int(index)][key] = record
    out: list[RecordDict | tuple[int, str]] = []
    for part in parts:
        if ERROR_RECORD in part:
            error = part[ERROR_RECORD]
            out.append((int(error.get("code", 0)), str(error.get("reason", "unknown error"))))
        elif not part:
            out.append((0, "the cohort reply holds nothing for this client"))
        else:
            out.append(RecordDict(part))
    return out
