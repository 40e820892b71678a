"""FEMNIST from LEAF's JSON files, split naturally by writer: Caldas et al., "LEAF: A Benchmark for Federated
Settings", 2018 (https://arxiv.org/abs/1812.01097); the images are NIST Special Database 19's handwritten digits and
letters (62 classes: 0-9, A-Z, a-z), 28x28, one writer per federated client.

Files (LEAF's ``data/femnist/preprocess.sh`` output; nothing is downloaded), under ``data.root``:

- ``train/*.json`` and ``test/*.json``: LEAF's own train/test split (``-t sample`` or ``-t user``); used when both
  folders hold JSON files. The test set is the test files' samples of the writers read, or all of the test files
  when they share no writer with them (a split by user).
- otherwise ``all_data_*.json`` (in ``data.root`` or its ``all_data/``): every writer's samples; a seeded share
  ``femnist_test_fraction`` of each writer's samples is held out for the server's test set, as LEAF's
  ``split_data.py`` does: the writer keeps max(1, int((1 - fraction) * n)) of its n samples.

Each file is ``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [[784 floats]], "y": [ints]}}}``.
Files are read in name order (numbers compared as numbers), writers in each file's ``users`` order, and the first
``femnist_writers`` writers are kept (0: ``data.num_clients`` of them), so ``data.partition = "natural"`` gives
client i the i-th writer. Inputs (N, 1, 28, 28) float32 as LEAF wrote them, in [0, 1] with a white background of
1.0 (``femnist_invert``: 1 - x, ink = 1 on black like EMNIST); no normalisation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from fedsec.registry import Params

from .datasets import ArrayDataset, DatasetError, DatasetSpec

FEMNIST_CLASSES = 62
_WANTED = ("all_data_*.json (LEAF's data/femnist/data/all_data, in data.root or data.root/all_data) or train/*.json "
           "and test/*.json (LEAF's split)")


class FemnistParams(Params):
    """``[data]`` keys of ``dataset = "femnist"``."""

    femnist_writers: int = Field(
        0, ge=0, le=100_000, description="femnist: writers read, the first in LEAF's file order; 0 = "
        "data.num_clients writers (one per client, as partition = 'natural' needs).")
    femnist_test_fraction: float = Field(
        0.1, gt=0, lt=1, description="femnist from all_data_*.json: share of each writer's samples held out for "
        "the server's test set (LEAF's default 0.1); unused with LEAF's train/ and test/ split.")
    femnist_invert: bool = Field(
        False, description="femnist: 1 - x, ink = 1 on a black background like EMNIST (LEAF writes white = 1.0).")


def _by_name(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def locate_femnist(root: str) -> tuple[list[Path], list[Path]]:
    """(train files, test files) of LEAF's split, or (all_data files, []) ; DatasetError naming what is expected."""
    if not root:
        raise DatasetError(f"femnist has no default location; set data.root to the directory holding {_WANTED}")
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"femnist: directory {base} not found; data.root must hold {_WANTED}")
    train, test = _by_name(list(base.glob("train/*.json"))), _by_name(list(base.glob("test/*.json")))
    if train and test:
        return train, test
    for folder in (base, base / "all_data"):
        found = _by_name(list(folder.glob("all_data_*.json")))
        if found:
            return found, []
    raise DatasetError(f"femnist: no LEAF JSON files in {base}; expected {_WANTED}")


