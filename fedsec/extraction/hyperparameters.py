"""Hyperparameter stealing: the L2 regularisation strength of a model trained to its optimum.

Wang, Gong, "Stealing Hyperparameters in Machine Learning", IEEE S&P 2018, https://arxiv.org/abs/1802.05351.

For an objective L(theta) = mean_i loss(theta; x_i, y_i) + lambda * ||theta||^2, the gradient vanishes at the learnt
parameters: g + 2 lambda theta = 0 with g the gradient of the mean loss. The attacker, who knows the parameters and
the training data, solves this overdetermined system for lambda by least squares:
lambda = -(theta . g) / (2 theta . theta). PyTorch's ``weight_decay = wd`` corresponds to lambda = wd / 2.

Defaults: cross-entropy loss, all parameters regularised (as ``torch.optim.SGD(weight_decay=...)`` does;
``regularise_bias=False`` for the paper's convention of an unregularised bias).

Differences: the paper uses the sum of losses (lambda scales with n) and covers more learners (SVMs, ridge, neural
nets); fedsec uses the mean loss, matching how fedsec trains, and applies to any differentiable fedsec model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class HyperparameterEstimate:
    lam: float  # lambda in mean loss + lambda * ||theta||^2
    weight_decay: float  # = 2 * lambda, PyTorch's weight_decay
    residual: float  # ||g + 2 lambda theta|| / ||g||: how far the parameters are from a stationary point


def stationary_l2_strength(theta: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """Least-squares lambda for grad + 2 lambda theta = 0 (1-d tensors) and the relative residual."""
    theta, grad = theta.double(), grad.double()
    lam = float(-(theta @ grad) / (2 * theta @ theta))
    residual = float((grad + 2 * lam * theta).norm() / grad.norm().clamp_min(1e-300))
    return lam, residual


def steal_l2_regularisation(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, regularise_bias: bool = True
) -> HyperparameterEstimate:
    """Estimate the L2 strength ``model`` was trained with on ``(x, y)`` (cross-entropy, mean over examples)."""
    params = [(n, p) for n, p in model.named_parameters() if regularise_bias or not n.endswith("bias")]
    if not params:
        raise ValueError("model: no parameters to regularise")
    model.eval()
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, [p for _, p in params])
    theta = torch.cat([p.detach().reshape(-1) for _, p in params])
    grad = torch.cat([g.reshape(-1) for g in grads])
    lam, residual = stationary_l2_strength(theta, grad)
    return HyperparameterEstimate(lam=lam, weight_decay=2 * lam, residual=residual)
