"""Conversions between Flower ``ArrayRecord``s, PyTorch models and flat parameter vectors.

Robust aggregation kernels work on a stacked ``(n_clients, n_params)`` tensor; these helpers build it from
replies and turn an aggregate vector back into an ``ArrayRecord`` with the global model's keys and shapes.
"""

from __future__ import annotations

import functools
import io
import math
import warnings

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn


def model_to_record(model: nn.Module) -> ArrayRecord:
    """The model's state dict as an ArrayRecord (CPU copies)."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in model.state_dict().items()})  # Array copies


def record_to_tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The record's arrays as writable CPU tensors (copies), by key: a state dict."""
    return {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}


def load_record(model: nn.Module, record: ArrayRecord) -> None:
    """Load ``record`` into ``model`` (on whatever device the model is)."""
    model.load_state_dict(record_to_tensors(record), strict=True)


def record_signature(record: ArrayRecord) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) for each array, in order: two records with equal signatures can be stacked."""
    return [(k, tuple(a.shape)) for k, a in record.items()]


_NPY_MAGIC = b"\x93NUMPY"
NPY_MAX_HEADER = 100_000  # bytes of .npy header read at most (numpy's own default limit is 10,000)


def npy_layout(data: bytes | bytearray) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """(shape, dtype, data offset) of serialized .npy bytes holding a C-order array without Python objects, or None
    when they are not such a file.

    The header is read with numpy's own parser, once per distinct header: every reply of a round carries the same
    few headers (one per model array), and parsing one costs about as much as copying a small array, twice per
    array and reply (the trust checks, then the stacking)."""
    if len(data) < 10 or bytes(data[:6]) != _NPY_MAGIC:
        return None
    major = data[6]
    if major == 1:
        start, length = 10, int.from_bytes(data[8:10], "little")
    elif major in (2, 3) and len(data) >= 12:
        start, length = 12, int.from_bytes(data[8:12], "little")
    else:
        return None
    if length > NPY_MAX_HEADER or len(data) < start + length:
        return None
    return _parse_npy_header(bytes(data[: start + length]))


@functools.lru_cache(maxsize=1024)
def _parse_npy_header(header: bytes) -> tuple[tuple[int, ...], np.dtype, int] | None:
    buffer = io.BytesIO(header)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(buffer, max_header_size=NPY_MAX_HEADER)
    except (ValueError, TypeError, EOFError):
        return None
    if fortran_order or dtype.hasobject:
        return None
    return tuple(shape), dtype, buffer.tell()


def array_view(array: Array) -> np.ndarray:
    """The array's values without copying: a read-only view into its serialized .npy bytes.

    Flower's ``Array.numpy()`` runs ``np.load`` on a BytesIO, which copies every value; at 100 clients x 1.6M
    parameters that copy is a large share of aggregation time. This reads the .npy header (:func:`npy_layout`) and
    maps the data in place (C-order arrays; anything else falls back to ``Array.numpy()``)."""
    layout = npy_layout(array.data) if isinstance(array.data, bytes | bytearray) else None
    if layout is None:
        return array.numpy()
    shape, dtype, offset = layout
    return np.frombuffer(array.data, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape)


def record_size(record: ArrayRecord) -> int:
    """Total number of values in the record's arrays."""
    return sum(int(np.prod(a.shape)) for a in record.values())


def _flat_views(record: ArrayRecord) -> list[torch.Tensor]:
    """The record's arrays as flat, read-only torch views of their serialized bytes (no copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch notes the read-only view; it is only read
        return [torch.from_numpy(array_view(array).reshape(-1)) for array in record.values()]


def fill_row(row: torch.Tensor, record: ArrayRecord) -> None:
    """Copy the record's arrays, flattened in key order, into the 1-D tensor ``row`` (one pass, casting)."""
    offset = 0
    for values in _flat_views(record):
        row[offset : offset + values.numel()].copy_(values)
        offset += values.numel()


