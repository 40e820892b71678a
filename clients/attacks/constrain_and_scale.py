"""Constrain-and-scale: a backdoor trained to look like what the anomaly detector expects, then boosted only as far
as the detector's bound.

Bagdasaryan, Veit, Hua, Estrin and Shmatikov, "How To Backdoor Federated Learning", AISTATS 2020, PMLR 108
(https://proceedings.mlr.press/v108/bagdasaryan20a.html; arXiv: https://arxiv.org/abs/1807.00459), section
"Evading anomaly detection". The attacker trains on L_model = alpha * L_class + (1 - alpha) * L_ano, where L_ano is
the detector's distance of the attacker's update from what it expects (:func:`anomaly_distance`), then scales its
update X - G by gamma (model replacement) up to the bound S the detector permits: gamma <= S / ||X - G||.

Threat model: the attacker knows its own data (it trains a clean update on it, besides the backdoored one), the
global model G it received and, colluding (``attack.knowledge``, default), the clean updates of the round's other
sampled attackers (``clients/malicious.py``: ``needs_benign_reference``); it does not know the server's detector or
its parameters: the benign reference r is the mean of the clean updates it knows, and S is estimated from their
norms (:func:`~.constrained_backdoor.estimate_clip_bound`), unless ``bound_estimate = "known"`` (the deployed
rule's ``clip_norm``).

L_ano = ||X - G - r|| (the authors' code's distance loss, there with r = 0): the distance norm- and distance-based
detectors (norm clipping, Krum, FLAME's clipping) measure.

Defaults: the paper leaves alpha and gamma as the attacker's choices (gamma = n / eta for full model replacement);
the authors' released code (github.com/ebagdasa/backdoor_federated_learning, ``utils/params.yaml``) ships
``alpha_loss = 1.0`` (anomaly term off) and ``scale_weights = 100``. fedsec's defaults: ``alpha = 0.5`` (both terms
weighted alike), ``boost = None`` (gamma = S / ||update||, the paper's bound-saturating scale),
``bound_estimate = "median"``.

Attack kind ``constrain_and_scale`` (:class:`ConstrainAndScale`, bottom of the module): a
:class:`~.constrained_backdoor.ConstrainedBackdoor` (its bound estimate and boost cap) whose local training adds the
anomaly term (:meth:`ConstrainAndScale.local_objective`, applied by ``fedsec.training.local.objective_gradient``
after each backward pass).

Differences: L_class is fedsec's mean cross-entropy over the poisoned batch (the paper's too) and L_ano is measured
on the whole flattened update (the authors' code sums per-layer distances). The paper's detectors also include
cosine similarity; a cosine term is not offered: its gradient grows like 1 / ||X - G||, without bound at the start
of local training, where X = G. Under ``train.algorithm = "fedsgd"``
the anomaly term is not applied (one full-batch step takes no extra term).
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsec.training.local import Objective

from .constrained_backdoor import ConstrainedBackdoor, ConstrainedBackdoorParams
from .scale_search import AdaptiveAttackError


def check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise AdaptiveAttackError(
            f"attack.alpha={alpha!r}: the weight of the backdoor loss must be in [0, 1] (1 = anomaly term off)"
        )
    return float(alpha)


def anomaly_distance(update: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """L_ano of ``update`` (..., d) against the benign ``reference`` (d,) or (..., d): ||update - reference||.

    >>> anomaly_distance(torch.tensor([3.0, 4.0]), torch.zeros(2))
    tensor(5.)
    """
    return torch.linalg.vector_norm(update - reference, dim=-1)


def constrain_and_scale_loss(class_loss: torch.Tensor, update: torch.Tensor, reference: torch.Tensor, *,
                             alpha: float) -> torch.Tensor:
    """The paper's L_model = alpha * L_class + (1 - alpha) * L_ano (differentiable in ``update`` (..., d)).

    >>> constrain_and_scale_loss(torch.tensor(2.0), torch.tensor([3.0, 4.0]), torch.zeros(2), alpha=0.5)
    tensor(3.5000)
    """
    a = check_alpha(alpha)
    return a * class_loss + (1 - a) * anomaly_distance(update, reference)


# ---------------------------------------------------------------------------------------------- the attack kind


class ConstrainAndScaleParams(ConstrainedBackdoorParams):
    """``[attack]`` keys of ``kind = "constrain_and_scale"``: the constrained backdoor's plus ``alpha``."""

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the backdoor loss in [0, 1] (1 = anomaly term off).")


class ConstrainAndScale(ConstrainedBackdoor):
    """A backdoor (BadNets trigger, relabelled) trained with the anomaly term towards the benign reference, then
    boosted up to the estimated detector bound (Bagdasaryan et al. 2020's constrain-and-scale).

    Parameters (``[attack]`` keys): the backdoor's (``target``, ``poison_ratio``, ``trigger``), the constrained
    backdoor's (``boost``, default None: all the way to the bound; ``bound_estimate``, default "median"), ``alpha``
    (default 0.5).
    """

    kind = "constrain_and_scale"
    description = ("constrain-and-scale (Bagdasaryan et al. 2020): backdoor trained with an L2 anomaly term towards "
                   "the benign reference (alpha), boosted up to an estimated detector bound "
                   "(bound_estimate, boost)")
    Params = ConstrainAndScaleParams

    def local_objective(self, benign: torch.Tensor | None) -> Objective | None:
        """(alpha, delta -> (1 - alpha) L_ano(delta, r)) with r the mean of the clean updates ``benign`` (m, d)
        the attacker knows (r = 0, the global model, without them)."""
        alpha = self.params.alpha
        if alpha >= 1.0:
            return None
        reference = None if benign is None else benign.reshape(-1, benign.shape[-1]).mean(dim=0)

        def penalty(delta: torch.Tensor) -> torch.Tensor:  # the anomaly part of the paper's L_model
            r = torch.zeros_like(delta) if reference is None else reference.to(delta.dtype)
            return constrain_and_scale_loss(delta.new_zeros(()), delta, r, alpha=alpha)

        return alpha, penalty
