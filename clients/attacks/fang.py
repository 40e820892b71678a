"""Fang et al.'s local model poisoning attacks on Krum and on trimmed mean / median.

Fang, Cao, Jia and Gong, "Local Model Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security
2020 (https://www.usenix.org/conference/usenixsecurity20/presentation/fang; arXiv: https://arxiv.org/abs/1911.11815).
Directed deviation: push every parameter against s, the sign of the change it would make without attack.

- Krum (:func:`fang_krum_update`): the crafted update is -lambda * s. lambda starts at the paper's upper bound
  (:func:`fang_lambda_bound`, its Eq. for lambda with m clients, c attackers, d parameters)

      lambda <= 1 / ((m - 2c - 1) sqrt(d)) * min_i sum_{l in Gamma_i} D(w_l, w_i) + 1 / sqrt(d) * max_i D(w_i, w_Re)

  (i over the benign updates, Gamma_i its m - c - 2 nearest benign neighbours, D the L2 distance, w_Re the global
  model, i.e. the zero update) and is halved until the rule selects a crafted update or lambda < ``threshold``
  (paper: 1e-5). The other c - 1 attackers send supporting copies within ``support_radius`` of it.
  Full knowledge: ``benign`` = the round's honest updates. Partial knowledge: ``benign`` =
  the attackers' own before-attack updates; s is estimated from their mean and the rule is simulated on the c
  crafted plus these c updates, as the paper does, so ``rule`` must accept that many rows (for Krum: a Krum
  assuming f' <= (2c - 3) / 2 attackers in the simulation).
- Trimmed mean and median (:func:`fang_trim_update`; the paper uses the same attack on both). Full knowledge: with
  w_max,j / w_min,j the largest / smallest benign value of coordinate j, each attacker draws, uniformly at random,
  a value in [w_max,j, b * w_max,j] (w_max,j > 0) or [w_max,j, w_max,j / b] (else) where s_j = -1, and in
  [w_min,j / b, w_min,j] (w_min,j > 0) or [b * w_min,j, w_min,j] (else) where s_j = 1; b = 2 as in the paper (any
  1 < b <= 2 accepted). Partial knowledge: with mu_j / sigma_j the mean / std of the attackers' own updates, values
  in [mu_j + 3 sigma_j, mu_j + 4 sigma_j] where s_j = -1 and [mu_j - 4 sigma_j, mu_j - 3 sigma_j] where s_j = 1.

Knowledge names: "full" (= fedsec's ``attack.knowledge = "omniscient"``) and "partial" (= "colluding").

Defaults (the paper's): ``threshold = 1e-5``, ``b = 2``, supporters: identical copies (``support_radius = 0``).

Differences: the kernels work on updates (w_Re = 0) rather than on models, so the sign tests on w_max / w_min are
on update values, as in Shejwalkar and Houmansadr's public code of these attacks. s is the sign of the known
benign updates' mean (the paper: of the global model's change without attack; the mean is what both public
codes use). "Selected" means the rule gives a crafted row non-zero weight, so the same search serves Multi-Krum and
Bulyan (their first stage), which the paper attacks with the Krum attack. A coordinate with s_j = 0 gets the benign
mean (the paper does not say). When no lambda >= threshold is selected the crafted update uses the last lambda
tried (below the threshold, i.e. nearly the zero update); :func:`fang_krum_lambda` reports that case.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from pydantic import Field

from fedsec.errors import ConfigError
from fedsec.registry import Params

from .base import Attack, DefenseView
from .scale_search import (
    AdaptiveAttackError,
    Rule,
    benign_generator,
    crafted_weight,
    estimated_round,
    simulable_rule,
)

logger = logging.getLogger(__name__)

KNOWLEDGE = {"full": "full", "omniscient": "full", "partial": "partial", "colluding": "partial"}


#: a rule's declared family (:attr:`fedsec.strategies.RobustStrategy.family`) -> the Fang attack for it ("krum":
#: :func:`fang_krum_update`, "trim": :func:`fang_trim_update`)
FANG_TARGETS = {"krum": "krum", "coordinate": "trim"}


def fang_variant(strategy: str) -> str:
    """"krum" or "trim": the Fang attack for ``defense.strategy``; :class:`AdaptiveAttackError` for other rules."""
    from fedsec.strategies import STRATEGIES

    family = STRATEGIES.get(strategy).family if strategy in STRATEGIES else ""
    if family not in FANG_TARGETS:
        targets = sorted(name for name, cls in STRATEGIES.items() if cls.family in FANG_TARGETS)
        raise AdaptiveAttackError(
            f"defense.strategy={strategy!r}: Fang's attacks target {targets}; use attack.kind "
            "'agr_tailored' (any rule) or a searched ALIE / IPM against this rule"
        )
    return FANG_TARGETS[family]


def knowledge_kind(knowledge: str) -> str:
    """"full" or "partial" for a fedsec knowledge name, else :class:`AdaptiveAttackError` naming the key."""
    if knowledge not in KNOWLEDGE:
        raise AdaptiveAttackError(
            f"attack.knowledge={knowledge!r}: Fang's attacks know 'full' (omniscient) or 'partial' (colluding); "
            f"use one of {sorted(KNOWLEDGE)}"
        )
    return KNOWLEDGE[knowledge]


def fang_direction(benign: torch.Tensor) -> torch.Tensor:
    """s: the sign of the mean of the benign updates (m, d); shape (d,), values in {-1, 0, 1}."""
    return torch.sign(benign.mean(dim=0))


def _check_krum(n: int, f: int, m: int) -> None:
    if f < 1:
        raise AdaptiveAttackError(f"f={f}: Fang's attack needs at least one attacker in the round")
    if n < 2 * f + 3:
        raise AdaptiveAttackError(
            f"attack.fraction: Fang's Krum attack needs n >= 2f+3 clients per round (Krum's assumption), got n={n}, "
            f"f={f}; lower attack.fraction or raise train.clients_per_round"
        )
    if m < 1:
        raise AdaptiveAttackError("Fang's Krum attack needs at least one known benign update")


def fang_lambda_bound(benign: torch.Tensor, *, n: int, f: int) -> float:
    """The paper's upper bound on lambda from the known benign updates (m, d), n clients, f attackers.

    Neighbours per benign update: n - f - 2, capped at the m - 1 other known updates (partial knowledge).
    Distances are computed in float64.
    """
    m, d = benign.shape
    _check_krum(n, f, m)
    rows = benign.to(torch.float64)
    distances = torch.cdist(rows, rows)
    distances.fill_diagonal_(math.inf)
    k = min(n - f - 2, m - 1)
    spread = torch.topk(distances, k, dim=1, largest=False).values.sum(dim=1).min() if k > 0 else rows.new_zeros(())
    first = spread / ((n - 2 * f - 1) * math.sqrt(d))
    second = torch.linalg.vector_norm(rows, dim=1).max() / math.sqrt(d)
    return float(first + second)


def _offsets(s: torch.Tensor, f: int, radius: float, generator: torch.Generator | None) -> torch.Tensor:
    """(f, d): row 0 zero, rows 1..f-1 of norm ``radius`` in random directions (the supporters' offsets)."""
    offsets = torch.zeros(f, s.shape[0], dtype=s.dtype, device=s.device)
    if radius > 0 and f > 1:
        noise = torch.randn(f - 1, s.shape[0], generator=generator, dtype=s.dtype, device=s.device)
        offsets[1:] = radius * noise / torch.linalg.vector_norm(noise, dim=1, keepdim=True).clamp_min(1e-12)
    return offsets


def _krum_search(
    benign: torch.Tensor,
    rule: Rule,
    *,
    n: int,
    f: int,
    threshold: float = 1e-5,
    support_radius: float = 0.0,
    generator: torch.Generator | None = None,
    simulated: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float, bool]:
    """The halving search: ``(rows (f, d), lambda, selected)``, the crafted rows ``offsets - lambda * s`` at the first
    lambda the rule selects, or at the last one tried with ``selected`` False."""
    s = fang_direction(benign)
    offsets = _offsets(s, f, support_radius, generator)
    if not threshold > 0:
        raise AdaptiveAttackError(f"attack.threshold={threshold!r}: the lambda threshold must be > 0 (paper: 1e-5)")
    lam = fang_lambda_bound(benign, n=n, f=f)
    sim = benign if simulated is None else simulated
    while True:
        if crafted_weight(rule, offsets - lam * s, sim, f=f) > 0:
            return offsets - lam * s, lam, True
        if lam / 2 < threshold:
            return offsets - lam / 2 * s, lam / 2, False
        lam /= 2


def fang_krum_lambda(benign: torch.Tensor, rule: Rule, *, n: int, f: int, **search: Any) -> tuple[float, bool]:
    """(lambda, selected): the first lambda of the halving search the rule selects, or the last one tried, False.

    ``search``: ``threshold`` (default 1e-5), ``support_radius`` (0.0), ``generator`` (None) and ``simulated``, the
    benign rows of the simulated round (default ``benign``); s and the bound come from ``benign``.
    """
    _, lam, selected = _krum_search(benign, rule, n=n, f=f, **search)
    return lam, selected


def fang_krum_update(benign: torch.Tensor, rule: Rule, *, n: int, f: int, **search: Any) -> torch.Tensor:
    """Fang's attack on Krum: the f crafted updates (f, d) (row 0: -lambda * s; rows 1..f-1: its supporters, each
    ``support_radius`` away from it in a random direction drawn from ``generator``).

    benign: the known benign updates (m, d) (full knowledge: the n - f honest updates of the round; partial: the
    attackers' own); rule: the aggregator callable the attackers simulate, called on (f + m, d) rows; ``search``:
    the keys of :func:`fang_krum_lambda`. The rows returned are exactly the ones the search simulated.
    """
    rows, _, _ = _krum_search(benign, rule, n=n, f=f, **search)
    return rows


def fang_trim_update(
    benign: torch.Tensor,
    *,
    f: int,
    knowledge: str = "full",
    b: float = 2.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fang's attack on trimmed mean / median: f crafted updates (f, d), one random draw per attacker and coordinate.

    benign: the known benign updates (m, d) (full: the honest updates of the round; partial: the attackers' own,
    m >= 2 for a standard deviation).
    """
    kind = knowledge_kind(knowledge)
    if f < 1:
        raise AdaptiveAttackError(f"f={f}: Fang's attack needs at least one attacker in the round")
    if isinstance(b, bool) or not isinstance(b, int | float) or not 1 < b <= 2:
        raise AdaptiveAttackError(f"attack.b={b!r}: Fang's trimmed-mean attack needs 1 < b <= 2 (the paper uses 2)")
    m, d = benign.shape
    s = fang_direction(benign)
    if kind == "full":
        high, low = benign.max(dim=0).values, benign.min(dim=0).values
        up = (high, torch.where(high > 0, b * high, high / b))  # s = -1: push up
        down = (torch.where(low > 0, low / b, b * low), low)  # s = 1: push down
    else:
        if m < 2:
            raise AdaptiveAttackError(
                f"attack.knowledge={knowledge!r}: partial knowledge estimates a std from the attackers' own updates "
                f"and needs at least 2 of them, got {m}"
            )
        mu, sigma = benign.mean(dim=0), benign.std(dim=0, unbiased=True)
        up = (mu + 3 * sigma, mu + 4 * sigma)
        down = (mu - 4 * sigma, mu - 3 * sigma)
    lo = torch.where(s < 0, up[0], torch.where(s > 0, down[0], benign.mean(dim=0)))
    hi = torch.where(s < 0, up[1], torch.where(s > 0, down[1], benign.mean(dim=0)))
    u = torch.rand(f, d, generator=generator, dtype=benign.dtype, device=benign.device)
    return lo + u * (hi - lo)


# ---------------------------------------------------------------------------------------------- the attack kind


class FangParams(Params):
    """``[attack]`` keys of ``kind = "fang"``."""

    threshold: float = Field(1e-5, gt=0, le=1e3,
                             description="Krum variant: smallest lambda tried, in (0, 1000] (paper: 1e-5).")
    b: float = Field(2.0, gt=1, le=2, description="trim/median variant: spread factor of the draws (paper: 2).")


class Fang(Attack):
    """Fang et al.'s attack for the deployed rule: the Krum variant against krum / multikrum / bulyan, the trimmed-mean
    variant against trimmed_mean / median (:data:`FANG_TARGETS`); any other ``defense.strategy`` is refused by
    the run plan.

    Parameters (``[attack]`` keys): ``threshold`` (default 1e-5), ``b`` (default 2). ``attack.knowledge``:
    "omniscient" is the paper's full knowledge, "colluding" its partial knowledge.

    s and the lambda bound come from the benign updates the attackers know; the search simulates a round of the
    real size (f crafted + n - f benign rows, :func:`~.scale_search.estimated_round`).

    Differences: every attacker of a round sends the same update (``craft`` returns one update; the paper's
    supporters are identical copies too, while its trimmed-mean attackers draw independently): for the trimmed-mean
    variant, the first of the f draws, from a generator seeded by the known updates. Krum variant with partial
    knowledge: the simulated round is the attackers' own updates padded to n - f rows with Gaussian estimates
    (:func:`~.scale_search.estimated_round`), where the paper simulates Krum on the 2c known rows with a smaller f.
    Trimmed-mean variant with partial knowledge and a single attacker (no std): the full-knowledge draw around
    that one update.
    """

    kind = "fang"
    description = "Fang et al. 2020: directed deviation against Krum-type or trimmed-mean/median rules (threshold, b)"
    Params = FangParams
    crafts_from_benign = True
    variant: str = ""  # "krum" or "trim", set by bind_defense

    def bind_defense(self, defense: DefenseView) -> None:
        try:
            self.variant = fang_variant(defense.name)
        except AdaptiveAttackError as e:
            raise ConfigError(str(e)) from None
        if self.variant == "krum":
            simulable_rule(defense, kind=self.kind)
        super().bind_defense(defense)

    def craft(self, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> torch.Tensor:
        f = max(1, num_attackers)
        knowledge = knowledge_kind(self.knowledge)
        generator = benign_generator(benign)
        if not self.variant:
            simulable_rule(self.defense, kind=self.kind)  # no defense bound: the ConfigError naming it
        if self.variant == "trim":
            if knowledge == "partial" and benign.shape[0] < 2:
                knowledge = "full"
            rows = fang_trim_update(benign, f=f, knowledge=knowledge, b=self.params.b, generator=generator)
            return rows[0]
        if num_clients < 2 * f + 3:  # more attackers sampled than Krum's n >= 2f+3 allows: bound with the most it does
            f = max(1, (num_clients - 3) // 2)
        rows = estimated_round(benign, num_clients=num_clients, num_attackers=f, generator=generator)
        known = benign if benign.shape[0] > 1 else rows  # the bound needs the spread of two rows at least
        rule = simulable_rule(self.defense, kind=self.kind)
        lam, selected = fang_krum_lambda(known, rule, n=num_clients, f=f, threshold=self.params.threshold,
                                         simulated=rows)
        self.last_lambda, self.last_selected = lam, selected
        if not selected:
            logger.info("fang: no lambda >= %g selected by %s; sending lambda %.3g", self.params.threshold,
                        self.defense.name if self.defense else "?", lam)
        return -lam * fang_direction(known)
