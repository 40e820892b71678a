"""CRFL: FedAvg whose global model is clipped and perturbed every round, so that it can be certified at test time.

Xie, Chen, Chen and Li, "CRFL: Certifiably Robust Federated Learning against Backdoor Attacks", ICML 2021, PMLR 139
(https://arxiv.org/abs/2106.08283; released code github.com/AI-secure/CRFL). Training: after averaging, the server
clips the global model's parameter vector to L2 norm rho_t and adds N(0, sigma^2 I) to every parameter
(:func:`clip_and_perturb`); the clip bound grows with the round, rho_t = min(``param_clip``, ``clip_slope`` x t +
``clip_intercept``) (:func:`crfl_clip_bound`). Test time: parameter smoothing and the certified radius are the
audit ``[audit.certify]`` (:mod:`fedsec.audits.certified`, :mod:`fedsec.hooks.certify`).

Defaults: the released code's MNIST configuration (``configs/mnist_params.yaml`` and its train loop): ``param_clip =
15``, rho_t = 0.1 t + 2, ``sigma = 0.01``; its aggregation ``mean_param`` (FedAvg over the clients' weights).

Differences: the released code clips ``named_parameters`` and adds noise to the whole state dict; here the vector
is every array the clients are sent (the same for fedsec's models: none has BatchNorm statistics or other
buffers). The paper also certifies a geometric-median aggregation (RFA); here the rule is FedAvg. A round the
server skips (too few valid updates) is neither clipped nor perturbed: the global model does not change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from pydantic import Field

from fedsec.arrays import record_to_vector, vector_to_record
from fedsec.registry import Params

from ._checks import check_float, check_int
from .base import RobustStrategy
from .fedavg import fedavg_aggregate

__all__ = ["CRFL", "CrflSchedule", "clip_and_perturb", "crfl_clip_bound"]


def crfl_clip_bound(server_round: int, *, param_clip: float, clip_slope: float, clip_intercept: float) -> float:
    """rho_t = min(param_clip, clip_slope * t + clip_intercept), the released code's growing bound.

    >>> crfl_clip_bound(10, param_clip=15.0, clip_slope=0.1, clip_intercept=2.0)
    3.0
    >>> crfl_clip_bound(500, param_clip=15.0, clip_slope=0.1, clip_intercept=2.0)
    15.0
    """
    return min(float(param_clip), float(clip_slope) * server_round + float(clip_intercept))


def clip_and_perturb(
    vector: torch.Tensor, bound: float, sigma: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, float]:
    """The model vector scaled onto the L2 ball of radius ``bound`` (when outside it), plus N(0, sigma^2 I).

    Returns the new vector (the input's dtype and device) and the norm before clipping. The noise is drawn on the
    CPU from ``generator`` in float64 and cast, so a seeded generator gives the same model on every device.

    >>> v, norm = clip_and_perturb(torch.tensor([3.0, 4.0]), 1.0, 0.0)
    >>> v.tolist(), norm
    ([0.6000000238418579, 0.800000011920929], 5.0)
    """
    norm = float(torch.linalg.vector_norm(vector.double()))
    out = vector * min(1.0, bound / norm) if norm > 0 else vector.clone()
    if sigma > 0:
        noise = torch.randn(vector.numel(), generator=generator, dtype=torch.float64)
        out = out + (sigma * noise).to(device=vector.device, dtype=vector.dtype)
    return out, norm


@dataclass(frozen=True)
class CrflSchedule:
    """CRFL's training-time smoothing, as the certification needs it: the clip bound of each round and sigma."""

    param_clip: float
    clip_slope: float
    clip_intercept: float
    sigma: float

    def bound(self, server_round: int) -> float:
        return crfl_clip_bound(server_round, param_clip=self.param_clip, clip_slope=self.clip_slope,
                               clip_intercept=self.clip_intercept)


class CRFLParams(Params):
    """``[defense]`` keys of ``strategy = "crfl"``."""

    param_clip: float = Field(15.0, gt=0, le=1e6, description="Largest L2 norm of the global model's parameters "
                              "(the released code's param_clip_thres), in (0, 1e6].")
    clip_slope: float = Field(0.1, ge=0, le=1e3, description="Growth of the clip bound per round: rho_t = "
                              "min(param_clip, clip_slope * t + clip_intercept).")
    clip_intercept: float = Field(2.0, gt=0, le=1e6, description="The clip bound at round 0.")
    sigma: float = Field(0.01, ge=0, le=10, description="std of the Gaussian noise added to every parameter of the "
                         "global model each round (sigma_param), in [0, 10].")


class CRFL(RobustStrategy):
    """FedAvg, then the global model clipped to rho_t and perturbed with N(0, sigma^2 I) (Xie et al., ICML 2021).

    Parameters
    ----------
    param_clip, clip_slope, clip_intercept : float (defaults: 15, 0.1, 2)
        The clip bound rho_t = min(param_clip, clip_slope * t + clip_intercept) of round t.
    sigma : float (default: 0.01)
        Noise std per parameter, every round.
    seed : int (default: 0)
        Seeds the noise generator (checkpointed with the strategy, so a resumed run draws the same noise).
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy`.

    Assumptions
    -----------
    None about f: every valid update is averaged (CRFL bounds a backdoor's effect instead of removing it); the
    certificate (``[audit.certify]``) assumes the attacker's magnitude, number and round.
    """

    Params = CRFLParams
    family = "mean"
    description = "FedAvg + clipped and perturbed global model, certifiable against backdoors (Xie et al. 2021)"
    uses_counts = True

    def __init__(self, *, param_clip: float = 15.0, clip_slope: float = 0.1, clip_intercept: float = 2.0,
                 sigma: float = 0.01, seed: int = 0, **kwargs: Any) -> None:
        self.param_clip = check_float("CRFL", "param_clip", param_clip, low=0.0, low_open=True)
        self.clip_slope = check_float("CRFL", "clip_slope", clip_slope, low=0.0)
        self.clip_intercept = check_float("CRFL", "clip_intercept", clip_intercept, low=0.0, low_open=True)
        self.sigma = check_float("CRFL", "sigma", sigma, low=0.0)
        self.seed = check_int("CRFL", "seed", seed, low=0)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.schedule = CrflSchedule(self.param_clip, self.clip_slope, self.clip_intercept, self.sigma)
        super().__init__(**kwargs)

    def describe(self) -> str:
        return (f"CRFL(rho_t = min({self.param_clip:g}, {self.clip_slope:g} t + {self.clip_intercept:g}), "
                f"sigma={self.sigma:g})")

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fedavg_aggregate(updates, num_examples)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's new model, clipped to this round's bound and perturbed (a skipped round stays as it was)."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        bound = self.schedule.bound(server_round)
        vector, norm = clip_and_perturb(record_to_vector(arrays), bound, self.sigma, self.generator)
        if metrics is None:
            metrics = MetricRecord()
        metrics["crfl_clip_bound"] = bound
        metrics["crfl_model_norm"] = norm
        return vector_to_record(vector, like=arrays), metrics

