"""A privacy audit from one training run, with client-level or example-level canaries.

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

*Example-level canaries* (``audit.canary.level = "example"``) follow the paper's black-box audit of DP-SGD (its
Algorithm 1 with input-space canaries: m auditing examples, each kept in the training set with probability 1/2, the
others always kept, scored on the final model). fedsec's canaries are training examples given a wrong label, scored
by the negative loss on the canary's (input, wrong label): a common choice for black-box canaries, not checked
against the paper's own experiments. Here they live at one audited client: m of its own examples get a label re-drawn
uniformly from the other classes, and the client trains, under local DP-SGD or without DP, on its non-canary
examples plus its included canaries (:func:`with_example_canaries`); the excluded canaries leave its data
altogether. The auditor sees only the global model and scores canary i by -loss(model(x_i), label_i)
(:func:`example_canary_scores`). Departures from the paper: the canaries sit at one client, not spread over the
whole training set, and the model they are scored on is the federated average, in which that client's update is one
of several (so the audit of local DP-SGD's per-example epsilon is weaker than on a model the client trained alone,
never invalid: averaging is post-processing).

Why written here: the paper's appendix gives the p-value and the binary search as a few lines of Python over SciPy's
binomial distribution; Google's ``jax_privacy.auditing`` has them too, but pulls JAX into a PyTorch project. This
module vectorises the appendix's loop (alpha is the running maximum of the cumulative pmf over i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SEED_OFFSET", "CanarySpec", "Canaries", "ExampleCanaries", "ExampleCanarySpec", "audit_bound",
           "audit_guesses", "draw_example_canaries", "epsilon_lower_bound", "example_canary_scores", "p_value",
           "with_example_canaries"]


#: the canaries' stream: drawn from run seed + SEED_OFFSET (the plan, the clients and the auditor agree on it)
SEED_OFFSET = 7919


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


def audit_bound(scores: torch.Tensor, included: torch.Tensor, *, guesses: int, delta: float,
                confidence: float) -> dict[str, float]:
    """The audit of ``scores`` (m,) against the truth ``included`` (m,) bool: guesses, correct guesses and the
    epsilon lower bound they imply, under the names ``rounds.csv`` uses."""
    r, v = audit_guesses(scores, included, guesses)
    lower = epsilon_lower_bound(int(included.numel()), r, v, delta=delta, confidence=confidence)
    return {"canary_guesses": float(r), "canary_correct": float(v), "canary_epsilon_lower_bound": lower}


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
        return audit_bound(scores, self.included, guesses=self.spec.guesses, delta=self.spec.delta,
                           confidence=self.spec.confidence)


@dataclass(frozen=True)
class ExampleCanarySpec:
    """``[audit.canary]`` with ``level = "example"`` as the audited client needs it (it travels in every message's
    client spec, so it holds only numbers; the canaries are redrawn from them wherever they are needed)."""

    client: int  # the audited client's partition id
    canaries: int  # m
    seed: int


@dataclass(frozen=True)
class ExampleCanaries:
    """m example canaries of one client: ``index`` (m,) into its partition (distinct), the wrong ``label`` (m,) each
    is trained with, and ``included`` (m,) bool, the membership the auditor must guess."""

    index: torch.Tensor
    label: torch.Tensor
    included: torch.Tensor


def draw_example_canaries(y: torch.Tensor, *, canaries: int, num_classes: int, seed: int) -> ExampleCanaries:
    """Draw the canaries of a client whose labels are ``y`` (n,): m distinct examples, each relabelled uniformly
    among the other ``num_classes - 1`` classes and included with probability 1/2, all from ``seed``.

    >>> c = draw_example_canaries(torch.arange(10) % 3, canaries=4, num_classes=3, seed=0)
    >>> bool((c.label != (torch.arange(10) % 3)[c.index]).all()), len(set(c.index.tolist()))
    (True, 4)
    """
    n = int(y.shape[0])
    if not 1 <= canaries <= n:
        raise ValueError(f"need 1 <= canaries ({canaries}) <= the client's examples ({n})")
    if num_classes < 2:
        raise ValueError(f"a wrong label needs at least 2 classes, got {num_classes}")
    g = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=g)[:canaries]
    shift = torch.randint(1, num_classes, (canaries,), generator=g)
    label = (y.cpu()[index].to(torch.int64) + shift) % num_classes
    included = torch.rand(canaries, generator=g, dtype=torch.float64) < 0.5
    return ExampleCanaries(index, label, included)


def with_example_canaries(x: torch.Tensor, y: torch.Tensor, canaries: ExampleCanaries
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The client's training set: its non-canary examples as they are, plus its included canaries with their wrong
    labels; the excluded canaries are left out. Order kept (x: (n, ...), y: (n,)).

    >>> c = ExampleCanaries(torch.tensor([1, 3]), torch.tensor([9, 8]), torch.tensor([True, False]))
    >>> with_example_canaries(torch.arange(5.0), torch.arange(5), c)
    (tensor([0., 1., 2., 4.]), tensor([0, 9, 2, 4]))
    """
    index = canaries.index.to(y.device)
    keep = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
    keep[index[~canaries.included.to(y.device)]] = False
    relabelled = y.clone()
    relabelled[index] = canaries.label.to(y.device, y.dtype)
    return x[keep], relabelled[keep]


@torch.no_grad()
def example_canary_scores(model: torch.nn.Module, x: torch.Tensor, label: torch.Tensor, *,
                          batch_size: int = 1024) -> torch.Tensor:
    """The black-box score of each canary: -cross-entropy of ``model`` on (x_i, label_i); x (m, ...), label (m,);
    returns (m,) float64 on the CPU (higher: more likely trained on)."""
    was_training = model.training
    model.eval()
    parts = [-torch.nn.functional.cross_entropy(model(x[i:i + batch_size]), label[i:i + batch_size].to(x.device),
                                                reduction="none")
             for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(parts).to("cpu", torch.float64)
