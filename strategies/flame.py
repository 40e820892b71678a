"""FLAME: cluster the updates by cosine distance, keep the majority cluster, clip to the median norm, add noise.

Nguyen, Rieger, Chen, Yalame, Möllering, Fereidooni, Marchal, Miettinen, Mirhoseini, Zeitouni, Koushanfar,
Sadeghi and Schneider, "FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022,
https://www.usenix.org/conference/usenixsecurity22/presentation/nguyen (arXiv: https://arxiv.org/abs/2101.02281).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_float, check_int, require_clients
from ._linalg import gram_matrix
from .base import RobustStrategy


def cosine_distances(updates: torch.Tensor) -> torch.Tensor:
    """1 - cos(u_i, u_j), shape (n, n), in [0, 2], symmetric with a zero diagonal; a zero update is at distance 1
    from every other update. updates: (n, d). Computed in float64 (returned in the updates' dtype) from the Gram
    matrix, G_ij / sqrt(G_ii G_jj), one chunk of columns at a time (:func:`fedsec.strategies._linalg.gram_matrix`):
    neither a float64 copy nor a normalised copy of the (n, d) updates is made."""
    return _cosine_distances64(updates).to(updates.dtype)


def _cosine_distances64(updates: torch.Tensor) -> torch.Tensor:
    """:func:`cosine_distances` in float64."""
    gram = gram_matrix(updates, compute_dtype=torch.float64)
    norms = gram.diagonal().sqrt()
    scale = torch.outer(norms, norms)
    cosine = torch.where(scale > 0, gram / scale.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    distances = (1.0 - cosine).clamp(0.0, 2.0)
    distances = (distances + distances.T) / 2
    return distances.fill_diagonal_(0.0)


def flame_majority(updates: torch.Tensor) -> torch.Tensor:
    """Boolean mask (n,) of the updates in HDBSCAN's cluster of at least n//2 + 1 members (none may be found).

    HDBSCAN (scikit-learn) runs on the CPU over the float64 cosine-distance matrix of the updates (n, d), n >= 2,
    with min_cluster_size = n//2 + 1, min_samples = 1 and allow_single_cluster = True: at most one cluster can
    hold a majority, and without allow_single_cluster HDBSCAN would never return the root cluster, so a round
    without a clear split would be all noise. Noise (label -1) is rejected.
    """
    from sklearn.cluster import HDBSCAN  # here, not at the top: scikit-learn costs ~2 s of CLI start-up

    n = updates.shape[0]
    require_clients("FLAME", n, 2, "n >= 2")
    distances = _cosine_distances64(updates).cpu().numpy()
    labels = (
        HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", allow_single_cluster=True, copy=True)
        .fit(distances)
        .labels_
    )
    clustered = labels[labels >= 0]
    if clustered.size == 0:
        return torch.zeros(n, dtype=torch.bool, device=updates.device)
    majority = int(np.bincount(clustered).argmax())
    return torch.from_numpy(labels == majority).to(updates.device)


def flame_aggregate(
    updates: torch.Tensor,
    *,
    noise_lambda: float = 0.001,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the majority cluster's updates, each clipped to S_t = median_i ||u_i||, plus N(0, (lambda S_t)^2 I).

    updates: (n, d), n >= 2. S_t is the median (mean of the two middle values for even n) over *all* n updates.
    The noise is drawn on the CPU from ``generator`` in the updates' dtype and moved to their device (as in
    :func:`fedsec.strategies.norm_clipping.norm_clip`). Returns the aggregate (d,) and the weights (n,):
    min(1, S_t / ||u_i||) / |kept| for the kept updates, 0 for the others. If no cluster is found the aggregate
    is the zero update, without noise, and all weights are 0.
    """
    kept = flame_majority(updates)
    norms = torch.linalg.vector_norm(updates, dim=1)
    s_t = torch.quantile(norms, 0.5)
    scales = torch.where(norms > s_t, s_t / norms.clamp_min(torch.finfo(updates.dtype).tiny), 1.0)
    count = int(kept.sum())
    if count == 0:
        return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device), torch.zeros_like(norms)
    weights = torch.where(kept, scales / count, 0.0)
    aggregate = weights @ updates
    if noise_lambda > 0:
        noise = torch.randn(updates.shape[1], generator=generator, dtype=updates.dtype)
        aggregate = aggregate + (noise_lambda * s_t) * noise.to(updates.device)
    return aggregate, weights



class FLAMEParams(Params):
    """``[defense]`` keys of ``strategy = "flame"``."""

    noise_lambda: float = Field(0.001, ge=0, le=100, description="noise std as a share of the median norm, 0..100.")

class FLAME(RobustStrategy):
    """FLAME: keep the majority cosine cluster (HDBSCAN), clip to the median norm, average, add Gaussian noise.

    Parameters
    ----------
    noise_lambda : float (default: 0.001)
        lambda >= 0; the noise std is lambda * S_t, S_t the median update norm of the round (config key
        ``defense.noise_lambda``). The paper uses 0.001 for image classification; 0 disables the noise.
    seed : int (default: 0)
        Seeds the torch.Generator the noise is drawn from (config key ``defense.seed``); the stream continues
        across rounds, as in :class:`fedsec.strategies.norm_clipping.NormClipping`.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    Fewer than n/2 malicious updates (no f is configured): HDBSCAN with min_cluster_size = n//2 + 1,
    min_samples = 1 keeps one cluster holding a majority of the updates; the others (noise) are rejected, which
    can include honest outliers. n >= 2 valid updates (:attr:`min_valid_updates`). Works on updates. The
    clipping bound S_t is the median norm over all updates, so a minority cannot inflate it. Reported weights are
    min(1, S_t / ||u_i||) / |kept|, so clipped clients show less than 1/|kept|.

    Differences
    -----------
    The paper clusters the cosine distances of the local *models*; fedsec clusters the *updates* (local model -
    global model). Every local model equals the shared global model plus a small update, so the cosine between
    two models is close to 1 for every pair and the angles the rule needs are dominated by the shared part (and
    by float rounding); the updates carry exactly the differences, and they are what every fedsec rule receives
    (the paper's S_t is already a norm of updates). Clustering uses scikit-learn's ``sklearn.cluster.HDBSCAN``
    (public FLAME reimplementations use the standalone ``hdbscan`` package): a maintained, tested
    implementation in a library the project already depends on, rather than code of our own. The kept updates
    are averaged uniformly, as in the paper (``num-examples`` ignored); the noise is added to the aggregate
    update, which equals adding it to the new global model. A round where HDBSCAN finds no cluster keeps the
    global model. Flower has no FLAME strategy.
    """

    Params = FLAMEParams
    family = "selection"
    description = 'FLAME: HDBSCAN majority, median-norm clipping, noise (Nguyen et al. 2022)'

    min_valid_updates = 2

    def __init__(self, *, noise_lambda: float = 0.001, seed: int = 0, **kwargs: Any) -> None:
        self.noise_lambda = check_float("FLAME", "noise_lambda", noise_lambda, low=0.0)
        self.seed = check_int("FLAME", "seed", seed, low=0)
        self.generator = torch.Generator().manual_seed(self.seed)
        super().__init__(**kwargs)

    def describe(self) -> str:
        return f"FLAME(noise_lambda={self.noise_lambda:g}, seed={self.seed}; n >= 2)"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return flame_aggregate(updates, noise_lambda=self.noise_lambda, generator=self.generator)
