"""Evasion attacks on a trained model, the robustness metric R, and the kernels of (federated) adversarial training.

Papers:
- FGSM: Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015
  (https://arxiv.org/abs/1412.6572): ``x + epsilon * sign(grad_x loss)``, clipped to the input box.
- PGD: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to Adversarial Attacks",
  ICLR 2018 (https://arxiv.org/abs/1706.06083): uniform random start in the L-inf ball, ``steps`` signed-gradient
  steps, each projected back onto the ball and the box; PGD adversarial training trains on these examples.
- FGSM with random start: Wong, Rice, Kolter, "Fast is better than free: Revisiting adversarial training",
  ICLR 2020 (https://arxiv.org/abs/2001.03994): uniform start in the ball, one step of ``alpha = 1.25 * epsilon``,
  projection; the cheap adversarial training that avoids plain FGSM-AT's catastrophic overfitting.
- C&W L2: Carlini, Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017
  (https://arxiv.org/abs/1608.04644), run through the Adversarial Robustness Toolbox's ``CarliniL2Method``.
- R: Al-Karaki et al., "Deep Learning Under Siege" (2024, one of the source surveys), eq. (1): the share of adversarial
  examples still classified correctly (robust accuracy).

Input space: models see *normalised* inputs; budgets are on the [0, 1] pixel scale. :class:`InputSpace`
(:mod:`fedsec.audits.input_space`) maps one to the other: ``epsilon * scale`` model units, the box ``[low, high]``
is the image of pixels 0 and 1.

Defaults: PGD ``step_size = 2.5 * epsilon / steps`` and random start (the rule of Madry et al.'s ``robustness``
library, Engstrom et al. 2019; the paper's MNIST run used 40 steps of 0.01 at epsilon 0.3, i.e. 1.33 * epsilon /
steps); C&W ``confidence 0``, ``max_iter 10``, ``binary_search_steps 5``, ``learning_rate 0.01``,
``initial_const 1.0``. C&W departs from the paper (9 binary-search steps of up to 10,000 Adam iterations from
c = 0.001) for CPU time: ART's line-search variant with few iterations. ART doubles c after a failure, so c must
start high for 5 steps to reach the needed trade-off: on a Fashion-MNIST CNN (86% clean, 48 correct test points)
c0 = 0.1 flipped 27% at median L2 0.22, c0 = 1.0 flipped 90% at median L2 0.85 (pixel units), same cost.

Differences: FGSM and PGD are our own torch kernels, not ART's, because adversarial training calls them once per
batch: they stay on the model's device with no numpy round trip (ART's PGD copies every batch through numpy). Tests
pin both against ART's ``FastGradientMethod`` and ``ProjectedGradientDescent`` on the same model and inputs. The
gradient is that of the summed (not mean) cross-entropy; its sign, all that L-inf attacks use, is the same.
Adversarial training's ``"fgsm"`` method is Wong et al.'s random-start FGSM, not plain FGSM.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .input_space import InputSpace

logger = logging.getLogger(__name__)

ATTACKS = ("fgsm", "pgd", "cw")
BUDGETED_ATTACKS = ("fgsm", "pgd")  # the ones an L-inf epsilon bounds
TRAINING_METHODS = ("pgd", "fgsm")


class EvasionConfigError(ValueError):
    """A bad evasion or adversarial-training parameter; the message names the config key, the rule and the fix."""


# ---------------------------------------------------------------- kernels (pure, vectorised, device-agnostic)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode on every module, and Opacus' per-sample-gradient hooks paused (a ``GradSampleModule`` has a
    ``hooks_enabled`` flag; its backward hook fails on a forward it did not record); both restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    hooks = [(m, m.hooks_enabled) for m in model.modules() if isinstance(getattr(m, "hooks_enabled", None), bool)]
    model.eval()
    for m, _ in hooks:
        m.hooks_enabled = False
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for m, enabled in hooks:
            m.hooks_enabled = enabled


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(summed cross-entropy)/dx for a batch ``x`` (n, ...) with labels ``y`` (n,) in eval mode (see
    :func:`eval_mode`); never touches ``param.grad``."""
    with eval_mode(model), torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def _project(x_adv: torch.Tensor, x: torch.Tensor, radius: float, space: InputSpace) -> torch.Tensor:
    """Project ``x_adv`` onto the L-inf ball of ``radius`` (model units) around ``x``, then onto [low, high]."""
    return torch.clamp(torch.min(torch.max(x_adv, x - radius), x + radius), space.low, space.high)


