"""FLTrust: trust scores from the cosine similarity with an update the server computes on its own root dataset.

Cao, Fang, Liu and Gong, "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping", NDSS 2021,
https://www.ndss-symposium.org/ndss-paper/fltrust-byzantine-robust-federated-learning-via-trust-bootstrapping/
(arXiv: https://arxiv.org/abs/2012.13995).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ArrayRecord
from pydantic import BaseModel, Field

from fedsec.registry import Params

from ._checks import check_int
from .base import RobustStrategy, StrategyContext

#: computes the server update g0 (trained arrays - global arrays, flattened in key order) from the global arrays
ServerUpdateFn = Callable[[ArrayRecord], torch.Tensor]


def fltrust_trust_scores(updates: torch.Tensor, server_update: torch.Tensor) -> torch.Tensor:
    """TS_i = ReLU(cos(u_i, g0)), shape (n,); an update of norm 0 (or g0 = 0) gets 0; norms and the cosine are
    computed in float64, so a huge but finite update gets its true cosine, never NaN or a value above 1.

    updates: (n, d); server_update: g0, shape (d,), on the updates' device and dtype.
    """
    norms = torch.linalg.vector_norm(updates, dim=1, dtype=torch.float64)
    g0_norm = torch.linalg.vector_norm(server_update, dtype=torch.float64)
    if g0_norm <= 0 or not torch.isfinite(g0_norm):
        return torch.zeros(updates.shape[0], dtype=updates.dtype, device=updates.device)
    # <u_i, g0 / ||g0||> in the updates' dtype is at most ||u_i||, so it overflows only where ||u_i|| does; the
    # division and the clamp run in float64, so a huge but finite update gets a finite cosine, never NaN
    dots = (updates @ (server_update / g0_norm.to(server_update.dtype))).to(torch.float64)
    cosine = torch.where((norms > 0) & torch.isfinite(norms) & torch.isfinite(dots), dots / norms.clamp_min(1e-300),
                         0.0).clamp(-1.0, 1.0)
    return torch.relu(cosine).to(updates.dtype)


def fltrust_aggregate(updates: torch.Tensor, server_update: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_i TS_i (||g0|| / ||u_i||) u_i / sum_i TS_i with trust scores TS_i = ReLU(cos(u_i, g0)).

    updates: (n, d); server_update: g0, shape (d,) (moved to the updates' device and dtype). Returns the
    aggregate (d,) and the weights (n,): TS_i ||g0|| / (||u_i|| sum_j TS_j), the coefficient of the raw update
    u_i (they do not sum to 1). When every trust score is 0 (all updates at 90 degrees or more from g0, or
    g0 = 0) the aggregate is the zero update and all weights are 0.
    """
    g0 = server_update.to(device=updates.device, dtype=updates.dtype)
    trust = fltrust_trust_scores(updates, g0)
    total = trust.sum()
    if total <= 0:
        return torch.zeros_like(g0), torch.zeros_like(trust)
    norms = torch.linalg.vector_norm(updates, dim=1, dtype=torch.float64).clamp_min(1e-300)
    weights = (trust.to(torch.float64) * torch.linalg.vector_norm(g0, dtype=torch.float64)
               / (norms * total.to(torch.float64))).to(updates.dtype)
    return weights @ updates, weights



class FLTrustParams(Params):
    """``[defense]`` keys of ``strategy = "fltrust"``."""

    root_size: int = Field(100, ge=1, le=100_000, description="examples in the server's root dataset, 1..100,000.")

class FLTrust(RobustStrategy):
    """FLTrust: weight each update by its clipped cosine similarity with the server's own update, rescaled to
    the server update's norm.

    Parameters
    ----------
    server_update_fn : Callable[[ArrayRecord], torch.Tensor]
        Required, positional. Given the global arrays of the round, returns the server update g0 = (arrays after
        training on the root dataset) - (global arrays), flattened in the arrays' key order
        (:func:`fedsec.arrays.record_to_vector`), shape (d,). Called once per aggregated round. The root dataset
        is a small clean set of examples the server holds and trusts; g0 is the only reference the rule has for
        what an honest update looks like, so it should be trained with the clients' local-training settings.
    root_size : int (default: 100)
        Number of root examples (config key ``defense.root_size``); the paper uses 100, drawn from the training
        distribution. The rule itself only records it (``describe()``): ``server_update_fn`` must be built to
        train on that many examples.
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy` (sampling, ``device``, ``node_sampler``).

    Assumptions
    -----------
    No f and no minimum n (any number of malicious clients, as long as the root dataset is clean and g0 points
    in an honest direction). Works on updates. Trust scores are ReLU(cos(u_i, g0)): an update at 90 degrees or
    more from g0 gets weight 0 (status "rejected"); the others are rescaled to norm ||g0||, which bounds each
    client's influence by the server's own step. The last round's trust scores are kept in
    :attr:`last_trust_scores`.

    Differences
    -----------
    The paper updates the global model with a server learning rate times the aggregated *gradient*; fedsec's
    clients send model updates after local training and the aggregate is applied as is (server learning rate 1),
    so the server update must be a model update after the same local training. ``num-examples`` is ignored, as
    in the paper. When all trust scores are 0 the global model stays (the paper's formula divides by 0 there).
    Flower has no FLTrust strategy.
    """

    Params = FLTrustParams
    needs_server_update = True
    family = "selection"
    description = "FLTrust: ReLU-cosine trust vs the server's root-data update (Cao et al. 2021)"

    def __init__(self, server_update_fn: ServerUpdateFn, *, root_size: int = 100, **kwargs: Any) -> None:
        if not callable(server_update_fn):
            raise TypeError(f"FLTrust: server_update_fn must be callable, got {type(server_update_fn).__name__}")
        self.server_update_fn = server_update_fn
        self.root_size = check_int("FLTrust", "root_size", root_size, low=1)
        self.last_trust_scores: torch.Tensor | None = None
        super().__init__(**kwargs)

    @classmethod
    def from_config(cls, params: BaseModel, context: StrategyContext, **kwargs: Any) -> FLTrust:
        """As the base class, with the server update the context provides (the plan's root-data update)."""
        update_fn = context.server_update_fn
        if update_fn is None:  # validating a config: the root data are not loaded yet
            def update_fn(arrays: ArrayRecord) -> torch.Tensor:
                raise RuntimeError("FLTrust built without a server_update_fn (validation only)")
        return cls(update_fn, **kwargs, **cls.config_kwargs(params, context))

    def describe(self) -> str:
        return f"FLTrust(root_size={self.root_size})"

    def compute_server_update(self, d: int) -> torch.Tensor:
        """g0 for the current round: ``server_update_fn`` on the global arrays, checked to be finite of shape (d,)."""
        if self._global_arrays is None:
            raise RuntimeError("FLTrust: no global arrays yet (configure_train has not run); cannot compute g0")
        g0 = torch.as_tensor(self.server_update_fn(self._global_arrays)).detach().reshape(-1)
        if g0.numel() != d:
            raise ValueError(f"FLTrust: server_update_fn returned {g0.numel()} values, the model has {d}")
        if not bool(torch.isfinite(g0).all()):
            raise ValueError("FLTrust: server_update_fn returned non-finite values (NaN/Inf)")
        return g0

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g0 = self.compute_server_update(updates.shape[1]).to(device=updates.device, dtype=updates.dtype)
        self.last_trust_scores = fltrust_trust_scores(updates, g0)
        return fltrust_aggregate(updates, g0)
