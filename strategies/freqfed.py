"""FreqFed: cluster the updates' low-frequency DCT components; average the majority cluster.

Fereidooni, Pegoraro, Rieger, Dmitrienko and Sadeghi, "FreqFed: A Frequency Analysis-Based Approach for Mitigating
Poisoning Attacks in Federated Learning", NDSS 2024 (https://arxiv.org/abs/2312.04432). Each update is moved to the
frequency domain with the DCT-II; its low-frequency coefficients, where the paper finds the benign signal
concentrated and poisoning visible, are compared by cosine distance; HDBSCAN (min_cluster_size = n//2 + 1, as
FLAME's, :func:`fedsec.strategies.flame.flame_majority`) finds the majority cluster, whose updates are averaged,
weighted by examples; the others are flagged (weight 0).

What the server must know: nothing beyond the round's plaintext updates. Defaults: ``low_frequency_share`` 0.5.
Departures: the paper takes a 2-D DCT of each layer's weights and keeps its low-frequency (upper-left) triangle,
about half the coefficients of a square matrix; fedsec's rules see the flat update only, so here it is the lowest
half of a 1-D DCT of the flat update (``scipy.fft.dct``, orthonormal, on the CPU: torch has no DCT; HDBSCAN runs on
the CPU too). A round where no cluster holds a majority aggregates nothing (the global model stays, weights 0).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_float, require_clients
from .base import RobustStrategy
from .flame import flame_majority


def low_frequencies(updates: torch.Tensor, share: float) -> torch.Tensor:
    """The first ceil(share x d) orthonormal DCT-II coefficients of each row of ``updates`` (n, d); float64, CPU.

    >>> low_frequencies(torch.ones(1, 4), 0.5).round(decimals=6).tolist()  # a constant row: its zero frequency only
    [[2.0, 0.0]]
    """
    from scipy.fft import dct

    keep = max(1, math.ceil(share * updates.shape[1]))
    coefficients = dct(updates.detach().cpu().double().numpy(), type=2, norm="ortho", axis=1)[:, :keep]
    return torch.from_numpy(coefficients)


def freqfed_aggregate(updates: torch.Tensor, num_examples: torch.Tensor, *, low_frequency_share: float = 0.5
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The example-weighted mean of the updates in the majority cluster of their low frequencies; weights (n,)."""
    require_clients("FreqFed", updates.shape[0], 2, "n >= 2")
    kept = flame_majority(low_frequencies(updates, low_frequency_share)).to(updates.device)
    weights = torch.where(kept, num_examples.to(updates.dtype), 0.0)
    if float(weights.sum()) <= 0:
        return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device), weights
    weights = weights / weights.sum()
    return weights @ updates, weights


class FreqFedParams(Params):
    """``[defense]`` keys of ``strategy = "freqfed"``."""

    low_frequency_share: float = Field(0.5, gt=0, le=1, description="Share of the DCT coefficients, lowest "
                                       "frequencies first, that are clustered (0 < share <= 1).")


class FreqFed(RobustStrategy):
    """FreqFed (Fereidooni et al. 2024): HDBSCAN majority of the updates' low DCT frequencies, averaged.

    Parameters
    ----------
    low_frequency_share : float (default: 0.5)
        Share of the DCT-II coefficients kept, lowest frequencies first (config key ``defense.low_frequency_share``).
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy`.

    Assumptions
    -----------
    n >= 2 valid updates, fewer than half of them malicious (the cluster must hold n//2 + 1).
    """

    Params = FreqFedParams
    family = "selection"
    description = "FreqFed (Fereidooni et al. 2024): HDBSCAN majority of the low DCT frequencies"
    uses_counts = True

    def __init__(self, *, low_frequency_share: float = 0.5, **kwargs: Any) -> None:
        self.low_frequency_share = check_float("FreqFed", "low_frequency_share", low_frequency_share, low=0.0,
                                               high=1.0, low_open=True, high_open=False)
        super().__init__(**kwargs)
        self.min_valid_updates = 2

    def describe(self) -> str:
        return f"FreqFed(low_frequency_share={self.low_frequency_share:g})"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return freqfed_aggregate(updates, num_examples, low_frequency_share=self.low_frequency_share)
