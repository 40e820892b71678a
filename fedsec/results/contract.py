"""The results contract: every name a run writes, declared by the kind that writes it.

A :class:`Metric` is one column of ``rounds.csv`` (and, when ``final``, a key of ``summary.json`` with the last
round's value, a column of ``sweep.csv`` and a row of the report's final metrics). The kinds declare theirs:

- the round loop: :data:`ROUND_METRICS` (timings, participation);
- each attack: ``Attack.metrics`` and its success measure ``Attack.success`` (:class:`AttackSuccess`);
- each round hook: ``RoundHook.metrics`` (rounds.csv) and ``RoundHook.summary_metrics`` (:class:`SummaryMetric`:
  a number inside a ``summary.json`` block, flattened into ``sweep.csv``).

Sweeps, reports, worst-case tables, privacy studies and the metric sheet read these declarations
(:func:`fedsec.plan.results.declared_metrics`) instead of keeping lists of their own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ROUND_METRICS", "AttackSuccess", "Metric", "SummaryMetric", "number", "round_status"]


@dataclass(frozen=True)
class Metric:
    """One ``rounds.csv`` column: its name, what it means, and whether it is a final metric of a run."""

    name: str
    meaning: str
    final: bool = True  # also in summary.json (last round), sweep.csv and the report's final metrics
    better: Literal["higher", "lower", ""] = ""  # for the model's owner; "" = neither (a count, a time)
    integer: bool = False  # shown without decimals


@dataclass(frozen=True)
class SummaryMetric:
    """A number inside a ``summary.json`` block, as the flat ``sweep.csv`` column ``name``: ``block[key]``, or the
    mean of ``key`` over the block's records whose ``status`` is "done" when the block is a list; ``block = ""``:
    a top-level key of ``summary.json``."""

    name: str
    block: str
    key: str
    meaning: str

    def of(self, summary: Mapping[str, Any]) -> float | None:
        block = summary.get(self.block) if self.block else summary
        if isinstance(block, list):
            values = [number(r.get(self.key)) for r in block if isinstance(r, dict) and r.get("status") == "done"]
            present = [v for v in values if v is not None]
            return sum(present) / len(present) if present else None
        if isinstance(block, dict):
            return number(block.get(self.key))
        return None


@dataclass(frozen=True)
class AttackSuccess:
    """How an attack's success is read from a run's metrics: ``metric``, or ``1 - metric`` when ``invert``
    (e.g. label flipping succeeds as the source class's recall falls)."""

    metric: str
    invert: bool = False

    @property
    def label(self) -> str:
        return f"1 - {self.metric}" if self.invert else self.metric

    def of(self, metrics: Mapping[str, Any]) -> float | None:
        value = number(metrics.get(self.metric))
        if value is None:
            return None
        return 1.0 - value if self.invert else value


def number(value: Any) -> float | None:
    """``value`` as a finite float; None for missing, booleans, text, NaN and infinities."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


#: what the round loop itself writes in every round's row (participation, the strategy's own round metrics and the
#: rest are declared by the round hooks that write them: fedsec/hooks/)
ROUND_METRICS: tuple[Metric, ...] = (
    Metric("round", "round number (0 = the initial model)", final=False, integer=True),
    Metric("seconds", "wall time of the round", final=False),
    Metric("train_seconds", "clients' training and messaging through Flower and Ray", final=False),
    Metric("aggregate_seconds", "the strategy's checks and aggregation", final=False),
    Metric("eval_seconds", "evaluation of the new global model on the test set (0 in a round [eval] skips)",
           final=False),
    Metric("audit_seconds", "the per-round audits and the other hooks after aggregation (evasion's robust "
           "accuracy, detection, ...)", final=False),
    Metric("skipped", "1 when the round produced no new global model", final=False, integer=True),
)


def round_status(row: dict[str, Any]) -> str:
    """A round's line for progress bars: ``round 3: accuracy 0.8123  loss 0.5100``; a round that ``[eval]`` did not
    evaluate says so, one evaluated on the subset names its size."""
    accuracy, loss = number(row.get("accuracy")), number(row.get("loss"))
    if accuracy is None:
        return f"round {int(row['round'])}: not evaluated ([eval] every)"
    subset = number(row.get("eval_examples"))
    text = f"round {int(row['round'])}: accuracy {accuracy:.4f}" + (f"  loss {loss:.4f}" if loss is not None else "")
    return text + (f" (on {int(subset)} test examples)" if subset is not None else "")
