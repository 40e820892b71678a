"""Partitioners done with flwr-datasets (``flwr_datasets.partitioner``) on an in-memory ``datasets.Dataset`` of
(label, idx) rows: fedsec hands it the labels, reads back the ``idx`` column of each partition, and keeps the seed.

- ``pathological``: ``PathologicalPartitioner``, the "#C=k" label skew of Li, Diao, Chen and He, "Federated
  Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022 (https://arxiv.org/abs/2102.02079): each client
  is given ``classes_per_client`` classes, and each class's samples are cut into equal parts, one per client that
  has it. ``class_assignment``: ``first-deterministic`` (the paper's code: client i gets class i mod C, then
  random ones), ``random`` or ``deterministic`` (client i gets classes i, i+1, ... mod C). A class given to no
  client is left out, with a warning (only ``random``, or fewer clients than classes, can do that).
- ``size``: ``SizePartitioner``: client i gets ``partition_sizes[i]`` samples; the rest are left out.
- ``linear``, ``square``, ``exponential``: ``LinearPartitioner``, ``SquarePartitioner``, ``ExponentialPartitioner``:
  client i (i = 1..n) gets a share of the data proportional to i, i^2 or e^i (sizes rounded down, the remainder
  to the last client); ``exponential`` leaves clients empty beyond about ``ln(samples)`` clients.

The size partitioners take contiguous rows of the table, and flwr-datasets gives them no seed: fedsec shuffles the
rows first with ``np.random.default_rng(seed)``, so the sizes are the partitioner's and the members are seeded
(same seed, same split). ``PathologicalPartitioner`` takes the seed itself (``seed=seed``). flwr-datasets'
``ValueError`` becomes a :class:`PartitionError` that says what to change. ``datasets`` and flwr-datasets are
slow to import: only these kinds import them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .partition import PartitionError

SIZE_KINDS = ("size", "linear", "square", "exponential")


def _read(partitioner: Any, labels: np.ndarray, order: np.ndarray, num_clients: int) -> list[np.ndarray]:
    """Attach the (label, idx) table in ``order`` to ``partitioner`` and read each partition's idx column."""
    import datasets  # slow to import: only for these kinds

    partitioner.dataset = datasets.Dataset.from_dict({"label": labels[order], "idx": order})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fedsec words its own warnings and errors
        return [np.asarray(partitioner.load_partition(i).with_format("numpy")["idx"][:], dtype=np.int64)
                for i in range(num_clients)]


def pathological(labels: np.ndarray, num_clients: int, classes_per_client: int, assignment: str,
                 seed: int) -> list[np.ndarray]:
    """``classes_per_client`` classes per client via ``PathologicalPartitioner``; see the module docstring."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    classes = np.unique(labels)
    if not 1 <= classes_per_client <= classes.size:
        raise PartitionError(f"pathological: classes_per_client={classes_per_client} must be in 1..{classes.size} "
                             f"(the classes in the training set)")
    partitioner = PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                          num_classes_per_partition=classes_per_client,
                                          class_assignment_mode=assignment, shuffle=True, seed=seed)
    try:
        parts = _read(partitioner, labels, np.arange(labels.size, dtype=np.int64), num_clients)
    except ValueError as e:
        raise PartitionError(f"pathological: {num_clients} clients x {classes_per_client} classes cannot be dealt "
                             f"({e}); use fewer clients or classes_per_client, or class_assignment = "
                             "'deterministic'") from e
    return parts


def warn_unused_classes(labels: np.ndarray, parts: list[np.ndarray], classes_per_client: int,
                        assignment: str) -> None:
    """Warn when :func:`pathological`'s split gave some class to no client (checked on every split, made now or
    read back from the cache)."""
    classes = np.unique(labels)
    used = np.unique(labels[np.concatenate(parts)]) if parts else classes
    unused = np.setdiff1d(classes, used)
    if unused.size:
        left = int(np.isin(labels, unused).sum())
        warnings.warn(f"pathological: classes {unused.tolist()} went to no client ({len(parts)} clients x "
                      f"{classes_per_client} classes, class_assignment={assignment!r}); their {left} samples are "
                      "left out", stacklevel=3)


def by_size(labels: np.ndarray, kind: str, num_clients: int, seed: int,
            sizes: Sequence[int] | None = None) -> list[np.ndarray]:
    """Client sizes from flwr-datasets' ``kind`` partitioner over a seeded shuffle; see the module docstring."""
    from flwr_datasets import partitioner as fp

    n = labels.size
    if kind == "size":
        if sizes is None or len(sizes) != num_clients:
            got = "none" if sizes is None else f"{len(sizes)}"
            raise PartitionError(f"size: partition_sizes needs one size per client ({num_clients}), got {got}")
        if min(sizes) < 1 or sum(sizes) > n:
            raise PartitionError(f"size: partition_sizes must be >= 1 each and sum to at most {n} (the training "
                                 f"set), got sum {sum(sizes)}, smallest {min(sizes)}")
        partitioner = fp.SizePartitioner([int(s) for s in sizes])
    else:
        cls = {"linear": fp.LinearPartitioner, "square": fp.SquarePartitioner,
               "exponential": fp.ExponentialPartitioner}[kind]
        partitioner = cls(num_partitions=num_clients)
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    try:
        return _read(partitioner, labels, order, num_clients)
    except ValueError as e:  # a client whose share rounds down to no sample
        raise PartitionError(f"{kind}: {num_clients} clients over {n} samples leave the smallest client with no "
                             f"sample; use fewer clients ({e})") from e
