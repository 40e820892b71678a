"""Two independent accountants behind every epsilon fedsec reports, for Poisson and for fixed-size sampling.

A run's mechanism is a history of :class:`Step` entries: ``steps`` applications of the subsampled Gaussian
mechanism with noise multiplier z (noise std / clipping bound C) under one sampling scheme:

- ``"poisson"``: every client (local DP: every example) joins independently with probability q. Relation:
  add-or-remove one (the DP-FedAvg analysis of McMahan et al., ICLR 2018; Abadi et al., CCS 2016). Adding or
  removing one clipped update moves the sum by at most C, so z is the noise multiplier relative to the
  sensitivity. Accountants: Opacus' RDP (Mironov, Talwar and Zhang, "Renyi Differential Privacy of the Sampled
  Gaussian Mechanism", 2019, https://arxiv.org/abs/1908.10530) against Google's ``dp_accounting`` RDP
  (``PoissonSampledDpEvent(q, GaussianDpEvent(z))``); or, with ``primary="prv"``, Opacus' PRV accountant (Gopi,
  Lee and Wutschitz, NeurIPS 2021, https://arxiv.org/abs/2106.02848) against ``dp_accounting``'s PLD accountant
  (Doroshenko et al., "Connect the Dots", PETS 2022, https://arxiv.org/abs/2207.04380).
- ``"fixed"``: exactly k of N clients, uniformly without replacement. N is public, so the relation is replace-one
  (``NeighboringRelation.REPLACE_ONE``): replacing one client's clipped update u (||u|| <= C) by u' changes the
  sum by u - u', of norm up to 2C. The replace-one sensitivity is therefore 2C and the noise multiplier relative
  to it is z / 2. ``dp_accounting`` states the convention in two places that must be read together:
  ``GaussianDpEvent`` defines z as s / C for values of norm <= C (and its PLD accountant doubles the shift under
  REPLACE_ONE), but the RDP accountant's ``SampledWithoutReplacementDpEvent`` path
  (``_compute_rdp_sample_wor_gaussian``, Wang, Balle and Kasiviswanathan, AISTATS 2019, Theorem 27) takes "the
  ratio of the standard deviation of the Gaussian noise to the l2-sensitivity" and returns alpha / (2 z^2) at
  k = N, which is the RDP of sensitivity z-units 1, not 2. Passing z (as the issue's 3.72 did) understates
  epsilon; fedsec passes z / 2. Example (noise 1.0, q = k/N = 0.25, 3 rounds, delta 1e-3): Poisson 2.84,
  fixed with z 3.72 (wrong), fixed with z / 2: 11.69. Note that replace-one and add-or-remove epsilons are not
  the same promise (add-or-remove eps-DP implies replace-one 2 eps-DP). Accountants: ``dp_accounting`` RDP with
  that event, against fedsec's own implementation of the same bound (:mod:`fedsec.privacy.wor_rdp`: exact
  forward differences in arbitrary precision, own conversion). Opacus has no accountant for this scheme; there
  is no PRV/PLD pair for it either, so ``primary="prv"`` with ``"fixed"`` is refused.

The guard uses the larger of the two epsilons. They must agree within ``|a - b| <= rtol * max(a, b) + atol``
(defaults: RDP pairs rtol 1%, PRV/PLD pair rtol 3% (both discretise the privacy loss; measured 0.15-0.5% apart),
atol 0.01); otherwise :class:`AccountantDisagreement`. Measured: Opacus RDP 7.32911 and dp_accounting RDP
7.32933 for noise 1.5, q 0.04, 2250 steps, delta 1e-5; 2.8397 vs 2.8403 for noise 1, q 0.25, 3 steps, delta 1e-3.

Bounded cost: inputs outside these ranges are refused with a :class:`PrivacyInputError` that names the key:
noise multiplier 0 or in [MIN_NOISE, MAX_NOISE]; total steps <= MAX_STEPS; PRV/PLD total steps <= MAX_PRV_STEPS
(Opacus' PRV domain, and its time, grow with the steps: measured 1.56 GB at 1e5 steps); epsilon budget <= MAX_EPSILON.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import AccountantDisagreement, PrivacyInputError
from .wor_rdp import rdp_to_epsilon, wor_gaussian_rdp

logger = logging.getLogger(__name__)

Scheme = Literal["poisson", "fixed"]
SCHEMES: tuple[str, ...] = ("poisson", "fixed")
PRIMARIES: tuple[str, ...] = ("rdp", "prv")
MIN_NOISE = 0.05
MAX_NOISE = 1e4
MAX_STEPS = 10_000_000
MAX_PRV_STEPS = 50_000
MAX_EPSILON = 100.0
RTOL = {"rdp": 0.01, "prv": 0.03}
ATOL = 0.01
RELATIONS = {"poisson": "add_or_remove_one", "fixed": "replace_one"}
#: dp_accounting's PLD grid step (its default is 1e-4). Its estimate stays pessimistic (an upper bound) at any step;
#: measured against 1e-4: within 0.012% on (z, q, steps) = (1.5, 0.04, 2250), (1.0, 0.25, 3), (1.1, 0.01, 1000),
#: (5, 0.1, 100), and 10-12x faster (at z = 0.05 too, which calibration may probe)
PLD_DISCRETIZATION = 1e-3


@dataclass(frozen=True)
class Step:
    """``steps`` rounds (or DP-SGD steps) of the subsampled Gaussian mechanism with one noise and sampling.

    Build with :meth:`poisson` (rate q) or :meth:`fixed` (k of N). ``sample_rate`` is q, or k / N.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int = 1
    scheme: str = "poisson"
    population: int | None = None  # fixed: N
    cohort_size: int | None = None  # fixed: k

    @classmethod
    def poisson(cls, noise_multiplier: float, sample_rate: float, steps: int = 1) -> Step:
        return cls(float(noise_multiplier), float(sample_rate), int(steps), "poisson")

    @classmethod
    def fixed(cls, noise_multiplier: float, population: int, cohort_size: int, steps: int = 1) -> Step:
        if population < 1 or not 0 <= cohort_size <= population:
            raise PrivacyInputError(
                f"train.clients_per_round={cohort_size}, data.num_clients={population}: fixed-size sampling needs "
                "0 <= clients_per_round <= num_clients and num_clients >= 1; fix the two keys"
            )
        return cls(float(noise_multiplier), cohort_size / population, int(steps), "fixed", int(population),
                   int(cohort_size))

    def merges_with(self, other: Step) -> bool:
        return (self.noise_multiplier, self.sample_rate, self.scheme, self.population, self.cohort_size) == (
            other.noise_multiplier, other.sample_rate, other.scheme, other.population, other.cohort_size)


