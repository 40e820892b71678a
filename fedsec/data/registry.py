"""``data.dataset`` -> :class:`~fedsec.data.datasets.DatasetSpec`. Adding a dataset: a loader file in this package
and one line here."""

from __future__ import annotations

from fedsec.registry import Registry

from .datasets import DIGITS, FASHION_MNIST, SYNTHETIC, DatasetSpec

DATASETS: Registry[DatasetSpec] = Registry("data.dataset", "dataset")
DATASETS.register("fashion-mnist", FASHION_MNIST)
DATASETS.register("digits", DIGITS)
DATASETS.register("synthetic", SYNTHETIC)
