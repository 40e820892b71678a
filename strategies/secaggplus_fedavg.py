"""FedAvg under Flower's SecAgg+ (``encryption.scheme = "secagg+"``): the server applies the aggregate the protocol
unmasked and never sees one client's model.

SecAgg+: Bell et al., CCS 2020, run by Flower's ``SecAggPlusWorkflow`` (:mod:`fedsec.crypto.secaggplus`,
:mod:`fedsec.server.secaggplus`). The weighted average is computed inside the protocol: each client multiplies its
model by its weight (its ``num-examples`` under ``defense.weighting = "reported"``, 1 otherwise, since the server
cannot cap a count it never sees next to the model it weighs) before masking, and the server divides the unmasked
sum by the sum of the weights. Each survivor's reply carries that aggregate, its plaintext metrics and the members
the protocol summed; this strategy checks that the replies it is handed are exactly those members (a reply taken out
after the sum, or one the protocol did not sum, would make the aggregate wrong) and applies the aggregate.

A client is the partition its node was mapped to at the handshake (the protocol sums nodes): a reply that claims
another partition id, an invalid one or an invalid ``num-examples`` is recorded with its claim in ``clients.csv``
and the round still applies the aggregate, which the protocol fixed before the server could read any claim (one
lying client must not be able to skip every round). Its update is in the aggregate: masking cannot take it out.

Differences from FedAvg: ``update_norm`` is NaN (the server cannot see it); the weights are quantized by the
protocol (2^-22 relative steps at Flower's defaults) and each weighted coordinate is clipped to
``+-clipping_range``; robust rules need individual updates and are refused by the plan.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord

from fedsec.crypto.secaggplus import MEMBER_NODES_KEY, MEMBERS_KEY, SECAGG_RECORD
from fedsec.protocol import NUM_EXAMPLES_KEY, PARTITION_ID_KEY

from ._trust import check_count, check_partition_id
from .base import ClientDecision, RobustStrategy, RoundReport, no_participant_reason

__all__ = ["SecAggPlusFedAvg"]


class SecAggPlusFedAvg(RobustStrategy):
    """FedAvg whose aggregate is the one Flower's SecAgg+ workflow unmasked.

    Parameters
    ----------
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``weighting``, ...).

    Assumptions
    -----------
    Honest-but-curious server (module docstring); at least as many survivors per round as the reconstruction
    threshold, or the round is skipped.
    """

    uses_counts = True  # under weighting="reported" only

    def describe(self) -> str:
        return f"SecAggPlusFedAvg(Flower SecAgg+, weighting={self.weighting})"

    def aggregate_updates(self, updates: Any, num_examples: Any) -> Any:
        raise NotImplementedError("SecAggPlusFedAvg never sees individual updates")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global_arrays is None:
            raise RuntimeError("aggregate_train called before configure_train: no global arrays to update")
        self._false_claims: dict[int, str] = {}
        decisions, valid = self._checked_replies(replies, self._check_member)
        valid = self._reject_duplicate_ids(valid)
        report = RoundReport(server_round=server_round, decisions=decisions)
        self.last_report = report
        if not valid:
            report.skipped_reason = "no SecAgg+ aggregate; " + no_participant_reason(decisions)
            return None, None
        aggregates = {id(arrays) for _, (arrays, _) in valid}
        members = sorted(valid[0][1][1])
        present = sorted(d.partition_id for d, _ in valid if d.partition_id is not None)
        if len(aggregates) != 1 or present != members:
            report.skipped_reason = (f"the SecAgg+ aggregate sums clients {members}, but the round holds replies of "
                                     f"{present}: a reply was taken out after the sum (or added); skipped")
            for dec, _ in valid:
                dec.status = "skipped: SecAgg+ members differ from the round's replies"
            return None, None
        weighted = self.weighting == "reported"
        total = float(sum(d.num_examples for d, _ in valid)) if weighted else float(len(valid))
        for dec, _ in valid:
            share = float(dec.num_examples) if weighted else 1.0
            dec.counted_examples, dec.weight, dec.status = share, share / (total or 1.0), "accepted"
            if dec.node_id in self._false_claims:
                dec.status = f"accepted (in the SecAgg+ sum); {self._false_claims[dec.node_id]}"
        metrics = self._weighted_metrics([d for d, _ in valid])
        metrics["bytes_up"] = float(sum(d.metrics.get("secagg_bytes_up", 0.0) for d, _ in valid))
        return valid[0][1][0], metrics

    def _check_member(self, message: Message) -> tuple[ClientDecision, tuple[ArrayRecord, list[int]] | None]:
        parsed = self._parse_reply(message)
        if isinstance(parsed, ClientDecision):
            return parsed, None
        content, metrics, claimed, node = parsed
        node_id = message.metadata.src_node_id
        bad = lambda why: (self._bad(node_id, claimed, "invalid: " + why, node, metrics), None)  # noqa: E731
        record = content.config_records.get(SECAGG_RECORD)
        if record is None or len(content.array_records) != 1:
            return bad("not a SecAgg+ aggregate (a plaintext reply under encryption.scheme='secagg+')")
        members = [int(m) for m in record.get(MEMBERS_KEY, [])]
        summed_as = dict(zip(record.get(MEMBER_NODES_KEY, []), members, strict=False))
        pid = summed_as.get(str(node_id))
        if pid is None:
            return bad("its node's masked vector is not in the SecAgg+ sum")
        claims = []
        if check_partition_id(metrics.get(PARTITION_ID_KEY), num_partitions=self.num_partitions,
                              key=PARTITION_ID_KEY) is not None or int(metrics[PARTITION_ID_KEY]) != pid:
            claims.append(f"claimed {PARTITION_ID_KEY} {metrics.get(PARTITION_ID_KEY)!r}")
        count = metrics.get(NUM_EXAMPLES_KEY)
        if check_count(count, max_examples=self.max_examples, key=NUM_EXAMPLES_KEY) is not None:
            claims.append(f"claimed {NUM_EXAMPLES_KEY} {count!r}")
            count = 0
        if claims:
            self._false_claims[node_id] = f"{', '.join(claims)}; its node holds partition {pid}"
        arrays = next(iter(content.array_records.values()))
        decision = ClientDecision(node_id, pid, int(count), math.nan, 0.0, "pending", node, dict(metrics))
        return decision, (arrays, members)
