"""The simulated devices (:mod:`fedsec.federation`): takes the round's unreachable clients out before the model is
sent, drops the replies lost mid-round or arriving after ``train.deadline``, and records the round's simulated
time. Runs first, so every other hook sees only the replies that arrived."""

from __future__ import annotations

from typing import Any

from fedsec.results.contract import Metric

from .base import RoundHook, RoundState, RunFacts, ServerContext


def client_work(ctx: ServerContext) -> list[int]:
    """Examples each client processes in a round: local_epochs x its partition size (one pass under FedSGD)."""
    passes = 1 if ctx.facts.train.algorithm == "fedsgd" else ctx.facts.train.local_epochs
    return [passes * len(part) for part in ctx.data.partitions]


class FederationHook(RoundHook):
    """Dropouts, the availability trace, mid-round failures and stragglers against a deadline."""

    name = "federation"
    description = "[clients] / train.deadline: dropouts, availability trace, mid-round failures, stragglers"
    metrics = (
        Metric("clients_dropped", "sampled clients unreachable at the start or whose reply was lost",
               final=False, integer=True),
        Metric("clients_late", "replies that arrived after train.deadline", final=False, integer=True),
        Metric("sim_time", "simulated seconds the round lasted ([clients] speeds, train.deadline)", final=False),
        Metric("sim_clock", "simulated seconds since the start of the run", final=False),
    )

    def __init__(self, params: Any, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        facts = ctx.facts
        assert facts.federation is not None, "built only when the plan has a federation"
        self.federation = facts.federation
        self.work = client_work(ctx)
        self.clock = 0.0
        self._arrivals: list[float] = []
        self._lost = self._late = 0

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        return facts.federation is not None and facts.buffer is None  # FedBuff times its own arrivals

    def before_send(self, rnd: RoundState) -> None:
        absent = self.federation.absent(rnd.server_round, rnd.sampled)
        rnd.absent.update(absent)
        rnd.sampled = [pid for pid in rnd.sampled if pid not in absent]
        self._arrivals, self._lost, self._late = [], 0, 0

    def on_replies(self, rnd: RoundState) -> None:
        fed, kept = self.federation, []
        for reply in rnd.replies:
            pid = rnd.partition_of_node.get(reply.metadata.src_node_id)
            if pid is None:  # not a client of this run: the strategy rejects and records it
                kept.append(reply)
                continue
            arrival = fed.arrival(pid, self.work[pid])
            if fed.fails(rnd.server_round, pid):
                rnd.absent[pid] = f"dropped: reply lost mid-round (clients.failure={fed.failure:g})"
                self._lost += 1
            elif fed.late(pid, arrival):
                rnd.absent[pid] = f"late: arrived at {arrival:.4g} s, train.deadline={fed.deadline:g} s"
                self._late += 1
            else:
                self._arrivals.append(arrival)
                kept.append(reply)
        rnd.replies = kept

    def after_aggregate(self, rnd: RoundState) -> None:
        fed = self.federation
        waited = fed.deadline is not None and (self._late or self._lost)
        seconds = float(fed.deadline) if waited else max(self._arrivals, default=0.0)  # type: ignore[arg-type]
        self.clock += seconds
        rnd.row["clients_dropped"] = sum(1 for s in rnd.absent.values() if s.startswith("dropped"))
        rnd.row["clients_late"] = self._late
        rnd.row["sim_time"] = seconds
        rnd.row["sim_clock"] = self.clock

    def state(self) -> dict[str, Any]:
        return {"clock": self.clock}

    def restore(self, state: dict[str, Any]) -> None:
        self.clock = float(state["clock"])
