"""The map between pixels in [0, 1] and the units a model sees, shared by every model-level attack.

Models see *normalised* inputs ``x = (p - mean) / std`` for pixels ``p`` in [0, 1] (Fashion-MNIST in fedsec is
``(p - 0.2860) / 0.3530``; digits is already [0, 1]). Evasion budgets are on the pixel scale (``epsilon * scale``
model units, :mod:`.evasion`); reconstructions are scored on pixels (:mod:`.image_metrics`); both keep inputs in
the box ``[low, high]``, the model-unit images of pixels 0 and 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class InputSpaceError(ValueError):
    """An input space that is not an increasing affine map of [0, 1]; the message names the argument and the fix."""


@dataclass(frozen=True)
class InputSpace:
    """Affine map between pixels in [0, 1] and model units: ``x = (p - mean) / std``.

    Parameters: ``mean`` (float, default 0.0) and ``std`` (float, default 1.0, > 0) of the normalisation the data
    loader applied. Build it with :meth:`unit`, :meth:`from_normalisation` or :meth:`from_bounds`.
    :attr:`low` / :attr:`high` are the model-unit images of pixels 0 and 1 (the attacks' box constraint),
    :attr:`scale` the model units per pixel unit.
    """

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise InputSpaceError(f"input_space.std={self.std}, mean={self.mean}: need a finite mean and a finite "
                                  "std > 0; pass the normaliser's mean and std")

    @classmethod
    def unit(cls) -> InputSpace:
        """Inputs fed as pixels in [0, 1]."""
        return cls(0.0, 1.0)

    @classmethod
    def from_normalisation(cls, mean: float, std: float) -> InputSpace:
        """Inputs fed as ``(p - mean) / std`` for pixels ``p`` in [0, 1]."""
        return cls(mean, std)

    @classmethod
    def from_bounds(cls, low: float, high: float) -> InputSpace:
        """The input space whose pixel 0 maps to ``low`` and pixel 1 to ``high`` (model units)."""
        if not (math.isfinite(low) and math.isfinite(high) and high > low):
            raise InputSpaceError(f"input_space: low={low}, high={high}: need finite low < high (model-unit images "
                                  "of pixels 0 and 1)")
        std = 1.0 / (high - low)
        return cls(mean=-low * std, std=std)

    @property
    def low(self) -> float:
        """Model-unit image of pixel 0."""
        return (0.0 - self.mean) / self.std

    @property
    def high(self) -> float:
        """Model-unit image of pixel 1."""
        return (1.0 - self.mean) / self.std

    @property
    def scale(self) -> float:
        """Model units per pixel unit, ``1 / std``."""
        return 1.0 / self.std

    def to_pixels(self, x: torch.Tensor, *, clamp: bool = True) -> torch.Tensor:
        """Model units -> pixels, clamped to [0, 1] unless ``clamp=False`` (which keeps gradients at the box)."""
        pixels = x * self.std + self.mean
        return pixels.clamp(0.0, 1.0) if clamp else pixels

    def from_pixels(self, p: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> model units."""
        return (p - self.mean) / self.std


UNIT = InputSpace()
FASHION_MNIST = InputSpace(mean=0.2860, std=0.3530)
