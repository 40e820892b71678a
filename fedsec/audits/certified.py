"""CRFL's certificate: parameter smoothing of the global model and the certified radius against backdoors.

Xie, Chen, Chen and Li, "CRFL: Certifiably Robust Federated Learning against Backdoor Attacks", ICML 2021
(https://arxiv.org/abs/2106.08283), with the released code's certification (github.com/AI-secure/CRFL,
``smooth_mnist.py`` and ``certify_mnist.py``). The model trained with CRFL (``strategies/crfl.py``: clipped to
rho_t and perturbed with N(0, sigma_train^2 I) every round) is smoothed at test time: M copies of the round-T
parameters plus N(0, sigma_test^2 I) vote (:func:`vote_counts`); the top class's share p_A and the runner-up's p_B
get Hoeffding bounds at error alpha (:func:`hoeffding_bounds`), and the prediction on input x provably does not
change for any backdoor whose pattern has L2 magnitude below (:func:`certified_radius`)

    RAD = sqrt( -ln(1 - (sqrt(p_A) - sqrt(p_B))^2) sigma_train^2
                / (2 R tau^2 L_z^2 (sum_i p_i^2) gamma^2 eta^2 (q_B / n_B)^2 prod_t (2 Phi(rho_t / sigma_t) - 1)) )

with R attackers of aggregation weight p_i at round t_adv, tau local iterations, L_z the Lipschitz constant of the
loss's gradient in the input, gamma the attackers' scale factor, eta the local learning rate, q_B of n_B examples
per batch poisoned, and the product over the rounds t_adv+1 .. T (sigma_t = sigma_train before T, sigma_test at T):
each round's clipping and noise contract the backdoor's effect. Certified accuracy at radius r: the share of test
inputs whose smoothed prediction is correct and whose radius is at least r (:func:`certified_accuracy`).

Defaults (the released MNIST configuration): M = 1000 smoothed models, sigma_test = 0.01, alpha = 0.001,
L_z = sqrt(2 + 2 rho + rho^2) with rho = 3 (``certify_mnist.py``), 5 of 100 examples per batch poisoned.

Differences: the released code evaluates the formula also when the bounds give p_A <= p_B (the square hides the
sign); here such an input is not certified (radius 0), as the paper's theorem requires p_A > p_B. Its
certification script writes rho_t = 0.1 t + 2 without the training cap ``param_clip``; here rho_t is the bound the
training applied (the same below the cap). The theorem assumes the backdoor enters at one round t_adv; an attack
that poisons every round after it (fedsec's backdoor attacks do, from ``attack.start_round``) is outside it, so the
radius is then the paper's formula for the run's values, not a proof about the run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CertificateSpec", "certified_accuracy", "certified_radius", "hoeffding_bounds", "vote_counts"]


@dataclass(frozen=True)
class CertificateSpec:
    """The training and threat-model values the certified radius depends on."""

    sigma_train: float
    sigma_test: float
    lr: float  # eta
    local_iterations: float  # tau
    attackers: int  # R
    attacker_weight: float  # p_i (the same for each attacker)
    scale: float  # gamma
    poison_ratio: float  # q_B / n_B
    lipschitz: float  # L_z
    attack_round: int  # t_adv
    clip_bounds: Sequence[float]  # rho_t for t = t_adv + 1 .. T (the last is round T's)

    def contraction(self) -> float:
        """prod_t (2 Phi(rho_t / sigma_t) - 1) over the rounds after the attack, sigma_test at the last one."""
        out = 1.0
        last = len(self.clip_bounds) - 1
        for i, rho in enumerate(self.clip_bounds):
            sigma = self.sigma_test if i == last else self.sigma_train
            out *= math.erf(rho / (sigma * math.sqrt(2.0))) if sigma > 0 else 1.0  # 2 Phi(z) - 1 = erf(z / sqrt 2)
        return out


def certified_radius(p_a: np.ndarray, p_b: np.ndarray, spec: CertificateSpec) -> np.ndarray:
    """The certified radius (L2 magnitude of the backdoor pattern) of each input from its bounds p_A > p_B.

    0 where p_A <= p_B (not certified) or no round follows the attack; inf where p_A = 1 (no vote against).

    >>> spec = CertificateSpec(sigma_train=0.01, sigma_test=0.01, lr=0.1, local_iterations=1, attackers=1,
    ...                        attacker_weight=1.0, scale=1.0, poison_ratio=1.0, lipschitz=1.0, attack_round=1,
    ...                        clip_bounds=[100.0])
    >>> round(float(certified_radius(np.array([0.75]), np.array([0.25]), spec)[0]), 5)  # sqrt(.1438 * 1e-4 / .02)
    0.02682
    """
    p_a, p_b = np.asarray(p_a, dtype=np.float64), np.asarray(p_b, dtype=np.float64)
    radius = np.zeros(np.broadcast(p_a, p_b).shape)
    if not spec.clip_bounds or spec.sigma_train <= 0:
        return radius
    denominator = (2 * spec.attackers * spec.local_iterations ** 2 * spec.lipschitz ** 2
                   * spec.attackers * spec.attacker_weight ** 2 * spec.scale ** 2 * spec.lr ** 2
                   * spec.poison_ratio ** 2 * spec.contraction())
    gap = np.sqrt(np.clip(p_a, 0, 1)) - np.sqrt(np.clip(p_b, 0, 1))
    ok = p_a > p_b
    with np.errstate(divide="ignore"):
        fraction = -np.log1p(-np.square(gap)) * spec.sigma_train ** 2
    radius[ok] = np.sqrt(fraction[ok] / denominator) if denominator > 0 else np.inf
    return radius


def hoeffding_bounds(counts: torch.Tensor, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower bound of p_A, upper bound of p_B, top class) of each row of vote ``counts`` (n, classes), each bound
    off by sqrt(ln(1 / alpha) / (2 M)) (Hoeffding, at error alpha each), as the released code does.

    >>> lo, hi, top = hoeffding_bounds(torch.tensor([[90, 10, 0]]), alpha=0.001)
    >>> top.tolist(), round(float(lo[0]), 3), round(float(hi[0]), 3)
    ([0], 0.714, 0.286)
    """
    c = counts.double().cpu()
    m = float(c[0].sum()) if c.numel() else 1.0
    top2 = c.topk(min(2, c.shape[1]), dim=1)
    slack = math.sqrt(math.log(1.0 / alpha) / (2.0 * m))
    p_a = (top2.values[:, 0] / m - slack).clamp(min=1e-8).numpy()
    runner = top2.values[:, 1] if c.shape[1] > 1 else torch.zeros(c.shape[0], dtype=torch.float64)
    p_b = (runner / m + slack).clamp(max=1 - 1e-8).numpy()
    return p_a, p_b, top2.indices[:, 0].numpy()


