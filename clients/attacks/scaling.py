"""Scaling (boosting): send s * u.

Bhagoji et al., "Analyzing Federated Learning through an Adversarial Lens", ICML 2019. Default ``scale = 10``.
The kernel is pure, device-agnostic torch.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsec.registry import Params

from .base import Attack, AttackContext


def scale_update(update: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * update."""
    return update * scale


class ScalingParams(Params):
    """``[attack]`` keys of ``kind = "scaling"``."""

    scale: float = Field(10.0, ge=-1e6, le=1e6, description="factor applied to the update, in [-1e6, 1e6].")


class Scaling(Attack):
    """Model poisoning: send ``scale`` x the update."""

    kind = "scaling"
    description = "model poisoning: send scale x the update (scale)"
    Params = ScalingParams

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return scale_update(update, self.params.scale)
