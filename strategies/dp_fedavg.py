"""DP-FedAvg: user-level central differential privacy with a fixed clipping bound.

McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018
(https://arxiv.org/abs/1710.06963), Algorithm 1 with the fixed-denominator estimator: every update is clipped to
L2 norm ``clip_norm`` (C), the clipped updates are summed with equal weights, N(0, (z C)^2 I) noise is added and
the sum is divided by the expected number of clients per round (k). One client changes the sum by at most C, so
each round is a Gaussian mechanism with sensitivity C; the privacy accounting lives in :mod:`fedsec.privacy`.
Defaults: none (fedsec's config gives ``privacy.clip_norm`` = 1.0 and calibrates z to the budget).
"""

from __future__ import annotations

from typing import Any

import torch

from ._checks import check_float, check_int
from .base import RobustStrategy


def dp_fedavg_aggregate(
    updates: torch.Tensor,
    *,
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip, sum, add noise, divide by k.

    updates: (n, d). Noise N(0, (noise_multiplier * clip_norm)^2) per coordinate, drawn on the CPU from
    ``generator`` (same numbers on every device). Returns the aggregate (d,) and the weights (n,): each client's
    coefficient min(1, C / ||u||) / k.
    """
    norms = torch.linalg.vector_norm(updates, dim=1)
    scale = torch.clamp(clip_norm / norms.clamp_min(1e-12), max=1.0)
    total = scale @ updates
    noise = torch.randn(updates.shape[1], generator=generator, dtype=updates.dtype).to(updates.device)
    aggregate = (total + noise_multiplier * clip_norm * noise) / expected_clients
    return aggregate, scale / expected_clients


class DPFedAvg(RobustStrategy):
    """DP-FedAvg with fixed clipping: the noisy, clipped, uniformly weighted mean of the updates.

    Parameters
    ----------
    clip_norm : float
        C, the L2 bound of each client's update (config key ``privacy.clip_norm``).
    noise_multiplier : float
        z: the noise standard deviation is z * C (``privacy.noise_multiplier``, or calibrated to the budget).
    expected_clients : int
        k, the number of clients sampled per round: the fixed denominator.
    seed : int (default: 0)
        Seeds the noise generator, so runs are reproducible.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy`.

    Assumptions
    -----------
    Works on updates. Every client has weight 1 (user-level DP): ``num-examples`` does not weight the mean, since
    weighting would raise one client's sensitivity above C. Failed or invalid replies are dropped; the
    denominator stays k (the paper's fixed-denominator estimator), so the sensitivity bound holds. A round with
    no valid update (under Poisson sampling the cohort may be empty) still releases the noise alone
    (:attr:`min_valid_updates` = 0): skipping it would tell whether anyone took part, which the accountant does
    not cover.

    Differences
    -----------
    Flower's ``DifferentialPrivacyServerSideFixedClipping`` wraps FedAvg, which weights by ``num-examples``, and
    divides the noise by the number of sampled clients; here the weights are uniform, as the paper's analysis
    needs.
    """

    min_valid_updates = 0  # an empty round releases N(0, (zC)^2) / k: the mechanism runs every round

    def __init__(
        self, *, clip_norm: float, noise_multiplier: float, expected_clients: int, seed: int = 0, **kwargs: Any
    ) -> None:
        self.clip_norm = check_float("DPFedAvg", "clip_norm", clip_norm, low=0.0, low_open=True)
        self.noise_multiplier = check_float("DPFedAvg", "noise_multiplier", noise_multiplier, low=0.0)
        self.expected_clients = check_int("DPFedAvg", "expected_clients", expected_clients, low=1)
        self.generator = torch.Generator().manual_seed(seed)
        super().__init__(**kwargs)

    def describe(self) -> str:
        return (f"DPFedAvg(clip_norm={self.clip_norm}, noise_multiplier={self.noise_multiplier:.4g}, "
                f"k={self.expected_clients})")

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dp_fedavg_aggregate(updates, clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier,
                                   expected_clients=self.expected_clients, generator=self.generator)
