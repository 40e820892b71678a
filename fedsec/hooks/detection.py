"""Detection scores: how well the strategy's rejections and down-weightings match the malicious clients (built only
when the run has malicious clients)."""

from __future__ import annotations

import math
from typing import Any

from fedsec.results.contract import Metric, SummaryMetric

from .base import RoundHook, RoundState, RunFacts


class Detection(RoundHook):
    """Scores the strategy's decisions against the recorded malicious ids.

    ``rounds.csv`` holds each round's scores; the last round's are the run's final ``detection_precision`` /
    ``detection_recall``, which say little when the last round sampled no attacker. The ``detection`` summary block
    therefore also holds their means over the *attacked* rounds (the attack acted and at least one malicious reply
    was scored; precision only where something was flagged): ``precision_mean``, ``recall_mean``, ``rounds``."""

    name = "detection"
    description = "detection precision and recall of the strategy's rejections against the malicious ids"
    metrics = (
        Metric("detection_precision", "of the clients the strategy rejected or down-weighted, the share malicious",
               better="higher"),
        Metric("detection_recall", "of the malicious clients in the round, the share rejected or down-weighted",
               better="higher"),
        Metric("attack_active", "1 in the rounds the attack acts in", final=False, integer=True),
        Metric("malicious_sampled", "malicious clients among the round's replies", final=False, integer=True),
    )
    summary_metrics = (
        SummaryMetric("detection_precision_mean", "detection", "precision_mean",
                      "mean detection precision over the attacked rounds where something was flagged"),
        SummaryMetric("detection_recall_mean", "detection", "recall_mean",
                      "mean detection recall over the attacked rounds (an attacker's reply was scored)"),
    )

    def __init__(self, params: Any, ctx: Any) -> None:
        super().__init__(params, ctx)
        self._attacked: list[tuple[float, float]] = []  # (precision, recall) of each attacked round

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        return bool(facts.schedule.malicious)

    def after_aggregate(self, rnd: RoundState) -> None:
        schedule = self.ctx.facts.schedule
        malicious = set(schedule.malicious)
        rnd.row["attack_active"] = int(schedule.attack_active(rnd.server_round))
        rnd.row["malicious_sampled"] = sum(1 for d in rnd.decisions if d.partition_id in malicious
                                           and not d.status.startswith(("dropped", "late")))
        scores = detection_scores(rnd.decisions, malicious)
        rnd.row.update(scores)
        if rnd.row["attack_active"] and not math.isnan(scores["detection_recall"]):
            self._attacked.append((scores["detection_precision"], scores["detection_recall"]))

    def on_stop(self, summary: dict[str, Any]) -> None:
        precisions = [p for p, _ in self._attacked if not math.isnan(p)]
        recalls = [r for _, r in self._attacked]
        summary["detection"] = {
            "precision_mean": sum(precisions) / len(precisions) if precisions else None,
            "recall_mean": sum(recalls) / len(recalls) if recalls else None,
            "rounds": len(self._attacked),
            "over": "rounds where the attack acted and an attacker's reply was scored",
        }

    def state(self) -> dict[str, Any]:
        return {"attacked": [list(pair) for pair in self._attacked]}

    def restore(self, state: dict[str, Any]) -> None:
        self._attacked = [(float(p), float(r)) for p, r in state.get("attacked", [])]


def detection_scores(decisions: list[Any], malicious: set[int]) -> dict[str, float]:
    """Precision and recall of the strategy's rejections against the truth (NaN where undefined).

    A client counts as flagged when the strategy rejected it or gave it less than half the weight FedAvg would
    (its share of the round's examples); failed, refused or invalid replies are not counted as detections.
    """
    valid = [d for d in decisions if d.status in ("accepted", "rejected")]
    total = sum(d.num_examples for d in valid)
    if not valid or total <= 0:
        return {"detection_precision": float("nan"), "detection_recall": float("nan")}
    flagged = {d.partition_id for d in valid if d.weight < 0.5 * d.num_examples / total}
    bad = {d.partition_id for d in valid if d.partition_id in malicious}
    hits = len(flagged & bad)
    return {
        "detection_precision": hits / len(flagged) if flagged else float("nan"),
        "detection_recall": hits / len(bad) if bad else float("nan"),
    }
