"""A test audit hook with a config key: the global model's L2 norm after every round (a rounds.csv column) and
``scale`` x the final norm in a summary block (a sweep column)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedsec.arrays import record_to_tensors
from fedsec.hooks import RoundHook, RoundState
from fedsec.registry import Params
from fedsec.results.contract import Metric, SummaryMetric


class WeightNormParams(Params):
    scale: float = Field(1.0, gt=0, le=100, description="factor on the final norm.")


def norm(arrays: Any) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in record_to_tensors(arrays).values())))


class WeightNorm(RoundHook):
    """The global model's norm."""

    name = "weight_norm"
    section = "audit"
    description = "test audit: the global model's L2 norm"
    Params = WeightNormParams
    metrics = (Metric("global_norm", "L2 norm of the global model", final=False),)
    summary_metrics = (SummaryMetric("weight_norm_scaled", "weight_norm", "scaled", "scale x the final norm"),)

    def after_aggregate(self, rnd: RoundState) -> None:
        rnd.row["global_norm"] = norm(rnd.arrays)

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        summary["weight_norm"] = {"status": "done", "scaled": self.params.scale * norm(arrays)}
