"""Shared parameters of the golden-value tests: the devices and dtypes they run on, and a tensor shorthand."""

from __future__ import annotations

import pytest
import torch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
DTYPES = [torch.float32, torch.float64]


def t(values, dtype=torch.float32, device="cpu") -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def assert_permutation_equivariant(kernel, *per_client: torch.Tensor) -> None:
    """Permuting the clients (the rows of every tensor in ``per_client``) permutes the weights ``kernel`` returns
    and leaves its aggregate unchanged; both stay on the updates' device."""
    updates = per_client[0]
    perm = torch.tensor([3, 6, 0, 5, 1, 4, 2], device=updates.device)  # 7 clients
    aggregate, weights = kernel(*per_client)
    aggregate_p, weights_p = kernel(*(x[perm] for x in per_client))
    torch.testing.assert_close(aggregate_p, aggregate)
    torch.testing.assert_close(weights_p, weights[perm])
    assert aggregate.device == updates.device and weights.shape == (7,)
