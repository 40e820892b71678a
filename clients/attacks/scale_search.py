"""Searching an attack's scale against the deployed rule: the largest ALIE z or IPM epsilon the rule still accepts.

The fixed-parameter attacks of fedsec (ALIE, Baruch et al., NeurIPS 2019, https://arxiv.org/abs/1902.06156; IPM,
Xie et al., UAI 2019, https://arxiv.org/abs/1903.03936) use one z / epsilon whatever the defense. An attacker who
knows the aggregation rule does better by trying scales against the rule itself, as Shejwalkar and Houmansadr's
AGR-tailored attacks do for their gamma (NDSS 2021, :mod:`.agr_tailored`). :func:`search_scale` does that for any
``make_update(scale)``:

- ``criterion="accepted"`` (selection rules: Krum, Multi-Krum, Bulyan, FLAME, DnC, ...): the largest scale in
  [low, high] whose update still gets a non-zero weight, by bisection (tolerance ``tol``). It assumes acceptance is
  monotone in the scale (accepted up to a boundary, rejected beyond), as for ALIE's z against distance-based rules.
- ``criterion="deviation"`` (coordinate rules: median, trimmed mean, geometric median, clipping): the scale in
  [low, high] that moves the aggregate furthest (L2) from the benign mean, by a grid of ``grid`` + 1 points refined
  around the best point until the bracket is narrower than ``tol``.

The helpers shared by the adaptive attacks live here too: the rule type, the simulated round (the crafted rows
first, then the benign rows), the crafted rows' weight and the aggregate's deviation.

Defaults: ``tol = 1e-3``, ``grid = 8`` (about 40 rule calls for a range of width 4); the ranges of
:func:`search_alie_z`, [0, 4], and of :func:`search_ipm_epsilon`, [0, 10].

Differences: neither paper searches the scale; this is fedsec's variant, searched against the deployed rule
(the worst-case study, :mod:`fedsec.studies.worst_case`, runs it). In the simulated round the crafted rows come
first; Krum breaks score ties towards the lower row, so an update tied with an honest one counts as selected.

Attack kinds (bottom of the module): ``alie_search`` (:class:`ALIESearch`, key ``z_range``) and ``ipm_search``
(:class:`IPMSearch`, key ``epsilon_range``), both with ``tol`` and ``criterion`` ("auto": from
``defense.strategy``, :func:`criterion_for`). The rule is the deployed strategy's kernel (the run plan's
``DefenseView``). Every attacker of a round sends the same update (the kind's ``craft``), computed from the
benign updates it knows; the rule is simulated on a round of the real size n: f copies of it and n - f benign
rows (:func:`estimated_round`: omniscient attackers use n - f of the updates they know, colluding ones pad their
own honest updates with Gaussian estimates seeded from them).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator

from fedsec.errors import ConfigError
from fedsec.registry import Params

from .alie import alie_update
from .base import Attack, DefenseView
from .ipm import ipm_update

logger = logging.getLogger(__name__)

#: the attacker's view of the rule: updates (n, d) -> (aggregate (d,), weights (n,)), as the strategies' kernels
Rule = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
CRITERIA = ("accepted", "deviation")


class AdaptiveAttackError(ValueError):
    """Bad input to an adaptive attack (empty search range, unsupported rule or knowledge, bad ratio)."""


def criterion_for(strategy: str) -> str:
    """The search criterion for ``defense.strategy``: "accepted" for rules that keep or reject whole updates (their
    declared ``family``, :attr:`fedsec.strategies.RobustStrategy.family`), else "deviation".

    Rules that add noise (norm clipping with ``noise_std``, FLAME) make the deviation noisy; the search then
    follows the noise of the simulated calls.
    """
    from fedsec.strategies import STRATEGIES

    selects = strategy in STRATEGIES and STRATEGIES.get(strategy).selects_clients()
    return "accepted" if selects else "deviation"


def simulate_round(malicious: torch.Tensor, benign: torch.Tensor, *, f: int) -> torch.Tensor:
    """The round the rule would see: ``f`` crafted rows first, then the benign rows (m, d); shape (f + m, d).

    ``malicious`` is one update (d,), repeated f times, or f rows (f, d).
    """
    rows = malicious.expand(f, -1) if malicious.dim() == 1 else malicious
    if rows.shape[0] != f:
        raise AdaptiveAttackError(f"malicious has {rows.shape[0]} rows, expected f={f}")
    return torch.cat([rows.to(benign.dtype), benign], dim=0)


def crafted_weight(rule: Rule, malicious: torch.Tensor, benign: torch.Tensor, *, f: int) -> float:
    """Total weight ``rule`` gives the ``f`` crafted rows of the simulated round (0: all rejected)."""
    rows = simulate_round(malicious, benign, f=f)
    _, weights = rule(rows)
    if weights.shape != (rows.shape[0],):
        raise AdaptiveAttackError(
            f"the rule returned weights of shape {tuple(weights.shape)} for {rows.shape[0]} updates; pass an "
            "aggregator updates (n, d) -> (aggregate (d,), weights (n,)), as the fedsec.strategies kernels"
        )
    return float(weights[:f].sum())


def deviation(rule: Rule, malicious: torch.Tensor, benign: torch.Tensor, *, f: int) -> float:
    """L2 distance between the rule's aggregate of the simulated round and the benign mean."""
    aggregate, _ = rule(simulate_round(malicious, benign, f=f))
    return float(torch.linalg.vector_norm(aggregate - benign.mean(dim=0)))


