"""Model-poisoning attacks that need only the attacker's own update: sign flip, scaling, Gaussian noise.

- Sign flip: send -u instead of u (Damaskinos et al., "Asynchronous Byzantine Machine Learning (the case of
  SGD)", ICML 2018; used as "sign-flipping" in Karimireddy et al., ICML 2021). Default scale 1.
- Scaling: send s * u (boosting, Bhagoji et al., "Analyzing Federated Learning through an Adversarial Lens",
  ICML 2019). Default ``scale = 10``.
- Gaussian: send u + N(0, std^2 I) (the "Gaussian" Byzantine attack of Blanchard et al., "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017, in its additive form). Default ``std = 1``.

Each kernel maps an update tensor (any shape) to the malicious update; they are pure, device-agnostic torch.
"""

from __future__ import annotations

import torch


def sign_flip(update: torch.Tensor) -> torch.Tensor:
    """-update."""
    return -update


def scale_update(update: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * update."""
    return update * scale


def gaussian_update(update: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """update + N(0, std^2) noise drawn from ``generator`` (seeded per client and round by the caller)."""
    noise = torch.randn(update.shape, generator=generator, dtype=update.dtype, device="cpu").to(update.device)
    return update + std * noise
