"""Privacy accounting for fedsec runs, on two independent accountants, and the budget guard.

Local (sample-level) DP-SGD on the clients is in :mod:`fedsec.clients.dp`; this module holds the shared
accounting entry points and the central (user-level) mode's ledger. Every epsilon here is the *guard's* epsilon:
the larger of two independent accountants' (:func:`fedsec.privacy.accountants.account`), which must agree.

Central (user-level) DP, DP-FedAvg of McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private
Recurrent Language Models", ICLR 2018 (https://arxiv.org/abs/1710.06963): each round samples clients, clips every
update to L2 norm C, sums, adds N(0, (z C)^2) noise and divides by the expected cohort size. One round is one
step of the subsampled Gaussian mechanism. ``scheme="poisson"`` (each client with probability q, add-or-remove
relation) is what the paper analyses; ``scheme="fixed"`` (exactly k of N, replace-one relation, sensitivity 2C) is
accounted with the without-replacement bound, which gives a larger epsilon for the same z and q = k / N.

Noise: ``privacy.noise_multiplier``, or calibrated (:func:`calibrate_noise`) so that the planned rounds spend at
most ``privacy.epsilon`` under the larger of the two accountants. The guard (:meth:`PrivacyLedger.allows`)
refuses any round whose step would push epsilon above the budget, so a run never spends more than its budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .accountants import PrivacyAccount, Step, account, calibrate
from .errors import AccountantDisagreement

if TYPE_CHECKING:
    from collections.abc import Iterable


def _step(noise_multiplier: float, sample_rate: float | None, steps: int, scheme: str, population: int | None,
          cohort_size: int | None) -> Step:
    if scheme == "fixed":
        if population is None or cohort_size is None:
            from .errors import PrivacyInputError

            raise PrivacyInputError("train.sampling='fixed': give population (data.num_clients) and cohort_size "
                                    "(train.clients_per_round)")
        return Step.fixed(noise_multiplier, population, cohort_size, steps)
    return Step(float(noise_multiplier), float(sample_rate), int(steps), scheme)


def epsilon_after(*, noise_multiplier: float, sample_rate: float | None = None, steps: int, delta: float,
                  accountant: str = "rdp", scheme: str = "poisson", population: int | None = None,
                  cohort_size: int | None = None) -> float:
    """The guard's epsilon after ``steps`` subsampled-Gaussian steps (0 steps: 0)."""
    if steps <= 0:
        return 0.0
    step = _step(noise_multiplier, sample_rate, steps, scheme, population, cohort_size)
    return account([step], delta=delta, primary=accountant).epsilon


def epsilon_after_history(history: Iterable[Step | tuple[float, float, int]], *, delta: float,
                          accountant: str = "rdp") -> float:
    """The guard's epsilon of a composed history of :class:`Step` or (noise, Poisson rate, steps) entries."""
    return account(history, delta=delta, primary=accountant).epsilon


def calibrate_noise(*, epsilon: float, delta: float, sample_rate: float | None = None, steps: int,
                    accountant: str = "rdp", scheme: str = "poisson", population: int | None = None,
                    cohort_size: int | None = None) -> float:
    """The smallest noise multiplier (to 0.5% of epsilon) whose guard epsilon after ``steps`` is at most
    ``epsilon`` (both accountants within the budget)."""
    return calibrate(epsilon=epsilon, delta=delta, steps=steps, scheme=scheme, sample_rate=sample_rate,
                     population=population, cohort_size=cohort_size, primary=accountant)


@dataclass
class PrivacyLedger:
    """Rounds spent so far under one noise multiplier and sampling; epsilon never above ``budget``.

    ``history`` records each spent round (or block of rounds) as a :class:`Step` with its scheme; ``account``
    states both accountants' epsilons, the scheme and the neighbouring relation.
    """

    noise_multiplier: float
    sample_rate: float
    delta: float
    budget: float
    accountant: str = "rdp"
    steps: int = 0
    scheme: str = "poisson"
    population: int | None = None
    cohort_size: int | None = None
    history: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.steps and not self.history:
            self.history = [self.round_step(self.steps)]

    def round_step(self, steps: int) -> Step:
        """``steps`` rounds of this ledger's mechanism as one history entry."""
        return _step(self.noise_multiplier, self.sample_rate, steps, self.scheme, self.population, self.cohort_size)

    def account_after(self, more_steps: int = 0) -> PrivacyAccount:
        extra = [self.round_step(more_steps)] if more_steps else []
        return account([*self.history, *extra], delta=self.delta, primary=self.accountant)

    @property
    def account(self) -> PrivacyAccount:
        return self.account_after(0)

    @property
    def epsilon(self) -> float:
        return self.account.epsilon

    def allows(self, more_steps: int = 1) -> bool:
        """Whether ``more_steps`` more rounds keep the guard's epsilon within the budget. Two accountants that
        disagree but both put the step above the budget answer no; a disagreement under the budget raises."""
        try:
            spent = self.account_after(more_steps).epsilon
        except AccountantDisagreement as e:
            if min(e.epsilons.values()) > self.budget:
                return False
            raise
        return spent <= self.budget and math.isfinite(spent)

    def spend(self, steps: int = 1) -> float:
        self.history.append(self.round_step(steps))
        self.steps += steps
        return self.epsilon

    def rounds_within_budget(self, planned: int) -> int:
        """How many of ``planned`` rounds (from now) fit in the budget."""
        low, high = 0, planned
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if self.allows(mid) else (low, mid - 1)
        return low

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` states: scheme, relation, both accountants' epsilons, the guard's epsilon."""
        return {**self.account.as_dict(), "epsilon_budget": self.budget, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "population": self.population, "cohort_size": self.cohort_size}

