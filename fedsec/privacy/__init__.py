"""Differential privacy: two independent accountants, noise calibration, the budget guard, cohort sampling."""

from .accountants import DualAccountant, PrivacyAccount, Step, account
from .accounting import (
    PrivacyLedger,
    calibrate_noise,
    epsilon_after,
    epsilon_after_history,
)
from .errors import AccountantDisagreement, PrivacyError, PrivacyInputError
from .plan import PrivacyPlan, adaptive_update_noise_multiplier
from .sampling import fixed_cohort, poisson_cohort

__all__ = [
    "AccountantDisagreement",
    "DualAccountant",
    "PrivacyAccount",
    "PrivacyError",
    "PrivacyInputError",
    "PrivacyLedger",
    "PrivacyPlan",
    "Step",
    "account",
    "adaptive_update_noise_multiplier",
    "calibrate_noise",
    "epsilon_after",
    "epsilon_after_history",
    "fixed_cohort",
    "poisson_cohort",
]