HistoryLike = Iterable["Step | tuple[float, float, int]"]


def as_steps(history: HistoryLike) -> list[Step]:
    """Steps from :class:`Step` entries or Opacus-style (noise, sample rate, steps) tuples (Poisson); consecutive
    equal entries are merged (composition is additive), so a long run costs one entry per noise change."""
    out: list[Step] = []
    for entry in history:
        step = entry if isinstance(entry, Step) else Step.poisson(*entry)
        if out and out[-1].merges_with(step):
            out[-1] = Step(step.noise_multiplier, step.sample_rate, out[-1].steps + step.steps, step.scheme,
                           step.population, step.cohort_size)
        else:
            out.append(step)
    return out


def check_history(steps: Sequence[Step], *, delta: float, primary: str) -> str | None:
    """Refuse what has no valid or no bounded-cost accounting; return the scheme (None for an empty history)."""
    if primary not in PRIMARIES:
        raise PrivacyInputError(f"privacy.accountant={primary!r}: unknown accountant; use one of {list(PRIMARIES)}")
    if not (isinstance(delta, float | int) and 0 < delta < 1):
        raise PrivacyInputError(f"privacy.delta={delta!r}: must be in (0, 1); use e.g. 1e-5")
    schemes = {s.scheme for s in steps if s.steps > 0}
    for s in schemes - set(SCHEMES):
        raise PrivacyInputError(f"train.sampling={s!r}: unknown sampling scheme; use one of {list(SCHEMES)}")
    if len(schemes) > 1:
        raise PrivacyInputError(
            f"train.sampling: a history mixes {sorted(schemes)}; Poisson (add-or-remove) and fixed-size (replace-one) "
            "rounds are accounted under different neighbouring relations and cannot be composed; use one scheme per run"
        )
    total = 0
    for i, s in enumerate(steps):
        z, q = s.noise_multiplier, s.sample_rate
        if not (math.isfinite(z) and (z == 0 or MIN_NOISE <= z <= MAX_NOISE)):
            raise PrivacyInputError(
                f"privacy.noise_multiplier={z!r} (history entry {i}): must be 0 (no privacy) or in "
                f"[{MIN_NOISE}, {MAX_NOISE:g}]; smaller noise gives no meaningful epsilon and overflows the accountants"
            )
        if not (math.isfinite(q) and 0 <= q <= 1):
            raise PrivacyInputError(f"sample rate q={q!r} (history entry {i}): must be in [0, 1]")
        if not (isinstance(s.steps, int | np.integer) and s.steps >= 0):
            raise PrivacyInputError(f"steps={s.steps!r} (history entry {i}): must be a non-negative integer")
        total += int(s.steps)
    if total > MAX_STEPS:
        raise PrivacyInputError(f"rounds/steps: the history composes {total:,} steps, above the {MAX_STEPS:,} fedsec "
                                "accounts for; use fewer rounds, local epochs or a larger batch size")
    if primary == "prv" and total > MAX_PRV_STEPS:
        raise PrivacyInputError(
            f"privacy.accountant='prv' with {total:,} steps: PRV/PLD accounting is capped at {MAX_PRV_STEPS:,} steps "
            "(its memory grows with the steps: 1.6 GB at 1e5); use privacy.accountant='rdp'"
        )
    scheme = schemes.pop() if schemes else None
    if scheme == "fixed" and primary == "prv":
        raise PrivacyInputError(
            "privacy.accountant='prv' with train.sampling='fixed': there is no pair of independent PRV/PLD accountants "
            "for sampling without replacement; use privacy.accountant='rdp' or train.sampling='poisson'"
        )
    return scheme


