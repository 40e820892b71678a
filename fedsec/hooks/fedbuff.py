"""FedBuff (:mod:`fedsec.federation.buffer`): asynchronous clients, a server step every K arrivals.

Each round of the loop is one server step. Before sending, the hook picks which idle clients to dispatch (all C at
step 1, then as many as are no longer in flight); the devices (``[clients]``) may drop some. The replies that come
back are held with their simulated arrival time (dispatch time + work / speed, :mod:`fedsec.federation`); the K
earliest are handed to the strategy, each re-based on the current model and discounted by its staleness, and the
rest stay in flight. Malicious clients (unless ``clients.attackers_drop``) arrive at once: they choose the least
staleness. Replies that failed, refused or do not match the model are handed on at once (rejected and recorded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedsec.arrays import record_signature, record_to_vector, vector_to_record
from fedsec.federation import dispatch, staleness_weight
from fedsec.results.contract import Metric

from .base import RoundHook, RoundState, RunFacts, ServerContext
from .federation import client_work

STALENESS_KEY = "staleness"


@dataclass
class InFlight:
    """A reply that arrived in simulation at ``arrival`` but has not been aggregated yet."""

    pid: int
    step: int  # server step it was dispatched at
    arrival: float  # simulated seconds
    delta: torch.Tensor  # its update: reply - the model it was sent (flat)
    message: Message  # the reply (its arrays replaced by the re-based ones if it is stale when aggregated)
    arrays_key: str


class BufferedAggregation(RoundHook):
    """Holds replies until they arrive; hands the strategy the K earliest, re-based and discounted."""

    name = "fedbuff"
    description = "server.aggregation='fedbuff': a server step every K arrivals, updates discounted by staleness"
    metrics = (
        Metric("clients_dispatched", "clients sent the model this server step", final=False, integer=True),
        Metric("clients_dropped", "dispatched clients unreachable, or whose reply was lost", final=False, integer=True),
        Metric("in_flight", "clients training after this step's aggregation", final=False, integer=True),
        Metric("staleness_mean", "mean server steps between dispatch and aggregation of the step's updates",
               final=False, better="lower"),
        Metric("staleness_max", "largest staleness aggregated this step", final=False, integer=True),
        Metric("sim_time", "simulated seconds from the previous server step to this one", final=False),
        Metric("sim_clock", "simulated seconds since the start of the run", final=False),
    )
    client_metrics = (STALENESS_KEY,)

    def __init__(self, params: Any, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        facts = ctx.facts
        assert facts.buffer is not None and facts.federation is not None, "built only for FedBuff runs"
        self.spec, self.devices = facts.buffer, facts.federation
        self.work = client_work(ctx)
        self.in_flight: list[InFlight] = []
        self.clock = 0.0
        self._restored: list[dict[str, Any]] = []
        self._step: dict[str, Any] = {}

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        return facts.buffer is not None

    # ------------------------------------------------------------------ dispatch
    def before_send(self, rnd: RoundState) -> None:
        self._rebuild(rnd)
        busy = {f.pid for f in self.in_flight}
        idle = [p for p in range(self.ctx.facts.num_clients) if p not in busy]
        chosen = dispatch(self.ctx.facts.seed, rnd.server_round, idle, self.spec.concurrency - len(busy))
        absent = self.devices.absent(rnd.server_round, chosen)
        rnd.absent.update(absent)
        rnd.sampled = [p for p in chosen if p not in absent]
        self._step = {"dispatched": len(chosen), "dropped": len(absent), "start": self.clock}

    # ------------------------------------------------------------------ arrivals
    def on_replies(self, rnd: RoundState) -> None:
        now, signature, sent = self.clock, record_signature(rnd.sent), None
        passed_on: list[Message] = []
        for reply in rnd.replies:
            pid = rnd.partition_of_node.get(reply.metadata.src_node_id)
            if pid is not None and self.devices.fails(rnd.server_round, pid):
                rnd.absent[pid] = f"dropped: reply lost mid-round (clients.failure={self.devices.failure:g})"
                self._step["dropped"] += 1
                continue
            arrays = None if reply.has_error() or pid is None else list(reply.content.array_records.items())
            if not arrays or len(arrays) != 1 or record_signature(arrays[0][1]) != signature:
                passed_on.append(reply)  # nothing to hold: the strategy rejects and records it now
                continue
            if sent is None:
                sent = record_to_vector(rnd.sent)
            key, record = arrays[0]
            delta = record_to_vector(record) - sent
            fast = pid in self.devices.protected
            arrival = now if fast else now + self.devices.arrival(pid, self.work[pid])
            self.in_flight.append(InFlight(pid, rnd.server_round, arrival, delta, reply, key))
        self.in_flight.sort(key=lambda f: (f.arrival, f.pid))
        k = self.spec.size
        if len(self.in_flight) < k:  # FedBuff waits for K arrivals: nothing to aggregate this step
            rnd.replies = passed_on
            self._step["staleness"] = []
            return
        ready, self.in_flight = self.in_flight[:k], self.in_flight[k:]
        self.clock = max(self.clock, ready[-1].arrival)
        current = record_to_vector(rnd.sent) if sent is None else sent
        staleness = [rnd.server_round - f.step for f in ready]
        for f, t in zip(ready, staleness, strict=True):
            if t:  # trained on an older model: its update, discounted, from the current one
                rebased = current + staleness_weight(t, self.spec.staleness_exponent) * f.delta
                f.message.content[f.arrays_key] = vector_to_record(rebased, like=rnd.sent)
            for record in f.message.content.metric_records.values():
                record[STALENESS_KEY] = t
                break
        rnd.replies = passed_on + [f.message for f in ready]
        self._step["staleness"] = staleness

    def after_aggregate(self, rnd: RoundState) -> None:
        step, row = self._step, rnd.row
        staleness = step.get("staleness", [])
        row["clients_dispatched"] = step.get("dispatched", 0)
        row["clients_dropped"] = step.get("dropped", 0)
        row["in_flight"] = len(self.in_flight)
        row["staleness_mean"] = sum(staleness) / len(staleness) if staleness else float("nan")
        row["staleness_max"] = max(staleness, default=0)
        row["sim_time"] = self.clock - step.get("start", self.clock)
        row["sim_clock"] = self.clock

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {"clock": self.clock, "in_flight": [
            {"pid": f.pid, "step": f.step, "arrival": f.arrival, "delta": f.delta.clone(), "key": f.arrays_key,
             "node": f.message.metadata.src_node_id,
             "metrics": {name: dict(r) for name, r in f.message.content.metric_records.items()},
             "configs": {name: dict(r) for name, r in f.message.content.config_records.items()}}
            for f in self.in_flight]}

    def restore(self, state: dict[str, Any]) -> None:
        self.clock = float(state["clock"])
        self._restored = list(state["in_flight"])  # rebuilt as messages in the first step (inside the ServerApp)

    def _rebuild(self, rnd: RoundState) -> None:
        for entry in self._restored:
            content = RecordDict({**{n: MetricRecord(r) for n, r in entry["metrics"].items()},
                                  **{n: ConfigRecord(r) for n, r in entry["configs"].items()}})
            sent = Message(RecordDict({"config": ConfigRecord()}), dst_node_id=int(entry["node"]),
                           message_type=MessageType.TRAIN)
            self.in_flight.append(InFlight(int(entry["pid"]), int(entry["step"]), float(entry["arrival"]),
                                           entry["delta"], Message(content=content, reply_to=sent), entry["key"]))
        self._restored = []

