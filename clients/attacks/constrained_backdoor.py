"""Norm-constrained model replacement: a backdoor boosted as far as a norm-clipping defense lets it go.

Sun, Kairouz, Suresh and McMahan, "Can You Really Backdoor Federated Learning?", NeurIPS 2019 Workshop on
Federated Learning (https://arxiv.org/abs/1911.07963). Against norm bounding (the server clips every update to norm
M), the paper's norm-aware attacker keeps its boosted (model-replacement, Bagdasaryan et al. 2020) update within
the bound, so that clipping does not shrink it. fedsec's attacker does not know M: it estimates it from the norms
of the benign updates it knows (:func:`estimate_clip_bound`; median, as FLAME's adaptive clipping uses, or max), then
scales its backdoor update to that norm (:func:`constrained_replacement`).

Defaults: ``how = "median"``; ``boost = None`` (boost all the way to the bound).

Attack kind ``constrained_backdoor`` (:class:`ConstrainedBackdoor`, bottom of the module): a
:class:`~.backdoor.Backdoor` whose update goes through :func:`constrained_replacement`.

Differences: the paper's attacker knows M and projects onto the M-ball during local training (projected gradient
descent); this kernel scales the finished update once (use :func:`constrain_to_norm` with ``exact=False`` after
every local step for the projected variant). The estimated bound is the attacker's guess, not the server's
``clip_norm``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fedsec.errors import ConfigError

from .backdoor import Backdoor, BackdoorParams
from .base import AttackContext, DefenseView
from .scale_search import AdaptiveAttackError

BOUND_ESTIMATES = ("median", "max", "mean")


def estimate_clip_bound(benign_norms: torch.Tensor, *, how: str = "median") -> float:
    """The clipping bound the attacker assumes, from the L2 norms (m,) of the benign updates it knows.

    "median" (mean of the two middle norms for even m), "max" or "mean".
    """
    norms = torch.as_tensor(benign_norms, dtype=torch.float64).reshape(-1)
    if norms.numel() == 0:
        raise AdaptiveAttackError("attack.bound_estimate: needs at least one benign update norm, got none")
    if not bool(torch.isfinite(norms).all()) or bool((norms < 0).any()):
        raise AdaptiveAttackError("attack.bound_estimate: benign update norms must be finite and >= 0")
    if how == "median":
        return float(torch.quantile(norms, 0.5))
    if how == "max":
        return float(norms.max())
    if how == "mean":
        return float(norms.mean())
    raise AdaptiveAttackError(f"attack.bound_estimate={how!r}: unknown estimate; use one of {BOUND_ESTIMATES}")


def constrain_to_norm(update: torch.Tensor, bound: float, *, exact: bool = True) -> torch.Tensor:
    """Each row of ``update`` (..., d) scaled to L2 norm ``bound`` (``exact=False``: only rows longer than it).

    A zero row stays zero.
    """
    if not bound >= 0:
        raise AdaptiveAttackError(f"attack.clip_bound={bound!r}: the norm bound must be >= 0")
    norms = torch.linalg.vector_norm(update, dim=-1, keepdim=True)
    scale = bound / norms.clamp_min(torch.finfo(update.dtype).tiny)
    if not exact:
        scale = scale.clamp_max(1.0)
    return torch.where(norms > 0, update * scale, update)


def constrained_replacement(update: torch.Tensor, *, bound: float, boost: float | None = None) -> torch.Tensor:
    """The backdoor update (..., d) boosted by ``boost`` but never beyond norm ``bound``; ``boost=None``: to it.

    Returns ``update * min(boost, bound / ||update||)`` row-wise (``boost=None``: ``bound / ||update||``).
    """
    if boost is None:
        return constrain_to_norm(update, bound)
    if not boost > 0:
        raise AdaptiveAttackError(f"attack.boost={boost!r}: the boost must be > 0 (1 = no model replacement)")
    return constrain_to_norm(boost * update, bound, exact=False)


# ---------------------------------------------------------------------------------------------- the attack kind


class ConstrainedBackdoorParams(BackdoorParams):
    """``[attack]`` keys of ``kind = "constrained_backdoor"``: the backdoor's, with ``boost`` optional."""

    boost: float | None = Field(None, gt=0, le=1e6,
                                 description="model-replacement scale in (0, 1e6], capped at the bound (None: to it).")
    bound_estimate: Literal["median", "max", "mean", "known"] = Field(
        "median", description="clip bound assumed: median/max/mean of known benign norms, or 'known': the deployed "
        "rule's defense.clip_norm.")


class ConstrainedBackdoor(Backdoor):
    """A backdoor (BadNets trigger, relabelled) whose update is boosted as far as the estimated clipping bound.

    Parameters (``[attack]`` keys): the backdoor's (``target``, ``poison_ratio``, ``trigger``), ``boost`` (default
    None: all the way to the bound) and ``bound_estimate`` ("median"; "known" reads ``clip_norm`` from the deployed
    rule, Sun et al.'s attacker who knows M, refused at plan time for a rule without one).

    The estimate needs the norms of benign updates the attacker knows: :meth:`poison_with_reference` takes them
    (the round's colluders' honest updates, ``needs_benign_reference``). Called as a plain model-poisoning attack
    (:meth:`poison_update`), its only known norm is that of its own backdoored update, so the bound equals it and the
    update is sent as trained (capped by ``boost`` when set below 1).
    """

    kind = "constrained_backdoor"
    description = ("norm-constrained model replacement (Sun et al. 2019): backdoor boosted up to an estimated clip "
                   "bound (bound_estimate, boost)")
    Params = ConstrainedBackdoorParams
    needs_benign_reference = True

    def bind_defense(self, defense: DefenseView) -> None:
        if self.params.bound_estimate == "known" and not _clip_norm(defense):
            raise ConfigError(
                f"defense.strategy={defense.name!r}: attack.bound_estimate='known' reads the rule's clip_norm, and "
                f"{defense.name} has none; use a clipping rule (norm_clipping) or bound_estimate='median'"
            )
        super().bind_defense(defense)

    def bound(self, benign_norms: torch.Tensor) -> float:
        """The clip bound this attacker assumes."""
        if self.params.bound_estimate == "known":
            return float(_clip_norm(self.defense))
        return estimate_clip_bound(benign_norms, how=self.params.bound_estimate)

    def poison_with_reference(self, update: torch.Tensor, ctx: AttackContext, *, benign: torch.Tensor) -> torch.Tensor:
        """The backdoored ``update`` (d,) boosted up to the bound estimated from ``benign`` (m, d)."""
        norms = torch.linalg.vector_norm(benign.reshape(-1, update.shape[-1]).to(torch.float64), dim=1)
        return constrained_replacement(update, bound=self.bound(norms), boost=self.params.boost)

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return self.poison_with_reference(update, ctx, benign=update.reshape(1, -1))


def _clip_norm(defense: DefenseView | None) -> float | None:
    """The deployed rule's ``clip_norm`` (norm clipping), or None."""
    if defense is None:
        return None
    value = getattr(defense.build(), "clip_norm", None)
    return float(value) if isinstance(value, int | float) and value > 0 else None
