"""The central-DP plan of a run: the mechanism (noise, clip bound, sampling scheme and rate), the budget, what the
planned rounds spend and how many fit; built once by the run plan (:func:`fedsec.plan.privacy.central_privacy_plan`)
and read by the server's privacy guard, the DP strategies and ``fedsec validate``."""

from __future__ import annotations

from dataclasses import dataclass

from .accounting import PrivacyLedger


@dataclass(frozen=True)
class PrivacyPlan:
    """What a central-DP run will spend, and the mechanism that spends it."""

    noise_multiplier: float
    sample_rate: float
    planned_epsilon: float
    rounds_within_budget: int
    clip_norm: float  # privacy.clip_norm: the L2 bound of each client's update
    delta: float
    epsilon_budget: float  # privacy.epsilon: a run never spends more
    accountant: str = "rdp"
    scheme: str = "poisson"  # train.sampling, resolved: "poisson" or "fixed"
    population: int | None = None  # N: data.num_clients
    cohort_size: int | None = None  # k: train.clients_per_round (fixed), the expected cohort (Poisson)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise added to the sum of clipped updates."""
        return self.noise_multiplier * self.clip_norm

    def ledger(self) -> PrivacyLedger:
        """A fresh ledger of this plan's mechanism (nothing spent yet)."""
        return PrivacyLedger(self.noise_multiplier, self.sample_rate, self.delta, self.epsilon_budget, self.accountant,
                             scheme=self.scheme, population=self.population, cohort_size=self.cohort_size)
