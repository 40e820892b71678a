"""Datasets and partitioners."""

from .datasets import (
    DATASETS,
    ArrayDataset,
    DatasetError,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    make_synthetic,
    read_idx,
)
from .partition import PARTITIONS, PartitionError, partition_indices

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "ArrayDataset",
    "DatasetError",
    "PartitionError",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "make_synthetic",
    "partition_indices",
    "read_idx",
]
