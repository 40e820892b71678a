"""DP-FedAvg: user-level central differential privacy with a fixed clipping bound.

McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018
(https://arxiv.org/abs/1710.06963), Algorithm 1 with the fixed-denominator estimator: every update is clipped to
L2 norm ``clip_norm`` (C), the clipped updates are summed with equal weights, N(0, (z C)^2 I) noise is added and
the sum is divided by the expected number of clients per round (k). One client changes the sum by at most C, so
each round is a Gaussian mechanism with sensitivity C; the privacy accounting lives in :mod:`fedsec.privacy`.
Defaults: none (fedsec's config gives ``privacy.clip_norm`` = 1.0 and calibrates z to the budget).

Adaptive clipping (``privacy.clipping = "adaptive"``): Andrew, Thakkar, McMahan and Ramaswamy, "Differentially
Private Learning with Adaptive Clipping", NeurIPS 2021 (https://arxiv.org/abs/1905.03871), Algorithm 1 with the
geometric update: each round the server counts the updates whose norm is within the current bound C, releases the
count with N(0, sigma_b^2) noise, divides by the expected cohort k, and moves C <- C exp(-eta_C (b - gamma)) towards
the gamma-quantile of the norms. Defaults are the paper's: gamma = 0.5, eta_C = 0.2, sigma_b = k / 20. The count
is a second Gaussian release each round; the update noise then uses z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), so that
the pair spends what one Gaussian mechanism of multiplier z spends and the accountant keeps z
(:func:`fedsec.privacy.adaptive_update_noise_multiplier`). Departures: the paper counts b_i = 1[||u_i|| <= C] on the
clients; here the server does (it holds the updates; server-side clipping as in Flower's
``DifferentialPrivacyServerSideAdaptiveClipping``). Flower's server-side wrapper clips with C_t but scales the
round's noise with the already updated C_(t+1) and divides the count by the number of replies; here the noise of
round t is z_Delta C_t (the bound that round's sensitivity has) and the count is divided by the expected k (a
public constant, as the paper's fixed-denominator estimator needs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


@dataclass(frozen=True)
class AdaptiveClipping:
    """Adaptive clipping's settings (config keys ``privacy.target_quantile``, ``clip_lr``, ``clip_count_std``)."""

    target_quantile: float = 0.5  # gamma: the share of updates the bound should leave unclipped
    lr: float = 0.2  # eta_C: geometric learning rate of the bound
    count_std: float = 0.0  # sigma_b: std of the noise on the count of unclipped updates


def noised_unclipped_share(
    norms: torch.Tensor, clip_norm: float, *, count_std: float, expected_clients: int, generator: torch.Generator
) -> float:
    """(#{i : ||u_i|| <= C} + N(0, sigma_b^2)) / k: the share of the round's updates within the bound, as released.

    >>> g = torch.Generator().manual_seed(0)
    >>> noised_unclipped_share(torch.tensor([0.5, 2.0, 0.9, 3.0]), 1.0, count_std=0.0, expected_clients=4, generator=g)
    0.5
    """
    count = float((norms <= clip_norm).sum())
    noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * count_std
    return (count + noise) / expected_clients


def next_clip_norm(clip_norm: float, unclipped_share: float, *, target_quantile: float, lr: float) -> float:
    """The geometric update C exp(-eta_C (b - gamma)): the bound shrinks while more than gamma of the updates fit.

    >>> next_clip_norm(1.0, 0.5, target_quantile=0.5, lr=0.2)
    1.0
    >>> round(next_clip_norm(1.0, 1.0, target_quantile=0.5, lr=0.2), 4)
    0.9048
    """
    return clip_norm * math.exp(-lr * (unclipped_share - target_quantile))


class DPFedAvg(RobustStrategy):
    """DP-FedAvg with fixed clipping: the noisy, clipped, uniformly weighted mean of the updates.

    Parameters
    ----------
    clip_norm : float
        C, the L2 bound of each client's update (config key ``privacy.clip_norm``).
    noise_multiplier : float
        The noise standard deviation is this times C: z (``privacy.noise_multiplier``, or calibrated to the
        budget); with adaptive clipping, z_Delta (the plan's ``update_noise_multiplier``).
    expected_clients : int
        k, the number of clients sampled per round: the fixed denominator.
    seed : int (default: 0)
        Seeds the noise generator, so runs are reproducible.
    adaptive : AdaptiveClipping | None (default: None)
        Adaptive clipping (module docstring); ``clip_norm`` is then the initial bound. None: fixed clipping.
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
        self, *, clip_norm: float, noise_multiplier: float, expected_clients: int, seed: int = 0,
        adaptive: AdaptiveClipping | None = None, **kwargs: Any
    ) -> None:
        self.clip_norm = check_float("DPFedAvg", "clip_norm", clip_norm, low=0.0, low_open=True)
        self.noise_multiplier = check_float("DPFedAvg", "noise_multiplier", noise_multiplier, low=0.0)
        self.expected_clients = check_int("DPFedAvg", "expected_clients", expected_clients, low=1)
        self.generator = torch.Generator().manual_seed(seed)
        self.adaptive = adaptive
        if adaptive is not None:
            check_float("DPFedAvg", "target_quantile", adaptive.target_quantile, low=0.0, high=1.0)
            check_float("DPFedAvg", "clip_lr", adaptive.lr, low=0.0, low_open=True)
            check_float("DPFedAvg", "clip_count_std", adaptive.count_std, low=0.0)
        # the bound of the next round, a tensor so that the checkpoint keeps it (fedsec.server.checkpoint)
        self.clip_state = torch.tensor(self.clip_norm, dtype=torch.float64)
        self.round_clip = self.clip_norm  # the bound of the round being aggregated
        super().__init__(**kwargs)

    def describe(self) -> str:
        clipping = "" if self.adaptive is None else (
            f", adaptive: quantile={self.adaptive.target_quantile:g}, lr={self.adaptive.lr:g}, "
            f"count_std={self.adaptive.count_std:g}")
        return (f"DPFedAvg(clip_norm={self.clip_norm}, noise_multiplier={self.noise_multiplier:.4g}, "
                f"k={self.expected_clients}{clipping})")

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.adaptive is None:
            self.round_clip = self.clip_norm
            return dp_fedavg_aggregate(updates, clip_norm=self.clip_norm, noise_multiplier=self.noise_multiplier,
                                       expected_clients=self.expected_clients, generator=self.generator)
        clip = self.round_clip = float(self.clip_state)
        share = noised_unclipped_share(torch.linalg.vector_norm(updates, dim=1), clip,
                                       count_std=self.adaptive.count_std, expected_clients=self.expected_clients,
                                       generator=self.generator)
        result = dp_fedavg_aggregate(updates, clip_norm=clip, noise_multiplier=self.noise_multiplier,
                                     expected_clients=self.expected_clients, generator=self.generator)
        self.clip_state.fill_(next_clip_norm(clip, share, target_quantile=self.adaptive.target_quantile,
                                             lr=self.adaptive.lr))
        self.round_metrics = {"clip_norm": clip, "unclipped_share": share}
        return result

    def canary_scale(self) -> float:
        """A canary's update is larger than any bound, so it is clipped to the round's bound C like a client's;
        with weight 1 / k it adds C / k to its coordinate (before the noise: the aggregate returned above holds the
        noise already, and adding to it is the same sum)."""
        return self.round_clip / self.expected_clients
