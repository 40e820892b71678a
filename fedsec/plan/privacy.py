"""The central-DP plan of a run: noise, sampling rate, what the planned rounds spend, how many fit the budget.

Computed once, when the run plan is built; the server's ledger, the strategy and ``fedsec validate`` all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsec.config import Experiment
from fedsec.privacy import PrivacyLedger, calibrate_noise, epsilon_after


@dataclass(frozen=True)
class PrivacyPlan:
    """What a central-DP run will spend: noise, sampling rate, epsilon after the planned rounds."""

    noise_multiplier: float
    sample_rate: float
    planned_epsilon: float
    rounds_within_budget: int


def central_privacy_plan(experiment: Experiment) -> PrivacyPlan | None:
    """Noise and spending of a central-DP run (None without central DP; local DP is planned per client)."""
    privacy = experiment.privacy
    if privacy.mode != "central":
        return None
    q = experiment.train.clients_per_round / experiment.data.num_clients
    z = privacy.noise_multiplier
    if z is None:
        z = calibrate_noise(epsilon=privacy.epsilon, delta=privacy.delta, sample_rate=q, steps=experiment.rounds,
                            accountant=privacy.accountant)
    spent = epsilon_after(noise_multiplier=z, sample_rate=q, steps=experiment.rounds, delta=privacy.delta,
                          accountant=privacy.accountant)
    ledger = PrivacyLedger(z, q, privacy.delta, privacy.epsilon, privacy.accountant)
    return PrivacyPlan(z, q, spent, ledger.rounds_within_budget(experiment.rounds))
