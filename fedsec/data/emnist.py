"""EMNIST from its IDX files: Cohen, Afshar, Tapson and van Schaik, "EMNIST: an extension of MNIST to handwritten
letters", IJCNN 2017 (https://arxiv.org/abs/1702.05373).

Files: NIST's ``gzip.zip`` unpacked (https://www.nist.gov/itl/products-and-services/emnist-dataset; nothing is
downloaded): ``emnist-<split>-train-images-idx3-ubyte``, ``-train-labels-idx1-ubyte``, ``-test-images-idx3-ubyte``
and ``-test-labels-idx1-ubyte``, each ``.gz`` or not, in ``data.root`` or in its ``gzip/`` folder. The split is
the dataset key ``emnist_split`` (classes, train / test sizes as in the paper's Table II):

- ``byclass``: 62 classes (digits, upper and lower case), 697,932 / 116,323, unbalanced;
- ``bymerge``: 47 classes (15 look-alike letter pairs merged), 697,932 / 116,323;
- ``balanced``: 47 classes, 112,800 / 18,800 (2,400 / 400 per class), the default;
- ``letters``: 26 classes (upper and lower case merged), 124,800 / 20,800; the files label them 1..26, fedsec
  uses 0..25 (label - 1);
- ``digits``: 10 classes, 240,000 / 40,000; ``mnist``: 10 classes, 60,000 / 10,000.

EMNIST stores each image transposed (column-major, as converted from NIST's MATLAB files), so the loader transposes
every image back: an upright "7" as in MNIST. Inputs (N, 1, 28, 28) float32 scaled to [0, 1] and not normalised
(``normalisation`` None, like digits): the dataset's authors publish no per-split mean and std, and the figures in
circulation disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from fedsec.registry import Params

from .datasets import ArrayDataset, DatasetError, DatasetSpec, read_idx

#: split -> (classes, smallest label in the files, train size, test size)
EMNIST_SPLITS: dict[str, tuple[int, int, int, int]] = {
    "byclass": (62, 0, 697_932, 116_323),
    "bymerge": (47, 0, 697_932, 116_323),
    "balanced": (47, 0, 112_800, 18_800),
    "letters": (26, 1, 124_800, 20_800),
    "digits": (10, 0, 240_000, 40_000),
    "mnist": (10, 0, 60_000, 10_000),
}
_PARTS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "test-images-idx3-ubyte", "test-labels-idx1-ubyte")


class EmnistParams(Params):
    """``[data]`` keys of ``dataset = "emnist"``."""

    emnist_split: Literal["byclass", "bymerge", "balanced", "letters", "digits", "mnist"] = Field(
        "balanced", description="emnist: which split's files to read (byclass 62 classes, bymerge / balanced 47, "
        "letters 26, digits / mnist 10).")


def locate_emnist(root: str, split: str) -> dict[str, Path]:
    """The four IDX files of ``split`` under ``root`` or ``root/gzip`` (``.gz`` first); DatasetError naming them."""
    stems = [f"emnist-{split}-{part}" for part in _PARTS]
    wanted = (f"emnist-{split}-{{train,test}}-{{images-idx3,labels-idx1}}-ubyte[.gz] (NIST's gzip.zip, "
              "https://www.nist.gov/itl/products-and-services/emnist-dataset)")
    if not root:
        raise DatasetError(f"emnist has no default location; set data.root to the directory holding {wanted}")
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"emnist: directory {base} not found; data.root must hold {wanted}")
    found, missing = {}, []
    for stem in stems:
        hits = [d / name for d in (base, base / "gzip") for name in (f"{stem}.gz", stem) if (d / name).is_file()]
        if hits:
            found[stem] = hits[0]
        else:
            missing.append(stem)
    if missing:
        raise DatasetError(f"emnist (emnist_split={split!r}): {', '.join(missing)}[.gz] not found in {base} or "
                           f"{base / 'gzip'}; data.root must hold {wanted}")
    return found


def load_emnist(root: str | Path, *, split: str = "balanced") -> ArrayDataset:
    """EMNIST ``split`` from ``root`` (see the module docstring): (N, 1, 28, 28) in [0, 1], upright, labels from 0."""
    if split not in EMNIST_SPLITS:
        raise DatasetError(f"emnist: unknown split {split!r}; use one of {sorted(EMNIST_SPLITS)}")
    classes, first, _, _ = EMNIST_SPLITS[split]
    files = locate_emnist(str(root), split)

    def images(path: Path) -> np.ndarray:
        x = read_idx(path)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise DatasetError(f"{path}: expected N x 28 x 28 uint8 images, got {x.dtype} of shape {x.shape}")
        upright = x.transpose(0, 2, 1)  # stored column-major
        return (upright.astype(np.float32) / np.float32(255))[:, None]

    def labels(path: Path) -> np.ndarray:
        y = read_idx(path)
        if y.ndim != 1 or (y.size and (y.min() < first or y.max() > first + classes - 1)):
            raise DatasetError(f"{path}: expected N labels in {first}..{first + classes - 1} (split {split!r}), got "
                               f"shape {y.shape}" + (f", values {y.min()}..{y.max()}" if y.size else ""))
        return y.astype(np.int64) - first

    stem = f"emnist-{split}"
    x_train, y_train = images(files[f"{stem}-{_PARTS[0]}"]), labels(files[f"{stem}-{_PARTS[1]}"])
    x_test, y_test = images(files[f"{stem}-{_PARTS[2]}"]), labels(files[f"{stem}-{_PARTS[3]}"])
    for part, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise DatasetError(f"{root}: emnist-{split} {part} has {len(x)} images but {len(y)} labels")
    return ArrayDataset("emnist", x_train, y_train, x_test, y_test, num_classes=classes)


def _load(*, root: str | None = None, params: EmnistParams | None = None, **_: object) -> ArrayDataset:
    return load_emnist(root or "", split=(params or EmnistParams()).emnist_split)


def _variant(params: BaseModel) -> dict[str, Any]:
    split = getattr(params, "emnist_split", "balanced")
    classes, _, train, test = EMNIST_SPLITS[split]
    return {"num_classes": classes, "train_size": train, "test_size": test,
            "description": f"EMNIST {split}, {train:,}/{test:,} 28x28 grey images, {classes} classes"}


EMNIST = DatasetSpec(
    "EMNIST (IDX files under data.root), 28x28 grey images; emnist_split: byclass 62 classes, bymerge / balanced 47, "
    "letters 26, digits / mnist 10", (1, 28, 28), 47, _load, train_size=112_800, test_size=18_800,
    Params=EmnistParams, variant=_variant,
    locate=lambda root, params: locate_emnist(root, getattr(params, "emnist_split", "balanced")),
)
