"""Privacy accounting for fedsec runs, on Opacus' accountants, and the budget guard.

Local (sample-level) DP-SGD on the clients is in :mod:`fedsec.clients.private`; this module holds the shared
accounting and the central (user-level) mode's ledger.

Central (user-level) DP, DP-FedAvg of McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private
Recurrent Language Models", ICLR 2018 (https://arxiv.org/abs/1710.06963): each round samples k of N clients,
clips every update to L2 norm C, sums, adds N(0, (z C)^2) noise and divides by k. One round is one step of the
subsampled Gaussian mechanism with sampling rate q = k / N and noise multiplier z; epsilon at ``privacy.delta``
comes from Opacus' RDP accountant (Mironov, "Renyi Differential Privacy", CSF 2017; Mironov, Talwar and Zhang,
"Renyi Differential Privacy of the Sampled Gaussian Mechanism", 2019) or PRV accountant. Caveat: fedsec samples
exactly k clients per round (without replacement), the accountant analyses Poisson sampling with rate q, as the
DP-FedAvg paper and most FL libraries do.

Noise: ``privacy.noise_multiplier``, or calibrated with Opacus' ``get_noise_multiplier`` so that the planned rounds
spend at most ``privacy.epsilon``. The guard (:meth:`PrivacyLedger.allows`) refuses any round whose step would push
epsilon above the budget, so a run never spends more than its budget.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

if TYPE_CHECKING:
    from fedsec.config import Experiment

ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}


def _accountant(kind: str):
    return ACCOUNTANTS[kind]()


def epsilon_after(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
                  ) -> float:
    """Epsilon after ``steps`` subsampled-Gaussian steps (0 steps: 0)."""
    if steps <= 0:
        return 0.0
    return epsilon_after_history([(noise_multiplier, sample_rate, steps)], delta=delta, accountant=accountant)


def epsilon_after_history(history: list[tuple[float, float, int]], *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of a composed history of (noise multiplier, sample rate, steps) entries."""
    if not history:
        return 0.0
    acc = _accountant(accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=256)
def calibrate_noise(*, epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp") -> float:
    """The smallest noise multiplier (Opacus' search, within 0.01) that spends at most ``epsilon`` in ``steps``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant, epsilon_tolerance=0.01))


@dataclass
class PrivacyLedger:
    """Rounds spent so far under one noise multiplier and sampling rate; epsilon never above ``budget``."""

    noise_multiplier: float
    sample_rate: float
    delta: float
    budget: float
    accountant: str = "rdp"
    steps: int = 0

    @property
    def epsilon(self) -> float:
        return epsilon_after(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps,
                             delta=self.delta, accountant=self.accountant)

    def allows(self, more_steps: int = 1) -> bool:
        """Whether ``more_steps`` more rounds keep epsilon within the budget."""
        spent = epsilon_after(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                              steps=self.steps + more_steps, delta=self.delta, accountant=self.accountant)
        return spent <= self.budget and math.isfinite(spent)

    def spend(self, steps: int = 1) -> float:
        self.steps += steps
        return self.epsilon

    def rounds_within_budget(self, planned: int) -> int:
        """How many of ``planned`` rounds fit in the budget."""
        low, high = 0, planned
        while low < high:
            mid = (low + high + 1) // 2
            spent = epsilon_after(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=mid,
                                  delta=self.delta, accountant=self.accountant)
            low, high = (mid, high) if spent <= self.budget else (low, mid - 1)
        return low


class PrivacyTracker:
    """Epsilon per round and the budget guard, for both DP modes (nothing without DP).

    Central: the server's ledger (one subsampled-Gaussian step per round); the run stops before a round that
    would overspend. Local: each client accounts for itself and refuses to overspend; the run's epsilon is the
    largest client epsilon so far, and the run stops when every sampled client refused.
    """

    def __init__(self, experiment: Experiment) -> None:
        self.config = experiment.privacy
        self.ledger = None
        plan = experiment.privacy_plan()
        if plan is not None:
            self.ledger = PrivacyLedger(plan.noise_multiplier, plan.sample_rate, self.config.delta,
                                        self.config.epsilon, self.config.accountant)
        self.client_epsilon: dict[int | None, float] = {}
        self.summary: dict[str, Any] = {}
        if self.config.mode != "none":
            self.summary = {"mode": self.config.mode, "epsilon": 0.0, "epsilon_budget": self.config.epsilon,
                            "delta": self.config.delta}
        if self.ledger is not None:
            self.summary.update(noise_multiplier=self.ledger.noise_multiplier, sample_rate=self.ledger.sample_rate)

    def start(self, row: dict[str, Any]) -> None:
        if self.config.mode != "none":
            row["epsilon"] = 0.0

    def allows_next_round(self) -> bool:
        return self.ledger is None or self.ledger.allows(1)

    def end_round(self, row: dict[str, Any], decisions: list[Any]) -> None:
        if self.ledger is not None:
            row["epsilon"] = self.ledger.spend(1)
        elif self.config.mode == "local":
            self.client_epsilon.update({d.partition_id: d.metrics["epsilon"] for d in decisions
                                        if "epsilon" in d.metrics})
            row["epsilon"] = max(self.client_epsilon.values(), default=0.0)
            self.summary["client_epsilon"] = {str(k): v for k, v in sorted(self.client_epsilon.items())}
        if "epsilon" in row:
            self.summary["epsilon"] = row["epsilon"]

    @staticmethod
    def all_exhausted(decisions: list[Any]) -> bool:
        return bool(decisions) and all("privacy budget exhausted" in d.status for d in decisions)