@contextlib.contextmanager
def _quiet():
    """Silence Opacus' and dp_accounting's notes (optimal order at the grid edge, series convergence)."""
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl_logging.set_verbosity(verbosity)


# --- the four accountants: each takes a merged, checked history and delta, returns epsilon -------------------------


def opacus_epsilon(steps: Sequence[Step], delta: float, kind: str) -> float:
    """Opacus' RDP or PRV accountant (Poisson only)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountant = RDPAccountant() if kind == "rdp" else PRVAccountant()
    accountant.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in steps if s.steps > 0]
    if not accountant.history:
        return 0.0
    if any(z == 0 and q > 0 for z, q, _ in accountant.history):
        return math.inf
    accountant.history = [h for h in accountant.history if h[1] > 0]
    if not accountant.history:
        return 0.0
    with _quiet():
        return float(accountant.get_epsilon(delta=delta))


def dp_accounting_epsilon(steps: Sequence[Step], delta: float, kind: str,
                          discretization: float = PLD_DISCRETIZATION) -> float:
    """Google's dp_accounting: RDP (Poisson or without replacement) or PLD (Poisson; ``discretization``: the PLD
    grid step, pessimistic at any step)."""
    import dp_accounting as dpa
    from dp_accounting import pld, rdp

    if any(s.noise_multiplier == 0 and s.sample_rate > 0 and s.steps > 0 for s in steps):
        return math.inf  # no noise: no privacy (dp_accounting's WOR bound divides by the noise)
    fixed = any(s.scheme == "fixed" for s in steps)
    relation = dpa.NeighboringRelation.REPLACE_ONE if fixed else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    accountant = (rdp.RdpAccountant(neighboring_relation=relation) if kind == "rdp"
                  else pld.PLDAccountant(neighboring_relation=relation,
                                         value_discretization_interval=discretization))
    with _quiet():
        for s in steps:
            if s.steps == 0:
                continue
            if s.scheme == "fixed":
                event = dpa.SampledWithoutReplacementDpEvent(s.population, s.cohort_size,
                                                             dpa.GaussianDpEvent(s.noise_multiplier / 2))
            else:
                event = dpa.PoissonSampledDpEvent(s.sample_rate, dpa.GaussianDpEvent(s.noise_multiplier))
            accountant.compose(event, s.steps)
        return float(accountant.get_epsilon(delta))


def fedsec_wor_epsilon(steps: Sequence[Step], delta: float, kind: str = "rdp") -> float:
    """fedsec's own WBK19 RDP bound for sampling without replacement (replace-one, z / 2)."""
    if any(s.noise_multiplier == 0 and s.sample_rate > 0 and s.steps > 0 for s in steps):
        return math.inf
    rdps = [s.steps * wor_gaussian_rdp(s.sample_rate, s.noise_multiplier / 2) for s in steps if s.steps > 0]
    return rdp_to_epsilon(np.sum(rdps, axis=0), delta) if rdps else 0.0


