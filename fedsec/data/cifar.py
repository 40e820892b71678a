"""CIFAR-10 and CIFAR-100 from their python-pickle batches: Krizhevsky, "Learning Multiple Layers of Features from
Tiny Images", tech. report, University of Toronto, 2009 (https://www.cs.toronto.edu/~kriz/cifar.html).

Files (the "CIFAR-10 python version" and "CIFAR-100 python version" archives, unpacked; nothing is downloaded):

- ``cifar-10-batches-py/``: ``data_batch_1`` .. ``data_batch_5`` (10,000 images each), ``test_batch`` (10,000) and
  ``batches.meta``; each batch is a pickled dict with ``b"data"``, a uint8 array (N, 3072), and ``b"labels"``, N
  ints in 0..9.
- ``cifar-100-python/``: ``train`` (50,000), ``test`` (10,000) and ``meta``; ``b"data"`` as above,
  ``b"fine_labels"`` in 0..99 and ``b"coarse_labels"`` (the 20 superclasses) in 0..19.

``data.root`` is the directory holding ``cifar-10-batches-py/`` (``cifar-100-python/``), or that directory itself.
A row of ``b"data"`` is the red, green then blue 32x32 plane, each row-major, so it reshapes to (3, 32, 32).
The batches are pickles written by Python 2: they are read with a restricted unpickler that builds only NumPy
arrays, lists, dicts, strings and numbers, so a file in the data directory cannot run code.

Normalisation: pixels are scaled to [0, 1], then one (mean, std) pair for all three channels is applied (fedsec's
``DatasetSpec.normalisation`` is one pair, read as floats by the audits, the model file and serving). The pair is
pooled from the per-channel statistics commonly used for the training sets, mean = mean of the channel means and
std = sqrt(mean of the channel variances + variance of the channel means) (exact for equal-sized channels):

- CIFAR-10: per channel mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616) -> 0.4734, 0.2516;
- CIFAR-100: per channel mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762) -> 0.4782, 0.2682.

Each channel then comes out with mean within 0.14 of zero and std within 5% of one, instead of exactly 0 and 1.
(The std triple (0.2023, 0.1994, 0.2010) seen in many repositories is the mean of per-image stds, not the
dataset's.)
"""

from __future__ import annotations

import codecs
import math
import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from fedsec.registry import Params

from .datasets import ArrayDataset, DatasetError, DatasetSpec


def pooled(means: tuple[float, ...], stds: tuple[float, ...]) -> tuple[float, float]:
    """One (mean, std) for equal-sized channels with per-channel ``means`` and ``stds``.

    >>> [round(v, 4) for v in pooled((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))]
    [0.4734, 0.2516]
    """
    mean = sum(means) / len(means)
    var = sum(s * s for s in stds) / len(stds) + sum((m - mean) ** 2 for m in means) / len(means)
    return mean, math.sqrt(var)


CIFAR10_CHANNEL_MEAN, CIFAR10_CHANNEL_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_CHANNEL_MEAN, CIFAR100_CHANNEL_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
CIFAR10_MEAN, CIFAR10_STD = (round(v, 4) for v in pooled(CIFAR10_CHANNEL_MEAN, CIFAR10_CHANNEL_STD))
CIFAR100_MEAN, CIFAR100_STD = (round(v, 4) for v in pooled(CIFAR100_CHANNEL_MEAN, CIFAR100_CHANNEL_STD))

CIFAR10_DIR, CIFAR100_DIR = "cifar-10-batches-py", "cifar-100-python"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN, "test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")

# what a CIFAR batch may build: NumPy arrays and dtypes (Python 2's numpy.core names and NumPy 2's), and the
# bytes-from-str helper a protocol-2 pickle written by Python 3 uses
_ARRAY = np.zeros(1, np.uint8)
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    **{(module, "_reconstruct"): _ARRAY.__reduce__()[0] for module in ("numpy.core.multiarray",
                                                                         "numpy._core.multiarray")},
    **{(module, "scalar"): np.int64(0).__reduce__()[0] for module in ("numpy.core.multiarray",
                                                                        "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _ARRAY.__reduce_ex__(5)[0] for module in ("numpy.core.numeric",
                                                                            "numpy._core.numeric")},
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing {module}.{name}: a CIFAR batch holds only arrays, lists and "
                                         "numbers") from None


