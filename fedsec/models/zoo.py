"""Model registry: small PyTorch classifiers for federated experiments.

- ``logreg``: multinomial logistic regression (flatten + linear).
- ``mlp``: the 2NN of McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
  Data", AISTATS 2017 (https://arxiv.org/abs/1602.05629): two hidden layers of 200 ReLU units.
- ``cnn``: a small CNN (~47k parameters on 28x28 inputs) for fast CPU experiments: two 5x5 convolutions (16 and
  32 channels) with max pooling, adaptive average pooling to 4x4, a 64-unit hidden layer.
- ``cnn_mcmahan``: the CNN of McMahan et al. 2017 for 28x28 inputs: 5x5 convolutions with 32 and 64 channels,
  each followed by 2x2 max pooling, a 512-unit fully connected layer and a softmax output (1,663,370 parameters).

Colour-image models (``cnn_cifar``, ``resnet20_gn``) are in :mod:`.cifar`, DP-friendly ones in :mod:`.dp_models`.
Each :class:`ModelSpec` says what inputs it takes (``fits``): ``cnn_mcmahan`` and ``cnn_tanh`` take grey images
only, ``cnn_cifar`` 3x32x32 only. No model uses BatchNorm, so all of them work with Opacus' per-sample gradients as
they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def _flat_dim(input_shape: tuple[int, ...]) -> int:
    return math.prod(input_shape)


def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression."""
    return nn.Sequential(nn.Flatten(), nn.Linear(_flat_dim(input_shape), num_classes))


def mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al.'s 2NN: 200-200 ReLU hidden layers."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(_flat_dim(input_shape), 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


def _two_conv(
    channels: int, widths: tuple[int, int], hidden: int, num_classes: int, *, pooled_to: int | None, flat: int
) -> nn.Module:
    """5x5 conv (same padding) + ReLU + 2x2 max-pool, twice; optional adaptive average pooling; FC - ReLU - FC."""
    c1, c2 = widths
    layers: list[nn.Module] = [
        nn.Conv2d(channels, c1, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
    ]
    if pooled_to is not None:
        layers.append(nn.AdaptiveAvgPool2d(pooled_to))
    layers += [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    return nn.Sequential(*layers)


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Small CNN (~47k parameters) for image inputs of any size >= 4x4."""
    return _two_conv(input_shape[0], (16, 32), 64, num_classes, pooled_to=4, flat=32 * 4 * 4)


def cnn_mcmahan(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The 2-conv CNN of McMahan et al. 2017 for 28x28 inputs (1.66M parameters with 10 classes)."""
    return _two_conv(input_shape[0], (32, 64), 512, num_classes, pooled_to=None, flat=64 * 7 * 7)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its factory, a description and the inputs it takes."""

    factory: ModelFactory
    description: str
    needs_images: bool = False  # (C, H, W) inputs
    min_side: int = 1  # smallest H and W
    exact_side: int | None = None  # H = W = this, when the architecture is fixed
    channels: int | None = None  # C = this: 1 for a grey-image model, 3 for a colour one

    def fits(self, input_shape: tuple[int, ...]) -> str | None:
        """Why this model cannot take inputs of ``input_shape``, or None if it can."""
        if self.needs_images and len(input_shape) != 3:
            return (f"needs image inputs (C, H, W), the dataset gives vectors of shape {input_shape}; use logreg or "
                    "mlp")
        if self.channels is not None and input_shape[0] != self.channels:
            kind, other = ("grey", "cnn_cifar or resnet20_gn for colour images") if self.channels == 1 else (
                "colour", "cnn, cnn_mcmahan or resnet20_gn for grey images")
            return (f"takes {self.channels}-channel ({kind}) images, the dataset gives {input_shape[0]}-channel "
                    f"images of shape {input_shape}; use {other}")
        if self.exact_side is not None and tuple(input_shape[1:]) != (self.exact_side, self.exact_side):
            return f"is defined for {self.exact_side}x{self.exact_side} images, got {input_shape}; use cnn"
        if self.needs_images and min(input_shape[1:]) < self.min_side:
            return f"needs images of at least {self.min_side}x{self.min_side}, got {input_shape}"
        return None


LOGREG = ModelSpec(logreg, "multinomial logistic regression (any input)")
MLP = ModelSpec(mlp, "2NN of McMahan et al. 2017: 200-200 ReLU (any input)")
CNN = ModelSpec(cnn, "small CNN, ~47k params on 28x28 (image inputs)", needs_images=True, min_side=4)
CNN_MCMAHAN = ModelSpec(cnn_mcmahan, "CNN of McMahan et al. 2017, 1.66M params (1x28x28 inputs)", needs_images=True,
                        exact_side=28, channels=1)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int | None = None) -> nn.Module:
    """Build model ``name``; with ``seed`` its initial weights are reproducible."""
    from .registry import MODELS

    spec = MODELS.get(name)
    problem = spec.fits(input_shape)
    if problem:
        raise ValueError(f"model.name={name!r}: {problem}")
    factory = spec.factory
    if seed is None:
        return factory(input_shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(input_shape, num_classes)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