def stack_records(
    records: list[ArrayRecord], *, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Records with equal signatures as one (n, d) tensor, each row filled in one pass.

    ``out``, when given, is a preallocated (n, d) CPU tensor of ``dtype`` that is filled and returned (a caller that
    stacks every round can keep one: a fresh n*d allocation is page-faulted in again on every call, which at
    100 x 1.6M float32 costs more than the copy itself).
    """
    shape = (len(records), record_size(records[0]) if records else 0)
    if out is None:
        out = torch.empty(shape, dtype=dtype)
    elif tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}, expected {shape} and {dtype}")
    for row, record in zip(out, records, strict=True):
        fill_row(row, record)
    return out


def stack_updates(
    records: list[ArrayRecord], reference: torch.Tensor, *, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[float], list[bool]]:
    """Rows ``record - reference`` (flattened in key order) as one (n, d) tensor, their L2 norms, and which
    records are finite.

    reference: the flat global model, shape (d,), on the CPU; rows take its dtype. Returns the (n, d) rows, the
    L2 norm of each row (a Python float; +inf or NaN where the row overflows or is not finite) and a finite flag
    per record. Each row is written in one pass over the reply (``torch.sub`` from the zero-copy view of the
    serialized arrays straight into the row; arrays of another dtype are cast in first, then the reference is
    subtracted), so the row is still in cache when its norm is taken. A record counts as finite when every value,
    cast to the rows' dtype, is finite (no NaN or +-Inf), exactly as a check of :func:`stack_records`' rows: a
    finite norm implies a finite update and so finite values; only a row whose norm is not finite is filled again
    with the raw values and checked value by value (the reference may not be finite, ``record - reference`` or
    the sum of squares may overflow). Rows of non-finite records hold unspecified values. ``out`` as in
    :func:`stack_records`.
    """
    n, d = len(records), reference.numel()
    if out is None:
        out = torch.empty((n, d), dtype=reference.dtype)
    elif tuple(out.shape) != (n, d) or out.dtype != reference.dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}, expected {(n, d)} and "
                         f"{reference.dtype}")
    norms, finite = [], []
    for row, record in zip(out, records, strict=True):
        offset = 0
        for values in _flat_views(record):
            end = offset + values.numel()
            if values.dtype == row.dtype:
                torch.sub(values, reference[offset:end], out=row[offset:end])
            else:  # cast first, as stack_records would, then subtract in the rows' dtype
                row[offset:end].copy_(values)
                row[offset:end].sub_(reference[offset:end])
            offset = end
        if offset != d:
            raise ValueError(f"record has {offset} values, the reference {d}")
        norm = float(torch.linalg.vector_norm(row))
        ok = math.isfinite(norm)
        if not ok:  # rare: decide on the raw values, exactly as a check of stack_records' rows would
            fill_row(row, record)
            ok = bool(torch.isfinite(row.amax()) & torch.isfinite(row.amin()))
            row.sub_(reference)
        norms.append(norm)
        finite.append(ok)
    return out, norms, finite


def record_to_vector(record: ArrayRecord, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Flatten all arrays of ``record`` (in key order) into one 1-D tensor."""
    out = torch.empty(record_size(record), dtype=dtype)
    fill_row(out, record)
    return out


def vector_to_record(vector: torch.Tensor, like: ArrayRecord) -> ArrayRecord:
    """Split a flat vector back into an ArrayRecord with the keys, shapes and dtypes of ``like``."""
    flat = vector.detach().cpu()
    out: dict[str, Array] = {}
    offset = 0
    for key, array in like.items():
        ref = array.numpy()
        size = int(np.prod(ref.shape))
        chunk = flat[offset : offset + size].numpy().reshape(ref.shape).astype(ref.dtype, copy=False)
        out[key] = Array(np.ascontiguousarray(chunk))
        offset += size
    if offset != flat.numel():
        raise ValueError(f"vector has {flat.numel()} entries, the record {offset}")
    return ArrayRecord(out)
