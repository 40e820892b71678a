"""Sign flip: send -u instead of u.

Damaskinos et al., "Asynchronous Byzantine Machine Learning (the case of SGD)", ICML 2018; used as
"sign-flipping" in Karimireddy et al., "Learning from History for Byzantine Robust Optimization", ICML 2021.
Default: scale 1 (the negated update itself). The kernel maps an update tensor (any shape) to the malicious update;
pure, device-agnostic torch.
"""

from __future__ import annotations

import torch

from .base import Attack, AttackContext


def sign_flip(update: torch.Tensor) -> torch.Tensor:
    """-update."""
    return -update


class SignFlip(Attack):
    """Model poisoning: send the negated update."""

    kind = "sign_flip"
    description = "model poisoning: send the negated update"

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return sign_flip(update)
