"""Membership inference: offline LiRA and the global loss-threshold attack, with ROC-based results.

- LiRA: Carlini, Chien, Nasr, Song, Terzis, Tramer, "Membership Inference Attacks From First Principles", IEEE S&P
  2022, https://arxiv.org/abs/2112.03570. *Offline* variant (sec. VI-C): shadow models are trained only on data
  disjoint from the candidates, so every shadow gives an OUT observation of each candidate's logit-scaled
  confidence ``phi = log(p_y / (1 - p_y))``; a Gaussian ``N(mu_out, sigma_out^2)`` is fitted per example and the
  one-sided test scores ``-log Pr[Z > phi_target]`` (large = member).
- Global threshold: Yeom, Giacomelli, Fredrikson, Jha, "Privacy Risk in Machine Learning", IEEE CSF 2018,
  https://arxiv.org/abs/1709.01604: score = -cross-entropy loss, one threshold for all examples; the ROC over
  every threshold, and the paper's own operating point ("member" when the loss is below the members' mean loss)
  with its advantage TPR - FPR (:class:`ThresholdPoint`, the ``mia_*`` keys of ``summary.json``).

Defaults: ``num_shadows=16``, ``shadow_fraction=0.5`` (each shadow trains on a random half of the population
pool), ``fixed_variance=None`` = a global variance (pooled over examples) below 32 shadows, per-example variances
from 32 on, as the paper advises for few shadows.

Differences from the paper: no augmented queries (mirrors/shifts); shadows are trained by the caller's
``train_fn(x, y, seed)`` (fedsec's own training code), not a fixed recipe. ``phi`` is computed stably as
``z_y - logsumexp_{j != y} z_j``, equal to the paper's ``log(p/(1-p))`` on softmax outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

TrainFn = Callable[[torch.Tensor, torch.Tensor, int], nn.Module]


# ----------------------------------------------------------------------------------------------------- kernels


def logit_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log(p_y / (1 - p_y))`` per example from (N, C) logits and (N,) labels -> (N,), numerically stable."""
    true = logits.gather(1, labels.reshape(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.reshape(-1, 1), float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def lira_offline_scores(target_phi: torch.Tensor, shadow_phi: torch.Tensor, *, fixed_variance: bool) -> torch.Tensor:
    """One-sided offline LiRA scores, (N,) target and (S, N) OUT shadows -> (N,) ``-log Pr[Z > phi]``.

    ``Z ~ N(mu_i, sigma_i^2)`` with ``mu_i`` the shadows' mean for example ``i`` and ``sigma_i`` its standard
    deviation, or one pooled standard deviation when ``fixed_variance``.
    """
    mu = shadow_phi.mean(dim=0)
    if fixed_variance:
        sigma = (shadow_phi - mu).pow(2).mean().sqrt().expand_as(mu)
    else:
        sigma = shadow_phi.std(dim=0, correction=1)
    sigma = sigma.clamp_min(1e-6)
    return -torch.special.log_ndtr((mu - target_phi) / sigma)


def loss_threshold_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Yeom et al.'s score: minus the per-example cross-entropy, (N, C), (N,) -> (N,)."""
    return -F.cross_entropy(logits, labels, reduction="none")


# ---------------------------------------------------------------------------------------------------- records


class MembershipConfigError(ValueError):
    """Bad membership-inference parameters; the message names the ``audit.membership`` key and the fix."""


@dataclass(frozen=True)
class ThresholdPoint:
    """One operating point of the loss-threshold attack: "member" when an example's loss is below ``threshold``."""

    threshold: float
    tpr: float
    fpr: float

    @property
    def advantage(self) -> float:
        """Membership advantage TPR - FPR (Yeom et al.)."""
        return self.tpr - self.fpr

    def as_dict(self) -> dict[str, float]:
        """The ``mia_*`` keys of ``summary.json``."""
        return {"mia_tpr": self.tpr, "mia_fpr": self.fpr, "mia_advantage": self.advantage,
                "mia_threshold": self.threshold}


@dataclass(frozen=True)
class MembershipResult:
    """ROC summary of a membership attack on members vs non-members (scores: large = member)."""

    attack: str
    auc: float
    tpr_at_0_1_fpr: float  # TPR at FPR <= 0.1%
    tpr_at_1_fpr: float  # TPR at FPR <= 1%
    balanced_accuracy: float  # max over thresholds of (TPR + TNR) / 2
    fpr: np.ndarray
    tpr: np.ndarray
    num_members: int
    num_nonmembers: int
    point: ThresholdPoint | None = None  # the loss-threshold attack's own threshold; None for LiRA

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "attack": self.attack,
            "auc": self.auc,
            "tpr_at_0.1%_fpr": self.tpr_at_0_1_fpr,
            "tpr_at_1%_fpr": self.tpr_at_1_fpr,
            "balanced_accuracy": self.balanced_accuracy,
            "num_members": self.num_members,
            "num_nonmembers": self.num_nonmembers,
        }


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """Largest TPR whose FPR is at most ``level`` (0 if none)."""
    ok = fpr <= level
    return float(tpr[ok].max()) if ok.any() else 0.0


def _checked(scores: torch.Tensor | np.ndarray, is_member: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` (N,) as float64 and ``is_member`` (N,) as bools, refused unless equal 1-D, both kinds present and
    the scores finite."""
    s = np.asarray(torch.as_tensor(scores).double().cpu())
    m = np.asarray(torch.as_tensor(is_member).bool().cpu())
    if s.shape != m.shape or s.ndim != 1:
        raise MembershipConfigError(f"scores {s.shape} and is_member {m.shape}: need two equal 1-D arrays")
    if m.all() or not m.any():
        raise MembershipConfigError("is_member: needs both members and non-members to compute a ROC")
    if not np.isfinite(s).all():
        raise MembershipConfigError("scores: contain NaN/inf; check the model's logits")
    return s, m


def membership_result(scores: torch.Tensor | np.ndarray, is_member: torch.Tensor | np.ndarray, *, attack: str):
    """ROC, AUC, TPR at 0.1% / 1% FPR and balanced accuracy of ``scores`` (N,) against ``is_member`` (N,) bools."""
    s, m = _checked(scores, is_member)
    from sklearn.metrics import roc_auc_score, roc_curve  # here: importing scikit-learn costs ~2 s of CLI start-up

    fpr, tpr, _ = roc_curve(m, s)
    return MembershipResult(
        attack=attack,
        auc=float(roc_auc_score(m, s)),
        tpr_at_0_1_fpr=tpr_at_fpr(fpr, tpr, 0.001),
        tpr_at_1_fpr=tpr_at_fpr(fpr, tpr, 0.01),
        balanced_accuracy=float(((tpr + 1 - fpr) / 2).max()),
        fpr=fpr,
        tpr=tpr,
        num_members=int(m.sum()),
        num_nonmembers=int((~m).sum()),
    )


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


# ------------------------------------------------------------------------------------------------------ attacks


class LiRA:
    """Offline Likelihood-Ratio Attack (Carlini et al. 2022) against one target model.

    Parameters:
        train_fn (Callable[[Tensor, Tensor, int], nn.Module]): trains a fresh shadow model on ``(x, y)`` with a
            seed; use the target's own recipe (model, epochs, lr) so shadows behave like it.
        num_shadows (int, default 16): number of OUT shadow models.
        shadow_fraction (float, default 0.5): share of the population pool each shadow trains on.
        fixed_variance (bool | None, default None): pooled variance; None = pooled below 32 shadows.
        seed (int, default 0): seeds the shadows' subsets and training.

    Assumptions: the population pool is disjoint from every candidate (member or not) and drawn from the same
    distribution; candidates' labels are known to the attacker.
    """

    def __init__(
        self,
        train_fn: TrainFn,
        *,
        num_shadows: int = 16,
        shadow_fraction: float = 0.5,
        fixed_variance: bool | None = None,
        seed: int = 0,
    ) -> None:
        self.train_fn = train_fn
        self.num_shadows = num_shadows
        self.shadow_fraction = shadow_fraction
        self.fixed_variance = fixed_variance
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        key = "audit.membership"
        if not callable(self.train_fn):
            raise MembershipConfigError(f"{key}.train_fn={self.train_fn!r}: must be callable (x, y, seed) -> model")
        if isinstance(self.num_shadows, bool) or not isinstance(self.num_shadows, int) or self.num_shadows < 2:
            raise MembershipConfigError(
                f"{key}.num_shadows={self.num_shadows!r}: needs an integer >= 2 to fit a Gaussian; use 16"
            )
        if not 0 < self.shadow_fraction <= 1:
            raise MembershipConfigError(f"{key}.shadow_fraction={self.shadow_fraction!r}: must be in (0, 1]; use 0.5")

    def shadow_phis(
        self, x: torch.Tensor, y: torch.Tensor, *, x_population: torch.Tensor, y_population: torch.Tensor
    ) -> torch.Tensor:
        """Train the OUT shadows on subsets of the population and return their (S, N) confidences on ``x``."""
        n_pop = x_population.shape[0]
        size = max(1, round(self.shadow_fraction * n_pop))
        gen = torch.Generator().manual_seed(self.seed)
        phis = []
        for s in range(self.num_shadows):
            idx = torch.randperm(n_pop, generator=gen)[:size].to(x_population.device)
            shadow = self.train_fn(x_population[idx], y_population[idx], self.seed * 100_003 + s)
            phis.append(logit_confidence(_logits(shadow, x), y))
            log.debug("LiRA shadow %d/%d trained on %d examples", s + 1, self.num_shadows, size)
        return torch.stack(phis)

    def scores(
        self,
        target: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        x_population: torch.Tensor,
        y_population: torch.Tensor,
        shadow_phi: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Membership scores (N,) of candidates ``x`` for ``target``; pass ``shadow_phi`` to reuse shadows."""
        if shadow_phi is None:
            shadow_phi = self.shadow_phis(x, y, x_population=x_population, y_population=y_population)
        fixed = self.fixed_variance if self.fixed_variance is not None else shadow_phi.shape[0] < 32
        return lira_offline_scores(logit_confidence(_logits(target, x), y), shadow_phi, fixed_variance=fixed)

    def infer(
        self,
        target: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        is_member: torch.Tensor,
        x_population: torch.Tensor,
        y_population: torch.Tensor,
        shadow_phi: torch.Tensor | None = None,
    ) -> MembershipResult:
        """Attack ``target`` on candidates ``(x, y)`` whose true membership is ``is_member`` (N,) bools."""
        s = self.scores(target, x, y, x_population=x_population, y_population=y_population, shadow_phi=shadow_phi)
        result = membership_result(s, is_member, attack="lira_offline")
        log.info(
            "LiRA (offline, %d shadows): AUC=%.3f TPR@1%%FPR=%.3f", self.num_shadows, result.auc, result.tpr_at_1_fpr
        )
        return result


def loss_threshold_attack(
    target: nn.Module, x: torch.Tensor, y: torch.Tensor, *, is_member: torch.Tensor, threshold: float | None = None
) -> MembershipResult:
    """Yeom et al.'s global loss threshold on candidates ``(x, y)`` whose true membership is ``is_member`` (N,)
    bools: the ROC over every threshold, and in ``point`` the TPR, FPR and advantage of "loss < threshold"
    (default: the members' mean loss, as in the paper)."""
    scores = loss_threshold_scores(_logits(target, x), y)
    result = membership_result(scores, is_member, attack="loss_threshold")
    return replace(result, point=_threshold_point(-scores, is_member, threshold))


def loss_threshold_point(
    target: nn.Module, x: torch.Tensor, y: torch.Tensor, *, is_member: torch.Tensor, threshold: float | None = None
) -> ThresholdPoint:
    """:func:`loss_threshold_attack`'s ``point`` alone, without the ROC (which imports scikit-learn: about 1.1 s of
    a run's end on this machine, for numbers the run's own membership check does not report)."""
    scores = loss_threshold_scores(_logits(target, x), y)
    _checked(scores, is_member)
    return _threshold_point(-scores, is_member, threshold)


def _threshold_point(losses: torch.Tensor, is_member: torch.Tensor, threshold: float | None) -> ThresholdPoint:
    """TPR and FPR of "member when loss < threshold" (default: the members' mean loss)."""
    member = torch.as_tensor(is_member, device=losses.device).bool()
    tau = float(losses[member].mean()) if threshold is None else float(threshold)
    below = losses < tau
    return ThresholdPoint(tau, float(below[member].double().mean()), float(below[~member].double().mean()))
