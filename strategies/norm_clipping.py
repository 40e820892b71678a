"""Norm bounding of updates, with optional weak differential privacy (Gaussian noise on the aggregate).

Sun, Kairouz, Suresh and McMahan, "Can You Really Backdoor Federated Learning?", arXiv preprint, 2019,
https://arxiv.org/abs/1911.07963.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_float, check_int
from .base import RobustStrategy


def clip_scales(norms: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Scale factors min(1, clip_norm / norm), shape of ``norms``; a zero norm gets 1."""
    return (clip_norm / norms).clamp(max=1.0)


def norm_clip(
    updates: torch.Tensor,
    num_examples: torch.Tensor,
    *,
    clip_norm: float,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Example-weighted mean of the updates, each projected onto the L2 ball of radius ``clip_norm``, plus
    N(0, noise_std^2 I) noise.

    updates: (n, d); num_examples: (n,). The noise is drawn on the CPU from ``generator`` (in the updates' dtype)
    and moved to the updates' device, so a seeded generator gives the same noise on every device. Returns the
    aggregate (d,) and the weights (n,): alpha_i * min(1, clip_norm / ||u_i||) with alpha_i = n_i / sum n, the
    coefficient of the raw update in the aggregate; they sum to 1 only when nothing was clipped.
    """
    alpha = num_examples.to(updates.dtype)
    alpha = alpha / alpha.sum()
    weights = alpha * clip_scales(torch.linalg.vector_norm(updates, dim=1), clip_norm)
    aggregate = weights @ updates
    if noise_std > 0:
        noise = torch.randn(updates.shape[1], generator=generator, dtype=updates.dtype)
        aggregate = aggregate + noise_std * noise.to(updates.device)
    return aggregate, weights



class NormClippingParams(Params):
    """``[defense]`` keys of ``strategy = "norm_clipping"``."""

    clip_norm: float = Field(1.0, gt=0, le=1e6, description="L2 clipping bound, in (0, 1e6].")
    noise_std: float = Field(0.0, ge=0, le=1e6, description="std of Gaussian noise on the aggregate, 0..1e6.")

class NormClipping(RobustStrategy):
    """Norm bounding: clip every update to L2 norm ``clip_norm``, average, optionally add Gaussian noise.

    Parameters
    ----------
    clip_norm : float (default: 1.0)
        M > 0, the largest L2 norm an update keeps (config key ``defense.clip_norm``).
    noise_std : float (default: 0.0)
        sigma >= 0, standard deviation of the Gaussian noise added to every coordinate of the aggregate
        (config key ``defense.noise_std``); 0 = norm bounding only.
    seed : int (default: 0)
        Seeds the torch.Generator the noise is drawn from (config key ``defense.seed``); the stream continues
        across rounds, so a run with the same seed draws the same noise.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    No f: no update is rejected, each one's influence is bounded by alpha_i * M. Works on updates (the norm of
    client weights would be meaningless). The reported weight is alpha_i * min(1, M / ||u_i||), so clipped
    clients show a smaller weight than their example share. "Weak" DP: sigma is chosen for robustness, not
    from a privacy budget; no epsilon is accounted (use privacy.mode = "central" for that).

    Differences
    -----------
    Flower has no such server strategy (its ``DifferentialPrivacyServerSideFixedClipping`` wrapper clips and
    adds noise calibrated to a noise multiplier). The clipped updates are averaged weighted by ``num-examples``,
    as FedAvg does, so that a large ``clip_norm`` with ``noise_std = 0`` is exactly FedAvg.
    """

    Params = NormClippingParams
    family = "robust_mean"
    description = 'norm bounding + optional Gaussian noise (Sun et al. 2019)'
    uses_counts = True

    def __init__(self, *, clip_norm: float = 1.0, noise_std: float = 0.0, seed: int = 0, **kwargs: Any) -> None:
        self.clip_norm = check_float("NormClipping", "clip_norm", clip_norm, low=0.0, low_open=True)
        self.noise_std = check_float("NormClipping", "noise_std", noise_std, low=0.0)
        self.seed = check_int("NormClipping", "seed", seed, low=0)
        self.generator = torch.Generator().manual_seed(self.seed)
        super().__init__(**kwargs)

    def describe(self) -> str:
        return f"NormClipping(clip_norm={self.clip_norm:g}, noise_std={self.noise_std:g}, seed={self.seed})"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return norm_clip(
            updates, num_examples, clip_norm=self.clip_norm, noise_std=self.noise_std, generator=self.generator
        )
