"""What the server checks before it believes a reply: claimed example counts, array dtypes and partition ids.

Each check is a small pure function, used once by :class:`fedsec.strategies.base.RobustStrategy`; each returns
``None`` when the value is acceptable or a reason (the text after ``"invalid: "`` in ``clients.csv``).

Example counts. FedAvg-style rules weight client i by its *claimed* n_i (McMahan et al., AISTATS 2017); a client
that claims 1e9 examples among clients that claim 50 owns the aggregate (the count lie,
:mod:`fedsec.clients.attacks.count_lie`, measured by ``benchmarks/bench_count_lie.py``).
:func:`counted_examples` applies the run's policy (``defense.weighting``): ``"reported"`` (as claimed),
``"capped"`` (min(n_i, cap x median_j n_j), the default) or ``"uniform"`` (every client 1).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedsec.arrays import npy_layout

Weighting = Literal["reported", "capped", "uniform"]
WEIGHTINGS: tuple[str, ...] = ("reported", "capped", "uniform")
#: default largest claim a reply may carry: far above any partition fedsec builds, far below float32 overflow
MAX_EXAMPLES = 1e9


def counted_examples(claims: torch.Tensor, *, weighting: Weighting, weight_cap: float) -> torch.Tensor:
    """The example counts a weighted rule uses, shape (n,), from the validated claims (n,) (each in [1, max]).

    ``"reported"``: the claims; ``"uniform"``: ones; ``"capped"``: min(claim_i, weight_cap x median(claims)), the
    median being the lower median (torch.median) of the round's claims, so one liar among n >= 3 clients cannot
    raise the cap: its weight is at most weight_cap / (weight_cap + n - 1) of the total when the others claim alike.
    """
    if weighting == "reported":
        return claims
    if weighting == "uniform":
        return torch.ones_like(claims)
    cap = weight_cap * claims.median()
    return claims.clamp(max=float(cap))


def check_count(value: object, *, max_examples: float, key: str) -> str | None:
    """A claimed example count must be a whole number in [1, max_examples]; else the reason."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"'{key}' must be a number, got {value!r}"
    x = float(value)
    if not math.isfinite(x) or x < 1 or x > max_examples or x != math.floor(x):
        return f"'{key}' must be a whole number in [1, {max_examples:g}], got {value!r}"
    return None


def check_partition_id(value: object, *, num_partitions: int | None, key: str) -> str | None:
    """A reported partition id must be a whole number >= 0 (and < num_partitions when known); else the reason."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"'{key}' must be an integer, got {value!r}"
    x = float(value)
    if not math.isfinite(x) or x != math.floor(x) or x < 0:
        return f"'{key}' must be an integer >= 0, got {value!r}"
    if num_partitions is not None and x >= num_partitions:
        return f"'{key}' must be below the {num_partitions} partitions of the run, got {value!r}"
    return None


def npy_header(array: Array) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) of the array's serialized .npy bytes, or None if they are not a .npy file of a
    C-order array without Python objects (:func:`fedsec.arrays.npy_layout`)."""
    if array.stype != "numpy.ndarray" or not isinstance(array.data, bytes | bytearray):
        return None
    return npy_layout(array.data)


def check_arrays(arrays: ArrayRecord, like: ArrayRecord) -> str | None:
    """The reply's arrays must have the global model's keys, shapes and dtypes, as declared *and* as serialized,
    with exactly the bytes that shape and dtype need; else the reason (names the first offending key)."""
    if list(arrays.keys()) != list(like.keys()):
        return "arrays do not match the global model's keys/shapes"
    for key, array in arrays.items():
        ref = like[key]
        header = npy_header(array)
        if header is None:
            return f"array {key!r} is not a serialized numpy array"
        shape, dtype, offset = header
        want_dtype = np.dtype(ref.dtype)
        if tuple(array.shape) != tuple(ref.shape) or shape != tuple(ref.shape):
            return "arrays do not match the global model's keys/shapes"
        if dtype != want_dtype or str(array.dtype) != str(want_dtype):
            return f"array {key!r} has dtype {dtype} (declared {array.dtype}), the model's is {want_dtype}"
        expected = offset + math.prod(shape) * dtype.itemsize
        if len(array.data) != expected:
            return f"array {key!r} carries {len(array.data)} bytes, its shape and dtype need {expected}"
    return None