def check_range(low: float, high: float, *, key: str) -> None:
    """Raise :class:`AdaptiveAttackError` naming ``key`` unless low < high, both finite."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise AdaptiveAttackError(f"{key}=[{low:g}, {high:g}]: the search range must be finite; give finite low < high")
    if not low < high:
        raise AdaptiveAttackError(f"{key}=[{low:g}, {high:g}]: empty search range; give low < high")


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise AdaptiveAttackError(f"criterion={criterion!r}: unknown search criterion; use one of {CRITERIA}")


def search_scale(
    make_update: Callable[[float], torch.Tensor],
    rule: Rule,
    benign: torch.Tensor,
    *,
    f: int,
    low: float,
    high: float,
    tol: float = 1e-3,
    criterion: str = "accepted",
    grid: int = 8,
    key: str = "attack.scale_range",
) -> float:
    """The scale in [low, high] the attacker sends, searched against ``rule``.

    make_update: scale -> malicious update (d,) (or (f, d)); benign: the updates the attacker knows (m, d); f: the
    attackers in the round. ``criterion="accepted"``: the largest scale whose crafted rows get non-zero weight
    (within ``tol``; ``low`` when even ``low`` is rejected, ``high`` when ``high`` is accepted).
    ``criterion="deviation"``: the scale whose aggregate lies furthest from the benign mean (within ``tol``).
    ``key`` is the config key named in errors (e.g. ``"attack.z_range"``).
    """
    check_range(low, high, key=key)
    check_criterion(criterion)
    if not tol > 0:
        raise AdaptiveAttackError(f"{key}: tol={tol!r} must be > 0")
    if criterion == "accepted":

        def accepted(scale: float) -> bool:
            return crafted_weight(rule, make_update(scale), benign, f=f) > 0

        if accepted(high):
            return float(high)
        if not accepted(low):
            return float(low)
        lo, hi = float(low), float(high)
        while hi - lo > tol:  # invariant: lo accepted, hi rejected
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if accepted(mid) else (lo, mid)
        return lo
    if grid < 2:
        raise AdaptiveAttackError(f"grid={grid!r}: the deviation search needs grid >= 2 points")
    lo, hi = float(low), float(high)
    best, best_dev = lo, -math.inf
    seen: dict[float, float] = {}  # the bracket's ends and best point recur in the next grid: evaluate once

    def dev(x: float) -> float:
        if x not in seen:
            seen[x] = deviation(rule, make_update(x), benign, f=f)
        return seen[x]

    while True:
        points = [lo + (hi - lo) * j / grid for j in range(grid)] + [hi]
        devs = [dev(x) for x in points]
        i = max(range(len(points)), key=lambda j: devs[j])  # first maximum
        if devs[i] > best_dev:
            best, best_dev = points[i], devs[i]
        lo, hi = points[max(i - 1, 0)], points[min(i + 1, grid)]
        if hi - lo <= tol:
            return best


def search_alie_z(
    benign: torch.Tensor, rule: Rule, *, f: int, low: float = 0.0, high: float = 4.0, **search: Any
) -> float:
    """ALIE's z (update ``mean - z * std`` of ``benign``) searched against ``rule``; ``search``: the other keys of
    :func:`search_scale` (``tol``, ``criterion``, ``grid``, with its defaults); errors name ``attack.z_range``."""
    return search_scale(lambda z: alie_update(benign, z), rule, benign, f=f, low=low, high=high,
                        key="attack.z_range", **search)


def search_ipm_epsilon(
    benign: torch.Tensor, rule: Rule, *, f: int, low: float = 0.0, high: float = 10.0, **search: Any
) -> float:
    """IPM's epsilon (update ``-epsilon * mean``) searched against ``rule`` (``search`` as for :func:`search_alie_z`);
    errors name ``attack.epsilon_range``.

    Krum-type rules accept IPM only where ``-epsilon * mean`` lies among the benign updates, which is not always
    monotone in epsilon; prefer ``criterion="deviation"`` for IPM unless the rule is known to be monotone.
    """
    return search_scale(lambda eps: ipm_update(benign, eps), rule, benign, f=f, low=low, high=high,
                        key="attack.epsilon_range", **search)


# ---------------------------------------------------------------------------------------------- the attack kinds
# Shared glue of the adaptive attack kinds (fang, agr_tailored, alie_search, ipm_search): what the attacker knows of
# the round, and the rule it simulates (the deployed strategy, from the run plan's DefenseView).


def benign_generator(benign: torch.Tensor) -> torch.Generator:
    """A generator seeded from the bytes of ``benign``: colluders who know the same updates draw the same numbers
    (so every attacker of a round sends the same crafted update, and runs are reproducible)."""
    digest = hashlib.blake2b(benign.detach().cpu().contiguous().numpy().tobytes(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def estimated_round(benign: torch.Tensor, *, num_clients: int, num_attackers: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The benign rows of the attacker's simulated round: exactly n - f rows (at least 1), so that the rule sees a
    round of the real size n with the f crafted rows.

    - Omniscient attackers know m >= n - f rows (every valid update of the round, their own honest ones included,
      as :mod:`.omniscient` passes them): the first n - f are kept (which f are left out does not matter
      statistically: the attackers' honest updates are drawn like the others').
    - Colluding attackers know only their own m = f honest updates, too few for a rule that needs n >= 2f+3 rows:
      the rows are padded with draws from N(mean, std) of the known rows (coordinate-wise; std 0 for one row),
      their estimate of the other honest clients (as Fang et al.'s partial-knowledge attack estimates the benign
      spread from the attackers' own updates); seeded from the known rows unless ``generator`` is given.
    """
    m, d = benign.shape
    keep = max(num_clients - num_attackers, 1)
    if m >= keep:
        return benign if m == keep else benign[:keep]
    mean = benign.mean(dim=0)
    std = benign.std(dim=0, unbiased=True) if m > 1 else torch.zeros_like(mean)
    gen = generator if generator is not None else benign_generator(benign)
    noise = torch.randn(keep - m, d, generator=gen, dtype=benign.dtype).to(benign.device)
    return torch.cat([benign, mean + std * noise], dim=0)