# (scheme, primary) -> the two (name, function, kind) accountants
PAIRS = {
    ("poisson", "rdp"): (("opacus.rdp", opacus_epsilon, "rdp"), ("dp_accounting.rdp", dp_accounting_epsilon, "rdp")),
    ("poisson", "prv"): (("opacus.prv", opacus_epsilon, "prv"), ("dp_accounting.pld", dp_accounting_epsilon, "pld")),
    ("fixed", "rdp"): (("dp_accounting.rdp", dp_accounting_epsilon, "rdp"),
                       ("fedsec.wbk19_rdp", fedsec_wor_epsilon, "rdp")),
}


@dataclass(frozen=True)
class PrivacyAccount:
    """What two accountants say about one history; ``epsilon`` (the larger) is what the guard uses."""

    epsilon: float
    epsilons: dict[str, float]
    scheme: str | None
    relation: str | None
    delta: float
    primary: str
    rtol: float
    atol: float = ATOL
    steps: int = 0
    accountants: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        """The record ``summary.json`` states: scheme, relation, both accountants' epsilons, the guard's."""
        return {"epsilon": self.epsilon, "epsilon_by_accountant": dict(self.epsilons), "accountants":
                list(self.accountants), "sampling": self.scheme, "neighboring_relation": self.relation,
                "delta": self.delta, "accountant": self.primary, "agreement_rtol": self.rtol,
                "agreement_atol": self.atol, "steps": self.steps}


def disagree(a: float, b: float, *, rtol: float, atol: float = ATOL) -> bool:
    """Whether two epsilons are further apart than ``rtol * max + atol`` (both infinite: agree)."""
    if math.isinf(a) or math.isinf(b):
        return math.isinf(a) != math.isinf(b)
    return abs(a - b) > rtol * max(a, b) + atol


def account(history: HistoryLike, *, delta: float, primary: str = "rdp", rtol: float | None = None,
            atol: float = ATOL) -> PrivacyAccount:
    """Epsilon of ``history`` at ``delta`` from two independent accountants; raise if they disagree.

    ``primary``: "rdp" or "prv" (module docstring for the pairs). ``rtol``: default :data:`RTOL` [primary].
    Results are cached per (merged history, delta, primary, tolerances): the guard asks twice per round.
    """
    return _account(tuple(as_steps(history)), delta, primary, rtol, atol)


