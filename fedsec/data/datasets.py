"""Datasets, loaded offline into memory as NumPy arrays.

- ``fashion-mnist``: Xiao et al., "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning
  Algorithms", 2017 (https://arxiv.org/abs/1708.07747), read from the IDX files of Debian's package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``; gzipped or not). Inputs (N, 1, 28, 28)
  float32, scaled to [0, 1] then normalised with mean 0.2860 and std 0.3530.
- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, ships with scikit-learn), (N, 1, 8, 8) scaled
  by 1/16, a stratified seeded train/test split (default 25% test).
- ``synthetic``: Synthetic(alpha, beta) of Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx),
  MLSys 2020 (https://arxiv.org/abs/1812.06127), sec. 5.1: per device k, u_k ~ N(0, alpha), B_k ~ N(0, beta);
  W_k (10 x 60), b_k ~ N(u_k, 1); v_k ~ N(B_k, 1); x ~ N(v_k, Sigma) with Sigma_jj = j^-1.2; y = argmax(W_k x + b_k).
  Samples per device follow the paper's power law (lognormal(4, 2) + 50, capped at 1,000 here). Defaults
  alpha = beta = 1, 20% of each device's samples held out into the pooled test set; naturally federated.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

DATASETS: dict[str, str] = {
    "fashion-mnist": "Fashion-MNIST, 60k/10k 28x28 grey images, 10 classes (Debian's dataset-fashion-mnist)",
    "digits": "scikit-learn digits, 1,797 8x8 images, 10 classes (fast tests)",
    "synthetic": "FedProx Synthetic(alpha, beta): 60-dim vectors, 10 classes, naturally federated",
}

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
    """Parse an IDX file (http://yann.lecun.com/exdb/mnist/ format), gzipped or not."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot read IDX file: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: IDX body has {len(raw) - header} bytes, the header promises {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetError(
        f"{root / stem}(.gz) not found; install Debian's package dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist) or set data.root"
    )


def load_fashion_mnist(root: str | Path = DEFAULT_FASHION_MNIST_ROOT) -> ArrayDataset:
    """Fashion-MNIST from its four IDX files under ``root``."""
    root = Path(root)

    def images(stem: str) -> np.ndarray:
        x = read_idx(_find_idx(root, stem))
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DatasetError(f"{root / stem}: expected N x 28 x 28 images, got shape {x.shape}")
        return ((x.astype(np.float32) / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD)[:, None]

    def labels(stem: str) -> np.ndarray:
        return read_idx(_find_idx(root, stem)).astype(np.int64)

    x_train, y_train = images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte")
    x_test, y_test = images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DatasetError(f"{root}: image and label counts differ")
    return ArrayDataset("fashion-mnist", x_train, y_train, x_test, y_test, num_classes=10)


def load_digits(*, test_fraction: float = 0.25, seed: int = 0) -> ArrayDataset:
    """scikit-learn's digits, stratified train/test split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
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
    """FedProx's Synthetic(alpha, beta), one device per client."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.lognormal(4, 2, num_clients).astype(int) + 50, 1000)
    cov_diag = np.arange(1, dim + 1, dtype=np.float64) ** -1.2
    x_train, y_train, x_test, y_test, natural = [], [], [], [], []
    offset = 0
    for k in range(num_clients):
        u_k, b_k = rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))
        w = rng.normal(u_k, 1, (num_classes, dim))
        b = rng.normal(u_k, 1, num_classes)
        v = rng.normal(b_k, 1, dim)
        x = rng.normal(v, np.sqrt(cov_diag), (sizes[k], dim))
        y = np.argmax(x @ w.T + b, axis=1)
        n_test = max(1, int(round(test_fraction * sizes[k])))
        x_train.append(x[n_test:])
        y_train.append(y[n_test:])
        x_test.append(x[:n_test])
        y_test.append(y[:n_test])
        natural.append(np.arange(offset, offset + sizes[k] - n_test, dtype=np.int64))
        offset += sizes[k] - n_test
    return ArrayDataset(
        "synthetic",
        np.concatenate(x_train).astype(np.float32),
        np.concatenate(y_train).astype(np.int64),
        np.concatenate(x_test).astype(np.float32),
        np.concatenate(y_test).astype(np.int64),
        num_classes=num_classes,
        natural_partition=natural,
    )


def load_dataset(
    name: str,
    *,
    root: str | None = None,
    seed: int = 0,
    num_clients: int = 10,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> ArrayDataset:
    """Load dataset ``name`` (see :data:`DATASETS`)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(root or DEFAULT_FASHION_MNIST_ROOT)
    if name == "digits":
        return load_digits(seed=seed)
    if name == "synthetic":
        return make_synthetic(alpha=alpha, beta=beta, num_clients=num_clients, seed=seed)
    raise DatasetError(f"unknown dataset {name!r}; use one of {sorted(DATASETS)}")
