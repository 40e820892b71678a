"""RDP of the Gaussian mechanism under sampling without replacement (replace-one relation), computed by fedsec.

Wang, Balle and Kasiviswanathan, "Subsampled Renyi Differential Privacy and Analytical Moments Accountant",
AISTATS 2019 (https://arxiv.org/abs/1808.00087), Theorem 9 with the strengthened terms of its Theorem 27 for
the Gaussian mechanism: a round samples exactly k of N clients (gamma = k / N) and runs a Gaussian mechanism of
RDP eps(j) = j / (2 s^2), s = noise std / replace-one sensitivity. For integer alpha >= 2,

    A(alpha) = 1 + gamma^2 C(alpha, 2) min(4 (e^{eps(2)} - 1), 2 e^{eps(2)})
                 + sum_{j=3}^{alpha} gamma^j C(alpha, j) min(4 sqrt(D_{2 floor(j/2)} D_{2 ceil(j/2)}),
                                                                 2 e^{(j-1) eps(j)})
    D_l = sum_{i=0}^{l} (-1)^{l-i} C(l, i) e^{(i-1) eps(i)}      (the l-th forward difference of e^{(x-1) eps(x)})

and RDP(alpha) <= log A(alpha) / (alpha - 1); a fractional alpha interpolates log A linearly between the
neighbouring integers (the paper's Corollary 10: the cumulant generating function is convex).

Why fedsec has its own: it is the second, independent accountant for fixed-size sampling (Opacus has none). It
computes the forward differences D_l exactly in arbitrary precision (mpmath) instead of dp_accounting's
log-space differencing, uses the order grid 1.1 ... 10.9 by 0.1, 11 ... 63, 128, 256 and its own RDP-to-(eps, delta)
conversion, so a mistake in either implementation, or a history described differently to the two, shows as a
disagreement. Departure from dp_accounting: no orders above 256 (dp_accounting adds 512 and 1024 via a Stirling
bound; they only matter for epsilon below ~0.1).
"""

from __future__ import annotations

import functools
import math

import numpy as np

ORDERS: tuple[float, ...] = tuple([1 + x / 10 for x in range(1, 100)] + list(range(11, 64)) + [128, 256])
MAX_ORDER = 256


def _log_differences_at(sigma: float, max_l: int, digits: int) -> np.ndarray:
    import mpmath  # here: every client process imports this module, few account without replacement

    with mpmath.workdps(digits):
        two_s2 = 2 * mpmath.mpf(sigma) ** 2
        row = [mpmath.exp(mpmath.mpf((i - 1) * i) / two_s2) for i in range(max_l + 1)]
        out = np.empty(max_l + 1)
        for k in range(max_l + 1):  # row[0] after k differencing passes is D_k (D_0 = 1, D_1 = 0: unused)
            if k == 1:
                out[k] = -math.inf
            elif row[0] <= 0:
                out[k] = math.nan
            else:
                out[k] = float(mpmath.log(row[0]))
            row = [row[i + 1] - row[i] for i in range(len(row) - 1)]
    return out


@functools.lru_cache(maxsize=128)
def log_forward_differences(sigma: float, max_l: int = MAX_ORDER) -> np.ndarray:
    """log D_l for l = 0..max_l (shape (max_l + 1,)), D_l as in the module docstring, to double precision.

    Every D_l with l >= 2 is positive. mpmath's floats carry a relative precision, so the digits needed are those
    lost to cancellation: about l log10(2) for the binomial signs plus (l / 2) log10(2 s^2) for large s (D_l shrinks
    like (2 s^2)^(-l/2)). The result is accepted once a run with 30 more digits agrees to 1e-12.
    """
    digits = int(30 + max_l * math.log10(2) + (max_l / 2) * max(0.0, math.log10(2 * sigma**2)))
    previous = _log_differences_at(sigma, max_l, digits)
    for _ in range(6):
        digits += 30
        current = _log_differences_at(sigma, max_l, digits)
        if np.allclose(current, previous, rtol=1e-12, atol=1e-12, equal_nan=False):
            return current
        previous = current
    raise ArithmeticError(f"forward differences at sigma={sigma} did not converge in {digits} digits")


def _log_a_int(gamma: float, sigma: float, alpha: int) -> float:
    """log A(alpha) for one integer alpha >= 2 (module docstring)."""
    from scipy import special  # here: a client process imports this module and scipy costs it ~0.2 s of start-up

    eps2 = 1 / sigma**2
    log_d = log_forward_differences(sigma)
    j = np.arange(2, alpha + 1)
    log_comb = special.gammaln(alpha + 1) - special.gammaln(j + 1) - special.gammaln(alpha - j + 1)
    cgf = (j - 1) * j / (2 * sigma**2)  # (j - 1) eps(j)
    terms = np.minimum(math.log(4) + 0.5 * (log_d[2 * (j // 2)] + log_d[2 * ((j + 1) // 2)]), math.log(2) + cgf)
    terms[0] = min(math.log(4) + eps2 + math.log(-math.expm1(-eps2)), eps2 + math.log(2))
    return float(np.logaddexp.reduce(np.concatenate([[0.0], j * math.log(gamma) + log_comb + terms])))


def wor_gaussian_rdp(gamma: float, sigma: float, orders: tuple[float, ...] = ORDERS) -> np.ndarray:
    """RDP at ``orders`` (shape (len(orders),)) of one round: k = gamma N of N sampled, noise s = ``sigma``."""
    alphas = np.asarray(orders, dtype=float)
    if gamma == 0:
        return np.zeros_like(alphas)
    if gamma == 1:
        return alphas / (2 * sigma**2)
    needed = sorted({int(math.floor(a)) for a in alphas} | {int(math.ceil(a)) for a in alphas})
    log_a = {1: 0.0, **{a: _log_a_int(gamma, sigma, a) for a in needed if a >= 2}}
    lo, hi = np.floor(alphas).astype(int), np.ceil(alphas).astype(int)
    t = alphas - lo
    mixed = (1 - t) * np.array([log_a[a] for a in lo]) + t * np.array([log_a[a] for a in hi])
    return mixed / (alphas - 1)


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: tuple[float, ...] = ORDERS) -> float:
    """Smallest epsilon over the orders: eps = rdp + log(1 - 1/a) - (log delta + log a) / (a - 1).

    Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020, Proposition 12
    (also Balle et al., "Hypothesis Testing Interpretations and Renyi DP", AISTATS 2020).
    """
    alphas = np.asarray(orders, dtype=float)
    eps = rdp + np.log1p(-1 / alphas) - (math.log(delta) + np.log(alphas)) / (alphas - 1)
    eps = np.where(np.isnan(eps), np.inf, eps)
    return float(max(0.0, np.min(eps)))
