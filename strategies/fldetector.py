"""FLDetector: predict each client's update from its history and flag the clients whose updates keep missing.

Zhang, Cao, Jia and Gong, "FLDetector: Defending Federated Learning Against Model Poisoning Attacks via Detecting
Malicious Clients", KDD 2022 (https://arxiv.org/abs/2207.09209), Algorithm 1. The server keeps the last N pairs
(Delta w, Delta g) of global-model differences and global-update differences, and with them the compact L-BFGS
approximation B of the Hessian (Byrd, Nocedal and Schnabel 1994; Nocedal and Wright, "Numerical Optimization",
eq. 7.24): B v = sigma v - [sigma S, Y] M^-1 [sigma S^T v; Y^T v], M = [[sigma S^T S, L], [L^T, -D]]. A client's
update is predicted as g_i + B (w_t - w_i), from its last update g_i made at the global model w_i; the distance
between prediction and update, normalised over the round's clients (divided by their sum), is averaged over the
client's last N rounds into its suspicious score. When the gap statistic (Tibshirani, Walther and Hastie, JRSS B
2001: B = 10 uniform reference sets, k = 1..10) finds more than one cluster among the round's scores, k-means with
two clusters splits them and the clients of the higher-scored cluster are flagged (weight 0) and removed from the
federation for the rest of the run, as the paper removes detected clients. The rest are averaged, weighted by
examples. Defaults: N = 10 (the paper's window), detection from round N + 1 on.

What the server must know: every client's identity across rounds; it keeps each client's last update and the
global model it was made at (2 d floats per client) and the N pairs (2 N d floats).
Departures: the paper has every client in every round and restarts training from a checkpoint after a detection;
here clients are sampled (a client's prediction starts from its last update, however old, and clients seen once
have no score yet) and training goes on without the removed clients. Updates (client model - global model) take
the place of the paper's gradients; B then approximates the Jacobian of the update, and the prediction is the same
first-order step. The global update of a round is the released aggregate.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedsec.arrays import record_to_vector
from fedsec.registry import Params

from ._checks import check_int
from .base import RobustStrategy


def lbfgs_hessian_product(delta_w: torch.Tensor, delta_g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """B v for the compact L-BFGS approximation B from the pairs (rows of ``delta_w``, ``delta_g``: (N, d)), v (d,).

    With one pair s, y along v = s, B s = y (the secant condition):

    >>> s, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    >>> lbfgs_hessian_product(s, y, torch.tensor([1.0, 0.0])).tolist()
    [2.0, 0.0]
    """
    s, y = delta_w.double().T, delta_g.double().T  # (d, N)
    sy = s.T @ y
    sigma = float(y[:, -1] @ s[:, -1]) / max(float(s[:, -1] @ s[:, -1]), torch.finfo(torch.float64).tiny)
    lower = torch.tril(sy, diagonal=-1)
    m = torch.cat([torch.cat([sigma * (s.T @ s), lower], dim=1),
                   torch.cat([lower.T, -torch.diag(torch.diagonal(sy))], dim=1)], dim=0)
    v = v.double()
    p = torch.cat([sigma * (s.T @ v), y.T @ v])
    correction = torch.cat([sigma * s, y], dim=1) @ (torch.linalg.pinv(m) @ p)
    return (sigma * v - correction).to(delta_w.dtype)


def gap_statistic_clusters(scores: np.ndarray, *, max_k: int = 10, references: int = 10, seed: int = 0) -> int:
    """The number of clusters among 1-D ``scores`` by the gap statistic: the smallest k with Gap(k) >= Gap(k + 1) -
    s_(k+1), scores scaled to [0, 1], reference sets uniform on [0, 1], k-means within-cluster dispersion.

    >>> gap_statistic_clusters(np.array([0.10, 0.11, 0.12, 0.10, 0.11, 0.90, 0.91]))
    2
    >>> gap_statistic_clusters(np.array([0.10, 0.11, 0.12, 0.10, 0.11, 0.12]))
    1
    """
    from sklearn.cluster import KMeans  # only when a round is screened

    x = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    span = float(x.max() - x.min())
    if len(x) < 3 or span <= 0:
        return 1
    x = (x - x.min()) / span
    rng = np.random.default_rng(seed)
    ks = range(1, min(max_k, len(x) - 1) + 1)

    def dispersion(data: np.ndarray, k: int) -> float:
        fitted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(data)
        return max(float(fitted.inertia_), 1e-12)

    gaps, errors = [], []
    with warnings.catch_warnings():  # k-means on a reference set with fewer distinct points than k: expected
        warnings.simplefilter("ignore")
        for k in ks:
            reference = np.log([dispersion(rng.uniform(0, 1, size=x.shape), k) for _ in range(references)])
            gaps.append(float(reference.mean()) - math.log(dispersion(x, k)))
            errors.append(float(reference.std()) * math.sqrt(1 + 1 / references))
    for i in range(len(gaps) - 1):
        if gaps[i] >= gaps[i + 1] - errors[i + 1]:
            return i + 1
    return len(gaps)


def flag_high_cluster(scores: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Boolean mask of the scores in the higher of two k-means clusters.

    >>> flag_high_cluster(np.array([0.1, 0.9, 0.12, 0.95])).tolist()
    [False, True, False, True]
    """
    from sklearn.cluster import KMeans

    x = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    labels = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(x).labels_
    means = [x[labels == c].mean() for c in (0, 1)]
    return labels == int(np.argmax(means))