def _uniform_start(
    x: torch.Tensor, radius: float, space: InputSpace, generator: torch.Generator | None
) -> torch.Tensor:
    """``x`` plus uniform noise in [-radius, radius], clipped to the box."""
    device = generator.device if generator is not None else x.device
    noise = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    return torch.clamp(x + (2 * noise - 1) * radius, space.low, space.high)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epsilon: float, space: InputSpace) -> torch.Tensor:
    """Goodfellow et al.'s FGSM: ``clip(x + epsilon * scale * sign(grad))``; ``x`` (n, ...), ``y`` (n,) -> (n, ...)."""
    return _project(x + epsilon * space.scale * _input_gradient(model, x, y).sign(), x, epsilon * space.scale, space)


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    steps: int,
    space: InputSpace,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Madry et al.'s L-inf PGD; ``epsilon`` and ``step_size`` in pixel units (default step 2.5 * epsilon / steps).

    Each step: ``x_adv + step * sign(grad)``, clipped to the box, then projected onto the ball around ``x`` (ART's
    order; the result stays in the box because ``x`` is in it). Shapes: ``x`` (n, ...), ``y`` (n,) -> (n, ...).
    """
    radius = epsilon * space.scale
    alpha = (2.5 * epsilon / steps if step_size is None else step_size) * space.scale
    x = x.detach()
    x_adv = _uniform_start(x, radius, space, generator) if random_start else x
    for _ in range(steps):
        stepped = torch.clamp(x_adv + alpha * _input_gradient(model, x_adv, y).sign(), space.low, space.high)
        x_adv = torch.min(torch.max(stepped, x - radius), x + radius)
    return x_adv


def fgsm_random_start(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float,
    space: InputSpace,
    generator: torch.Generator | None,
    alpha: float | None = None,
) -> torch.Tensor:
    """Wong et al.'s FGSM with random start: uniform start in the ball, one step of ``alpha`` (default 1.25 *
    epsilon, pixel units), projection onto ball and box. Shapes: ``x`` (n, ...), ``y`` (n,) -> (n, ...)."""
    radius = epsilon * space.scale
    step = (1.25 * epsilon if alpha is None else alpha) * space.scale
    x = x.detach()
    start = _uniform_start(x, radius, space, generator)
    return _project(start + step * _input_gradient(model, start, y).sign(), x, radius, space)


def num_adversarial(n: int, ratio: float) -> int:
    """How many of ``n`` rows adversarial training replaces: ``round(ratio * n)`` (Python's round)."""
    return int(round(ratio * n))


def check_adversarial_training(*, method: str, epsilon: float, steps: int, ratio: float) -> None:
    """Check ``[train.adversarial]``'s keys; raise :class:`EvasionConfigError` naming the first bad one."""
    if method not in TRAINING_METHODS:
        raise EvasionConfigError(f"train.adversarial.attack={method!r}: unknown; use one of {list(TRAINING_METHODS)}")
    _check_common("train.adversarial", epsilon=epsilon, steps=steps)
    if not 0.0 <= ratio <= 1.0:
        raise EvasionConfigError(f"train.adversarial.ratio={ratio}: must be in [0, 1]; use e.g. 0.5 or 1.0")


def adversarial_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str,
    epsilon: float,
    steps: int,
    ratio: float,
    space: InputSpace,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``round(ratio * n)`` seeded rows of the batch by adversarial examples against the current weights.

    ``method``: ``"pgd"`` (Madry et al., random start, ``steps`` steps) or ``"fgsm"`` (Wong et al.'s random-start FGSM,
    ``steps`` ignored). Labels are kept; the model's train/eval mode is restored and its parameters and their ``.grad``
    are left untouched. Returns ``(x_mixed, y)`` with ``x_mixed`` detached, same shape as ``x``.

    Works on an Opacus-wrapped model (DP-SGD; its per-sample hooks are paused while crafting). With ``ratio`` 1.0 row
    i of ``x_mixed`` depends only on row i and the current (already private) weights, so the clipped per-example
    gradients keep DP-SGD's sensitivity and the accountant's epsilon holds unchanged. With 0 < ratio < 1 the number of
    replaced rows depends on the batch size, which Poisson sampling lets one example change; the standard DP-SGD
    argument then does not cover which *other* rows are replaced: use ratio 1.0 under local DP for a clean guarantee.
    """
    check_adversarial_training(method=method, epsilon=epsilon, steps=steps, ratio=ratio)
    k = num_adversarial(x.shape[0], ratio)
    if k == 0:
        return x, y
    rows = torch.randperm(x.shape[0], generator=generator, device=generator.device)[:k].to(x.device)
    if method == "pgd":
        adv = pgd(model, x[rows], y[rows], epsilon=epsilon, steps=steps, space=space, generator=generator)
    else:
        adv = fgsm_random_start(model, x[rows], y[rows], epsilon=epsilon, space=space, generator=generator)
    mixed = x.detach().clone()
    mixed[rows] = adv.detach()
    return mixed, y


# ---------------------------------------------------------------- C&W L2 through ART


@contextmanager
def _frozen(model: nn.Module) -> Iterator[nn.Module]:
    """:func:`eval_mode` and ``requires_grad=False`` on every parameter (ART back-propagates into them otherwise)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            yield model
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)


