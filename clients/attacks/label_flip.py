"""Label flipping (data poisoning): malicious clients train on relabelled data.

Tolpegin et al., "Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020
(https://arxiv.org/abs/2007.08432): targeted flipping of a source class to a target class (their Fashion-MNIST
setting flips 6 "shirt" -> 0 "T-shirt/top"). Variants by the config keys present:

- ``source`` and ``target``: every example of ``source`` is relabelled ``target`` (targeted, the paper's attack);
- ``target`` only: every example is relabelled ``target`` (all-to-one);
- neither: every example gets a uniformly random *other* label (all-to-random; Fang et al., USENIX Security 2020).

Defaults: none; the kernel is pure and device-agnostic.
"""

from __future__ import annotations

import torch


def flip_labels(
    y: torch.Tensor,
    *,
    num_classes: int,
    source: int | None = None,
    target: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The poisoned labels (a new tensor; ``y`` is not modified)."""
    if source is not None and target is None:
        raise ValueError("label_flip: a source class needs a target class")
    if source is not None:
        return torch.where(y == source, torch.full_like(y, target), y)
    if target is not None:
        return torch.full_like(y, target)
    if generator is None:
        raise ValueError("label_flip: all-to-random flipping needs a seeded generator")
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes
