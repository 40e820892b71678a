"""Datasets, loaded offline into memory as NumPy arrays (:class:`ArrayDataset`); see :data:`DATASETS`.

- ``fashion-mnist``: Xiao et al., "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
  Algorithms", 2017 (https://arxiv.org/abs/1708.07747), read from the four IDX files of Debian's package
  ``dataset-fashion-mnist`` (default root ``/usr/share/datasets/fashion-mnist``; ``.gz`` or uncompressed names).
  The IDX header (magic 0x0000, dtype code, number of dims, big-endian dims) is validated against the file's size.
  Inputs (N, 1, 28, 28) float32, scaled to [0, 1] then normalised with mean 0.2860 and std 0.3530; labels int64.
- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, ships with scikit-learn), (N, 1, 8, 8) float32
  scaled by 1/16, a stratified seeded train/test split (``train_test_split``, default 25% test), kept in a cache
  (:func:`load_digits`).
- ``synthetic``: Synthetic(alpha, beta) of Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx),
  MLSys 2020 (https://arxiv.org/abs/1812.06127), sec. 5.1. Per device k: u_k ~ N(0, alpha), B_k ~ N(0, beta);
  W_k (classes x dim) and b_k with entries ~ N(u_k, 1); v_k (dim) with entries ~ N(B_k, 1); x ~ N(v_k, Sigma),
  Sigma diagonal with Sigma_jj = j^-1.2; y = argmax softmax(W_k x + b_k). As in the paper's generator
  (github.com/litian96/FedProx, ``data/synthetic_*/generate_synthetic.py``), alpha and beta are the *standard
  deviations* of u_k and B_k (``np.random.normal(0, alpha)``), and device k has lognormal(4, 2) + 50 samples (a power
  law), capped here at 1,000. Defaults: alpha = beta = 1, 30 devices, dim 60, 10 classes, 20% of each device's
  samples held out into the pooled test set; ``natural_partition`` holds each device's train indices.
  Seeded with ``np.random.default_rng(seed)``.
- ``cifar10`` / ``cifar100`` (:mod:`.cifar`), ``emnist`` (:mod:`.emnist`) and ``femnist`` (:mod:`.femnist`, naturally
  federated by writer): read from the files under ``data.root``; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from fedsec.registry import NoParams, Params

from .cache import cache_file, read_arrays, write_arrays

FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
SYNTHETIC_MIN_SAMPLES, SYNTHETIC_MAX_SAMPLES = 50, 1000  # per device: lognormal(4, 2) + 50, capped


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message names the file and what to do."""