@functools.lru_cache(maxsize=1024)
def _account(steps: tuple[Step, ...], delta: float, primary: str, rtol: float | None, atol: float) -> PrivacyAccount:
    scheme = check_history(steps, delta=delta, primary=primary)
    rtol = RTOL[primary] if rtol is None else rtol
    total = sum(s.steps for s in steps)
    if scheme is None:
        names = tuple(name for name, _, _ in PAIRS[("poisson", primary)])
        return PrivacyAccount(0.0, dict.fromkeys(names, 0.0), None, None, delta, primary, rtol, atol, 0, names)
    (name_a, fn_a, kind_a), (name_b, fn_b, kind_b) = PAIRS[(scheme, primary)]
    eps_a, eps_b = fn_a(steps, delta, kind_a), fn_b(steps, delta, kind_b)
    if disagree(eps_a, eps_b, rtol=rtol, atol=atol):
        raise AccountantDisagreement(
            {name_a: eps_a, name_b: eps_b},
            f"accountants disagree on a {scheme}-sampling history of {total} steps at delta={delta:g}: {name_a} "
            f"gives epsilon {eps_a:.6g}, {name_b} {eps_b:.6g} (tolerance {rtol:.0%} + {atol}); history: "
            f"{[(s.noise_multiplier, s.sample_rate, s.steps) for s in steps]}"
        )
    return PrivacyAccount(max(eps_a, eps_b), {name_a: eps_a, name_b: eps_b}, scheme, RELATIONS[scheme], delta,
                          primary, rtol, atol, total, (name_a, name_b))


class DualAccountant:
    """A growing history accounted by two independent accountants (see :func:`account`).

    Parameters
    ----------
    delta : float
        The delta of every epsilon.
    primary : str (default: "rdp")
        "rdp" or "prv": which pair of accountants.
    """

    def __init__(self, *, delta: float, primary: str = "rdp") -> None:
        check_history([], delta=delta, primary=primary)
        self.delta, self.primary = delta, primary
        self.history: list[Step] = []

    def step(self, entry: Step) -> None:
        self.history = as_steps([*self.history, entry])

    def account(self, extra: Iterable[Step] = ()) -> PrivacyAccount:
        """The account of the history so far, plus ``extra`` steps not (yet) taken."""
        return account([*self.history, *extra], delta=self.delta, primary=self.primary)


#: PLD grid step of the PRV/PLD calibration's search (the pessimistic estimate at 1e-2 is an upper bound of the
#: 1e-3 one; measured 10x cheaper on q = 0.5, where the finer grid made even a 2-round plan slow)
PLD_SEARCH_DISCRETIZATION = 1e-2


def _search(epsilon: float, spent: Callable[[float], float], steps: int) -> float:
    """The smallest z (within 0.5% of epsilon) with ``spent(z) <= epsilon`` (spent decreasing in z)."""
    low, high = MIN_NOISE, 1.0  # invariant once bracketed: spent(low) > epsilon >= spent(high)
    while spent(high) > epsilon:
        if high >= MAX_NOISE:
            raise PrivacyInputError(f"privacy.epsilon={epsilon:g}: not reachable in {steps} steps even with noise "
                                    f"{MAX_NOISE:g}; raise the budget or lower the rounds")
        low, high = high, min(2 * high, MAX_NOISE)
    if low == MIN_NOISE and spent(MIN_NOISE) <= epsilon:
        return MIN_NOISE
    # Illinois false position on f(log z) = log spent(z) - log epsilon (nearly linear), bracket [low, high]
    f_low, f_high = math.log(spent(low)) - math.log(epsilon), math.log(spent(high)) - math.log(epsilon)
    side = 0
    for _ in range(40):
        x_low, x_high = math.log(low), math.log(high)
        mid = math.exp(x_high - f_high * (x_high - x_low) / (f_high - f_low))
        if not low < mid < high:
            mid = math.sqrt(low * high)
        eps = spent(mid)
        f_mid = math.log(eps) - math.log(epsilon) if eps > 0 else -math.inf
        if eps <= epsilon:
            high, f_high = mid, f_mid
            if eps >= epsilon * 0.995:
                break
            f_low, side = (f_low / 2 if side == 1 else f_low), 1
        else:
            low, f_low = mid, f_mid
            f_high, side = (f_high / 2 if side == -1 else f_high), -1
        if high / low < 1 + 1e-6:
            break
    return high


