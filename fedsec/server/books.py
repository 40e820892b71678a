"""The round loop's own records: each round's decisions attributed to partitions, its timings, its rows of
``rounds.csv`` and ``clients.csv``, client calls per Ray node, skipped rounds, and the checkpoint that carries them
with the strategy's, the server optimizer's and every hook's state (:mod:`.checkpoint`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

from fedsec.arrays import record_to_tensors
from fedsec.hooks import RoundHook, RoundState, RunFacts
from fedsec.results import RunDirectory
from fedsec.strategies.base import ClientDecision

from .checkpoint import restore_strategy, strategy_state


class RoundBooks:
    """Who is whom (partition -> Ray node, node id -> partition) and what the rounds recorded so far."""

    def __init__(self, facts: RunFacts, ray_node_of: dict[int, str], partition_of_node: dict[int, int],
                 hooks: list[RoundHook], optimizer: Any = None) -> None:
        self.malicious = set(facts.schedule.malicious)
        self.ray_node_of, self.partition_of_node = ray_node_of, partition_of_node
        self.hooks = hooks
        self.optimizer = optimizer  # the server optimizer, whose moments the checkpoint carries
        self.client_metrics = [m for h in hooks for m in h.client_metrics]
        self.node_counts: Counter[str] = Counter()
        self.skipped_rounds: list[int] = []

    def decisions(self, report: Any, absent: dict[int, str] | None = None) -> tuple[list[Any], str]:
        """The strategy's decisions, then one per sampled partition that took no part (``absent``: dropped, late)
        with its status; and why the strategy skipped the round ("" when it aggregated). A failed reply carries no
        partition id: the node it came from says whose."""
        decisions = list(report.decisions) if report else []
        for d in decisions:
            if d.partition_id is None and d.node_id in self.partition_of_node:
                d.partition_id = self.partition_of_node[d.node_id]
        node_of = {pid: node for node, pid in self.partition_of_node.items()}
        decisions += [ClientDecision(node_of.get(pid, -1), pid, 0, math.nan, 0.0, status)
                      for pid, status in sorted((absent or {}).items())]
        return decisions, (report.skipped_reason or "") if report else ""

    @staticmethod
    def time(row: dict[str, Any], t_round: float, t_replies: float, t_aggregated: float) -> None:
        import time

        row["seconds"] = time.perf_counter() - t_round
        row["train_seconds"] = t_replies - t_round  # clients' training, messaging through Flower and Ray
        row["aggregate_seconds"] = t_aggregated - t_replies
        hooks = row["seconds"] - (t_aggregated - t_round)  # every hook after aggregation
        row["eval_seconds"] = evaluation = min(float(row.get("eval_seconds", 0.0)), hooks)  # the evaluation hook's
        row["audit_seconds"] = hooks - evaluation

    def client_row(self, server_round: int, d: Any) -> dict[str, Any]:
        """One row of clients.csv: the contract's columns, then the reply metrics the hooks declare."""
        node = d.node or (self.ray_node_of.get(d.partition_id, "") if d.partition_id is not None else "")
        row = {"round": server_round, "client": d.partition_id if d.partition_id is not None else -1,
               "malicious": int(d.partition_id in self.malicious), "num_examples": d.num_examples,
               "update_norm": d.update_norm, "accepted": d.weight, "node": node, "status": d.status,
               "train_loss": d.metrics.get("train_loss", float("nan"))}
        for key, value in d.metrics.items():
            if any(key == m or (m.endswith("_") and key.startswith(m)) for m in self.client_metrics):
                row[key] = value
        return row

    def record(self, run_dir: RunDirectory, rnd: RoundState, outcome: Any,
               on_round: Callable[[dict[str, Any]], None] | None, *, skipped: bool) -> None:
        """Write the round's rows (clients first, so a row in rounds.csv means its clients are recorded)."""
        client_rows = [self.client_row(rnd.server_round, d) for d in rnd.decisions]
        self.node_counts.update(r["node"] for r in client_rows)
        if skipped:
            self.skipped_rounds.append(rnd.server_round)
        run_dir.add_clients(client_rows)
        emit(run_dir, rnd.row, on_round)
        outcome.rounds_completed, outcome.final_arrays = rnd.server_round, rnd.arrays

    def checkpoint(self, rnd: RoundState, strategy: Any, outcome: Any) -> dict[str, Any]:
        return {"round": rnd.server_round, "arrays": record_to_tensors(rnd.arrays),
                "strategy": strategy_state(strategy), "hooks": {h.name: h.state() for h in self.hooks},
                "node_counts": dict(self.node_counts), "skipped_rounds": list(self.skipped_rounds),
                "server_optimizer": self.optimizer.state() if self.optimizer is not None else {}}

    def restore(self, state: dict[str, Any], strategy: Any) -> None:
        restore_strategy(strategy, state["strategy"])
        for hook in self.hooks:
            if hook.name in state["hooks"]:
                hook.restore(state["hooks"][hook.name])
        self.node_counts.update(state["node_counts"])
        self.skipped_rounds = list(state["skipped_rounds"])
        if self.optimizer is not None:
            self.optimizer.restore(state.get("server_optimizer", {}))


def emit(run_dir: RunDirectory, row: dict[str, Any], on_round: Callable[[dict[str, Any]], None] | None) -> None:
    run_dir.add_round(row)
    if on_round is not None:
        on_round(row)