@dataclass(frozen=True)
class ArrayDataset:
    """A labelled train/test dataset in memory."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    natural_partition: list[np.ndarray] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format, http://yann.lecun.com/exdb/mnist/), gzipped (``.gz``) or not.

    Header: two zero bytes, a dtype code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64),
    the number of dimensions, then each dimension as a big-endian uint32; the body must hold exactly their product.
    Raises :class:`DatasetError` naming the file if it is unreadable, not IDX, or truncated.
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"{path}: cannot read IDX file: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number 0x{raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(
            f"{path}: IDX body has {len(raw) - header} bytes, the header (shape {shape}) promises {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


_INSTALL_HINT = (
    "install Debian's package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set data.root"
)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"Fashion-MNIST: {root / stem}[.gz] not found; {_INSTALL_HINT}")


def load_fashion_mnist(root: str | Path = DEFAULT_FASHION_MNIST_ROOT) -> ArrayDataset:
    """Fashion-MNIST from its four IDX files under ``root`` (``.gz`` or not), normalised; see the module docstring."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Fashion-MNIST: directory {root} not found; {_INSTALL_HINT}")

    def images(stem: str) -> np.ndarray:
        path = _find_idx(root, stem)
        x = read_idx(path)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DatasetError(f"{path}: expected N x 28 x 28 uint8 images, got {x.dtype} of shape {x.shape}")
        out = x.astype(np.float32)  # (x / 255 - mean) / std in place: the same values, one 188 MB array instead of 3
        out /= np.float32(255)
        out -= np.float32(FASHION_MNIST_MEAN)
        out /= np.float32(FASHION_MNIST_STD)
        return out[:, None]

    def labels(stem: str) -> np.ndarray:
        path = _find_idx(root, stem)
        y = read_idx(path)
        if y.ndim != 1 or (y.size and (y.min() < 0 or y.max() > 9)):
            raise DatasetError(f"{path}: expected N labels in 0..9, got shape {y.shape}")
        return y.astype(np.int64)

    x_train, y_train = images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte")
    x_test, y_test = images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte")
    for split, x, y in (("train", x_train, y_train), ("t10k", x_test, y_test)):
        if len(x) != len(y):
            raise DatasetError(f"{root}: {split} has {len(x)} images but {len(y)} labels")
    return ArrayDataset("fashion-mnist", x_train, y_train, x_test, y_test, num_classes=10)


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> ArrayDataset:
    """scikit-learn's digits, (N, 1, 8, 8) scaled to [0, 1], stratified seeded train/test split.

    The split is kept in ``$XDG_CACHE_HOME/fedsec/digits/`` (default ``~/.cache``), keyed by scikit-learn's version,
    the test fraction and the seed: importing scikit-learn costs about 2.5 s of every digits run's start-up, reading
    the split back a few milliseconds. A cache that cannot be read or written is ignored (the split is redone)."""
    if not 0 < test_fraction < 1:
        raise DatasetError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    cache = _digits_cache(test_fraction, seed)
    if cache is not None and (cached := _read_digits(cache)) is not None:
        return cached
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    if cache is not None:
        write_arrays(cache, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return ArrayDataset("digits", x_train, y_train, x_test, y_test, num_classes=10)


def _digits_cache(test_fraction: float, seed: int) -> Path | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        sklearn = version("scikit-learn")
    except PackageNotFoundError:
        return None
    return cache_file("digits", f"sklearn-{sklearn}-test-{test_fraction!r}-seed-{seed}.npz")


def _read_digits(path: Path) -> ArrayDataset | None:
    arrays = read_arrays(path, ("x_train", "y_train", "x_test", "y_test"))
    if arrays is None:
        return None
    x_train, y_train, x_test, y_test = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    shapes_ok = (x_train.shape[1:] == x_test.shape[1:] == (1, 8, 8) and len(x_train) == len(y_train)
                 and len(x_test) == len(y_test) and len(x_train) + len(x_test) == 1797)
    if not shapes_ok or x_train.dtype != np.float32 or y_train.dtype != np.int64:
        return None
    return ArrayDataset("digits", x_train, y_train, x_test, y_test, num_classes=10)


def make_synthetic(
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    num_clients: int = 30,
    dim: int = 60,
    num_classes: int = 10,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> ArrayDataset:
    """FedProx's Synthetic(alpha, beta), one device per client (``natural_partition``); see the module docstring."""
    if alpha < 0 or beta < 0:
        raise DatasetError(f"synthetic: alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    if num_clients < 1 or dim < 1 or num_classes < 2:
        raise DatasetError(
            f"synthetic: need num_clients >= 1, dim >= 1, num_classes >= 2; got {num_clients}, {dim}, {num_classes}"
        )
    if not 0 <= test_fraction < 1:
        raise DatasetError(f"synthetic: test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.lognormal(4, 2, num_clients).astype(np.int64) + SYNTHETIC_MIN_SAMPLES, SYNTHETIC_MAX_SAMPLES)
    u = rng.normal(0, alpha, num_clients)  # mean of W_k and b_k
    big_b = rng.normal(0, beta, num_clients)  # mean of v_k
    std_x = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt(Sigma_jj), Sigma_jj = j^-1.2
    x_train, y_train, x_test, y_test, natural = [], [], [], [], []
    offset = 0
    for k in range(num_clients):
        w = rng.normal(u[k], 1, (num_classes, dim))
        b = rng.normal(u[k], 1, num_classes)
        v = rng.normal(big_b[k], 1, dim)
        x = rng.normal(v, std_x, (sizes[k], dim))
        y = np.argmax(x @ w.T + b, axis=1)  # softmax is monotone: argmax of the logits
        n_test = min(int(round(test_fraction * sizes[k])), int(sizes[k]) - 1)
        n_train = int(sizes[k]) - n_test
        x_test.append(x[:n_test])
        y_test.append(y[:n_test])
        x_train.append(x[n_test:])
        y_train.append(y[n_test:])
        natural.append(np.arange(offset, offset + n_train, dtype=np.int64))
        offset += n_train
    return ArrayDataset(
        "synthetic",
        np.concatenate(x_train).astype(np.float32),
        np.concatenate(y_train).astype(np.int64),
        np.concatenate(x_test).astype(np.float32),
        np.concatenate(y_test).astype(np.int64),
        num_classes=num_classes,
        natural_partition=natural,
    )


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is, known without loading it: shape, classes, size, where it lives, how to load it.

    ``load(root=, seed=, num_clients=, params=)`` returns the :class:`ArrayDataset` (``params``: the validated
    ``[data]`` keys of this dataset's own, :attr:`Params`); ``normalisation`` is the (mean, std) applied to pixels
    in [0, 1], one pair for every channel (None: inputs are already in [0, 1] or not images). ``natural``: the
    dataset has its own per-client split (``data.partition = "natural"``). ``locate(root, params)`` finds the
    dataset's files under ``root`` ('' when none is given and there is no default), raising :class:`DatasetError`
    that names the files expected; None for a dataset without files or only a directory to check.
    ``variant(params)``: the fields its keys decide (EMNIST's split fixes its classes and sizes); see
    :meth:`resolve`.
    """

    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    load: Callable[..., ArrayDataset]
    train_size: int | None = None
    test_size: int | None = None
    default_root: str = ""
    normalisation: tuple[float, float] | None = None
    Params: type[BaseModel] = NoParams  # the dataset's own [data] keys
    natural: bool = False
    locate: Callable[[str, BaseModel], object] | None = None
    variant: Callable[[BaseModel], dict[str, Any]] | None = None

    def resolve(self, params: BaseModel | None = None) -> DatasetSpec:
        """This spec with what ``params`` (its validated keys) decide: classes, sizes, description."""
        if self.variant is None or params is None:
            return self
        return replace(self, **self.variant(params))

    def check_root(self, root: str, params: BaseModel | None = None) -> str | None:
        """Why the dataset cannot be read from ``root`` ('' = default) with its keys ``params``, or None."""
        where = root or self.default_root
        if self.locate is not None:
            try:
                self.locate(where, params if params is not None else self.Params())
            except DatasetError as e:
                return str(e)
            return None
        if where and not Path(where).is_dir():
            return (f"directory {where!r} not found; install Debian's package dataset-fashion-mnist "
                    "(apt-get install dataset-fashion-mnist) or set data.root")
        return None


def _load_fashion_mnist(*, root: str | None = None, **_: object) -> ArrayDataset:
    return load_fashion_mnist(root or DEFAULT_FASHION_MNIST_ROOT)


def _load_digits(*, seed: int = 0, **_: object) -> ArrayDataset:
    return load_digits(seed=seed)


class SyntheticParams(Params):
    """``[data]`` keys of ``dataset = "synthetic"``."""

    synthetic_alpha: float = Field(1.0, ge=0, le=100, description="FedProx Synthetic(alpha, beta): model spread.")
    synthetic_beta: float = Field(1.0, ge=0, le=100, description="FedProx Synthetic(alpha, beta): data spread.")


def _load_synthetic(*, seed: int = 0, num_clients: int = 10, params: SyntheticParams | None = None,
                    **_: object) -> ArrayDataset:
    params = params or SyntheticParams()
    return make_synthetic(alpha=params.synthetic_alpha, beta=params.synthetic_beta, num_clients=num_clients,
                          seed=seed)


FASHION_MNIST = DatasetSpec(
    "Fashion-MNIST, 60k/10k 28x28 grey images, 10 classes (Debian's dataset-fashion-mnist)",
    (1, 28, 28), 10, _load_fashion_mnist, train_size=60_000, test_size=10_000, default_root=DEFAULT_FASHION_MNIST_ROOT,
    normalisation=(FASHION_MNIST_MEAN, FASHION_MNIST_STD),
)
DIGITS = DatasetSpec("scikit-learn digits, 1,797 8x8 images, 10 classes (fast tests)", (1, 8, 8), 10, _load_digits,
                     train_size=1_347, test_size=450)
SYNTHETIC = DatasetSpec("FedProx Synthetic(alpha, beta): 60-dim vectors, 10 classes, naturally federated", (60,), 10,
                        _load_synthetic, Params=SyntheticParams, natural=True)


def load_dataset(
    name: str,
    *,
    root: str | None = None,
    seed: int = 0,
    num_clients: int = 10,
    params: BaseModel | dict[str, Any] | None = None,
) -> ArrayDataset:
    """Load dataset ``name`` (a name in :data:`fedsec.data.DATASETS`).

    ``root``: the directory of the dataset's files (Fashion-MNIST's default ``/usr/share/datasets/fashion-mnist``;
    CIFAR, EMNIST and FEMNIST have no default); ``seed`` seeds digits' train/test split, the synthetic generator
    and FEMNIST's held-out samples; ``num_clients`` is Synthetic(alpha, beta)'s number of devices and FEMNIST's
    number of writers; ``params``: the dataset's own keys (its ``Params``, or a dict of them; default: their
    defaults). Raises :class:`DatasetError` for an unknown name or a dataset that cannot be loaded.
    """
    from fedsec.registry import parse_params

    from .registry import DATASETS

    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; use one of {DATASETS.names()}")
    spec = DATASETS.get(name)
    if isinstance(params, dict):
        params = parse_params(spec.Params, params, section="data", kind=f"data.dataset={name!r}")
    return spec.load(root=root, seed=seed, num_clients=num_clients, params=params or spec.Params())
