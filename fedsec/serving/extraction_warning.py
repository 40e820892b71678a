"""Extraction warning: how much of the served model has each client's query stream already revealed?

Kesarwani, Mukhoty, Arya, Mehta, "Model Extraction Warning in MLaaS Paradigm", ACSAC 2018,
https://arxiv.org/abs/1711.07221. Their monitor keeps, per user, the queries and the answers the service gave, and
warns when the "information gain" of those queries about the model (for decision trees: the share of the feature
space the queries cover; alternatively the fidelity of a proxy model fitted to them) passes a threshold the provider
chooses. It does not look at the shape of the query distribution at all, so it sees attacks that query natural data
(Knockoff Nets, Orekondy et al. CVPR 2019), which PRADA (:mod:`fedsec.serving.monitor`) is blind to by design:
PRADA flags distance distributions that are not normal, and natural images give normal ones.

What fedsec does (the proxy-model variant): every ``check_every`` inputs a client has sent, once it has sent at least
``min_queries``, the server fits a proxy (multinomial logistic regression on the raw inputs, up to the client's last
``max_stored`` inputs) to the labels the served model gave that client, and measures the proxy's agreement with the
served model on ``validation`` inputs the server holds (its own test data). The score is that agreement: an estimate
of the share of the model's decisions the client could reproduce. The client is flagged when it reaches
``threshold``; the flag is sticky.

Defaults: threshold 0.8, min_queries 200, check_every 200, max_stored 2000, validation of 1,000 test inputs; the
proxy is fitted by full-batch L-BFGS (50 iterations, L2 1e-3, zero initialisation: deterministic). Own code, not
scikit-learn's ``LogisticRegression``: on 2,000 Fashion-MNIST inputs sklearn's lbfgs was about 30 times slower than
torch's L-BFGS, with the same agreement to within 0.01.

Departures from the paper: a linear proxy stands in for their decision-tree coverage (fedsec serves neural networks;
a stronger attacker's surrogate reaches more agreement than the proxy, so the score is a lower bound on what the
client learned and the threshold should sit below the agreement the provider will not tolerate); fitting is done in
the request that crosses a ``check_every`` boundary (a latency spike every ``check_every`` inputs, measured in
``benchmarks/bench_serving.py``). A single key that issues many honest queries is, by design, warned about too: the
monitor measures what a client learned, not its intent. Colluding keys are each measured alone (the paper pools
users; fedsec does not).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .monitor import Verdict

log = logging.getLogger(__name__)


@dataclass
class _ClientLog:
    inputs: list[np.ndarray] = field(default_factory=list)  # batches (n, d), float32
    labels: list[np.ndarray] = field(default_factory=list)
    stored: int = 0
    queries: int = 0
    next_check: int = 0
    score: float | None = None
    flagged: bool = False


def proxy_agreement(inputs: np.ndarray, labels: np.ndarray, validation: np.ndarray | torch.Tensor,
                    served: np.ndarray, *, num_classes: int, iterations: int = 50, l2: float = 1e-3) -> float:
    """Agreement on ``validation`` (m, d) between ``served`` labels (m,) and a multinomial logistic-regression proxy
    fitted to ``inputs`` (n, d) with ``labels`` (n,) (full-batch L-BFGS from zero weights: deterministic)."""
    x = torch.as_tensor(inputs, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    weight = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        guess = (torch.as_tensor(validation, dtype=torch.float32) @ weight + bias).argmax(dim=1).numpy()
    return float(np.mean(guess == np.asarray(served)))


class ExtractionWarningMonitor:
    """Per-client extraction warning (see the module docstring); thread-safe, same interface as PradaMonitor.

    ``validation`` (m, *input_shape) raw inputs the server holds and ``served_labels`` (m,) the served model's labels
    on them.
    """

    name = "extraction warning"

    def __init__(self, validation: torch.Tensor | np.ndarray, served_labels: torch.Tensor | np.ndarray, *,
                 threshold: float = 0.8, min_queries: int = 200, check_every: int = 200,
                 max_stored: int = 2000, num_classes: int | None = None) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"monitor.threshold={threshold}: must be in (0, 1], the proxy agreement that flags")
        if min_queries < 1 or check_every < 1 or max_stored < min_queries:
            raise ValueError(f"monitor.min_queries={min_queries}, check_every={check_every}, max_stored={max_stored}:"
                             " need min_queries >= 1, check_every >= 1 and max_stored >= min_queries")
        val = torch.as_tensor(np.asarray(validation, dtype=np.float32))
        self.validation = val.reshape(len(val), -1)  # a tensor once, not converted again at every proxy fit
        self.served = np.asarray(served_labels).reshape(-1)
        if len(self.validation) == 0 or len(self.served) != len(self.validation):
            raise ValueError(f"validation: {len(self.validation)} inputs and {len(self.served)} labels; need the "
                             "same positive number")
        self.threshold, self.min_queries, self.check_every = threshold, min_queries, check_every
        self.max_stored = max_stored
        self.num_classes = num_classes or int(self.served.max()) + 1
        self._clients: dict[str, _ClientLog] = {}
        self._lock = threading.Lock()

    def is_flagged(self, client_id: str) -> bool:
        state = self._clients.get(client_id)
        return bool(state and state.flagged)

    def observe(self, client_id: str, queries: torch.Tensor, classes: torch.Tensor) -> Verdict:
        """Add a batch ``queries`` (n, ...) with the labels the model gave (n,) to the client's log."""
        x = queries.reshape(queries.shape[0], -1).float().cpu().numpy()
        y = classes.reshape(-1).cpu().numpy()
        with self._lock:
            st = self._clients.setdefault(client_id, _ClientLog(next_check=self.min_queries))
            st.inputs.append(x)
            st.labels.append(y)
            st.stored += len(x)
            st.queries += len(x)
            while st.stored - len(st.inputs[0]) >= self.max_stored:  # drop whole old batches beyond max_stored
                st.stored -= len(st.inputs.pop(0))
                st.labels.pop(0)
            was = st.flagged
            if st.queries >= st.next_check:
                inputs = np.concatenate(st.inputs)[-self.max_stored:]
                labels = np.concatenate(st.labels)[-self.max_stored:]
                st.score = proxy_agreement(inputs, labels, self.validation, self.served, num_classes=self.num_classes)
                st.flagged = st.flagged or st.score >= self.threshold
                st.next_check = st.queries + self.check_every
            if st.flagged and not was:
                log.warning("extraction warning for client %s: a proxy fitted to its %d queries agrees with the "
                            "model on %.3f of the validation inputs (threshold %.3g)", client_id, st.queries,
                            st.score, self.threshold)
            return Verdict(st.score, st.flagged, st.flagged and not was, st.queries)