def _calibrate_prv(epsilon: float, delta: float, steps: int, make: Callable[[float], Step],
                   spent: Callable[[float], float]) -> float:
    """PRV/PLD calibration: search z on dp_accounting's PLD at a coarse pessimistic grid (an upper bound of the
    fine estimate), then confirm with both accountants at full precision, raising z by 0.5% while the guard's
    epsilon is above the budget. Two full evaluations instead of ~6, so planning stays cheap."""
    def coarse(z: float) -> float:
        return dp_accounting_epsilon([make(z)], delta, "pld", PLD_SEARCH_DISCRETIZATION)

    z = _search(epsilon, coarse, steps)
    for _ in range(200):
        if z >= MAX_NOISE or spent(z) <= epsilon:
            return z
        z = min(z * 1.005, MAX_NOISE)
    return z


@functools.lru_cache(maxsize=256)
def calibrate(*, epsilon: float, delta: float, steps: int, scheme: str = "poisson", sample_rate: float | None = None,
              population: int | None = None, cohort_size: int | None = None, primary: str = "rdp") -> float:
    """The smallest noise multiplier (within 0.5% of epsilon) whose *guard* epsilon (the larger of the two
    accountants') after ``steps`` rounds is at most ``epsilon``. Refuses budgets no noise in range can meet."""
    if not (isinstance(epsilon, float | int) and math.isfinite(epsilon) and 0 < epsilon <= MAX_EPSILON):
        raise PrivacyInputError(
            f"privacy.epsilon={epsilon!r}: must be in (0, {MAX_EPSILON:g}]; budgets above {MAX_EPSILON:g} promise "
            "nothing (e^epsilon overflows); use a smaller budget or privacy.mode='none'"
        )
    if not (isinstance(steps, int | np.integer) and 1 <= steps <= MAX_STEPS):
        raise PrivacyInputError(f"rounds/steps={steps!r}: must be an integer in [1, {MAX_STEPS:,}]")
    if scheme == "fixed":
        if population is None or cohort_size is None:
            raise PrivacyInputError("train.sampling='fixed': calibration needs population (N) and cohort_size (k)")

        def make(z: float) -> Step:
            return Step.fixed(z, population, cohort_size, steps)
    elif scheme == "poisson":
        if sample_rate is None:
            raise PrivacyInputError("train.sampling='poisson': calibration needs sample_rate (q)")

        def make(z: float) -> Step:
            return Step.poisson(z, sample_rate, steps)
    else:
        raise PrivacyInputError(f"train.sampling={scheme!r}: unknown sampling scheme; use one of {list(SCHEMES)}")

    def spent(z: float) -> float:
        return account([make(z)], delta=delta, primary=primary).epsilon

    def probe(z: float) -> float:
        # The search probes noise levels far from the answer (z = 1 first), where the two RDP accountants' order
        # grids can put epsilon a few percent apart (Opacus 21.82 vs dp_accounting 22.52 at z 1, q 1/9, 810 steps,
        # delta 1e-3, where the budget was 1): a probe takes the larger without the agreement check, and the
        # answer is checked (and the run's every epsilon later) at the full tolerance.
        return account([make(z)], delta=delta, primary=primary, rtol=math.inf).epsilon

    if primary == "prv" and scheme == "poisson":
        return _calibrate_prv(epsilon, delta, steps, make, spent)

    z = _search(epsilon, probe, steps)
    spent(z)  # raises AccountantDisagreement if the accountants disagree at the noise the run will use
    return z
