"""A privacy audit from one training run, with client-level canaries.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023
(https://arxiv.org/abs/2305.08846). m canaries, each included in the run independently with probability 1/2; after
(or during) training the auditor scores every canary, guesses "included" for the k+ highest scores and "excluded"
for the k- lowest, and abstains on the rest. If the run is (epsilon, delta)-DP with respect to one canary, the number
of correct guesses v among r = k+ + k- is dominated by Binomial(r, e^eps / (1 + e^eps)) up to a delta term (the
paper's Theorem 3.1 and its appendix's p-value with delta); :func:`epsilon_lower_bound` is the largest epsilon that
the observed v rejects at the given confidence (the paper's binary search). Defaults are the paper's confidence 95%.

The canaries here are *client-level gradient canaries* for federated averaging, the federated form of the paper's
white-box "gradient canaries" (its section 7.2, a Dirac gradient per canary): canary i is a virtual client whose
update is s_i c e_(j_i), a random sign on its own random coordinate j_i, scaled to c (under central DP: the round's
clip bound, the most one client can move the sum; without DP: ``audit.canary.norm``). An included canary takes
part in a round like any client under Poisson sampling (probability q = clients_per_round / num_clients) and adds
its update with weight 1 / k to the released aggregate, before the DP noise is added (the mechanism covers it as it
covers every client). The auditor sees every round's released aggregate (the accountant's threat model: all
intermediate releases) and scores canary i by sum_t s_i aggregate_t[j_i]. Departures from the paper: canaries are
clients, not examples or steps; with fixed-size sampling under central DP the accountant analyses replace-one, which
added canary clients do not fit, so the audit is refused there (:mod:`fedsec.plan`).

Why written here: the paper's appendix gives the p-value and the binary search as a few lines of Python over SciPy's
binomial distribution; Google's ``jax_privacy.auditing`` has them too, but pulls JAX into a PyTorch project. This
module vectorises the appendix's loop (alpha is the running maximum of the cumulative pmf over i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CanarySpec", "Canaries", "audit_guesses", "epsilon_lower_bound", "p_value"]


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least v correct guesses out of r (m canaries) if the run were (epsilon, delta)-DP.

    >>> round(p_value(1000, 100, 100, 0.0, 0.0), 6)  # 100 right coin flips in a row
    0.0
    >>> p_value(1000, 100, 50, 0.0, 0.0) > 0.5
    True
    """
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})")
    from scipy import stats  # only when an audit runs

    q = 1.0 / (1.0 + math.exp(-epsilon))  # the accuracy of epsilon-DP randomised response
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    alpha = 0.0
    if v > 0 and delta > 0:
        i = np.arange(1, v + 1)
        alpha = float(np.max(np.cumsum(stats.binom.pmf(v - i, r, q)) / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon for which v correct guesses of r have a p-value below 1 - confidence: the run is not
    (epsilon, delta)-DP at that confidence. 0 when even epsilon = 0 explains the guesses.

    >>> round(epsilon_lower_bound(1000, 200, 200, delta=0.0), 2)  # every guess right
    4.19
    >>> epsilon_lower_bound(1000, 200, 100, delta=1e-5)  # a coin's accuracy
    0.0
    """
    level = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < level:
        low, high = high, high + 1.0
    for _ in range(40):
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < level:
            low = mid
        else:
            high = mid
    return low


def audit_guesses(scores: torch.Tensor, included: torch.Tensor, guesses: int) -> tuple[int, int]:
    """(r, v): guess "included" for the ``guesses`` highest scores and "excluded" for the ``guesses`` lowest; v of
    the r = 2 x guesses are right. Ties are broken by canary index (stable sort), never by membership.

    >>> audit_guesses(torch.tensor([3.0, -1.0, 2.0, 0.0]), torch.tensor([True, False, False, True]), 1)
    (2, 2)
    """
    order = torch.argsort(scores, stable=True)
    low, high = order[:guesses], order[-guesses:]
    correct = int(included[high].sum()) + int((~included[low]).sum())
    return 2 * guesses, correct


@dataclass(frozen=True)
class CanarySpec:
    """``[audit.canary]`` as the strategy needs it."""

    canaries: int = 1000  # m
    guesses: int = 100  # k+ = k- (fixed before the run, as the theorem needs)
    confidence: float = 0.95
    norm: float = 1.0  # c without DP (under central DP the round's clip bound)
    sample_rate: float = 0.5  # q: a canary's chance to take part in a round (the clients' Poisson rate)
    expected_clients: int = 1  # k: a canary's update enters the aggregate with weight 1 / k
    delta: float = 1e-5
    seed: int = 0


class Canaries:
    """The run's canaries, drawn from the seed when the model size d is known: coordinates (distinct), signs and
    membership; each round's participation comes from ``generator`` (kept in the strategy's checkpoint)."""

    def __init__(self, spec: CanarySpec, num_params: int) -> None:
        if num_params < spec.canaries:
            raise ValueError(f"audit.canary.canaries={spec.canaries}: the model has {num_params} parameters and each "
                             "canary needs a coordinate of its own; use at most that many canaries")
        g = torch.Generator().manual_seed(spec.seed)
        self.spec = spec
        self.coordinates = torch.randperm(num_params, generator=g)[: spec.canaries]
        self.signs = torch.randint(0, 2, (spec.canaries,), generator=g).to(torch.float64) * 2 - 1
        self.included = torch.rand(spec.canaries, generator=g, dtype=torch.float64) < 0.5

    def insert(self, aggregate: torch.Tensor, scale: float, generator: torch.Generator) -> int:
        """Add this round's participating included canaries to ``aggregate`` in place, each as s_i x scale at its
        coordinate (scale = c / k); returns how many took part."""
        takes_part = self.included & (torch.rand(self.spec.canaries, generator=generator, dtype=torch.float64)
                                      < self.spec.sample_rate)
        index = self.coordinates[takes_part].to(aggregate.device)
        aggregate.index_add_(0, index, (self.signs[takes_part] * scale).to(aggregate.dtype).to(aggregate.device))
        return int(takes_part.sum())

    def score(self, scores: torch.Tensor, release: torch.Tensor) -> None:
        """Add s_i x release[j_i] to each canary's score (in place): what the auditor reads off a released
        aggregate."""
        scores += self.signs * release[self.coordinates.to(release.device)].detach().to("cpu", torch.float64)

    def bound(self, scores: torch.Tensor) -> dict[str, float]:
        """The audit so far: guesses, correct guesses, and the epsilon lower bound they imply."""
        r, v = audit_guesses(scores, self.included, self.spec.guesses)
        lower = epsilon_lower_bound(self.spec.canaries, r, v, delta=self.spec.delta, confidence=self.spec.confidence)
        return {"canary_guesses": float(r), "canary_correct": float(v), "canary_epsilon_lower_bound": lower}
