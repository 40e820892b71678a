"""The results contract as declared by the registered kinds (:mod:`fedsec.results.contract`): the columns a run can
write, which of them are final metrics, what each means, and how an attack's success is read.

Everything here is read from the registries at call time, so a kind registered later (a plugin, a test) is in every
table that asks: ``sweep.csv``, reports, worst-case tables, privacy studies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedsec.clients.attacks import ATTACKS
from fedsec.hooks import HOOKS
from fedsec.results.contract import ROUND_METRICS, AttackSuccess, Metric, SummaryMetric

__all__ = ["attack_success_of", "declared_metrics", "final_metrics", "metric_help", "summary_metrics",
           "success_declarations"]


def declared_metrics() -> list[Metric]:
    """Every ``rounds.csv`` column a run can write, once each: the global model's (evaluation, then every attack's
    own), then the other hooks' in calling order, then the round loop's."""
    hooks = [cls for _, cls in HOOKS.items()]
    evaluation = [m for cls in hooks if cls.name == "evaluation" for m in cls.metrics]
    attacks = [m for _, cls in ATTACKS.items() for m in cls.metrics]
    others = [m for cls in hooks if cls.name != "evaluation" for m in cls.metrics]
    out: dict[str, Metric] = {}
    for metric in [*evaluation, *attacks, *others, *ROUND_METRICS]:
        out.setdefault(metric.name, metric)
    return list(out.values())


def final_metrics() -> list[str]:
    """The names of the final metrics: ``summary.json`` keys from the last round, ``sweep.csv`` columns."""
    return [m.name for m in declared_metrics() if m.final]


def summary_metrics() -> list[SummaryMetric]:
    """The numbers inside the hooks' ``summary.json`` blocks that tables flatten (``membership_auc``, ...)."""
    return [m for _, cls in HOOKS.items() for m in cls.summary_metrics]


def metric_help() -> dict[str, str]:
    """name -> meaning, for every declared column and summary number."""
    return {**{m.name: m.meaning for m in declared_metrics()}, **{m.name: m.meaning for m in summary_metrics()}}


def success_declarations() -> list[AttackSuccess]:
    """Every registered attack's success measure, once each."""
    return list(dict.fromkeys(cls.success for _, cls in ATTACKS.items() if cls.success is not None))


def attack_success_of(values: Mapping[str, Any], kind: str | None = None) -> tuple[float | None, str]:
    """An attack's success and how it was read, from a run's final metrics (a summary, a sweep row): the declared
    measure of attack ``kind`` when it is known, else the first declared measure the values hold."""
    if kind is not None and kind in ATTACKS:
        declared = ATTACKS.get(kind).success
        candidates = [declared] if declared is not None else []
    else:
        candidates = success_declarations()
    for success in candidates:
        value = success.of(values)
        if value is not None:
            return value, success.label
    return None, ""