def read_batch(path: Path) -> dict[bytes, Any]:
    """One pickled CIFAR batch as a dict with bytes keys; :class:`DatasetError` naming the file otherwise."""
    try:
        with path.open("rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DatasetError(f"{path}: not a CIFAR python batch: {e}") from e
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR python batch: a {type(batch).__name__}, expected a dict")
    return {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}


def _images_labels(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = read_batch(path)
    if b"data" not in batch or label_key not in batch:
        raise DatasetError(f"{path}: expected keys b'data' and {label_key!r}, got {sorted(batch)}")
    x = np.asarray(batch[b"data"])
    y = np.asarray(batch[label_key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DatasetError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {x.dtype} {x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path}: {label_key!r} must hold {len(x)} integer labels, got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DatasetError(f"{path}: {label_key!r} must be in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _locate(root: str, folder: str, names: tuple[str, ...], dataset: str) -> dict[str, Path]:
    wanted = f"{folder}/ ({', '.join(names)}; the python version from https://www.cs.toronto.edu/~kriz/cifar.html)"
    if not root:
        raise DatasetError(f"{dataset} has no default location; set data.root to the directory holding {wanted}")
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{dataset}: directory {base} not found; data.root must be the directory holding {wanted}")
    where = base / folder if (base / folder).is_dir() else base
    missing = [name for name in names if not (where / name).is_file()]
    if missing:
        raise DatasetError(f"{dataset}: {', '.join(missing)} not found in {where}; data.root must be the directory "
                           f"holding {wanted}, or that folder itself")
    return {name: where / name for name in names}


def _normalise(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return (x.astype(np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std)


def load_cifar10(root: str | Path) -> ArrayDataset:
    """CIFAR-10 from ``root`` (see the module docstring): (N, 3, 32, 32) float32, normalised, 10 classes."""
    files = _locate(str(root), CIFAR10_DIR, CIFAR10_FILES, "cifar10")
    parts = [_images_labels(files[name], b"labels", 10) for name in CIFAR10_TRAIN]
    x_test, y_test = _images_labels(files["test_batch"], b"labels", 10)
    return ArrayDataset("cifar10", _normalise(np.concatenate([x for x, _ in parts]), CIFAR10_MEAN, CIFAR10_STD),
                        np.concatenate([y for _, y in parts]), _normalise(x_test, CIFAR10_MEAN, CIFAR10_STD), y_test,
                        num_classes=10)


def load_cifar100(root: str | Path, *, labels: Literal["fine", "coarse"] = "fine") -> ArrayDataset:
    """CIFAR-100 from ``root``: (N, 3, 32, 32) float32, normalised; 100 fine classes or 20 coarse superclasses."""
    files = _locate(str(root), CIFAR100_DIR, CIFAR100_FILES, "cifar100")
    key, classes = (b"fine_labels", 100) if labels == "fine" else (b"coarse_labels", 20)
    x_train, y_train = _images_labels(files["train"], key, classes)
    x_test, y_test = _images_labels(files["test"], key, classes)
    return ArrayDataset("cifar100", _normalise(x_train, CIFAR100_MEAN, CIFAR100_STD), y_train,
                        _normalise(x_test, CIFAR100_MEAN, CIFAR100_STD), y_test, num_classes=classes)


class Cifar100Params(Params):
    """``[data]`` keys of ``dataset = "cifar100"``."""

    cifar100_labels: Literal["fine", "coarse"] = Field(
        "fine", description="cifar100: 'fine' = the 100 classes (b'fine_labels'); 'coarse' = the 20 superclasses.")


def _load_cifar10(*, root: str | None = None, **_: object) -> ArrayDataset:
    return load_cifar10(root or "")


def _load_cifar100(*, root: str | None = None, params: Cifar100Params | None = None, **_: object) -> ArrayDataset:
    return load_cifar100(root or "", labels=(params or Cifar100Params()).cifar100_labels)


def _cifar100_variant(params: BaseModel) -> dict[str, Any]:
    if getattr(params, "cifar100_labels", "fine") == "coarse":
        return {"num_classes": 20, "description": "CIFAR-100, 50k/10k 32x32 colour images, 20 coarse superclasses"}
    return {}


CIFAR10 = DatasetSpec(
    "CIFAR-10, 50k/10k 32x32 colour images, 10 classes (python batches under data.root)",
    (3, 32, 32), 10, _load_cifar10, train_size=50_000, test_size=10_000, normalisation=(CIFAR10_MEAN, CIFAR10_STD),
    locate=lambda root, _: _locate(root, CIFAR10_DIR, CIFAR10_FILES, "cifar10"),
)
CIFAR100 = DatasetSpec(
    "CIFAR-100, 50k/10k 32x32 colour images, 100 classes (python batches under data.root)",
    (3, 32, 32), 100, _load_cifar100, train_size=50_000, test_size=10_000,
    normalisation=(CIFAR100_MEAN, CIFAR100_STD), Params=Cifar100Params, variant=_cifar100_variant,
    locate=lambda root, _: _locate(root, CIFAR100_DIR, CIFAR100_FILES, "cifar100"),
)
