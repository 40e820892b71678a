"""Empirical privacy: the epsilon lower bound that an attack's (TPR, FPR) forces on any (epsilon, delta)-DP mechanism.

Hypothesis-testing view of DP (Kairouz, Oh, Viswanath, "The Composition Theorem for Differential Privacy", ICML
2015, https://arxiv.org/abs/1311.0776): every test of "member" vs "non-member" against an (eps, delta)-DP mechanism
satisfies ``TPR <= e^eps FPR + delta`` and ``1 - FPR <= e^eps (1 - TPR) + delta``, hence

    eps >= max(log((TPR - delta) / FPR), log((1 - FPR - delta) / (1 - TPR))).

As auditing tools: Jagielski, Ullman, Oprea, "Auditing Differentially Private Machine Learning: How Private is
Private SGD?", NeurIPS 2020, https://arxiv.org/abs/2006.07709 (Clopper-Pearson intervals on the rates); Nasr,
Song, Thakurta, Papernot, Carlini, "Adversary Instantiation: Lower Bounds for Differentially Private Machine
Learning", IEEE S&P 2021, https://arxiv.org/abs/2101.04535.

Defaults: ``confidence=0.95``, split evenly between a one-sided Clopper-Pearson lower bound on TPR and upper bound on
FPR (union bound). Bounds are floored at 0.

Differences: :func:`best_epsilon_lower_bound` takes the best threshold on the same scores it evaluates (the papers
pick the threshold on separate data), so its bound is optimistic by a multiple-comparison margin; the confidence
interval still covers each single threshold's sampling error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta


class EmpiricalPrivacyError(ValueError):
    """Bad rates or counts; the message names the argument, the rule and the fix."""


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0 or math.isnan(value):
        raise EmpiricalPrivacyError(f"{name}={value}: a rate must be in [0, 1]")


def _check_delta(delta: float) -> None:
    if not 0.0 <= delta < 1.0:
        raise EmpiricalPrivacyError(f"delta={delta}: must be in [0, 1); use the run's privacy.delta")


def _log_ratio(num: float, den: float) -> float:
    if num <= 0:
        return -math.inf
    if den <= 0:
        return math.inf
    return math.log(num / den)


def epsilon_lower_bound(tpr: float, fpr: float, delta: float) -> float:
    """``max(0, log((TPR - delta)/FPR), log((1 - FPR - delta)/(1 - TPR)))``; ``inf`` if a rate is perfect.

    >>> round(epsilon_lower_bound(0.5, 0.05, 0.0), 6)  # log(10)
    2.302585
    """
    _check_rate("tpr", tpr)
    _check_rate("fpr", fpr)
    _check_delta(delta)
    return max(0.0, _log_ratio(tpr - delta, fpr), _log_ratio(1 - fpr - delta, 1 - tpr))


def clopper_pearson(successes: int, trials: int, *, alpha: float) -> tuple[float, float]:
    """One-sided ``1 - alpha`` Clopper-Pearson lower and upper bounds on a binomial rate."""
    if trials < 1 or not 0 <= successes <= trials:
        raise EmpiricalPrivacyError(
            f"successes={successes}, trials={trials}: need 0 <= successes <= trials, trials >= 1"
        )
    lo = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))
    hi = 1.0 if successes == trials else float(beta.ppf(1 - alpha, successes + 1, trials - successes))
    return lo, hi


def epsilon_lower_bound_ci(tp: int, fn: int, fp: int, tn: int, delta: float, *, confidence: float = 0.95) -> float:
    """Epsilon lower bound holding with probability ``confidence``: TPR's lower and FPR's upper Clopper-Pearson bound.

    ``tp``/``fn`` count members called member/non-member, ``fp``/``tn`` non-members called member/non-member.
    """
    if not 0 < confidence < 1:
        raise EmpiricalPrivacyError(f"confidence={confidence}: must be in (0, 1); use 0.95")
    for name, value in {"tp": tp, "fn": fn, "fp": fp, "tn": tn}.items():
        if value < 0:
            raise EmpiricalPrivacyError(f"{name}={value}: counts must be >= 0")
    if tp + fn == 0 or fp + tn == 0:
        raise EmpiricalPrivacyError(f"tp+fn={tp + fn}, fp+tn={fp + tn}: need at least one member and one non-member")
    alpha = (1 - confidence) / 2
    tpr_lo, _ = clopper_pearson(tp, tp + fn, alpha=alpha)
    _, fpr_hi = clopper_pearson(fp, fp + tn, alpha=alpha)
    return epsilon_lower_bound(tpr_lo, fpr_hi, delta)


@dataclass(frozen=True)
class EmpiricalEpsilon:
    """The best epsilon lower bound over an attack's ROC thresholds."""

    epsilon: float  # with confidence ``confidence`` (Clopper-Pearson)
    epsilon_point: float  # from the observed rates at the same threshold, no interval
    tpr: float
    fpr: float
    delta: float
    confidence: float


def best_epsilon_lower_bound(
    fpr: np.ndarray,
    tpr: np.ndarray,
    *,
    num_members: int,
    num_nonmembers: int,
    delta: float,
    confidence: float = 0.95,
) -> EmpiricalEpsilon:
    """Maximise the confidence-interval bound over the ROC's thresholds (``fpr``, ``tpr`` arrays of equal length).

    A ``MembershipResult`` supplies all four: ``best_epsilon_lower_bound(r.fpr, r.tpr, num_members=r.num_members,
    num_nonmembers=r.num_nonmembers, delta=...)``.
    """
    fpr, tpr = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
    if fpr.shape != tpr.shape or fpr.ndim != 1 or fpr.size == 0:
        raise EmpiricalPrivacyError(f"fpr {fpr.shape}, tpr {tpr.shape}: need two equal non-empty 1-D arrays")
    best = EmpiricalEpsilon(0.0, 0.0, float(tpr[0]), float(fpr[0]), delta, confidence)
    for f, t in zip(fpr, tpr, strict=True):
        tp = round(t * num_members)
        fp = round(f * num_nonmembers)
        eps = epsilon_lower_bound_ci(tp, num_members - tp, fp, num_nonmembers - fp, delta, confidence=confidence)
        if eps > best.epsilon:
            best = EmpiricalEpsilon(
                eps, epsilon_lower_bound(float(t), float(f), delta), float(t), float(f), delta, confidence
            )
    return best


def check_against_accountant(empirical: float | EmpiricalEpsilon, accountant_epsilon: float) -> str | None:
    """A loud message when the empirical lower bound exceeds the accountant's epsilon; None when consistent."""
    value = empirical.epsilon if isinstance(empirical, EmpiricalEpsilon) else float(empirical)
    if value > accountant_epsilon:
        return (
            f"PRIVACY VIOLATION: the attack's empirical epsilon lower bound {value:.3f} exceeds the accountant's "
            f"epsilon {accountant_epsilon:.3f}; no ({accountant_epsilon:.3f}, delta)-DP mechanism allows this attack's "
            "TPR/FPR - this would be a bug in fedsec's DP (clipping, noise or accounting)"
        )
    return None
