"""FoolsGold: down-weight clients whose update histories point the same way (sybils).

Fung, Yoon and Beschastnikh, "The Limitations of Federated Learning in Sybil Settings", RAID 2020,
https://www.usenix.org/conference/raid2020/presentation/fung (arXiv: https://arxiv.org/abs/1808.04866;
reference code: https://github.com/DistributedML/FoolsGold).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from pydantic import Field

from fedsec.registry import Params

from ._checks import check_float
from ._linalg import gram_matrix
from .base import RobustStrategy


def foolsgold_weights(histories: torch.Tensor | Sequence[torch.Tensor], *, kappa: float = 1.0) -> torch.Tensor:
    """FoolsGold's learning rates alpha (n,) in [0, 1] from the clients' summed-update histories (n, d) (a tensor,
    or a sequence of n tensors of d values), in the histories' dtype and on their device.

    cs = cosine similarity of the histories with the diagonal set to 0; v_i = max_j cs_ij; pardoning:
    cs_ij <- cs_ij v_i / v_j where v_j > v_i; wv_i = clip(1 - max_j cs_ij, 0, 1); wv <- wv / max wv (1 -> 0.99);
    alpha_i = clip(kappa (ln(wv_i / (1 - wv_i)) + 0.5), 0, 1). All zero when every wv_i is 0 (identical histories).
    """
    first = histories if isinstance(histories, torch.Tensor) else histories[0]
    return _alpha(histories, kappa=kappa, dtype=first.dtype, device=first.device)


def _alpha(
    histories: torch.Tensor | Sequence[torch.Tensor], *, kappa: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """:func:`foolsgold_weights` with the products in ``dtype``, on ``device``.

    The cosine similarities come from the Gram matrix of the histories, G_ij / sqrt(G_ii G_jj), one chunk of
    columns at a time (:func:`fedsec.strategies._linalg.gram_matrix`, float64 sums): no normalised (n, d) copy of
    the histories, nor a stacked one when they are given as rows. When a product overflows ``dtype`` the Gram
    matrix is recomputed in float64, and a pair whose similarity is still not finite counts as dissimilar (0):
    never a NaN weight.
    """
    gram = gram_matrix(histories, compute_dtype=dtype).to(device)
    if not bool(torch.isfinite(gram).all()):  # products overflowed ``dtype`` (histories above ~1e19): redo in float64
        gram = gram_matrix(histories, compute_dtype=torch.float64).to(device)
    n = gram.shape[0]
    norms = gram.diagonal().sqrt()
    scale = torch.outer(norms, norms)
    ok = (scale > 0) & torch.isfinite(scale) & torch.isfinite(gram)
    cosine = torch.where(ok, gram / scale.clamp_min(torch.finfo(torch.float64).tiny), 0.0).to(dtype)
    eye = torch.eye(n, dtype=torch.bool, device=device)
    cs = cosine.clamp(-1.0, 1.0).masked_fill(eye, 0.0)  # the reference code's cs - I
    v = cs.max(dim=1).values  # >= 0: the zeroed diagonal counts
    pardon = (v[:, None] < v[None, :]) & ~eye
    cs = torch.where(pardon, cs * v[:, None] / v[None, :].clamp_min(torch.finfo(cs.dtype).tiny), cs)
    wv = (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0)
    top = wv.max()
    if top <= 0:
        return torch.zeros_like(wv)
    wv = (wv / top).clamp(max=0.99)  # max -> 1 -> 0.99, as the reference code, so the logit stays finite
    alpha = kappa * (torch.log(wv / (1.0 - wv)) + 0.5)  # wv = 0 -> -inf -> 0 below
    return alpha.nan_to_num(nan=0.0, neginf=0.0).clamp(0.0, 1.0)


def foolsgold_aggregate(
    updates: torch.Tensor, histories: torch.Tensor | Sequence[torch.Tensor], *, kappa: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of this round's updates (n, d) weighted by :func:`foolsgold_weights` of the histories (n, d), a tensor or
    a sequence of n tensors of d values (computed in the updates' dtype, on their device).

    Row i of ``histories`` is client i's sum of updates over the rounds it took part in, this round's included.
    Returns the aggregate (d,) and the weights (n,): alpha_i / sum_j alpha_j (summing to 1), or the zero update
    and zero weights when every alpha is 0.
    """
    alpha = _alpha(histories, kappa=kappa, dtype=updates.dtype, device=updates.device)
    total = alpha.sum()
    if total <= 0:
        return torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device), alpha
    weights = alpha / total
    return weights @ updates, weights



