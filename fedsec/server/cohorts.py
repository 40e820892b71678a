"""Cohort mode: many logical clients per Flower message, one reply per client for the strategy.

Flower's simulation engine (flwr 1.41) costs more per message the more nodes and messages there are: on each
0.1 s pass its ``vce_api.add_messages_to_queue`` asks the in-memory LinkState for every registered node's
messages, and ``get_message_ins`` scans every stored message for each node, so the cost per message grows with
the nodes and the messages (``benchmarks/bench_message_cost.py`` measures it); and a handshake with one node per
logical client makes start-up linear in the population. In cohort mode the run registers only
``cohort_nodes`` Flower nodes (by default 4 per client slot of the cluster); logical client ``p`` always belongs to
node ``p mod cohort_nodes``, whose ClientApp trains the round's clients of that node in turn
(:func:`fedsec.clients.app.train_cohort`).

The strategy does not see the difference: it addresses each sampled client by a *virtual* node id
(:func:`virtual_node`), :class:`CohortTransport` packs its per-client messages into one message per cohort node
(their shared content once, plus the partition ids) and unpacks each cohort reply into one reply per client, with
that client's virtual node id as sender. Every check, strategy, attack, DP and CKKS path therefore gets exactly
the replies it would get with one message per client, in the same order (replies are sorted by partition id);
``tests/test_e2e_cohorts.py`` checks that both modes write identical ``rounds.csv``. A cohort node that fails
fails all of its clients of that round (each gets the error); a client that raises fails alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ConfigRecord, Error, Message, RecordDict

from fedsec.errors import FedsecRuntimeError
from fedsec.protocol import COHORT_IDS_KEY, COHORT_RECORD, split_cohort_reply

VIRTUAL_NODE_BASE = 1 << 62  # virtual node ids never reach Flower: they only name logical clients to the strategy


class CohortError(FedsecRuntimeError):
    """The strategy's messages cannot be sent as cohorts."""


def virtual_node(partition_id: int) -> int:
    """The node id the strategy uses for logical client ``partition_id`` in cohort mode."""
    return VIRTUAL_NODE_BASE + partition_id


def partition_of_virtual(node_id: int) -> int:
    if node_id < VIRTUAL_NODE_BASE:
        raise CohortError(f"node {node_id} is not a logical client's virtual node id")
    return node_id - VIRTUAL_NODE_BASE


def cohort_node_count(messages: str, cohort_nodes: int, *, num_clients: int, client_slots: int) -> int:
    """How many Flower nodes a run registers in cohort mode, or 0 for one node and message per client.

    ``messages``: ``backend.messages`` (auto | cohort | per_client); ``cohort_nodes``: ``backend.cohort_nodes``
    (0: 4 per client slot). ``auto`` chooses cohorts when there are more clients than cohort nodes."""
    if messages == "per_client":
        return 0
    count = min(cohort_nodes or 4 * max(1, client_slots), num_clients)
    if messages == "auto" and count >= num_clients:
        return 0
    return count


def shared_content(messages: list[Message]) -> RecordDict | None:
    """The one content object every message of a round carries (strategies build them so), or None if they differ:
    transports that send the round's model once per node or protocol (cohorts, SecAgg+) need it."""
    content = messages[0].content
    return content if all(m.content is content for m in messages) else None


class CohortTransport:
    """``send_and_receive`` of per-client messages (to virtual node ids) through cohort nodes.

    ``nodes[c]`` is the Flower node id of cohort node ``c`` (0..len(nodes)-1)."""

    def __init__(self, grid: Any, nodes: list[int]) -> None:  # a Grid, or the StopAwareGrid around one
        if not nodes:
            raise CohortError("cohort mode needs at least one cohort node")
        self.grid = grid
        self.nodes = nodes

    def cohort_of(self, partition_id: int) -> int:
        return partition_id % len(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Send ``messages`` (one per logical client, all with the same content object, as strategies build them)
        as one message per cohort node; return one reply per client (an error reply where the client or its cohort
        node failed; none where the cohort node did not answer within ``timeout``)."""
        messages = list(messages)
        if not messages:
            return []
        content = shared_content(messages)
        if content is None:
            raise CohortError("cohort mode sends every client of a round the same content, but the strategy built "
                              "different messages per client; set backend.messages='per_client'")
        groups: dict[int, list[tuple[int, Message]]] = {}
        for m in messages:
            pid = partition_of_virtual(m.metadata.dst_node_id)
            groups.setdefault(self.cohort_of(pid), []).append((pid, m))
        shared = dict(content.items())
        out: list[Message] = []
        pending: dict[int, list[Message]] = {}
        for c in sorted(groups):
            group = groups[c]
            record = RecordDict({**shared, COHORT_RECORD: ConfigRecord({COHORT_IDS_KEY: [pid for pid, _ in group]})})
            kind = group[0][1].metadata.message_type
            out.append(Message(content=record, dst_node_id=self.nodes[c], message_type=kind))
            pending[self.nodes[c]] = [m for _, m in group]
        replies: list[Message] = []
        for reply in self.grid.send_and_receive(out, timeout=timeout):
            group = pending.pop(reply.metadata.src_node_id, None)
            if group is None:
                continue
            if reply.has_error():
                replies += [Message(Error(code=reply.error.code, reason=reply.error.reason), reply_to=m) for m in group]
                continue
            for m, part in zip(group, split_cohort_reply(reply, len(group)), strict=True):
                if isinstance(part, tuple):
                    replies.append(Message(Error(code=part[0], reason=part[1]), reply_to=m))
                else:
                    replies.append(Message(content=part, reply_to=m))
        return replies
