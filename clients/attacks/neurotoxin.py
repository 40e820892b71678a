"""Neurotoxin: a backdoor written only on the coordinates the honest clients change least, for durability.

Zhang, Panda, Song, Yang, Mahoney, Mittal, Ramchandran and Gonzalez, "Neurotoxin: Durable Backdoors in Federated
Learning", ICML 2022, PMLR 162 (https://proceedings.mlr.press/v162/zhang22w.html; arXiv:
https://arxiv.org/abs/2206.10341). The attacker approximates the honest update by the previous round's benign
update (the difference of the last two global models, or the mean of the benign updates it knows), finds its
top-k% coordinates by magnitude, and projects its backdoor update onto the other coordinates (zero on the top-k%),
so that the honest clients' later updates rarely overwrite it.

``mask_ratio``: the share of coordinates masked (the largest |reference| values). Default 0.05: the authors'
released code (github.com/jhcknzzm/Federated-Learning-Backdoor) runs Neurotoxin with ``--gradmask_ratio 0.95``,
the share of coordinates *kept* (the 95% of smallest benign magnitude), in its CV and Reddit commands; its
``gradmask_ratio = 1`` is the plain backdoor, ``mask_ratio = 0`` here. Ties at the boundary: the lower coordinate
index is masked first.

Attack kind ``neurotoxin`` (:class:`Neurotoxin`, bottom of the module): a :class:`~.backdoor.Backdoor` whose
(boosted) update is projected by :func:`neurotoxin_update`.

Differences: the paper masks the gradient at every local step of backdoor training (then clips to the norm bound);
:func:`neurotoxin_project` is the same projection, to be applied per step or once to the finished update. The mask
is computed on the whole flattened model (the code's ``aggregate_all_layer = 1``), not layer by layer.
"""

from __future__ import annotations

import torch
from pydantic import Field

from .backdoor import Backdoor, BackdoorParams
from .base import AttackContext
from .scale_search import AdaptiveAttackError


def check_mask_ratio(mask_ratio: float) -> float:
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, int | float) or not 0 <= mask_ratio < 1:
        raise AdaptiveAttackError(
            f"attack.mask_ratio={mask_ratio!r}: Neurotoxin masks a share 0 <= mask_ratio < 1 of the coordinates "
            "(the paper's code: 0.05, i.e. gradmask_ratio 0.95 kept)"
        )
    return float(mask_ratio)


def neurotoxin_mask(reference: torch.Tensor, *, mask_ratio: float = 0.05) -> torch.Tensor:
    """Boolean (d,): True on the coordinates the attacker may change, False on the int(mask_ratio * d) coordinates
    with the largest |reference|.

    reference: the previous round's benign update (d,), or benign updates (m, d) (their mean is used).
    """
    ratio = check_mask_ratio(mask_ratio)
    ref = reference.mean(dim=0) if reference.dim() == 2 else reference
    d = ref.shape[0]
    k = int(ratio * d)
    allowed = torch.ones(d, dtype=torch.bool, device=ref.device)
    if k > 0:
        top = torch.argsort(ref.abs(), descending=True, stable=True)[:k]
        allowed[top] = False
    return allowed


def neurotoxin_project(update: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``update`` (..., d) with the masked coordinates (``allowed`` False) set to zero."""
    if allowed.shape[-1] != update.shape[-1]:
        raise AdaptiveAttackError(f"Neurotoxin mask has {allowed.shape[-1]} coordinates, the update {update.shape[-1]}")
    return update * allowed.to(update.dtype)


def neurotoxin_update(update: torch.Tensor, reference: torch.Tensor, *, mask_ratio: float = 0.05) -> torch.Tensor:
    """The backdoor ``update`` (..., d) projected off the top ``mask_ratio`` coordinates of |reference|."""
    return neurotoxin_project(update, neurotoxin_mask(reference, mask_ratio=mask_ratio))


# ---------------------------------------------------------------------------------------------- the attack kind


class NeurotoxinParams(BackdoorParams):
    """``[attack]`` keys of ``kind = "neurotoxin"``: the backdoor's plus ``mask_ratio``."""

    mask_ratio: float = Field(0.05, ge=0, lt=1, description="share of coordinates left alone (largest benign change).")


class Neurotoxin(Backdoor):
    """A backdoor (BadNets trigger, relabelled, optional ``boost``) projected off the coordinates honest clients
    change most (:func:`neurotoxin_update`).

    Parameters (``[attack]`` keys): the backdoor's, ``mask_ratio`` (default 0.05). The reference honest update is
    the mean of the benign updates given to :meth:`poison_with_reference` (the round's colluders' honest updates,
    ``needs_benign_reference``; the paper: the previous round's global change). Called as a plain model-poisoning
    attack (:meth:`poison_update`) the only reference is its own backdoored update: it then zeroes its own largest
    ``mask_ratio`` coordinates.
    """

    kind = "neurotoxin"
    description = "Neurotoxin (Zhang et al. 2022): backdoor kept off the top-mask_ratio benign coordinates (durable)"
    Params = NeurotoxinParams
    needs_benign_reference = True

    def poison_with_reference(self, update: torch.Tensor, ctx: AttackContext, *, benign: torch.Tensor) -> torch.Tensor:
        """The backdoored ``update`` (d,), boosted, projected off the top coordinates of ``benign`` (m, d)."""
        boosted = super().poison_update(update, ctx)
        return neurotoxin_update(boosted, benign.reshape(-1, update.shape[-1]), mask_ratio=self.params.mask_ratio)

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return self.poison_with_reference(update, ctx, benign=update.reshape(1, -1))
