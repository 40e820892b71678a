"""A test attack with its own success metric: attackers relabel their 0s as 9s; success is the share of the test
set's 0s the global model gets wrong (declared, so every table picks it up)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedsec.clients.attacks import Attack, AttackContext
from fedsec.registry import Params
from fedsec.results.contract import AttackSuccess, Metric


class ZeroOutParams(Params):
    relabel: int = Field(9, ge=1, le=9, description="the label the attackers give their 0s.")


class ZeroOut(Attack):
    """Relabels class 0 as ``relabel`` at the attackers."""

    kind = "zero_out"
    description = "test attack: attackers relabel their 0s"
    Params = ZeroOutParams
    metrics = (Metric("zero_error_rate", "test 0s the global model gets wrong", better="higher"),)
    success = AttackSuccess("zero_error_rate")

    def poison_data(self, x: torch.Tensor, y: torch.Tensor, ctx: AttackContext) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.where(y == 0, torch.full_like(y, self.params.relabel), y)

    def test_metrics(self, state: Any, predict: Any, x: torch.Tensor, y: torch.Tensor,
                     recall: list[float]) -> dict[str, float]:
        return {"zero_error_rate": 1.0 - recall[0]}