class FLDetectorParams(Params):
    """``[defense]`` keys of ``strategy = "fldetector"``."""

    window: int = Field(10, ge=1, le=1000, description="N: (Delta w, Delta g) pairs kept and rounds a suspicious "
                        "score averages; detection starts after N rounds (the paper: 10).")


class FLDetector(RobustStrategy):
    """FLDetector (Zhang et al. 2022): flag and remove clients whose updates keep missing their predicted ones.

    Parameters
    ----------
    window : int (default: 10)
        N, the L-BFGS pairs kept and the rounds each suspicious score averages (config key ``defense.window``);
        detection starts once N pairs are kept.
    seed : int (default: 0)
        Seeds the gap statistic's reference sets and k-means (the experiment's seed).
    **kwargs
        All parameters of :class:`fedsec.strategies.base.RobustStrategy`.

    Assumptions
    -----------
    Clients keep their identity across rounds and benign ones change their updates smoothly with the global model;
    the malicious ones are a minority that the gap statistic can separate from it. At least 3 scored clients in a
    round to screen it.
    """

    Params = FLDetectorParams
    needs_client_histories = True
    family = "selection"
    uses_counts = True
    description = "FLDetector (Zhang et al. 2022): L-BFGS-predicted updates, suspicious scores, gap statistic"

    def __init__(self, *, window: int = 10, seed: int = 0, **kwargs: Any) -> None:
        self.window = check_int("FLDetector", "window", window, low=1)
        self.seed = int(seed)
        self._reset()
        super().__init__(**kwargs)

    def _reset(self) -> None:
        """Empty state (tensors and dicts of tensors: fedsec.server.checkpoint keeps them)."""
        self.last_update: dict[Hashable, torch.Tensor] = {}  # client -> its last update
        self.last_global: dict[Hashable, torch.Tensor] = {}  # client -> the global model that update was made at
        self.distances: dict[Hashable, torch.Tensor] = {}  # client -> its last N normalised distances
        self.removed: dict[Hashable, torch.Tensor] = {}  # client -> the round it was flagged in
        self.delta_w: torch.Tensor | None = None  # (<= N, d) global model differences
        self.delta_g: torch.Tensor | None = None  # (<= N, d) global update differences
        self.previous_global: torch.Tensor | None = None
        self.previous_update: torch.Tensor | None = None
        self.rounds_seen = torch.zeros((), dtype=torch.int64)

    def describe(self) -> str:
        return f"FLDetector(window={self.window})"

    def aggregate_updates(self, updates: torch.Tensor, num_examples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._global_arrays is None:
            raise RuntimeError("FLDetector needs the round's global model: call it through aggregate_train")
        keys = self.client_keys(updates.shape[0])
        w = record_to_vector(self._global_arrays).to(updates.device, updates.dtype)
        if self.previous_global is not None and self.previous_global.shape != w.shape:
            self._reset()  # the model changed: nothing of the old one predicts the new one
        self.rounds_seen += 1
        self._score(keys, updates, w)
        flagged = self._screen(keys)
        weights = num_examples.to(updates.dtype).clone()
        for i, key in enumerate(keys):
            if key in self.removed or flagged[i]:
                weights[i] = 0.0
        if float(weights.sum()) <= 0:  # everyone removed: nothing to average, the global model stays
            aggregate = torch.zeros_like(w)
        else:
            weights = weights / weights.sum()
            aggregate = weights @ updates
        self._remember(keys, updates, w, aggregate)
        return aggregate, weights

    def _score(self, keys: list[Hashable], updates: torch.Tensor, w: torch.Tensor) -> None:
        """Each returning client's distance between its predicted and actual update, normalised over the round."""
        if self.delta_w is None or len(self.delta_w) == 0:
            return
        known = [i for i, key in enumerate(keys) if key in self.last_update]
        if not known:
            return
        distances = torch.stack([
            torch.linalg.vector_norm(
                self.last_update[keys[i]] + lbfgs_hessian_product(self.delta_w, self.delta_g,
                                                                  w - self.last_global[keys[i]]) - updates[i])
            for i in known]).double()
        distances = distances / distances.sum().clamp_min(torch.finfo(torch.float64).tiny)
        for i, d in zip(known, distances, strict=True):
            past = self.distances.get(keys[i], torch.empty(0, dtype=torch.float64))
            self.distances[keys[i]] = torch.cat([past, d.reshape(1).cpu()])[-self.window:]

    def _screen(self, keys: list[Hashable]) -> list[bool]:
        """Flag the round's clients in the higher cluster of suspicious scores when the gap statistic finds more
        than one; flagged clients are removed for the rest of the run."""
        flagged = [False] * len(keys)
        if int(self.rounds_seen) <= self.window:
            return flagged
        scored = [i for i, key in enumerate(keys) if key in self.distances and key not in self.removed]
        if len(scored) < 3:
            return flagged
        scores = np.array([float(self.distances[keys[i]].mean()) for i in scored])
        seed = self.seed + int(self.rounds_seen)
        if gap_statistic_clusters(scores, seed=seed) <= 1:
            return flagged
        for i, high in zip(scored, flag_high_cluster(scores, seed=seed), strict=True):
            if high:
                flagged[i] = True
                self.removed[keys[i]] = self.rounds_seen.clone()
        return flagged

    def _remember(self, keys: list[Hashable], updates: torch.Tensor, w: torch.Tensor, aggregate: torch.Tensor) -> None:
        for key, update in zip(keys, updates, strict=True):
            self.last_update[key] = update.detach().clone()  # a copy: ``updates`` is a buffer reused next round
            self.last_global[key] = w.detach().clone()
        if self.previous_global is not None and self.previous_update is not None:
            pair_w = (w - self.previous_global).reshape(1, -1)
            pair_g = (aggregate - self.previous_update).reshape(1, -1)
            if float(torch.linalg.vector_norm(pair_w)) > 0:  # a skipped round moves nothing: no pair
                self.delta_w = pair_w if self.delta_w is None else torch.cat([self.delta_w, pair_w])[-self.window:]
                self.delta_g = pair_g if self.delta_g is None else torch.cat([self.delta_g, pair_g])[-self.window:]
        self.previous_global, self.previous_update = w.detach().clone(), aggregate.detach().clone()
