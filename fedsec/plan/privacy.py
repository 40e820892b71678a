"""The central-DP plan of a run: noise, sampling scheme and rate, what the planned rounds spend, how many fit.

The sampling scheme is ``train.sampling`` resolved (:meth:`fedsec.config.Experiment.client_sampling`): Poisson by
default under central DP; "fixed" is accounted under the replace-one relation and needs ``privacy.accountant =
"rdp"`` (:mod:`fedsec.privacy.accountants` refuses it with "prv", naming both keys).

Computed once, when the run plan is built; the server's ledger, the strategy and ``fedsec validate`` all read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from fedsec.config import Experiment
from fedsec.privacy import PrivacyLedger, calibrate_noise, epsilon_after


@dataclass(frozen=True)
class PrivacyPlan:
    """What a central-DP run will spend: noise, sampling rate, epsilon after the planned rounds."""

    noise_multiplier: float
    sample_rate: float
    planned_epsilon: float
    rounds_within_budget: int
    scheme: str = "poisson"  # train.sampling, resolved: "poisson" or "fixed"
    population: int | None = None  # N: data.num_clients
    cohort_size: int | None = None  # k: train.clients_per_round (fixed), the expected cohort (Poisson)

    def ledger(self, *, delta: float, budget: float, accountant: str) -> PrivacyLedger:
        """A fresh ledger of this plan's mechanism (nothing spent yet)."""
        return PrivacyLedger(self.noise_multiplier, self.sample_rate, delta, budget, accountant, scheme=self.scheme,
                             population=self.population, cohort_size=self.cohort_size)


def central_privacy_plan(experiment: Experiment) -> PrivacyPlan | None:
    """Noise and spending of a central-DP run (None without central DP; local DP is planned per client)."""
    privacy = experiment.privacy
    if privacy.mode != "central":
        return None
    n, k = experiment.data.num_clients, experiment.train.clients_per_round
    q = k / n
    scheme = experiment.client_sampling()
    mechanism = {"sample_rate": q, "scheme": scheme, "population": n, "cohort_size": k}
    z = privacy.noise_multiplier
    if z is None:
        z = calibrate_noise(epsilon=privacy.epsilon, delta=privacy.delta, steps=experiment.rounds,
                            accountant=privacy.accountant, **mechanism)
    spent = epsilon_after(noise_multiplier=z, steps=experiment.rounds, delta=privacy.delta,
                          accountant=privacy.accountant, **mechanism)
    plan = PrivacyPlan(z, q, spent, 0, scheme, n, k)
    within = plan.ledger(delta=privacy.delta, budget=privacy.epsilon, accountant=privacy.accountant)
    return replace(plan, rounds_within_budget=within.rounds_within_budget(experiment.rounds))
