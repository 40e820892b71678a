"""AGR-tailored model poisoning: the malicious update's scale optimised against the aggregation rule itself.

Shejwalkar and Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses for
Federated Learning", NDSS 2021 (https://www.ndss-symposium.org/ndss-paper/manipulating-the-byzantine-optimizing-
model-poisoning-attacks-and-defenses-for-federated-learning/). Every attacker sends mean - gamma * p, where p is a
perturbation direction of the benign updates and gamma is chosen against the rule ``rule`` (the AGR-agnostic
min-max / min-sum of :mod:`.minmax` pick gamma without the rule):

- ``criterion="deviation"`` (the paper's tailored attacks on trimmed mean and median): maximise
  ||rule(f copies of the malicious update + benign) - mean of benign||;
- ``criterion="accepted"`` (its tailored attacks on Krum, Multi-Krum and Bulyan): the largest gamma for which the
  rule still selects a crafted update (gives it non-zero weight).

gamma is found by the paper's halving search (Algorithm 1; ``gamma_init = 10``, tolerance ``tol = 1e-5``): try
gamma, then move it up by half the last step when the trial "succeeds" and down otherwise, halving the step each
time. Success is "selected" for ``"accepted"`` and "the deviation grew from the previous trial" for
``"deviation"`` (the authors' code). Perturbations (``perturbation``): "unit_vec" (the benign mean's unit vector,
default), "std" (coordinate-wise std), "sign" (sign of the mean), as in the paper.

Defaults (the paper's): ``gamma_init = 10``, ``tol = 1e-5``, ``perturbation = "unit_vec"``.

Differences: with ``"deviation"`` the gamma returned is the one with the largest deviation among all trials (the
authors' code returns the last gamma whose trial succeeded, which can be a worse one); with ``"accepted"``, a
crafted row selected counts as success even when not all f are (the code asks for all f under Multi-Krum; identical
copies tie, so the two agree unless the rule splits ties). The deviation is measured from the benign mean, as in
the authors' code (the paper writes the rule's benign aggregate; the server's rule callable is built for n rows
and may not accept the m benign rows alone). Works for any rule callable.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from fedsec.registry import Params

from .base import Attack, DefenseView
from .minmax import halving_search, perturbation_direction
from .scale_search import (
    AdaptiveAttackError,
    Rule,
    check_criterion,
    crafted_weight,
    deviation,
    estimated_round,
    resolve_criterion,
    simulable_rule,
)


def tailored_gamma(
    benign: torch.Tensor,
    rule: Rule,
    *,
    f: int,
    perturbation: str = "unit_vec",
    criterion: str = "deviation",
    gamma_init: float = 10.0,
    tol: float = 1e-5,
    simulated: torch.Tensor | None = None,
) -> float:
    """gamma for the update ``mean - gamma * p`` of the benign rows (m, d), optimised against ``rule``.

    rule is called on f copies of the malicious update, then ``simulated`` (default: ``benign``), the benign rows
    of the round the attacker simulates; the deviation is measured from their mean.
    """
    sim = benign if simulated is None else simulated
    check_criterion(criterion)
    if f < 1:
        raise AdaptiveAttackError(f"f={f}: the tailored attack needs at least one attacker in the round")
    mean = benign.mean(dim=0)
    p = perturbation_direction(benign, perturbation)
    if criterion == "accepted":
        return halving_search(
            lambda g: crafted_weight(rule, mean - g * p, sim, f=f) > 0, gamma_init=gamma_init, tol=tol
        )
    trials: list[tuple[float, float]] = []  # (deviation, gamma)

    def grows(gamma: float) -> bool:
        dev = deviation(rule, mean - gamma * p, sim, f=f)
        grew = not trials or dev > trials[-1][0]
        trials.append((dev, gamma))
        return grew

    halving_search(grows, gamma_init=gamma_init, tol=tol)
    return max(trials, key=lambda t: t[0])[1]  # first largest deviation


def tailored_update(
    benign: torch.Tensor, rule: Rule, *, f: int, perturbation: str = "unit_vec", **search: Any
) -> torch.Tensor:
    """The AGR-tailored malicious update (d,): ``mean - gamma * p`` with gamma from :func:`tailored_gamma`, which
    takes ``search`` (its ``criterion``, ``gamma_init``, ``tol``, ``simulated``, with its defaults)."""
    gamma = tailored_gamma(benign, rule, f=f, perturbation=perturbation, **search)
    return benign.mean(dim=0) - gamma * perturbation_direction(benign, perturbation)


# ---------------------------------------------------------------------------------------------- the attack kind


class TailoredParams(Params):
    """``[attack]`` keys of ``kind = "agr_tailored"``."""

    perturbation: Literal["unit_vec", "std", "sign"] = Field("unit_vec", description="perturbation direction p.")
    criterion: Literal["auto", "accepted", "deviation"] = Field(
        "auto", description="auto: 'accepted' for selection rules (Krum, Bulyan, ...), else 'deviation'.")
    gamma_init: float = Field(10.0, gt=0, le=1e6,
                              description="first gamma of the halving search, in (0, 1e6] (paper: 10).")
    tol: float = Field(1e-5, gt=0, le=1e3,
                       description="the search stops when the step falls below tol, in (0, 1000] (paper: 1e-5).")


class AGRTailored(Attack):
    """Shejwalkar and Houmansadr's AGR-tailored attack against the deployed rule: mean - gamma * p, gamma searched
    on the rule's kernel (any rule fedsec ships but FLTrust, whose root-data update the attacker lacks).

    Parameters (``[attack]`` keys): ``perturbation`` ("unit_vec"), ``criterion`` ("auto"), ``gamma_init`` (10),
    ``tol`` (1e-5). The update comes from the benign updates the attackers know; the rule is simulated on a round of
    the real size (f copies + n - f benign rows, :func:`~.scale_search.estimated_round`: colluders pad their own
    updates with Gaussian estimates; the paper's attackers know all benign updates, i.e. omniscient).
    """

    kind = "agr_tailored"
    description = "AGR-tailored (Shejwalkar & Houmansadr 2021): mean - gamma*p, gamma optimised on the rule itself"
    Params = TailoredParams
    crafts_from_benign = True

    def bind_defense(self, defense: DefenseView) -> None:
        simulable_rule(defense, kind=self.kind)
        super().bind_defense(defense)

    def craft(self, benign: torch.Tensor, *, num_clients: int, num_attackers: int) -> torch.Tensor:
        f = max(1, num_attackers)
        rows = estimated_round(benign, num_clients=num_clients, num_attackers=f)
        rule = simulable_rule(self.defense, kind=self.kind)
        criterion = resolve_criterion(self.params.criterion, self.defense.name if self.defense else "")
        return tailored_update(benign, rule, f=f, perturbation=self.params.perturbation, criterion=criterion,
                               gamma_init=self.params.gamma_init, tol=self.params.tol, simulated=rows)
