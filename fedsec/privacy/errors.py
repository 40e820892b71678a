"""Errors of fedsec's privacy layer: bad accounting input, and two accountants that disagree."""

from __future__ import annotations


class PrivacyError(ValueError):
    """Base class of fedsec's privacy errors (a ``ValueError``, as fedsec's other input errors)."""


class PrivacyInputError(PrivacyError):
    """A history, budget or sampling description that has no valid (or no bounded-cost) accounting."""


class AccountantDisagreement(PrivacyError):
    """Two independent accountants gave epsilons further apart than the stated relative tolerance.

    Either a history was described differently to the two (a bug), or one accountant left its numerically safe
    range; either way the reported epsilon cannot be trusted, so fedsec stops instead of picking one.
    ``epsilons`` maps each accountant's name to its epsilon.
    """

    def __init__(self, epsilons: dict[str, float], message: str) -> None:
        super().__init__(message)
        self.epsilons = dict(epsilons)
