"""Min-max and min-sum: aggregation-agnostic optimised model poisoning.

Shejwalkar and Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses for
Federated Learning", NDSS 2021 (https://www.ndss-symposium.org/ndss-paper/manipulating-the-byzantine-optimizing-
model-poisoning-attacks-and-defenses-for-federated-learning/). The malicious update is mean - gamma * p with the
largest gamma such that

- min-max: its largest distance to any benign update is at most the largest distance between two benign updates;
- min-sum: its sum of squared distances to the benign updates is at most the largest such sum of a benign update.

gamma is found by the paper's halving search (start ``gamma_init = 10``, tolerance 1e-5). Perturbation p
(``perturbation``): "unit_vec" (the benign mean's unit vector; the default), "std" (coordinate-wise std) or
"sign" (sign of the mean).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from fedsec.registry import Params

from .base import Attack
from .scale_search import AdaptiveAttackError

PERTURBATIONS = ("unit_vec", "std", "sign")


def perturbation_direction(benign: torch.Tensor, kind: str = "unit_vec") -> torch.Tensor:
    """p (d,) from the benign rows (m, d): "unit_vec", "std" or "sign" (see the module docstring)."""
    mean = benign.mean(dim=0)
    if kind == "unit_vec":
        return mean / torch.linalg.vector_norm(mean).clamp_min(1e-12)
    if kind == "std":
        return benign.std(dim=0, unbiased=benign.shape[0] > 1)
    if kind == "sign":
        return torch.sign(mean)
    raise AdaptiveAttackError(f"attack.perturbation={kind!r}: unknown perturbation; use one of {PERTURBATIONS}")


def halving_search(succeeds: Callable[[float], bool], *, gamma_init: float, tol: float) -> float:
    """The paper's search: from gamma_init, step gamma_init/2 up on success / down on failure, halving the step.

    Returns the last gamma that succeeded (0.0 if none did). ``succeeds`` is called once per trial, in order.
    """
    if not gamma_init > 0 or not tol > 0:
        raise AdaptiveAttackError(
            f"attack.gamma_init={gamma_init!r}, attack.tol={tol!r}: the gamma search needs gamma_init > 0 and tol > 0"
        )
    gamma, step, last = gamma_init, gamma_init / 2, 0.0
    while step > tol:
        if succeeds(gamma):
            last = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return last


def optimised_update(
    benign: torch.Tensor,
    *,
    objective: str,
    perturbation: str = "unit_vec",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
) -> torch.Tensor:
    """Min-max (``objective="minmax"``) or min-sum (``"minsum"``) malicious update from benign rows (m, d)."""
    mean = benign.mean(dim=0)
    p = perturbation_direction(benign, perturbation)
    pairwise = torch.cdist(benign, benign) ** 2
    if objective == "minmax":
        bound = pairwise.max()

        def ok(gamma: float) -> bool:
            return bool(((benign - (mean - gamma * p)) ** 2).sum(dim=1).max() <= bound)
    elif objective == "minsum":
        bound = pairwise.sum(dim=1).max()

        def ok(gamma: float) -> bool:
            return bool(((benign - (mean - gamma * p)) ** 2).sum() <= bound)
    else:
        raise ValueError(f"unknown objective {objective!r}; use minmax or minsum")
    return mean - halving_search(ok, gamma_init=gamma_init, tol=tol) * p


class MinMaxParams(Params):
    """``[attack]`` keys of ``kind = "minmax"`` and ``"minsum"``."""

    perturbation: Literal["unit_vec", "std", "sign"] = Field("unit_vec", description="perturbation direction.")


class MinMax(Attack):
    """Min-max: the largest deviation whose distance to every benign update stays within the benign spread."""

    kind = "minmax"
    description = "min-max (Shejwalkar & Houmansadr 2021): max distance to benign <= max benign distance"
    Params = MinMaxParams
    crafts_from_benign = True

    def craft(self, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> torch.Tensor:
        return optimised_update(benign, objective=self.kind, perturbation=self.params.perturbation)
