"""Omniscient attackers, realised on the server: crafted updates computed from every honest update of the round.

Most robustness benchmarks (e.g. Baruch et al. 2019; Shejwalkar & Houmansadr 2021) assume attackers that see all
honest updates of a round. A simulated client cannot see other clients' replies, so with
``attack.knowledge = "omniscient"`` the malicious clients train honestly and the server, just before aggregation,
replaces their arrays with global + the crafted update (ALIE, IPM, min-max, min-sum) computed from all valid
replies (the attackers' honest updates included). The strategy never sees the honest versions; ``summary.json``
records the knowledge as "omniscient (applied on the server before aggregation)".
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Message

from fedsec.arrays import record_signature, record_to_vector, vector_to_record
from fedsec.protocol import partition_of_reply

from .base import Attack


def apply_omniscient(
    attack: Attack, replies: list[Message], global_arrays: ArrayRecord, malicious: set[int]
) -> int:
    """Swap the crafted update into the attackers' replies (in place); returns how many were replaced."""
    signature = record_signature(global_arrays)
    global_vector = record_to_vector(global_arrays)
    usable: list[tuple[Message, int, torch.Tensor]] = []
    for message in replies:
        if message.has_error() or len(message.content.array_records) != 1:
            continue
        partition_id = partition_of_reply(message)
        arrays = next(iter(message.content.array_records.values()))
        if partition_id is None or record_signature(arrays) != signature:
            continue
        vector = record_to_vector(arrays)
        if bool(torch.isfinite(vector).all()):
            usable.append((message, partition_id, vector - global_vector))
    attackers = [(m, pid) for m, pid, _ in usable if pid in malicious]
    if not attackers or len(usable) < 2:
        return 0
    benign = torch.stack([u for _, _, u in usable])
    crafted = attack.craft(benign, num_clients=len(usable), num_attackers=len(attackers))
    poisoned = vector_to_record(global_vector + crafted, like=global_arrays)
    for message, _ in attackers:
        key = next(iter(message.content.array_records.keys()))
        message.content[key] = poisoned
    return len(attackers)
