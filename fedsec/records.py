"""Conversions between Flower ``ArrayRecord``s, PyTorch models and flat parameter vectors.

Robust aggregation kernels work on a stacked ``(n_clients, n_params)`` tensor; these helpers build it from
replies and turn an aggregate vector back into an ``ArrayRecord`` with the global model's keys and shapes.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from torch import nn


def model_to_record(model: nn.Module) -> ArrayRecord:
    """The model's state dict as an ArrayRecord (CPU copies)."""
    return ArrayRecord({k: Array(v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items()})


def load_record(model: nn.Module, record: ArrayRecord) -> None:
    """Load ``record`` into ``model`` (on whatever device the model is)."""
    state = {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in record.items()}
    model.load_state_dict(state, strict=True)


def record_signature(record: ArrayRecord) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) for each array, in order: two records with equal signatures can be stacked."""
    return [(k, tuple(a.shape)) for k, a in record.items()]


def record_to_vector(record: ArrayRecord, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Flatten all arrays of ``record`` (in key order) into one 1-D tensor."""
    parts = [torch.from_numpy(np.ascontiguousarray(a.numpy()).reshape(-1)).to(dtype) for a in record.values()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


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