def certified_accuracy(radius: np.ndarray, correct: np.ndarray, at: float) -> float:
    """Share of inputs predicted correctly *and* certified (radius > 0) at radius at least ``at``.

    >>> certified_accuracy(np.array([0.0, 0.5, 2.0]), np.array([True, True, False]), 0.1)
    0.3333333333333333
    """
    radius, correct = np.asarray(radius), np.asarray(correct, dtype=bool)
    if radius.size == 0:
        return math.nan
    return float(np.mean(correct & (radius > 0) & (radius >= at)))


def vote_counts(
    model: torch.nn.Module,
    vector: torch.Tensor,
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    x: torch.Tensor,
    *,
    samples: int,
    sigma: float,
    num_classes: int,
    generator: torch.Generator,
    chunk: int = 32,
) -> torch.Tensor:
    """Votes (n, num_classes) of ``samples`` copies of the model ``vector`` + N(0, sigma^2 I) on inputs ``x``.

    ``shapes``: the (name, shape) of each array of the vector, in its order (the model's state dict). The copies
    run ``chunk`` at a time through one vmapped ``torch.func.functional_call``; the noise is drawn on the CPU from
    ``generator`` in float64, so the votes do not depend on the device.
    """
    from torch.func import functional_call, vmap

    device = x.device
    base = vector.detach().to(device=device, dtype=torch.float32)
    sizes = [math.prod(shape) for _, shape in shapes]
    counts = torch.zeros(x.shape[0], num_classes, dtype=torch.long, device=device)

    def logits(flat: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for (name, shape), size in zip(shapes, sizes, strict=True):
            params[name] = flat[offset:offset + size].view(shape)
            offset += size
        return functional_call(model, params, (x,))

    model.eval()
    with torch.no_grad():
        done = 0
        while done < samples:
            k = min(chunk, samples - done)
            noise = torch.randn(k, base.numel(), generator=generator, dtype=torch.float64)
            batch = base + (sigma * noise).to(device=device, dtype=torch.float32)
            preds = vmap(logits)(batch).argmax(dim=2)  # (k, n)
            counts += torch.nn.functional.one_hot(preds, num_classes).sum(dim=0)
            done += k
    return counts
