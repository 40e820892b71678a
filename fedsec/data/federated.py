"""The federated view of a dataset: training arrays, one index array per client, and the held-out test set.

The driver builds it once (:func:`build_federated_data`) and ships it to the Ray workers through Ray's object
store; each worker process fetches it once and keeps it (:func:`worker_data`), so nothing large is captured in the
ClientApp that Flower pickles for every message, and nodes of a cluster need no shared filesystem.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedsec.config import DataConfig

from .datasets import load_dataset
from .partition import partition_indices

MIN_CLIENT_EXAMPLES = 10


@dataclass(frozen=True)
class FederatedData:
    """Training data split into client partitions, plus the server's test set."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    partitions: list[np.ndarray]
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @functools.cached_property
    def data_max(self) -> float:
        """The largest training input value (a "white" pixel after normalisation), for trigger stamping; computed
        once, when first asked (it reads every example)."""
        return float(self.x_train.max())

    def without_test(self) -> FederatedData:
        """A copy without the test set (what clients need)."""
        empty_x = np.zeros((0, *self.input_shape), dtype=self.x_train.dtype)
        return FederatedData(
            self.x_train, self.y_train, empty_x, np.zeros(0, np.int64), self.partitions, self.num_classes
        )


def build_federated_data(data: DataConfig, seed: int) -> FederatedData:
    """Load the configured dataset and partition it across its clients (seeded)."""
    from .registry import DATASETS

    params = DATASETS.get(data.dataset).Params.model_validate(data.kind_keys)  # the dataset's own keys
    dataset = load_dataset(data.dataset, root=data.root or None, seed=seed, num_clients=data.num_clients,
                           params=params)
    partitions = partition_indices(
        dataset.y_train,
        kind=data.partition,
        num_clients=data.num_clients,
        seed=seed,
        alpha=data.alpha,
        shards_per_client=data.shards_per_client,
        # Dirichlet draws are redrawn until every client has 10 examples (fewer only when the data are too small)
        min_size=max(1, min(MIN_CLIENT_EXAMPLES, dataset.y_train.size // data.num_clients)),
        natural=dataset.natural_partition,
        samples_per_client=data.samples_per_client,
        classes_per_client=data.classes_per_client,
        class_assignment=data.class_assignment,
        partition_sizes=data.partition_sizes,
    )
    return FederatedData(
        x_train=dataset.x_train,
        y_train=dataset.y_train,
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        partitions=partitions,
        num_classes=dataset.num_classes,
    )


@dataclass
class WorkerData:
    """A worker's copy of the federated data: on a GPU, the training arrays uploaded once (a client's examples are
    then selected on the device); on the CPU, the arrays the worker fetched themselves, not copied.

    Why not a CPU tensor copy: arrays fetched from Ray's object store are read-only views of its shared memory, and
    copying all of them (Fashion-MNIST's 188 MB) cost each client process 0.87 s of its first message on this
    project's 2-core machine and a private copy of the whole set, while a client reads only its own examples. Those
    are copied out when it trains (:meth:`client_tensors`), so nothing writes to the shared arrays (NumPy refuses it).
    """

    data: FederatedData
    device: torch.device
    x_on_device: torch.Tensor | None = None  # the training arrays on a GPU; None on the CPU
    y_on_device: torch.Tensor | None = None

    def client_tensors(self, partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples and labels of client ``partition_id``, as fresh tensors on the worker's device."""
        if self.x_on_device is None or self.y_on_device is None:
            idx = self.data.partitions[partition_id]
            return (torch.from_numpy(self.data.x_train[idx]),
                    torch.from_numpy(self.data.y_train[idx].astype(np.int64, copy=False)))
        on_device = torch.from_numpy(self.data.partitions[partition_id]).to(self.device)
        return self.x_on_device.index_select(0, on_device), self.y_on_device.index_select(0, on_device)

    @property
    def data_max(self) -> float:
        """:attr:`FederatedData.data_max` of the worker's data."""
        return self.data.data_max


_WORKER_CACHE: dict[str, WorkerData] = {}


def worker_device() -> torch.device:
    """CUDA when this process was given a GPU (Ray sets CUDA_VISIBLE_DEVICES for its actors), else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def worker_data(source: Any, data_config: DataConfig, seed: int) -> WorkerData:
    """This process's copy of the federated data, fetched once per process.

    ``source`` is a Ray ``ObjectRef`` to a :class:`FederatedData` (the fedsec runner's way), or None to build it
    here from the data config and seed (e.g. under ``flwr run`` without the runner).
    """
    key = source.hex() if source is not None else f"{seed}:{data_config.model_dump_json()}"
    cached = _WORKER_CACHE.get(key)
    if cached is None:
        if source is not None:
            import ray

            data = ray.get(source)
        else:
            data = build_federated_data(data_config, seed).without_test()
        device = worker_device()
        cached = WorkerData(data=data, device=device)
        if device.type != "cpu":
            cached.x_on_device = torch.from_numpy(np.array(data.x_train, copy=True)).to(device)
            cached.y_on_device = torch.from_numpy(np.array(data.y_train, dtype=np.int64, copy=True)).to(device)
        _WORKER_CACHE.clear()  # one experiment's data per worker at a time
        _WORKER_CACHE[key] = cached
    return cached
