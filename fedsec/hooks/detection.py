"""Detection scores: how well the strategy's rejections and down-weightings match the malicious clients (built only
when the run has malicious clients)."""

from __future__ import annotations

from typing import Any

from fedsec.results.contract import Metric

from .base import RoundHook, RoundState, RunFacts


class Detection(RoundHook):
    """Scores the strategy's decisions against the recorded malicious ids."""

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

    @classmethod
    def applies(cls, facts: RunFacts) -> bool:
        return bool(facts.schedule.malicious)

    def after_aggregate(self, rnd: RoundState) -> None:
        schedule = self.ctx.facts.schedule
        malicious = set(schedule.malicious)
        rnd.row["attack_active"] = int(schedule.attack_active(rnd.server_round))
        rnd.row["malicious_sampled"] = sum(1 for d in rnd.decisions if d.partition_id in malicious
                                           and not d.status.startswith(("dropped", "late")))
        rnd.row.update(detection_scores(rnd.decisions, malicious))


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