def simulable_rule(defense: DefenseView | None, *, kind: str) -> Rule:
    """The deployed rule's kernel from ``defense`` (bound by the run plan), or a :class:`ConfigError` naming
    ``defense.strategy`` when the attacker cannot simulate it (no defense bound, or a rule that needs the server's
    own update on root data, as FLTrust, or the server's per-client update histories, as FoolsGold)."""
    if defense is None:
        raise ConfigError(f"attack.kind={kind!r}: adapts to the deployed rule, but the run plan bound no defense")
    strategy = defense.build()
    if getattr(strategy, "needs_server_update", False):
        raise ConfigError(
            f"defense.strategy={defense.name!r}: attack.kind={kind!r} simulates the rule on the updates it knows, "
            f"but {defense.name} also needs the server's update on its root data, which the attacker lacks; use a "
            "fixed-parameter attack (alie, ipm, minmax) against it"
        )
    if getattr(strategy, "needs_client_histories", False):
        raise ConfigError(
            f"defense.strategy={defense.name!r}: attack.kind={kind!r} simulates the rule on the updates it knows, "
            f"but {defense.name} weights each update by its client's history of updates, which the server keeps "
            "across rounds and the attacker lacks; use a fixed-parameter attack (alie, ipm, minmax) against it"
        )
    return defense.rule()


def resolve_criterion(criterion: str, strategy: str) -> str:
    """``criterion`` or, for "auto", :func:`criterion_for` the deployed ``defense.strategy``."""
    return criterion_for(strategy) if criterion == "auto" else criterion


def _range_field(default: list[float], what: str) -> Any:
    return Field(default, min_length=2, max_length=2, description=f"[low, high] searched for {what}.")


def _check_range_key(value: list[float], key: str) -> list[float]:
    try:
        check_range(float(value[0]), float(value[1]), key=key)
    except AdaptiveAttackError as e:
        raise ValueError(str(e).split(": ", 1)[1]) from None  # parse_params prefixes "attack.<key>=<value>: "
    return value


