"""A stateful test rule: the weighted mean of the updates, with server momentum (its velocity is state that a
checkpoint must carry for a resumed run to give the same rows)."""

from __future__ import annotations

import torch
from pydantic import Field

from fedsec.registry import Params
from fedsec.strategies import RobustStrategy


class MomentumMeanParams(Params):
    beta: float = Field(0.9, ge=0, lt=1, description="server momentum.")


class MomentumMean(RobustStrategy):
    """Mean of the updates plus ``beta`` x the previous step."""

    Params = MomentumMeanParams
    description = "test rule: FedAvg with server momentum"

    def __init__(self, *, beta: float = 0.9, **kwargs) -> None:
        self.beta = beta
        self.velocity: torch.Tensor | None = None
        super().__init__(**kwargs)

    def aggregate_updates(self, updates, num_examples):
        weights = num_examples / num_examples.sum()
        step = weights @ updates
        self.velocity = step if self.velocity is None else self.beta * self.velocity.to(step) + step
        return self.velocity, weights
