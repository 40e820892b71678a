"""Models for 3x32x32 colour images (CIFAR-10, CIFAR-100).

- ``cnn_cifar``: the CIFAR model of McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017 (https://arxiv.org/abs/1602.05629), sec. 3: TensorFlow's CIFAR-10 tutorial
  model, "two convolutional layers followed by two fully connected layers and then a linear transformation layer":
  conv 5x5 64, ReLU, 3x3 max-pool stride 2, local response normalisation; conv 5x5 64, ReLU, LRN, 3x3 max-pool
  stride 2; FC 384, ReLU; FC 192, ReLU; linear to the classes. LRN as in the tutorial (depth radius 4, bias 1,
  alpha 0.001 / 9 per channel, beta 0.75; PyTorch's ``LocalResponseNorm(9, alpha=0.001)`` averages over the 9
  channels). 1,756,426 parameters for 10 classes.
  Differences: the paper feeds 24x24 crops (random crops, flips, contrast and brightness changes when training;
  about 10^6 parameters: 1,068,298 here on 24x24); fedsec has no augmentation and feeds the whole 32x32 image, so
  the first FC layer takes 8x8x64 instead of 6x6x64 inputs. Pooling pads 1 on both sides (TensorFlow's SAME pads 0
  and 1): same output size.
- ``resnet20_gn``: ResNet-20 of He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016
  (https://arxiv.org/abs/1512.03385), sec. 4.2: a 3x3 conv of 16 channels, three stages of three basic blocks
  (two 3x3 convs each) with 16, 32 and 64 channels, stride 2 at the start of stages 2 and 3, global average
  pooling, a linear layer; shortcuts are identities, zero-padded in channels and subsampled where the shape changes
  (the paper's option A, no parameters). 269,722 parameters for 10 classes, as with BatchNorm.
  Differences: GroupNorm (4 groups, fedsec's choice) in place of BatchNorm, as Hsieh, Phanishayee, Mutlu and
  Gibbons, "The Non-IID Data Quagmire of Decentralized Machine Learning", ICML 2020
  (https://arxiv.org/abs/1910.00189), recommend for non-IID federated training, and as DP-SGD needs (per-example
  gradients are undefined under BatchNorm; De et al. 2022 use GroupNorm for it). Takes any image with sides >= 8.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .zoo import ModelSpec


def cnn_cifar(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """McMahan et al. 2017's CIFAR CNN (TensorFlow's tutorial model) on whole 3x32x32 images."""
    channels, height, width = input_shape
    flat = 64 * ((height + 3) // 4) * ((width + 3) // 4)  # two 3x3 / 2 pools with padding 1: ceil(side / 4)
    return nn.Sequential(
        nn.Conv2d(channels, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Flatten(), nn.Linear(flat, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(), nn.Linear(192, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and an option-A shortcut (identity, subsampled and zero-padded on a change)."""

    def __init__(self, inputs: int, outputs: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, outputs)
        self.stride, self.pad = stride, outputs - inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class ResNetGN(nn.Module):
    """ResNet-(6n+2) for small images with GroupNorm (n = 3: ResNet-20)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, blocks: int = 3, groups: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False), nn.GroupNorm(groups, 16),
                                  nn.ReLU())
        layers: list[nn.Module] = []
        inputs = 16
        for stage, width in enumerate((16, 32, 64)):
            for b in range(blocks):
                layers.append(BasicBlock(inputs, width, 2 if stage and b == 0 else 1, groups))
                inputs = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def resnet20_gn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ResNet-20 (He et al. 2016, option-A shortcuts) with GroupNorm (4 groups)."""
    return ResNetGN(input_shape, num_classes, blocks=3, groups=4)


CNN_CIFAR = ModelSpec(cnn_cifar, "CIFAR CNN of McMahan et al. 2017 (TF tutorial model), 1.76M params (3x32x32 inputs)",
                      needs_images=True, exact_side=32, channels=3)
RESNET20_GN = ModelSpec(resnet20_gn, "ResNet-20 (He et al. 2016) with GroupNorm for DP / non-IID, 0.27M params "
                        "(images >= 8x8, any channels)", needs_images=True, min_side=8)
