"""What the clients' data filters ([defense.sanitize]) kept and dropped, per round and in total, against the
poisoning truth ([data.poison]): the counts behind DQ_filtered and A in the metric sheet."""

from __future__ import annotations

from typing import Any

from fedsec.results.contract import Metric

from .base import RoundHook, RoundState

#: what a sanitizing client reports per round (its reply's metrics); summed over the round's clients
SANITIZE_KEYS = ("sanitize_kept", "sanitize_dropped", "poisoned_points", "poisoned_dropped")


class Sanitization(RoundHook):
    """Sums the filters' counts over each round's clients and over the run."""

    name = "sanitization"
    description = "per-round and total counts of the clients' data filters against the poisoning truth"
    metrics = (
        Metric("sanitize_kept", "examples the round's filters kept", final=False, integer=True),
        Metric("sanitize_dropped", "examples the round's filters dropped", final=False, integer=True),
        Metric("poisoned_points", "poisoned examples the round's clients held", final=False, integer=True),
        Metric("poisoned_dropped", "poisoned examples the round's filters dropped", final=False, integer=True),
    )
    client_metrics = SANITIZE_KEYS

    def __init__(self, params: Any, ctx: Any) -> None:
        super().__init__(params, ctx)
        self.totals = dict.fromkeys(SANITIZE_KEYS, 0.0)
        self.rounds = 0

    def after_aggregate(self, rnd: RoundState) -> None:
        for key in SANITIZE_KEYS:  # totals over the round's clients
            values = [d.metrics[key] for d in rnd.decisions if key in d.metrics]
            if values:
                rnd.row[key] = float(sum(values))
        if "sanitize_kept" in rnd.row:
            self.rounds += 1
            for key in SANITIZE_KEYS:
                self.totals[key] += rnd.row[key]

    def state(self) -> dict[str, Any]:
        return {"totals": dict(self.totals), "rounds": self.rounds}

    def restore(self, state: dict[str, Any]) -> None:
        self.totals, self.rounds = dict(state["totals"]), int(state["rounds"])

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        """The totals over every (round, client) for the metric sheet (DQ_filtered, A)."""
        if not self.rounds:
            return
        t = self.totals
        kept, dropped, poisoned, poisoned_dropped = (int(t[k]) for k in SANITIZE_KEYS)
        summary["sanitization"] = {"datapoints": kept + dropped, "poisoned": poisoned, "dropped": dropped,
                                   "poisoned_dropped": poisoned_dropped, "anomalies_detected": dropped,
                                   "false_drops": dropped - poisoned_dropped}
