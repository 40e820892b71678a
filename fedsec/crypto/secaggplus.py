"""Flower's SecAgg+ as fedsec runs it: the parameters and the names both sides agree on.

SecAgg+: Bell, Bonawitz, Gascon, Lepoint and Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020 (after Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017). The protocol itself is Flower's (``flwr.server.workflow.SecAggPlusWorkflow`` on the server,
``flwr.client.mod.secaggplus_mod`` on the clients, flwr 1.42), not reimplemented here: each client clips its
weighted model to +-``clipping_range``, quantizes it to ``quantization_range`` levels, adds pairwise masks agreed
with its neighbours (Diffie-Hellman) and a private mask, and sends the result modulo 2^32; the server sums the
masked vectors, asks the survivors for Shamir shares of the dropped clients' mask keys and of the survivors' private
mask seeds, and removes the masks. It learns the weighted sum and, as Flower's workflow does, each client's
plaintext ``num_examples`` and metrics.

Departures: Flower's defaults, except ``num_shares`` and ``reconstruction_threshold``, which fedsec takes as shares
of the round's clients (Flower also accepts counts); ``modulus_range`` stays at Flower's 2^32. Honest-but-curious
server: the protocol's security against an actively malicious server needs the consistency checks of Bell et al.
(section 4), which Flower's workflow does not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flwr.app import Message

#: in the FitIns config: the names of the global model's arrays, in order, as JSON (legacy Parameters have none)
ARRAY_NAMES_KEY = "fedsec-array-names"
#: in the FitRes metrics: the client's fedsec reply (metrics and info records) as one JSON string
REPLY_KEY = "fedsec-reply"
#: in the replies the server's transport hands the round: ConfigRecord with the protocol's members and costs
SECAGG_RECORD = "secaggplus"
MEMBERS_KEY = "members"
#: the members' node ids (as strings, in the order of MEMBERS_KEY): which node the protocol summed as which client
MEMBER_NODES_KEY = "member-nodes"


@dataclass(frozen=True)
class SecAggPlusParams:
    """``[encryption]`` keys of ``scheme = "secagg+"`` (:class:`fedsec.config.sections.EncryptionConfig`)."""

    num_shares: float = 1.0
    reconstruction_threshold: float = 0.5
    clipping_range: float = 8.0
    quantization_range: int = 2**22
    weighted: bool = False  # clients weigh their model by num-examples (defense.weighting = "reported"), else by 1

    def workflow_args(self) -> dict[str, Any]:
        """``SecAggPlusWorkflow``'s keyword arguments (floats: shares of the round's clients)."""
        return {"num_shares": float(self.num_shares), "reconstruction_threshold": float(self.reconstruction_threshold),
                "clipping_range": float(self.clipping_range), "quantization_range": int(self.quantization_range)}


def content_bytes(message: Message) -> int:
    """Bytes of a message's payload: array data, bytes and strings in its config records (what a wire format must
    carry at least; Flower's own framing is not counted)."""
    if message.has_error():
        return 0
    total = 0
    for record in message.content.array_records.values():
        total += sum(len(array.data) for array in record.values())
    for record in message.content.config_records.values():
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, bytes | str):
                    total += len(item)
                else:
                    total += 8
    for record in message.content.metric_records.values():
        total += 8 * len(record)
    return total
