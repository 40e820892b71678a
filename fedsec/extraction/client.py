"""HTTP client for a fedsec model server, as an attacker (or an honest user) sees it.

:class:`RemoteModel` sends batches to ``POST /predict`` with an API key, counts the queries answered, and stops on
the first refusal (401/403/429) with :class:`QueryRefused`, recording the server's ``decision`` (e.g.
``blocked_by_monitor``), so attacks keep what they learnt before being stopped. :meth:`RemoteModel.as_art_classifier`
wraps it as ART's ``BlackBoxClassifier`` for ART's extraction attacks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import httpx
import numpy as np

log = logging.getLogger(__name__)


class QueryRefused(RuntimeError):
    """The server refused a request; ``status`` and ``decision`` say why."""

    def __init__(self, status: int, decision: str, reason: str) -> None:
        super().__init__(f"HTTP {status} {decision}: {reason}")
        self.status, self.decision, self.reason = status, decision, reason


@dataclass(frozen=True)
class Answer:
    labels: np.ndarray  # (n,)
    probabilities: np.ndarray | None  # (n, K), None when the role gets labels only
    output: str


@dataclass
class QueryStats:
    queries_spent: int = 0  # inputs answered
    requests: int = 0
    refused_requests: int = 0
    refused_queries: int = 0
    stopped: bool = False
    stop_decision: str = ""
    stop_status: int = 0
    decisions: dict[str, int] = field(default_factory=dict)


class RemoteModel:
    """Black-box access to ``url``'s ``/predict``; ``batch_size`` inputs per request."""

    def __init__(self, url: str, *, key: str | None = None, batch_size: int = 64, timeout: float = 60.0,
                 client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.key = key
        self.batch_size = batch_size
        self.client = client or httpx.Client(timeout=timeout)
        self.stats = QueryStats()
        self._info: dict | None = None

    def info(self) -> dict:
        """``GET /health``: model name, input shape, number of classes."""
        if self._info is None:
            r = self.client.get(self.url + "/health")
            r.raise_for_status()
            self._info = r.json()
        return self._info

    def query(self, x: np.ndarray) -> Answer:
        """Answers for inputs ``x`` (n, ...); raises :class:`QueryRefused` at the first refusal (earlier batches
        are counted in ``stats``; the answers for them are lost only for this call)."""
        if self.stats.stopped:
            raise QueryRefused(self.stats.stop_status, self.stats.stop_decision, "stopped earlier")
        labels, probs, output = [], [], "label"
        headers = {"X-API-Key": self.key} if self.key else {}
        for start in range(0, len(x), self.batch_size):
            batch = np.asarray(x[start : start + self.batch_size], dtype=np.float32)
            r = self.client.post(self.url + "/predict", json={"inputs": batch.tolist()}, headers=headers)
            self.stats.requests += 1
            if r.status_code != 200:
                try:
                    body = r.json()
                except ValueError:
                    body = {"detail": r.text, "decision": "unknown"}
                decision = str(body.get("decision", "unknown"))
                self.stats.refused_requests += 1
                self.stats.refused_queries += len(batch)
                self.stats.decisions[decision] = self.stats.decisions.get(decision, 0) + 1
                if r.status_code in (401, 403, 429):
                    self.stats.stopped, self.stats.stop_decision, self.stats.stop_status = True, decision, r.status_code
                raise QueryRefused(r.status_code, decision, str(body.get("detail")))
            body = r.json()
            self.stats.queries_spent += len(batch)
            output = body["output"]
            labels.append(np.asarray(body["labels"], dtype=np.int64))
            if body.get("probabilities") is not None:
                probs.append(np.asarray(body["probabilities"], dtype=np.float64))
        return Answer(
            labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
            probabilities=np.concatenate(probs) if probs else None,
            output=output,
        )

    def query_partial(self, x: np.ndarray) -> tuple[np.ndarray, Answer | None]:
        """Like :meth:`query` batch by batch, keeping the answers received before a refusal.

        Returns (indices answered, answer for them or None)."""
        done, answers = [], []
        for start in range(0, len(x), self.batch_size):
            try:
                answers.append(self.query(x[start : start + self.batch_size]))
            except QueryRefused:
                break
            done.append(np.arange(start, min(start + self.batch_size, len(x))))
        if not answers:
            return np.zeros(0, dtype=np.int64), None
        probs = [a.probabilities for a in answers]
        return np.concatenate(done), Answer(
            labels=np.concatenate([a.labels for a in answers]),
            probabilities=None if any(p is None for p in probs) else np.concatenate(probs),
            output=answers[-1].output,
        )

    def as_art_classifier(self, *, input_shape: tuple[int, ...], num_classes: int, clip_values=(0.0, 1.0)):
        """This endpoint as ART's ``BlackBoxClassifier`` (one-hot labels when the role gets labels only)."""
        from art.estimators.classification import BlackBoxClassifier

        def predict(x: np.ndarray) -> np.ndarray:
            a = self.query(x)
            if a.probabilities is not None:
                return a.probabilities
            return np.eye(num_classes)[a.labels]

        return BlackBoxClassifier(predict, input_shape, num_classes, clip_values=clip_values)