class FoolsGoldParams(Params):
    """``[defense]`` keys of ``strategy = "foolsgold"``."""

    kappa: float = Field(1.0, gt=0, le=1000, description="confidence of the logit rescaling, in (0, 1000].")

class FoolsGold(RobustStrategy):
    """FoolsGold: weight each update by how unlike the others its client's history of updates is.

    Parameters
    ----------
    kappa : float (default: 1.0)
        kappa > 0, the confidence of the logit that maps similarity to a learning rate (config key
        ``defense.kappa``); the paper's default is 1.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    No f: sybils are told apart by sending similar updates round after round, honest clients by having diverse
    (non-IID) data; with IID honest clients FoolsGold also down-weights honest ones. Works on updates. The server
    keeps, per client, the sum of all its updates so far (key: the reply's ``partition-id``, else its node id),
    one vector of d floats per client ever seen (on :attr:`device`; it is reset when the model size changes).
    A lone valid update is kept (similarity 0 -> wv = 1 -> 0.99 -> alpha = 1). Reported weights are
    alpha_i / sum_j alpha_j and sum to 1 (the raw alpha_i of a sybil is 0: status "rejected").

    Differences
    -----------
    The paper's optional importance weighting of output-layer features is not used (all coordinates count
    alike, as in its default experiments). The paper applies sum_i alpha_i Delta_i (a sum of SGD steps);
    fedsec's updates are whole local-training steps, so it applies the alpha-weighted *mean*, which keeps the
    step size of FedAvg when no one is down-weighted. ``num-examples`` is ignored, as in the paper. When every
    alpha is 0 the global model stays. Flower has no FoolsGold strategy.
    """

    Params = FoolsGoldParams
    needs_client_histories = True
    family = "selection"
    description = 'FoolsGold: down-weight clients with similar update histories (Fung et al. 2020)'

    def __init__(self, *, kappa: float = 1.0, **kwargs: Any) -> None:
        self.kappa = check_float("FoolsGold", "kappa", kappa, low=0.0, low_open=True)
        self.histories: dict[Hashable, torch.Tensor] = {}
        super().__init__(**kwargs)

    def describe(self) -> str:
        return f"FoolsGold(kappa={self.kappa:g})"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.aggregate_with_keys(updates, self.client_keys(updates.shape[0]))

    def aggregate_with_keys(self, updates: torch.Tensor, keys: list[Hashable]) -> tuple[torch.Tensor, torch.Tensor]:
        """Add each update to its client's history, then aggregate; ``keys[i]`` names the client of row i."""
        if len(set(keys)) != len(keys):
            raise ValueError(f"FoolsGold: duplicate client keys in one round: {keys}")
        if any(h.shape != updates.shape[1:] for h in self.histories.values()):
            self.histories = {}  # the model changed: old histories cannot be compared
        rows = []
        for key, update in zip(keys, updates, strict=True):
            previous = self.histories.get(key)
            if previous is None:
                history = update.detach().clone()  # a copy: ``updates`` is a buffer reused next round
            elif previous.device == update.device and previous.dtype == update.dtype:
                history = previous.add_(update.detach())  # in place: no new d-vector per client and round
            else:
                history = previous.to(update) + update.detach()
            self.histories[key] = history
            rows.append(history)
        return foolsgold_aggregate(updates, rows, kappa=self.kappa)  # the rows are not stacked
