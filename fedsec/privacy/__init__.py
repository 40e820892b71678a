"""Differential privacy: accounting, calibration and the budget guard."""

from .accounting import (
    ACCOUNTANTS,
    PrivacyLedger,
    PrivacyTracker,
    calibrate_noise,
    epsilon_after,
    epsilon_after_history,
)

__all__ = [
    "ACCOUNTANTS",
    "PrivacyLedger",
    "PrivacyTracker",
    "calibrate_noise",
    "epsilon_after",
    "epsilon_after_history",
]
