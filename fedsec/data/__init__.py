"""Datasets, their registry, partitioners and the federated view of a dataset."""

from .datasets import (
    ArrayDataset,
    DatasetError,
    DatasetSpec,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    make_synthetic,
    read_idx,
)
from .partition import PARTITIONS, PartitionError, partition_indices
from .registry import DATASETS

__all__ = [
    "DATASETS",
    "PARTITIONS",
    "ArrayDataset",
    "DatasetError",
    "DatasetSpec",
    "PartitionError",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "make_synthetic",
    "partition_indices",
    "read_idx",
]