def read_leaf(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(writer, x (n, 784) float32, y (n,) int64) for each writer of one LEAF JSON file, checked."""
    try:
        blob = json.loads(path.read_bytes())
        users, counts, data = blob["users"], blob["num_samples"], blob["user_data"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: not a LEAF JSON file with users, num_samples and user_data: {e!r}") from e
    if not isinstance(users, list) or not isinstance(counts, list) or len(users) != len(counts):
        raise DatasetError(f"{path}: 'users' and 'num_samples' must be lists of the same length")
    out = []
    for user, n in zip(users, counts, strict=True):
        try:
            x, y = np.asarray(data[user]["x"], dtype=np.float32), np.asarray(data[user]["y"])
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{path}: writer {user!r}: user_data needs 'x' (rows of 784 floats) and 'y': "
                               f"{e!r}") from e
        if x.shape != (n, 784) or y.shape != (n,):
            raise DatasetError(f"{path}: writer {user!r}: num_samples says {n}, got x {x.shape} and y {y.shape} "
                               "(expected (n, 784) and (n,))")
        if n and not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(f"{path}: writer {user!r}: labels must be integers, got {y.dtype}")
        if n and (y.min() < 0 or y.max() >= FEMNIST_CLASSES or x.min() < 0 or x.max() > 1):
            raise DatasetError(f"{path}: writer {user!r}: labels must be in 0..61 and pixels in [0, 1], got labels "
                               f"{y.min()}..{y.max()}, pixels {x.min():g}..{x.max():g}")
        out.append((str(user), x, y.astype(np.int64)))
    return out


def _writers(files: list[Path]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    writers, seen = [], set()
    for path in files:
        for writer in read_leaf(path):
            if writer[0] in seen:
                raise DatasetError(f"{path}: writer {writer[0]!r} appears in two files")
            seen.add(writer[0])
            writers.append(writer)
    return writers


def load_femnist(root: str | Path, *, writers: int, seed: int = 0, test_fraction: float = 0.1,
                 invert: bool = False) -> ArrayDataset:
    """FEMNIST's first ``writers`` writers from ``root``, one natural partition per writer (module docstring)."""
    if writers < 1:
        raise DatasetError(f"femnist: need at least one writer, got {writers}")
    first, second = locate_femnist(str(root))
    everyone = _writers(first)
    if len(everyone) < writers:
        raise DatasetError(f"femnist: {root} holds {len(everyone)} writers, {writers} asked for (femnist_writers, "
                           "or data.num_clients when it is 0); use fewer clients or more of LEAF's data")
    kept = everyone[:writers]
    if second:  # LEAF's own split
        train = kept
        tests = _writers(second)
        names = {name for name, _, _ in kept}
        test = [w for w in tests if w[0] in names] or tests
    else:
        rng = np.random.default_rng(seed)
        train, test = [], []
        for name, x, y in kept:
            order = rng.permutation(len(y))
            n_train = max(1, int((1 - test_fraction) * len(y)))
            keep, held = np.sort(order[:n_train]), np.sort(order[n_train:])
            train.append((name, x[keep], y[keep]))
            test.append((name, x[held], y[held]))
    x_test = np.concatenate([x for _, x, _ in test]) if test else np.zeros((0, 784), np.float32)
    if len(x_test) == 0:
        raise DatasetError(f"femnist: the {writers} writers read from {root} leave no test samples; use more writers "
                           "or a larger femnist_test_fraction")
    sizes = [len(y) for _, _, y in train]
    if min(sizes) == 0:
        raise DatasetError(f"femnist: writer {train[sizes.index(0)][0]!r} has no training samples")
    offsets = np.cumsum([0, *sizes])
    natural = [np.arange(offsets[i], offsets[i + 1], dtype=np.int64) for i in range(len(train))]

    def images(x: np.ndarray) -> np.ndarray:
        x = x.reshape(-1, 1, 28, 28)
        return np.float32(1) - x if invert else x

    return ArrayDataset(
        "femnist", images(np.concatenate([x for _, x, _ in train])), np.concatenate([y for _, _, y in train]),
        images(x_test), np.concatenate([y for _, _, y in test]), num_classes=FEMNIST_CLASSES,
        natural_partition=natural,
    )


def _load(*, root: str | None = None, seed: int = 0, num_clients: int = 10, params: FemnistParams | None = None,
          **_: object) -> ArrayDataset:
    params = params or FemnistParams()
    return load_femnist(root or "", writers=params.femnist_writers or num_clients, seed=seed,
                        test_fraction=params.femnist_test_fraction, invert=params.femnist_invert)


def _locate(root: str, _: BaseModel) -> object:
    return locate_femnist(root)


FEMNIST = DatasetSpec(
    "FEMNIST (LEAF JSON under data.root), 28x28 grey handwriting, 62 classes, one writer per client "
    "(partition = 'natural')", (1, 28, 28), FEMNIST_CLASSES, _load, Params=FemnistParams, natural=True,
    locate=_locate,
)