class SearchParams(Params):
    """Keys shared by the searched-scale kinds: the tolerance and the search criterion; a subclass adds its
    ``[low, high]`` range key (``z_range``, ``epsilon_range``), checked here."""

    tol: float = Field(1e-3, gt=0, le=1e3, description="search tolerance on the scale, in (0, 1000].")
    criterion: Literal["auto", "accepted", "deviation"] = Field(
        "auto", description="auto: 'accepted' for selection rules (Krum, Bulyan, ...), else 'deviation'.")

    @field_validator("z_range", "epsilon_range", check_fields=False)
    @classmethod
    def _nonempty(cls, value: list[float], info: ValidationInfo) -> list[float]:
        return _check_range_key(value, f"attack.{info.field_name}")


class ALIESearchParams(SearchParams):
    """``[attack]`` keys of ``kind = "alie_search"``."""

    z_range: list[Annotated[float, Field(ge=-1e3, le=1e3)]] = _range_field(
        [0.0, 4.0], "ALIE's z (each in [-1000, 1000])")


class IPMSearchParams(SearchParams):
    """``[attack]`` keys of ``kind = "ipm_search"``."""

    epsilon_range: list[Annotated[float, Field(ge=-1e6, le=1e6)]] = _range_field(
        [0.0, 10.0], "IPM's epsilon (each in [-1e6, 1e6])")


class _SearchedAttack(Attack):
    """A crafting attack whose scale is searched against the deployed rule (see :func:`search_scale`)."""

    crafts_from_benign = True
    #: the ``[attack]`` key holding the searched ``[low, high]``, as ``attack.<name>``
    range_key: str
    #: the update sent at a scale: ``(benign (m, d), scale) -> (d,)``
    update_at: Callable[[torch.Tensor, float], torch.Tensor]

    def bind_defense(self, defense: DefenseView) -> None:
        simulable_rule(defense, kind=self.kind)  # refuse a rule the attacker cannot simulate, at plan time
        super().bind_defense(defense)

    def _search(self, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> float:
        """The scale found: the update is computed from the known rows, the rule simulated on the estimated round
        (:func:`estimated_round`) with f copies of it."""
        f = max(1, num_attackers)
        rows = estimated_round(benign, num_clients=num_clients, num_attackers=f)
        low, high = self.scale_range
        return search_scale(
            lambda s: self.update_at(benign, s), simulable_rule(self.defense, kind=self.kind), rows,
            f=f, low=low, high=high, tol=self.params.tol, criterion=self.criterion, key=self.range_key,
        )

    @property
    def scale_range(self) -> tuple[float, float]:
        low, high = getattr(self.params, self.range_key.removeprefix("attack."))
        return float(low), float(high)

    @property
    def criterion(self) -> str:
        name = self.defense.name if self.defense is not None else ""
        return resolve_criterion(self.params.criterion, name)

    def craft(self, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> torch.Tensor:
        scale = self._search(benign, num_clients=num_clients, num_attackers=num_attackers)
        self.last_scale = scale
        logger.debug("%s: scale %.4g searched against %s (%s)", self.kind, scale,
                     self.defense.name if self.defense else "?", self.criterion)
        return self.update_at(benign, scale)


class ALIESearch(_SearchedAttack):
    """ALIE with z searched against the deployed rule: the largest z in ``z_range`` the rule still accepts
    (selection rules) or the z that moves its aggregate furthest (coordinate rules).

    Parameters (``[attack]`` keys): ``z_range`` (default [0, 4]), ``tol`` (1e-3), ``criterion`` ("auto").
    The update sent is mean - z * std of the benign updates the attacker knows (``knowledge``); the simulated
    round pads colluders' own updates with Gaussian estimates (:func:`estimated_round`).
    """

    kind = "alie_search"
    description = "ALIE with z searched against the deployed rule (z_range, tol, criterion)"
    Params = ALIESearchParams
    range_key = "attack.z_range"
    update_at = staticmethod(alie_update)


class IPMSearch(_SearchedAttack):
    """IPM with epsilon searched against the deployed rule (as :class:`ALIESearch`; update -epsilon * mean).

    Parameters (``[attack]`` keys): ``epsilon_range`` (default [0, 10]), ``tol`` (1e-3), ``criterion`` ("auto":
    for IPM "deviation" whatever the rule, since acceptance of -epsilon * mean by Krum-type rules is not monotone
    in epsilon; see :func:`search_ipm_epsilon`).
    """

    kind = "ipm_search"
    description = "IPM with epsilon searched against the deployed rule (epsilon_range, tol, criterion)"
    Params = IPMSearchParams
    range_key = "attack.epsilon_range"
    update_at = staticmethod(ipm_update)

    @property
    def criterion(self) -> str:
        return "deviation" if self.params.criterion == "auto" else self.params.criterion
