"""Knockoff Nets: extraction by querying natural data the attacker holds and training a surrogate on the answers.

Orekondy, Schiele, Fritz, "Knockoff Nets: Stealing Functionality of Black-Box Models", CVPR 2019,
https://arxiv.org/abs/1812.02766. fedsec implements the paper's ``random`` sampling strategy.

Defaults: surrogate ``cnn``, budget checkpoints at 1/8, 1/4, 1/2 and all of the budget, soft targets (the answered
probabilities) when the role gets them, hard labels otherwise (then it is CopycatCNN, Correia-Silva et al. 2018).

Differences: ART's ``KnockoffNets`` (and ``CopycatCNN``) query their whole budget in one ``predict`` call and
return only the final surrogate; fedsec needs the accuracy/agreement curve against queries and must keep what it
learnt when the server blocks the attacker mid-stream, so it queries in chunks itself and retrains the surrogate
from scratch at each checkpoint (as the paper's budget curves do). The adaptive (bandit) strategy is not
implemented.
"""

from __future__ import annotations

import logging

import numpy as np

from .client import RemoteModel
from .results import CurvePoint, ExtractionResult
from .surrogate import answers_to_targets, score_surrogate, train_surrogate

log = logging.getLogger(__name__)


def budget_checkpoints(budget: int, *, steps: int = 4) -> list[int]:
    """``budget/2^(steps-1), ..., budget/2, budget`` (increasing, distinct, >= 1)."""
    points = sorted({max(1, budget // 2**k) for k in range(steps)})
    return points


def knockoff_extract(
    remote: RemoteModel,
    pool: np.ndarray,
    *,
    budget: int,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    target_labels: np.ndarray | None = None,
    surrogate: str = "cnn",
    num_classes: int = 10,
    epochs: int = 10,
    steps: int = 4,
    seed: int = 0,
) -> ExtractionResult:
    """Query up to ``budget`` inputs drawn at random from ``pool`` (raw inputs), training a surrogate at each
    checkpoint; stops early when the server refuses. ``target_labels``: the target's labels on ``eval_x`` (for
    agreement), if known."""
    if budget < 1:
        raise ValueError(f"budget={budget}: must be >= 1")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool))[: min(budget, len(pool))]
    result = ExtractionResult(method="knockoff", budget=budget)
    xs, labels, probs = [], [], []
    got = 0
    for point in budget_checkpoints(len(order), steps=steps):
        chunk = pool[order[got:point]]
        done, answer = remote.query_partial(chunk)
        if answer is not None:
            xs.append(chunk[done])
            labels.append(answer.labels)
            probs.append(answer.probabilities)
            got += len(done)
        if got == 0:
            break
        x = np.concatenate(xs)
        p = None if any(q is None for q in probs) else np.concatenate(probs)
        model = train_surrogate(x, answers_to_targets(np.concatenate(labels), p), model_name=surrogate,
                                num_classes=num_classes, epochs=epochs, seed=seed)
        acc, agree = score_surrogate(model, eval_x, eval_y, target_labels)
        result.curve.append(CurvePoint(got, acc, agree))
        log.info("knockoff: %d queries -> accuracy %.3f agreement %s", got, acc, agree)
        if remote.stats.stopped:
            break
    result.record_stats(remote.stats)
    if not result.curve:
        result.status, result.reason = "failed", result.reason or "no query was answered"
    result.details["soft_targets"] = bool(probs) and all(q is not None for q in probs)
    return result