def art_classifier(model: nn.Module, *, space: InputSpace, input_shape: tuple[int, ...], num_classes: int):
    """An ART ``PyTorchClassifier`` around ``model`` (cross-entropy, ``clip_values = (low, high)``), on its device."""
    from art.estimators.classification import PyTorchClassifier

    device = next(model.parameters()).device
    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(input_shape),
        nb_classes=num_classes,
        clip_values=(space.low, space.high),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


def carlini_wagner_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    space: InputSpace,
    num_classes: int,
    confidence: float = 0.0,
    max_iter: int = 10,
    binary_search_steps: int = 5,
    learning_rate: float = 0.01,
    initial_const: float = 1.0,
    batch_size: int = 128,
) -> torch.Tensor:
    """Untargeted C&W L2 (ART's ``CarliniL2Method``) against the true labels ``y``; returns ``x_adv`` like ``x``."""
    from art.attacks.evasion import CarliniL2Method

    with _frozen(model):
        classifier = art_classifier(model, space=space, input_shape=tuple(x.shape[1:]), num_classes=num_classes)
        attack = CarliniL2Method(
            classifier,
            confidence=confidence,
            max_iter=max_iter,
            binary_search_steps=binary_search_steps,
            learning_rate=learning_rate,
            initial_const=initial_const,
            batch_size=batch_size,
            verbose=False,
        )
        onehot = np.eye(num_classes, dtype=np.float32)[y.cpu().numpy()]
        adv = attack.generate(x.detach().cpu().numpy().astype(np.float32), y=onehot)
    return torch.from_numpy(adv).to(x.device, x.dtype)


# ---------------------------------------------------------------- the audit: R per attack


def _check_common(prefix: str, *, epsilon: float, steps: int) -> None:
    if not 0.0 < epsilon <= 1.0:
        raise EvasionConfigError(
            f"{prefix}.epsilon={epsilon}: must be in (0, 1] (L-inf budget on [0, 1] pixels); use e.g. 0.1"
        )
    if int(steps) != steps or steps < 1:
        raise EvasionConfigError(f"{prefix}.steps={steps}: must be an integer >= 1; use e.g. 10")


def select_examples(n_total: int, examples: int, seed: int) -> np.ndarray:
    """A fixed, seeded, sorted subset of ``examples`` indices out of ``n_total`` test points."""
    if examples < 1 or examples > n_total:
        raise EvasionConfigError(
            f"audit.evasion.examples={examples}: must be in [1, {n_total}] (the test set has {n_total} points); "
            f"use examples <= {n_total}"
        )
    return np.sort(np.random.default_rng(seed).choice(n_total, size=examples, replace=False))


@dataclass(frozen=True)
class AttackRecord:
    """One attack's outcome on the audited examples: R = correct / total, plus C&W's success and median L2."""

    attack: str
    correct: int  # adversarial examples still classified correctly
    total: int
    epsilon: float | None  # pixel-scale L-inf budget; None for C&W
    success_rate: float | None = None  # C&W: share of clean-correct examples it made misclassified
    median_l2: float | None = None  # C&W: median pixel-scale L2 of its successful perturbations

    @property
    def robust_accuracy(self) -> float:
        return self.correct / self.total


