"""The server's side of ``encryption.scheme = "secagg+"``: one round of Flower's ``SecAggPlusWorkflow``.

:class:`SecAggPlusTransport` takes the round's per-client train messages (what the strategy built), hands them to
Flower's workflow as legacy ``FitIns`` through a relay strategy, runs the four stages (setup, key sharing, masked
vectors, unmasking) as real Flower messages to the clients' ``secaggplus_mod`` (:mod:`fedsec.clients.secaggplus`),
and returns one reply per client to the round: every survivor's reply carries the *aggregate* the workflow
unmasked (the same ArrayRecord object), its plaintext metrics and a ``secaggplus`` record naming the members; a
client that failed has an error reply. The server process never holds an individual update: only masked vectors
and the unmasked weighted average pass through it.

Mid-round failures (``clients.failure``) are realised inside the protocol: the masked vector of a client the
federation says fails is dropped on its way to the server (the client trained and shared its keys), so the
workflow must recover its pairwise masks from the survivors' Shamir shares, as with a real dropout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from fedsec.arrays import vector_to_record
from fedsec.crypto.secaggplus import (
    ARRAY_NAMES_KEY,
    MEMBER_NODES_KEY,
    MEMBERS_KEY,
    REPLY_KEY,
    SECAGG_RECORD,
    SecAggPlusParams,
    content_bytes,
)
from fedsec.errors import FedsecRuntimeError
from fedsec.protocol import ARRAYS_RECORD, CONFIG_RECORD, INFO_RECORD, METRICS_RECORD, ROUND_KEY

from .cohorts import shared_content

LOST_REASON = "reply lost mid-round: its masked vector never reached the server (SecAgg+ recovers its masks)"


class SecAggError(FedsecRuntimeError):
    """The round's messages cannot go through SecAgg+."""


class _Relay(Strategy):
    """A legacy strategy that hands the workflow this round's FitIns and keeps what it aggregates."""

    def __init__(self, pairs: list[tuple[GridClientProxy, FitIns]]) -> None:
        self.pairs = pairs
        self.results: list[tuple[Any, Any]] | None = None

    def initialize_parameters(self, client_manager: Any) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        return list(self.pairs)

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict]:
        self.results = list(results)  # each FitRes's parameters are the unmasked aggregate (Flower's workflow)
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        return []

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        return None


class _Wire:
    """The grid as the workflow sees it: counts each node's bytes up, and loses the masked vectors of the nodes
    that fail this round."""

    def __init__(self, grid: Any, lost: set[int]) -> None:
        self.grid, self.lost = grid, lost
        self.bytes_up: dict[int, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE, "")) if messages else ""
        replies = self.grid.send_and_receive(messages, timeout=timeout)
        kept = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if stage == Stage.COLLECT_MASKED_VECTORS and node in self.lost:
                continue  # trained and masked, never arrived
            self.bytes_up[node] = self.bytes_up.get(node, 0) + content_bytes(reply)
            kept.append(reply)
        return kept


class SecAggPlusTransport:
    """``send_and_receive`` of a round's per-client train messages through Flower's SecAgg+ workflow.

    ``partition_of``: Flower node id -> partition id; ``fails(server_round, partition_id)``: whether that client's
    reply is lost mid-round this round (the federation's draw; never, by default); ``max_weight``: the largest
    weight a client applies (its count under reported weighting: the largest partition; else 1), so each client's
    weight / max_weight is at most 1 and quantized as finely as Flower's workflow allows."""

    def __init__(self, grid: Any, params: SecAggPlusParams, partition_of: dict[int, int],
                 fails: Callable[[int, int], bool] | None = None, *, max_weight: float = 1.0) -> None:
        self.grid, self.params, self.partition_of = grid, params, partition_of
        self.fails = fails or (lambda server_round, pid: False)
        self.max_weight = max(1.0, float(max_weight))

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if not messages:
            return []
        content = shared_content(messages)
        if content is None:
            raise SecAggError("SecAgg+ sends every client of a round the same model; the strategy built different "
                              "messages per client")
        global_arrays: ArrayRecord = content[ARRAYS_RECORD]
        config = dict(content[CONFIG_RECORD])
        server_round = int(config[ROUND_KEY])
        names = list(global_arrays.keys())
        parameters = ndarrays_to_parameters([global_arrays[n].numpy() for n in names])
        fitins = FitIns(parameters=parameters, config={**config, ARRAY_NAMES_KEY: json.dumps(names)})
        by_node = {m.metadata.dst_node_id: m for m in messages}
        relay = _Relay([(GridClientProxy(node, self.grid, self.grid.run.run_id), fitins) for node in by_node])
        lost = {n for n in by_node if (pid := self.partition_of.get(n)) is not None and self.fails(server_round, pid)}
        wire = _Wire(self.grid, lost)
        state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
                            MAIN_PARAMS_RECORD: global_arrays})
        context = LegacyContext(Context(run_id=self.grid.run.run_id, node_id=0, node_config={}, state=state,
                                        run_config={}), strategy=relay)
        workflow = SecAggPlusWorkflow(**self.params.workflow_args(), max_weight=self.max_weight, timeout=timeout)
        workflow(wire, context)  # type: ignore[arg-type]
        if relay.results is None:  # too few survivors to unmask: Flower's workflow halted
            reason = (f"SecAgg+ halted in round {server_round}: fewer survivors than the reconstruction threshold "
                      f"({len(by_node) - len(lost)} of {len(by_node)} sent their masked vectors)")
            return [Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=m)
                    for m in messages]
        aggregate = self._aggregate(relay.results[0][1].parameters, global_arrays)
        summed = sorted((self.partition_of.get(proxy.node_id, -1), str(proxy.node_id)) for proxy, _ in relay.results)
        record = ConfigRecord({MEMBERS_KEY: [pid for pid, _ in summed], MEMBER_NODES_KEY: [n for _, n in summed]})
        replies: list[Message] = []
        answered = set()
        for proxy, fitres in relay.results:
            carried = json.loads(str(fitres.metrics[REPLY_KEY]))
            metrics = MetricRecord({**carried["metrics"], "secagg_bytes_up": float(wire.bytes_up.get(proxy.node_id,
                                                                                                     0))})
            reply_content = RecordDict({ARRAYS_RECORD: aggregate, METRICS_RECORD: metrics,
                                        INFO_RECORD: ConfigRecord(carried["info"]), SECAGG_RECORD: record})
            replies.append(Message(reply_content, reply_to=by_node[proxy.node_id]))
            answered.add(proxy.node_id)
        for node, m in by_node.items():
            if node not in answered:
                why = LOST_REASON if node in lost else "dropped out of SecAgg+ (no masked vector from it)"
                replies.append(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=why), reply_to=m))
        return replies

    @staticmethod
    def _aggregate(parameters: Parameters, like: ArrayRecord) -> ArrayRecord:
        arrays = parameters_to_ndarrays(parameters)
        flat = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in arrays]))
        return vector_to_record(flat.float(), like=like)
