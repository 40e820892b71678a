"""``data.dataset`` -> :class:`~fedsec.data.datasets.DatasetSpec`. Adding a dataset: a loader file in this package
and one line here."""

from __future__ import annotations

from fedsec.registry import Registry

from .cifar import CIFAR10, CIFAR100
from .datasets import DIGITS, FASHION_MNIST, SYNTHETIC, DatasetSpec
from .emnist import EMNIST
from .femnist import FEMNIST

DATASETS: Registry[DatasetSpec] = Registry("data.dataset", "dataset")
DATASETS.register("fashion-mnist", FASHION_MNIST)
DATASETS.register("digits", DIGITS)
DATASETS.register("synthetic", SYNTHETIC)
DATASETS.register("cifar10", CIFAR10)
DATASETS.register("cifar100", CIFAR100)
DATASETS.register("emnist", EMNIST)
DATASETS.register("femnist", FEMNIST)
