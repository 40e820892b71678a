"""Per-image fidelity metrics for reconstructions: PSNR and SSIM on pixel scale, plus the input space they need.

PSNR and SSIM are torchmetrics' implementations (``torchmetrics.functional.image.peak_signal_noise_ratio`` and
``structural_similarity_index_measure``; SSIM: Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From
Error Visibility to Structural Similarity", IEEE TIP 2004, https://doi.org/10.1109/TIP.2003.819861). Both are
computed per image on pixels in [0, 1] with ``data_range = 1``: models see normalised inputs, so callers first map
model units back to pixels with :meth:`InputSpace.to_pixels` (Fashion-MNIST in fedsec is ``(p - 0.2860) / 0.3530``;
digits is already [0, 1]).

Defaults: SSIM uses the paper's Gaussian window (sigma 1.5, 11x11); torchmetrics reflect-pads by 5 pixels, so
images need at least 6x6 (8x8 digits work). Identical images have PSNR ``inf`` and SSIM 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


class ImageMetricError(ValueError):
    """Images that cannot be compared; the message names the argument and the fix."""


@dataclass(frozen=True)
class InputSpace:
    """Affine map between pixels in [0, 1] and model units: ``x = (p - mean) / std``.

    Parameters: ``mean`` (float, default 0.0) and ``std`` (float, default 1.0) of the normalisation the data loader
    applied. :attr:`low` / :attr:`high` are the model-unit images of pixels 0 and 1 (the attack's box constraint).
    """

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ImageMetricError(f"input_space.std={self.std}: must be > 0; pass the normaliser's std")

    @classmethod
    def from_bounds(cls, low: float, high: float) -> InputSpace:
        """The input space whose pixel 0 maps to ``low`` and pixel 1 to ``high`` (model units)."""
        if not high > low:
            raise ImageMetricError(f"input_space: high={high} must exceed low={low}; pass model-unit bounds")
        std = 1.0 / (high - low)
        return cls(mean=-low * std, std=std)

    @property
    def low(self) -> float:
        return (0.0 - self.mean) / self.std

    @property
    def high(self) -> float:
        return (1.0 - self.mean) / self.std

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model units -> pixels in [0, 1] (clamped)."""
        return (x * self.std + self.mean).clamp(0.0, 1.0)

    def from_pixels(self, p: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> model units."""
        return (p - self.mean) / self.std


UNIT = InputSpace()
FASHION_MNIST = InputSpace(mean=0.2860, std=0.3530)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape or a.dim() != 4:
        raise ImageMetricError(
            f"a.shape={tuple(a.shape)}, b.shape={tuple(b.shape)}: need two equal (N, C, H, W) batches; "
            "add batch/channel dims with x[None] / x[:, None]"
        )
    return a.double(), b.double()


def psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, (N, C, H, W) x 2 -> (N,) in dB: ``10 log10(range^2 / MSE)``."""
    a, b = _check_pair(a, b)
    return peak_signal_noise_ratio(a, b, data_range=data_range, reduction="none", dim=(1, 2, 3))


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image, (N, C, H, W) x 2 -> (N,) in [-1, 1]; Gaussian window (sigma 1.5)."""
    a, b = _check_pair(a, b)
    if min(a.shape[-2:]) < 6:
        raise ImageMetricError(f"image size {tuple(a.shape[-2:])}: SSIM's 11x11 window needs images of at least 6x6")
    out = structural_similarity_index_measure(a, b, data_range=data_range, sigma=1.5, reduction="none")
    return out.reshape(a.shape[0])


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each pair of flattened images, (N, ...) x 2 -> (N,)."""
    a, b = torch.as_tensor(a).flatten(1).double(), torch.as_tensor(b).flatten(1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1)
