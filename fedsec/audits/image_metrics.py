"""Per-image fidelity metrics for reconstructions: PSNR and SSIM on pixel scale.

PSNR and SSIM are torchmetrics' implementations (``torchmetrics.functional.image.peak_signal_noise_ratio`` and
``structural_similarity_index_measure``; SSIM: Wang, Bovik, Sheikh, Simoncelli, "Image Quality Assessment: From
Error Visibility to Structural Similarity", IEEE TIP 2004, https://doi.org/10.1109/TIP.2003.819861). Both are
computed per image on pixels in [0, 1] with ``data_range = 1``: models see normalised inputs, so callers first map
model units back to pixels with :meth:`fedsec.audits.input_space.InputSpace.to_pixels` (re-exported here with
``UNIT`` and ``FASHION_MNIST``).

Defaults: SSIM uses the paper's Gaussian window (sigma 1.5, 11x11); torchmetrics reflect-pads by 5 pixels, so
images need at least 6x6 (8x8 digits work). Identical images have PSNR ``inf`` and SSIM 1.
"""

from __future__ import annotations

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from .input_space import FASHION_MNIST, UNIT, InputSpace

__all__ = ["FASHION_MNIST", "UNIT", "ImageMetricError", "InputSpace", "cosine", "psnr", "ssim"]


class ImageMetricError(ValueError):
    """Images that cannot be compared; the message names the argument and the fix."""


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
