"""Gaussian: send u + N(0, std^2 I).

The "Gaussian" Byzantine attack of Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017, in its additive form. Default ``std = 1``. The kernel is pure; the noise is drawn
on the CPU from a generator seeded per client and round, so it is the same on every device.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsec.registry import Params

from .base import Attack, AttackContext


def gaussian_update(update: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """update + N(0, std^2) noise drawn from ``generator`` (seeded per client and round by the caller)."""
    noise = torch.randn(update.shape, generator=generator, dtype=update.dtype, device="cpu").to(update.device)
    return update + std * noise


class GaussianParams(Params):
    """``[attack]`` keys of ``kind = "gaussian"``."""

    std: float = Field(1.0, gt=0, le=1e6, description="noise standard deviation added to the update, in (0, 1e6].")


class Gaussian(Attack):
    """Model poisoning: add N(0, std^2) noise to the update."""

    kind = "gaussian"
    description = "model poisoning: add N(0, std^2) noise to the update (std)"
    Params = GaussianParams

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return gaussian_update(update, self.params.std, ctx.generator)
