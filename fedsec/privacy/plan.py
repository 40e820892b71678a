"""The central-DP plan of a run: the mechanism (noise, clip bound, sampling scheme and rate), the budget, what the
planned rounds spend and how many fit; built once by the run plan (:func:`fedsec.plan.privacy.central_privacy_plan`)
and read by the server's privacy guard, the DP strategies and ``fedsec validate``."""

from __future__ import annotations

from dataclasses import dataclass

from .accounting import PrivacyLedger
from .errors import PrivacyError


def adaptive_update_noise_multiplier(noise_multiplier: float, count_std: float) -> float:
    """z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the update noise that, with the count noise sigma_b, spends what
    one Gaussian mechanism of multiplier z spends (Andrew et al. 2021; Flower's ``compute_adaptive_noise_params``
    computes the same). Needs z < 2 sigma_b.

    >>> round(adaptive_update_noise_multiplier(1.0, 2.5), 4)
    1.0206
    """
    if noise_multiplier >= 2 * count_std:
        raise PrivacyError(
            f"privacy.clip_count_std={count_std:g}: adaptive clipping needs the count noise above half the noise "
            f"multiplier ({noise_multiplier:.4g} / 2), or the count alone would spend the budget; raise "
            "clip_count_std (or clients_per_round, whose 1/20 is its default), or lower noise_multiplier")
    return (noise_multiplier ** -2 - (2 * count_std) ** -2) ** -0.5


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
    clipping: str = "fixed"  # privacy.clipping: "fixed" or "adaptive" (Andrew et al. 2021)
    target_quantile: float = 0.5  # adaptive: the unclipped share the clip bound aims at
    clip_lr: float = 0.2  # adaptive: geometric learning rate of the clip bound
    clip_count_std: float = 0.0  # adaptive: std of the noise on the count of unclipped updates (sigma_b)

    @property
    def update_noise_multiplier(self) -> float:
        """z_Delta, the noise multiplier of the update sum. Fixed clipping: z itself. Adaptive clipping releases a
        second Gaussian sum each round, the count of unclipped updates (sensitivity 1/2 once centred, noise
        sigma_b); the two together are one Gaussian mechanism of multiplier z when
        z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) (Andrew et al. 2021, section 3.1), so the accountant keeps z and
        the updates get the larger z_Delta."""
        if self.clipping != "adaptive" or self.noise_multiplier == 0:
            return self.noise_multiplier
        return adaptive_update_noise_multiplier(self.noise_multiplier, self.clip_count_std)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the Gaussian noise added to the sum of clipped updates (at the initial clip bound
        under adaptive clipping; the noise then follows the bound)."""
        return self.update_noise_multiplier * self.clip_norm

    def ledger(self) -> PrivacyLedger:
        """A fresh ledger of this plan's mechanism (nothing spent yet)."""
        return PrivacyLedger(self.noise_multiplier, self.sample_rate, self.delta, self.epsilon_budget, self.accountant,
                             scheme=self.scheme, population=self.population, cohort_size=self.cohort_size)
