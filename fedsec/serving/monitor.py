"""PRADA query monitoring against model extraction.

Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting Against DNN Model Stealing Attacks", IEEE EuroS&P 2019,
https://arxiv.org/abs/1805.02628 (Algorithm 1).

Per client and per predicted class c the monitor keeps a growing set G_c of queries. A new query x predicted as c
gets d_min = min_{y in G_c} ||x - y||_2, which joins the client's distance set D; if d_min > T_c, x joins G_c and
T_c = max(T_c, mean(DG_c) - std(DG_c)) over the distances DG_c that admitted points to G_c. Once |D| >=
``min_queries`` the Shapiro-Wilk statistic W of D (``scipy.stats.shapiro``) is computed; W < delta flags the
client. Benign streams give roughly normal distances; synthetic streams (Jacobian augmentation, perturbations of
a few seeds) give many tiny distances mixed with large ones, far from normal.

Defaults: delta = 0.9 (the paper's value for its MNIST/GTSRB models), min_queries = 100, L2 on the raw inputs.

Differences from the paper: D is tested over its last ``window`` = 5000 values (Shapiro-Wilk's p-value, and with
it SciPy's accuracy guarantee, stops at 5000; the paper grows D without bound); a flag is sticky; a batch of queries
is processed in order, with its distances to stored points computed in one ``torch.cdist`` call per class (for
speed, identical results to the per-query loop), and G_c is searched only for queries predicted as c.
"""

from __future__ import annotations

import logging
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

log = logging.getLogger(__name__)


Stats = dict[int, tuple[int, float, float]]  # class -> (count, sum, sum of squares) of admitting distances


def prada_min_distances(
    stored: dict[int, torch.Tensor],
    queries: torch.Tensor,
    classes: torch.Tensor,
    thresholds: dict[int, float],
    stats: Stats,
) -> tuple[list[float | None], list[bool], dict[int, float], Stats]:
    """PRADA's inner step for a batch, exactly as the sequential algorithm (no input is modified).

    ``stored`` maps a class c to G_c's points (m_c, d); ``queries`` (n, d), ``classes`` (n,) are the batch;
    ``thresholds`` holds T_c and ``stats`` the running (count, sum, sum of squares) of DG_c. Returns each query's
    d_min (``None`` when its class had no stored point yet), whether it joins G_c, and the updated thresholds and
    stats. Classes are independent, so the batch is processed class by class: one ``torch.cdist`` against G_c and
    one within the class's part of the batch, then a scalar loop in arrival order.
    """
    thresholds, stats = dict(thresholds), dict(stats)
    qc = classes.cpu().numpy()
    d_mins: list[float | None] = [None] * len(qc)
    admitted = [False] * len(qc)
    for c in (int(v) for v in np.unique(qc)):
        idx = np.flatnonzero(qc == c)
        q = queries[torch.from_numpy(idx)]
        g = stored.get(c)
        old = torch.cdist(q, g).min(dim=1).values.cpu().numpy() if g is not None and len(g) else None
        new = torch.cdist(q, q).cpu().numpy()
        taken: list[int] = []
        n, total, sq = stats.get(c, (0, 0.0, 0.0))
        for j, i in enumerate(idx):
            cands = ([] if old is None else [old[j]]) + ([new[j, taken].min()] if taken else [])
            if not cands:  # first query of its class: G_c = {x}, no distance
                admitted[i] = True
                taken.append(j)
                continue
            d = float(min(cands))
            d_mins[i] = d
            if d > thresholds.get(c, 0.0):
                admitted[i] = True
                taken.append(j)
                n, total, sq = n + 1, total + d, sq + d * d
                mean = total / n
                std = max(sq / n - mean * mean, 0.0) ** 0.5
                thresholds[c] = max(thresholds.get(c, 0.0), mean - std)
        stats[c] = (n, total, sq)
    return d_mins, admitted, thresholds, stats


@dataclass
class _ClientState:
    points: dict[int, torch.Tensor] = field(default_factory=dict)  # per class: (capacity, d) buffer
    sizes: dict[int, int] = field(default_factory=dict)
    distances: list[float] = field(default_factory=list)
    stats: Stats = field(default_factory=dict)
    thresholds: dict[int, float] = field(default_factory=dict)
    queries: int = 0
    w: float | None = None
    flagged: bool = False


@dataclass(frozen=True)
class Verdict:
    """The monitor's view of a client after a batch: W (None until enough distances) and the sticky flag."""

    score: float | None
    flagged: bool
    newly_flagged: bool
    queries: int


class PradaMonitor:
    """Stateful PRADA detector, one state per client id; thread-safe.

    Parameters: ``delta`` (float, default 0.9): flag when W < delta; ``min_queries`` (int, default 100):
    distances needed before testing; ``window`` (int, default 5000): most recent distances tested.
    """

    name = "PRADA"

    def __init__(self, *, delta: float = 0.9, min_queries: int = 100, window: int = 5000) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"monitor.delta={delta}: must be in (0, 1); PRADA uses 0.9")
        if min_queries < 3:
            raise ValueError(f"monitor.min_queries={min_queries}: Shapiro-Wilk needs >= 3; use 100")
        self.delta, self.min_queries, self.window = delta, min_queries, window
        self._clients: dict[str, _ClientState] = {}
        self._lock = threading.Lock()

    def is_flagged(self, client_id: str) -> bool:
        state = self._clients.get(client_id)
        return bool(state and state.flagged)

    def observe(self, client_id: str, queries: torch.Tensor, classes: torch.Tensor) -> Verdict:
        """Add a batch ``queries`` (n, ...) with predicted ``classes`` (n,) to the client's history."""
        x = queries.reshape(queries.shape[0], -1).float()
        with self._lock:
            st = self._clients.get(client_id)
            if st is None:
                st = self._clients[client_id] = _ClientState()
            stored = {c: buf[: st.sizes[c]] for c, buf in st.points.items()}
            d_mins, admitted, st.thresholds, st.stats = prada_min_distances(
                stored, x, classes, st.thresholds, st.stats
            )
            st.distances.extend(d for d in d_mins if d is not None)
            keep = torch.tensor(admitted, dtype=torch.bool)
            for c in classes[keep].unique().tolist():
                self._append(st, c, x[keep & (classes == c)])
            st.queries += x.shape[0]
            if len(st.distances) > 2 * self.window:
                st.distances = st.distances[-self.window :]
            was = st.flagged
            if len(st.distances) >= self.min_queries:
                sample = np.asarray(st.distances[-self.window :])
                if np.ptp(sample) == 0:
                    st.w = 0.0  # all distances equal (e.g. repeated queries): as far from normal as it gets
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        st.w = float(stats.shapiro(sample).statistic)
                st.flagged = st.flagged or st.w < self.delta
            if st.flagged and not was:
                log.warning("PRADA flagged client %s: W=%.3f < delta=%.2f after %d queries",
                            client_id, st.w, self.delta, st.queries)
            return Verdict(st.w, st.flagged, st.flagged and not was, st.queries)

    @staticmethod
    def _append(st: _ClientState, c: int, x: torch.Tensor) -> None:
        size = st.sizes.get(c, 0)
        buf = st.points.get(c)
        need = size + x.shape[0]
        if buf is None or need > buf.shape[0]:
            grown = torch.empty(max(need, 64, 0 if buf is None else 2 * buf.shape[0]), x.shape[1])
            if buf is not None:
                grown[:size] = buf[:size]
            buf = st.points[c] = grown
        buf[size:need] = x
        st.sizes[c] = need