@dataclass(frozen=True)
class EvasionResult:
    """Per-attack records plus the clean accuracy on the same examples."""

    clean_correct: int
    total: int
    records: dict[str, AttackRecord] = field(default_factory=dict)

    def as_row(self) -> dict[str, float]:
        """``rounds.csv`` columns: ``robust_accuracy_<attack>`` (and ``cw_success_rate``, ``cw_median_l2``)."""
        row = {f"robust_accuracy_{name}": rec.robust_accuracy for name, rec in self.records.items()}
        if "cw" in self.records:
            row["cw_success_rate"] = self.records["cw"].success_rate
            row["cw_median_l2"] = self.records["cw"].median_l2
        return row

    def as_summary(self) -> dict[str, dict[str, object]]:
        """``summary.json`` entries: value, the counts behind it, and the attack's budget."""
        out: dict[str, dict[str, object]] = {
            "clean_accuracy_evasion_subset": {
                "value": self.clean_correct / self.total,
                "counts": f"{self.clean_correct} / {self.total}",
            }
        }
        for name, rec in self.records.items():
            entry: dict[str, object] = {"value": rec.robust_accuracy, "counts": f"{rec.correct} / {rec.total}"}
            if rec.epsilon is not None:
                entry["epsilon"] = rec.epsilon
            if rec.success_rate is not None:
                entry["success_rate"] = rec.success_rate
                entry["median_l2"] = rec.median_l2
            out[f"robust_accuracy_{name}"] = entry
        return out


