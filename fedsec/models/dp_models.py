"""DP-friendly models: tempered-sigmoid (tanh) CNNs and a GroupNorm variant, for DP-SGD and DP-FedAvg.

- ``cnn_tanh``: the Fashion-MNIST / MNIST CNN of Papernot, Thakurta, Song, Chien and Erlingsson, "Tempered Sigmoid
  Activations for Deep Learning with Differential Privacy", AAAI 2021 (https://arxiv.org/abs/2007.14191), Table 6:
  conv 16 8x8 stride 2 padding 3, tanh, 2x2 max-pool stride 1, conv 32 4x4 stride 2, tanh, 2x2 max-pool stride 1,
  FC 32, tanh, FC classes (26,010 parameters on 1x28x28). The paper's point: bounded activations keep
  activations and gradients small, so clipping discards less signal (86.1% on Fashion-MNIST at epsilon 2.7).
- ``cnn_tanh_gn``: fedsec's small ``cnn`` layout (two 5x5 convs 16 / 32, max-pool, 4x4 adaptive pool, FC 64) with
  GroupNorm after each convolution and tanh activations; GroupNorm as De, Berrada, Hayes, Smith and Balle,
  "Unlocking High-Accuracy Differentially Private Image Classification through Scale", 2022
  (https://arxiv.org/abs/2204.13650), use it: per-example normalisation, unlike BatchNorm, keeps per-sample
  gradients well defined.

Both pass Opacus' ``ModuleValidator`` (no BatchNorm, no unsupported layers). Defaults: the papers' widths; the
input size is generic (``cnn_tanh`` needs at least 14x14 images; ``cnn_tanh_gn`` at least 4x4).
Departures: De et al. use WideResNets with weight standardisation and augmentation multiplicity; here only the
GroupNorm is kept, in a small CNN for CPU experiments.
"""

from __future__ import annotations

import math

from torch import nn

from .zoo import ModelSpec


def _out(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def cnn_tanh(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Papernot et al.'s tempered-sigmoid CNN (tanh) for small grayscale images (26,010 params on 1x28x28)."""
    channels, height, width = input_shape
    sizes = []
    for size in (height, width):
        size = _out(_out(size, 8, 2, 3), 2, 1)
        sizes.append(_out(_out(size, 4, 2), 2, 1))
    if min(sizes) < 1:
        raise ValueError(f"model.name='cnn_tanh': needs images of at least 14x14, got {input_shape}; use cnn_tanh_gn")
    return nn.Sequential(
        nn.Conv2d(channels, 16, 8, stride=2, padding=3), nn.Tanh(), nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2), nn.Tanh(), nn.MaxPool2d(2, 1),
        nn.Flatten(), nn.Linear(32 * math.prod(sizes), 32), nn.Tanh(), nn.Linear(32, num_classes),
    )


def cnn_tanh_gn(input_shape: tuple[int, ...], num_classes: int, *, groups: int = 4) -> nn.Module:
    """fedsec's small CNN with GroupNorm (``groups`` groups) after each convolution and tanh activations."""
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 16, 5, padding=2), nn.GroupNorm(groups, 16), nn.Tanh(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.GroupNorm(groups, 32), nn.Tanh(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.Tanh(), nn.Linear(64, num_classes),
    )


CNN_TANH = ModelSpec(cnn_tanh, "tanh CNN of Papernot et al. AAAI 2021, 26k params on 28x28 (grey images >= 14x14)",
                     needs_images=True, min_side=14, channels=1)
CNN_TANH_GN = ModelSpec(cnn_tanh_gn, "small CNN with GroupNorm + tanh (De et al. 2022), ~47k params (images >= 4x4)",
                        needs_images=True, min_side=4)
