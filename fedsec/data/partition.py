"""Partitioners: split a labelled training set across federated clients, seeded.

- ``iid``: a seeded shuffle (``np.random.default_rng(seed)``) cut into near-equal parts (sizes differ by at most 1).
  Written here: flwr-datasets' ``IidPartitioner`` takes no seed and cuts the dataset into *contiguous* shards
  (``Dataset.shard(contiguous=True)``); measured on Fashion-MNIST's 60k labels sorted by label, 50 clients got 1 class
  each, and its output cannot change with the seed. Shuffling first would leave it nothing to do but a split.
- ``dirichlet``: the label skew of Hsu et al., "Measuring the Effects of Non-Identical Data Distribution for Federated
  Visual Classification", 2019 (https://arxiv.org/abs/1909.06335): for each class, the clients' shares of it are
  drawn from Dir(alpha, ..., alpha); smaller alpha = more skew (default ``alpha = 0.5``). All of every class is dealt
  out. If some client ends up with fewer than ``min_size`` samples (default 1) the whole draw is repeated (seeded),
  at most 10 times, then :class:`PartitionError`. Done with flwr-datasets' ``DirichletPartitioner`` (``shuffle=True,
  self_balancing=False, seed=seed``) on an in-memory ``datasets.Dataset`` of (label, index): it works offline, is
  seeded and reproducible, has exactly these semantics (per class Dir(alpha), whole-draw retries, 10 of them, then
  ValueError), and assigns every sample exactly once. ``datasets`` and flwr-datasets are slow to import, hence
  imported lazily, only for this kind; the partitions are read back with ``with_format("numpy")`` (several times
  faster than without); 1,000 clients cost about what 50 do.
- ``shards``: the pathological non-IID split of McMahan et al., "Communication-Efficient Learning of Deep Networks
  from Decentralized Data", AISTATS 2017 (https://arxiv.org/abs/1602.05629): sort by label, cut into
  ``num_clients * shards_per_client`` shards (default 2 per client; sizes differ by at most 1), deal each client
  ``shards_per_client`` shards at random, so each client sees about two classes. Written here: flwr-datasets'
  ``ShardPartitioner`` drops the samples that do not fill a whole shard (measured: 59,900 of 59,999 samples assigned
  for 50 x 2 shards; 994 of 997 for 7 x 2) and with ``keep_incomplete_shard=True`` it drops more (926 of 997: it
  deals ``num_clients * shards_per_client`` of the ceil(N / shard size) shards, leaving whole shards out); it also
  sorts the table with pyarrow (a deprecation warning on every call). Ours assigns every sample.
- ``natural``: the dataset's own per-client split (FedProx's Synthetic, one device per client; FEMNIST, one writer
  per client); validated. Written here: the loaders already hold each client's indices; flwr-datasets'
  ``NaturalIdPartitioner`` on a column of client ids gives the same split (``tests/test_data.py`` checks it) at the
  cost of importing ``datasets`` and a per-sample Python loop.
- ``sampled``: each client draws ``samples_per_client`` distinct examples uniformly at random, independently of the
  other clients, so clients may share examples. For populations larger than the dataset (100,000 clients of
  Fashion-MNIST's 60,000 images, ``benchmarks/bench_scale.py``), where a split would leave clients empty; seeded
  like ``iid``.

- ``pathological`` (``classes_per_client`` classes each, Li et al. 2022), ``size`` (``partition_sizes``), ``linear``,
  ``square`` and ``exponential`` (sizes growing with the client id): flwr-datasets' partitioners, seeded; see
  :mod:`fedsec.data.flwr_partitions`.

The kinds made by flwr-datasets keep their result in fedsec's cache (:mod:`fedsec.data.cache`, ``partitions/``),
named by a digest of the labels, the kind, its keys, the seed and the versions of flwr-datasets and ``datasets``: a
Dirichlet split of Fashion-MNIST into 20 clients took 4.1 s here (2.6 s of it importing flwr-datasets, which imports
``datasets``, seaborn and SciPy), reading it back a few milliseconds. A failed split is not kept.

Every partitioner returns one sorted ``int64`` index array per client, non-empty; for ``iid``, ``dirichlet``,
``shards``, ``linear``, ``square`` and ``exponential`` the arrays are disjoint and together cover every sample exactly
once; ``pathological`` and ``size`` may leave samples out (a class no client was given; sizes summing below the
training set's).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Sequence

import numpy as np

PARTITIONS: dict[str, str] = {
    "iid": "uniform random split, sizes differ by at most 1",
    "dirichlet": "label skew: each class's client shares ~ Dir(alpha) (Hsu et al. 2019), via flwr-datasets",
    "shards": "pathological non-IID: shards_per_client label-sorted shards each (McMahan et al. 2017)",
    "natural": "the dataset's own per-client split (synthetic only)",
    "sampled": "samples_per_client random examples each, drawn independently (clients may share examples)",
    "pathological": "classes_per_client classes each (#C=k, Li et al. 2022), via flwr-datasets",
    "size": "client i gets partition_sizes[i] random examples, via flwr-datasets",
    "linear": "client i (1..n) gets a share of the data proportional to i, via flwr-datasets",
    "square": "client i (1..n) gets a share proportional to i^2, via flwr-datasets",
    "exponential": "client i (1..n) gets a share proportional to e^i (at most ~ln(samples) clients), via flwr-datasets",
}

DIRICHLET_MAX_TRIES = 11  # flwr-datasets' DirichletPartitioner: a first draw and 10 retries


class PartitionError(ValueError):
    """A partition that cannot be made; the message says why."""


def _iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(n), num_clients))


def _sampled(n: int, num_clients: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.choice(n, size=k, replace=False) for _ in range(num_clients)]


def _shards(labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator) -> list[np.ndarray]:
    if shards_per_client < 1:
        raise PartitionError(f"shards: shards_per_client must be >= 1, got {shards_per_client}")
    num_shards = num_clients * shards_per_client
    if num_shards > labels.size:
        raise PartitionError(
            f"shards: {num_clients} clients x {shards_per_client} shards need at least {num_shards} samples, "
            f"got {labels.size}"
        )
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in dealt]


def _dirichlet(labels: np.ndarray, num_clients: int, alpha: float, min_size: int, seed: int) -> list[np.ndarray]:
    if not alpha > 0:
        raise PartitionError(f"dirichlet: alpha must be > 0, got {alpha}")
    if num_clients * min_size > labels.size:
        raise PartitionError(
            f"dirichlet: {num_clients} clients x at least {min_size} samples each need {num_clients * min_size} "
            f"samples, got {labels.size}"
        )
    import datasets  # slow to import: only when a Dirichlet split is asked for
    from flwr_datasets.partitioner import DirichletPartitioner

    table = datasets.Dataset.from_dict({"label": labels, "idx": np.arange(labels.size, dtype=np.int64)})
    partitioner = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=float(alpha),
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns on every redraw; we raise if they all fail
            return [
                np.asarray(partitioner.load_partition(i).with_format("numpy")["idx"][:], dtype=np.int64)
                for i in range(num_clients)
            ]
    except ValueError as e:  # flwr-datasets gives up after its 10 retries
        raise PartitionError(
            f"dirichlet: no draw with alpha={alpha} gave each of {num_clients} clients at least {min_size} "
            f"samples in {DIRICHLET_MAX_TRIES} tries; use a larger alpha, fewer clients or a smaller min_size "
            f"(flwr-datasets: {e})"
        ) from e


def _natural(natural: list[np.ndarray] | None, num_clients: int, n: int) -> list[np.ndarray]:
    if natural is None:
        raise PartitionError("natural: this dataset has no natural partition; use iid, dirichlet or shards (natural "
                             "ones: synthetic, femnist)")
    if len(natural) != num_clients:
        raise PartitionError(
            f"natural: the dataset is split across {len(natural)} clients, the config asks for {num_clients}"
        )
    parts = [np.asarray(p, dtype=np.int64).ravel() for p in natural]
    everything = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if everything.size and (everything.min() < 0 or everything.max() >= n):
        raise PartitionError(f"natural: indices outside [0, {n}) in the dataset's natural partition")
    if np.unique(everything).size != everything.size:
        raise PartitionError("natural: the dataset's natural partition gives some sample to two clients")
    return parts


def partition_indices(
    labels: np.ndarray,
    *,
    kind: str,
    num_clients: int,
    seed: int,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    min_size: int = 1,
    natural: list[np.ndarray] | None = None,
    samples_per_client: int = 10,
    classes_per_client: int = 2,
    class_assignment: str = "first-deterministic",
    partition_sizes: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Split ``labels``' indices across ``num_clients`` clients; see the module docstring for the kinds.

    ``alpha`` and ``min_size`` are for ``dirichlet``, ``shards_per_client`` for ``shards``, ``natural`` (the
    dataset's ``natural_partition``) for ``natural``, ``samples_per_client`` for ``sampled``,
    ``classes_per_client`` and ``class_assignment`` for ``pathological``, ``partition_sizes`` for ``size``.
    Raises :class:`PartitionError` if it cannot be done.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise PartitionError(f"labels must be one-dimensional, got shape {labels.shape}")
    if kind not in PARTITIONS:
        raise PartitionError(f"unknown partition {kind!r}; use one of {sorted(PARTITIONS)}")
    if num_clients < 1:
        raise PartitionError(f"num_clients must be >= 1, got {num_clients}")
    if kind == "sampled" and not 1 <= samples_per_client <= labels.size:
        raise PartitionError(f"sampled: samples_per_client={samples_per_client} must be in 1..{labels.size} (the "
                             "training set's size)")
    if num_clients > labels.size and kind != "sampled":
        raise PartitionError(f"{kind}: {num_clients} clients but only {labels.size} samples")
    if min_size < 1:
        raise PartitionError(f"min_size must be >= 1, got {min_size}")
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = _iid(labels.size, num_clients, rng)
    elif kind == "sampled":
        parts = _sampled(labels.size, num_clients, samples_per_client, rng)
    elif kind == "shards":
        parts = _shards(labels, num_clients, shards_per_client, rng)
    elif kind == "dirichlet":
        parts = _cached(labels, kind, num_clients, seed, {"alpha": alpha, "min_size": min_size},
                        lambda: _dirichlet(labels, num_clients, alpha, min_size, seed))
    elif kind == "pathological":
        from .flwr_partitions import pathological, warn_unused_classes

        keys = {"classes_per_client": classes_per_client, "class_assignment": class_assignment}
        parts = _cached(labels, kind, num_clients, seed, keys,
                        lambda: pathological(labels, num_clients, classes_per_client, class_assignment, seed))
        warn_unused_classes(labels, parts, classes_per_client, class_assignment)
    elif kind in ("size", "linear", "square", "exponential"):
        from .flwr_partitions import by_size

        sizes = None if partition_sizes is None else [int(s) for s in partition_sizes]
        parts = _cached(labels, kind, num_clients, seed, {"partition_sizes": sizes},
                        lambda: by_size(labels, kind, num_clients, seed, partition_sizes))
    else:
        parts = _natural(natural, num_clients, labels.size)
    out = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    empty = [i for i, p in enumerate(out) if p.size == 0]
    if empty:
        raise PartitionError(f"{kind}: clients {empty} got no data; use fewer clients"
                             + (" or a larger alpha" if kind == "dirichlet" else ""))
    return out


def _cached(labels: np.ndarray, kind: str, num_clients: int, seed: int, keys: dict[str, object],
            split: Callable[[], list[np.ndarray]]) -> list[np.ndarray]:
    """``split()``'s partition of ``labels``, from fedsec's cache when it holds it (see the module docstring)."""
    from importlib.metadata import PackageNotFoundError, version

    from .cache import cache_file, read_arrays, write_arrays

    try:
        versions = [version("flwr-datasets"), version("datasets")]
    except PackageNotFoundError:
        return split()
    digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes())
    digest.update(json.dumps([str(labels.dtype), kind, num_clients, seed, keys, versions], sort_keys=True).encode())
    path = cache_file("partitions", f"{kind}-{digest.hexdigest()[:32]}.npz")
    kept = read_arrays(path, ("indices", "offsets"))
    if kept is not None:
        indices, offsets = kept["indices"], kept["offsets"]
        if (offsets.shape == (num_clients + 1,) and offsets[0] == 0 and offsets[-1] == indices.size
                and (np.diff(offsets) >= 0).all() and (indices.size == 0 or (0 <= indices.min()
                                                                              and indices.max() < labels.size))):
            return list(np.split(indices.astype(np.int64), offsets[1:-1]))
    parts = [np.asarray(p, dtype=np.int64) for p in split()]
    write_arrays(path, indices=np.concatenate(parts) if parts else np.zeros(0, np.int64),
                 offsets=np.concatenate([[0], np.cumsum([p.size for p in parts])]).astype(np.int64))
    return parts