class EvasionAudit:
    """Robust accuracy R of a model under FGSM, PGD and C&W L2 on a fixed, seeded test subset.

    Parameters: ``model`` (nn.Module, evaluated in eval mode, never changed); ``space`` (InputSpace);
    ``attacks`` (tuple of "fgsm" | "pgd" | "cw", default all three); ``epsilon`` (float in (0, 1], pixel L-inf, default
    0.1); ``steps`` (int >= 1, PGD, default 10); ``examples`` (int >= 1, default 1000); ``seed`` (int, default 0:
    subset and PGD random start); ``cw_confidence`` (>= 0, default 0), ``cw_max_iter`` (>= 1, default 10),
    ``cw_binary_search_steps`` (>= 1, default 5), ``cw_learning_rate`` (> 0, default 0.01), ``cw_initial_const``
    (> 0, default 1.0); ``batch_size`` (default 256). Errors name the ``audit.evasion.<key>``.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        space: InputSpace,
        attacks: Sequence[str] = ATTACKS,
        epsilon: float = 0.1,
        steps: int = 10,
        examples: int = 1000,
        seed: int = 0,
        cw_confidence: float = 0.0,
        cw_max_iter: int = 10,
        cw_binary_search_steps: int = 5,
        cw_learning_rate: float = 0.01,
        cw_initial_const: float = 1.0,
        batch_size: int = 256,
    ) -> None:
        self.model, self.space, self.attacks = model, space, tuple(attacks)
        self.epsilon, self.steps, self.examples, self.seed = epsilon, steps, examples, seed
        self.cw_confidence, self.cw_max_iter = cw_confidence, cw_max_iter
        self.cw_binary_search_steps, self.cw_learning_rate = cw_binary_search_steps, cw_learning_rate
        self.cw_initial_const = cw_initial_const
        self.batch_size = batch_size
        self._check_params()

    def _check_params(self) -> None:
        p = "audit.evasion"
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if not self.attacks or unknown:
            raise EvasionConfigError(
                f"{p}.attacks={list(self.attacks)}: unknown or empty ({unknown}); "
                f"use a non-empty subset of {list(ATTACKS)}"
            )
        _check_common(p, epsilon=self.epsilon, steps=self.steps)
        if int(self.examples) != self.examples or self.examples < 1:
            raise EvasionConfigError(f"{p}.examples={self.examples}: must be an integer >= 1; use e.g. 1000")
        if not self.cw_confidence >= 0:
            raise EvasionConfigError(f"{p}.cw_confidence={self.cw_confidence}: must be >= 0; use 0")
        for key in ("cw_max_iter", "cw_binary_search_steps", "batch_size"):
            value = getattr(self, key)
            if int(value) != value or value < 1:
                raise EvasionConfigError(f"{p}.{key}={value}: must be an integer >= 1; use e.g. 10")
        for key, example in (("cw_learning_rate", 0.01), ("cw_initial_const", 1.0)):
            if not getattr(self, key) > 0:
                raise EvasionConfigError(f"{p}.{key}={getattr(self, key)}: must be > 0; use e.g. {example}")

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(
                [self.model(x[i : i + self.batch_size]).argmax(1) for i in range(0, len(x), self.batch_size)]
            )

    def _adversarial(self, attack: str, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        if attack == "cw":
            return carlini_wagner_l2(
                self.model, x, y, space=self.space, num_classes=num_classes, confidence=self.cw_confidence,
                max_iter=self.cw_max_iter, binary_search_steps=self.cw_binary_search_steps,
                learning_rate=self.cw_learning_rate, initial_const=self.cw_initial_const, batch_size=self.batch_size,
            )  # fmt: skip
        if attack == "fgsm":
            craft = partial(fgsm, self.model, epsilon=self.epsilon, space=self.space)
        else:
            gen = torch.Generator(device=x.device).manual_seed(self.seed)
            craft = partial(pgd, self.model, epsilon=self.epsilon, steps=self.steps, space=self.space, generator=gen)
        b = self.batch_size
        return torch.cat([craft(x[i : i + b], y[i : i + b]) for i in range(0, len(x), b)])

    def generate(self, attack: str, x: torch.Tensor, y: torch.Tensor, *, num_classes: int) -> torch.Tensor:
        """Adversarial examples of ``attack`` for all of ``(x, y)`` (no subset), model in eval mode."""
        with eval_mode(self.model):
            return self._adversarial(attack, x, y, num_classes)

    def evaluate(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> EvasionResult:
        """R per attack on the seeded subset of ``examples`` points of the test set ``(x, y)``."""
        device = next(self.model.parameters()).device
        idx = select_examples(len(x), self.examples, self.seed)
        xs = torch.as_tensor(np.asarray(x)[idx] if isinstance(x, np.ndarray) else x[torch.as_tensor(idx)]).to(device)
        ys = torch.as_tensor(np.asarray(y)[idx] if isinstance(y, np.ndarray) else y[torch.as_tensor(idx)]).to(device)
        records: dict[str, AttackRecord] = {}
        with eval_mode(self.model):
            clean = self._predict(xs) == ys
            with torch.no_grad():
                num_classes = int(self.model(xs[:1]).shape[1])
            for attack in self.attacks:
                adv = self._adversarial(attack, xs, ys, num_classes)
                still = self._predict(adv) == ys
                success_rate = median_l2 = None
                if attack == "cw":
                    flipped = clean & ~still
                    success_rate = float(flipped.sum()) / max(int(clean.sum()), 1)
                    l2 = ((adv - xs).flatten(1).norm(dim=1) / self.space.scale)[flipped]
                    median_l2 = float(l2.median()) if l2.numel() else float("nan")
                records[attack] = AttackRecord(
                    attack, int(still.sum()), len(ys), None if attack == "cw" else self.epsilon, success_rate, median_l2
                )
                logger.info("evasion %s: R = %d / %d", attack, int(still.sum()), len(ys))
        return EvasionResult(int(clean.sum()), len(ys), records)


def robust_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str, epsilon: float, space: InputSpace, **kwargs
) -> float:
    """R of ``model`` under one ``attack`` on all of ``(x, y)`` (``kwargs``: the other EvasionAudit keys)."""
    audit = EvasionAudit(model, space=space, attacks=(attack,), epsilon=epsilon, examples=len(x), **kwargs)
    return audit.evaluate(x, y).records[attack].robust_accuracy


def evaluate_at_epsilons(
    model: nn.Module,
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    epsilons: Sequence[float],
    *,
    space: InputSpace,
    attacks: Sequence[str] = BUDGETED_ATTACKS,
    **kwargs,
) -> dict[float, EvasionResult]:
    """Re-evaluate a final model at several budgets; C&W has no epsilon and is left out (with a log line)."""
    budgeted = tuple(a for a in attacks if a != "cw")  # unknown names go on to EvasionAudit's check
    if len(budgeted) < len(tuple(attacks)):
        logger.warning("evaluate_at_epsilons: cw has no L-inf budget; left out of the sweep")
    if not epsilons:
        raise EvasionConfigError("--epsilons=[]: give at least one budget in (0, 1], e.g. 0.05,0.1,0.2,0.3")
    return {
        float(eps): EvasionAudit(model, space=space, attacks=budgeted, epsilon=eps, **kwargs).evaluate(x, y)
        for eps in epsilons
    }
