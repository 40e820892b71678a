"""Jacobian-based dataset augmentation: a substitute trained from a few seeds, grown along its own gradients.

Papernot, McDaniel, Goodfellow, Jha, Celik, Swami, "Practical Black-Box Attacks against Machine Learning",
AsiaCCS 2017, https://arxiv.org/abs/1602.02697 (Algorithm 1).

Each substitute epoch rho: label the new points with the oracle (the endpoint's top-1 label, as in the paper),
train the substitute on all points so far, then add x + lambda * sign(d F_sub[O(x)](x) / dx) for every point x,
doubling the set. Defaults: lambda = 0.1, inputs clipped to [0, 1], surrogate ``cnn``, 10 training epochs per
substitute epoch, substitute epochs until the budget is spent.

Differences: the paper's periodic sign flip of lambda (tau) and reservoir sampling are not implemented; the
augmentation of the last round is truncated to the remaining budget (random subset) instead of overshooting it.
ART has no Jacobian-augmentation extraction attack, hence this implementation.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from .client import RemoteModel
from .results import CurvePoint, ExtractionResult
from .surrogate import score_surrogate, train_surrogate

log = logging.getLogger(__name__)


def jacobian_augment(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, lam: float = 0.1, clip: tuple[float, float] = (0, 1)
) -> torch.Tensor:
    """``clip(x + lam * sign(grad_x model(x)[labels]))`` for x (n, ...) and labels (n,); same shape as x."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    selected = logits.gather(1, labels.view(-1, 1)).sum()
    (grad,) = torch.autograd.grad(selected, x)
    return (x + lam * grad.sign()).clamp(*clip).detach()


def jacobian_extract(
    remote: RemoteModel,
    seeds: np.ndarray,
    *,
    budget: int,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    target_labels: np.ndarray | None = None,
    surrogate: str = "cnn",
    num_classes: int = 10,
    lam: float = 0.1,
    epochs: int = 10,
    seed: int = 0,
) -> ExtractionResult:
    """Papernot et al.'s substitute training from ``seeds`` (raw inputs) within ``budget`` queries."""
    if budget < len(seeds):
        raise ValueError(f"budget={budget}: must cover the {len(seeds)} seed examples")
    rng = np.random.default_rng(seed)
    result = ExtractionResult(method="jacobian", budget=budget, details={"lambda": lam, "seeds": len(seeds)})
    xs = np.zeros((0, *seeds.shape[1:]), dtype=np.float32)
    ys = np.zeros(0, dtype=np.int64)
    new = np.asarray(seeds, dtype=np.float32)
    rho = 0
    while len(new) and not remote.stats.stopped:
        done, answer = remote.query_partial(new)
        if answer is None:
            break
        xs = np.concatenate([xs, new[done]])
        ys = np.concatenate([ys, answer.labels])
        model = train_surrogate(xs, torch.from_numpy(ys), model_name=surrogate, num_classes=num_classes,
                                epochs=epochs, seed=seed)
        acc, agree = score_surrogate(model, eval_x, eval_y, target_labels)
        result.curve.append(CurvePoint(len(xs), acc, agree))
        log.info("jacobian rho=%d: %d queries -> accuracy %.3f agreement %s", rho, len(xs), acc, agree)
        remaining = budget - len(xs)
        if remaining <= 0:
            break
        new = jacobian_augment(model, torch.from_numpy(xs), torch.from_numpy(ys), lam=lam).numpy()
        if len(new) > remaining:
            new = new[rng.choice(len(new), remaining, replace=False)]
        rho += 1
    result.details["substitute_epochs"] = rho + 1
    result.record_stats(remote.stats)
    if not result.curve:
        result.status, result.reason = "failed", result.reason or "no query was answered"
    return result
