"""Health of the final global model: is it a model at all, or at chance, or one that answers one class?

An attack's success, a membership AUC, a robust accuracy R or an MI-Face reconstruction measured on a model that
learnt nothing measures noise: a backdoor "succeeds" on a model that predicts the target class for every input,
and LiRA separates nothing on a model at chance. This hook checks the final model once, on the whole held-out test
set, and says so (``summary["health"]``, a warning in the log, one line on the console after ``fedsec run``):

- ``chance``: the accuracy of always answering the test set's most common label (``1 / num_classes`` when the test
  set is balanced);
- ``one_class``: the most predicted class takes at least 90% of the test predictions (unless the test labels
  themselves are that skewed);
- ``at_chance``: the accuracy is below ``chance + chance * (1 - chance) / 2`` (1.5 x chance for many classes,
  0.625 for two) or not significantly above chance: the one-sided binomial test of ``correct`` successes in
  ``examples`` trials at rate ``chance`` gives p >= 0.001;
- ``ok`` otherwise.

When the status is not ``ok``, the numbers measured on the final model are listed in ``health["not_meaningful"]``
(``attack_success``, ``mia_advantage``, ``membership``, ``evasion``, ``model_inversion``: whichever the run has),
and the flat blocks (``membership``, ``model_inversion``) get ``meaningful = false`` and the reason.
``[audit.inversion]`` attacks the clients' round updates, not the final model, and is not marked. The runner
adds ``attack_success_meaningful`` next to ``attack_success``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from fedsec.arrays import load_record
from fedsec.training import predict

from .base import RoundHook

logger = logging.getLogger(__name__)

__all__ = ["HealthCheck", "ModelHealth", "is_meaningful", "model_health"]

ONE_CLASS_SHARE = 0.9
"""A model that gives one class to at least this share of the test set answers one class."""
P_VALUE = 1e-3
"""An accuracy whose one-sided binomial p-value against chance is at least this is not above chance."""

#: the summary blocks of measurements made on the final global model
FINAL_MODEL_BLOCKS = ("membership", "evasion", "model_inversion")


@dataclass(frozen=True)
class ModelHealth:
    """The final model's health on the test set (see the module docstring for the rules)."""

    status: Literal["ok", "at_chance", "one_class"]
    accuracy: float
    chance: float  # the accuracy of always answering the most common test label
    threshold: float  # accuracies below it are at chance
    p_value: float  # one-sided binomial test of the accuracy against chance
    majority_share: float  # the most predicted class's share of the predictions
    majority_class: int
    examples: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chance_threshold(chance: float) -> float:
    """Accuracies below ``chance + chance (1 - chance) / 2`` are at chance (1.5 x chance as chance -> 0).

    >>> round(chance_threshold(0.1), 3), chance_threshold(0.5)
    (0.145, 0.625)
    """
    return chance + chance * (1.0 - chance) / 2.0


def binomial_p_value(correct: int, examples: int, chance: float) -> float:
    """P(X >= correct) for X ~ Binomial(examples, chance): how likely chance alone does as well.

    The upper tail summed in log space over the binomial's log-pmf (``torch.lgamma``), in float64: within 1e-9
    relative of ``scipy.stats.binom.sf`` (``tests/test_health.py``). Why not scipy: importing ``scipy.stats`` took
    0.5-0.6 s of every run's end on this machine, for one number.

    >>> binomial_p_value(0, 10, 0.1)
    1.0
    >>> binomial_p_value(10, 10, 0.5) == 0.5 ** 10
    True
    """
    if correct <= 0:
        return 1.0
    if correct > examples or chance <= 0:  # X is at most examples, and always 0 at chance 0
        return 0.0
    if chance >= 1:  # X is always examples
        return 1.0
    k = torch.arange(correct, examples + 1, dtype=torch.float64)
    n = torch.tensor(float(examples), dtype=torch.float64)
    log_pmf = (torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
               + k * math.log(chance) + (n - k) * math.log1p(-chance))
    return float(torch.logsumexp(log_pmf, 0).exp().clamp(max=1.0))


def model_health(predictions: torch.Tensor, labels: torch.Tensor, *, num_classes: int) -> ModelHealth:
    """Health of a model from its test predictions (n,) and the true labels (n,), integer class ids."""
    predictions, labels = predictions.reshape(-1).cpu().long(), labels.reshape(-1).cpu().long()
    if predictions.shape != labels.shape or labels.numel() == 0:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)}: need the same "
                         "non-empty shape")
    n = labels.numel()
    k = max(num_classes, int(labels.max()) + 1, int(predictions.max()) + 1)
    predicted = torch.bincount(predictions, minlength=k)
    truth = torch.bincount(labels, minlength=k)
    correct = int((predictions == labels).sum())
    accuracy, chance = correct / n, float(truth.max()) / n
    majority_class = int(predicted.argmax())
    majority_share = float(predicted[majority_class]) / n
    label_share = float(truth[majority_class]) / n
    threshold, p_value = chance_threshold(chance), binomial_p_value(correct, n, chance)
    if majority_share >= ONE_CLASS_SHARE and label_share < ONE_CLASS_SHARE:
        status: Literal["ok", "at_chance", "one_class"] = "one_class"
        reason = (f"the final model predicts class {majority_class} for {majority_share:.1%} of the {n} test inputs "
                  f"(>= {ONE_CLASS_SHARE:.0%}; accuracy {accuracy:.4f})")
    elif accuracy < threshold or p_value >= P_VALUE:
        status = "at_chance"
        why = (f"below {threshold:.4f}" if accuracy < threshold
               else f"not above chance: binomial p = {p_value:.2g} >= {P_VALUE:g}")
        reason = (f"the final model's accuracy {accuracy:.4f} on {n} test inputs is at chance {chance:.4f} "
                  f"({why})")
    else:
        status, reason = "ok", ""
    return ModelHealth(status, accuracy, chance, threshold, p_value, majority_share, majority_class, n, reason)


class HealthCheck(RoundHook):
    """Checks the final global model against chance and one-class collapse; marks what was measured on it."""

    name = "health"
    description = ("the final model at chance or answering one class: attack metrics on it marked not "
                   "meaningful (summary health)")

    def at_end(self, arrays: Any, summary: dict[str, Any]) -> None:
        ctx = self.ctx
        load_record(ctx.model, arrays)
        predictions = predict(ctx.model, ctx.x_test)
        health = model_health(predictions, ctx.y_test, num_classes=ctx.data.num_classes)
        block = health.as_dict()
        if health.status != "ok":
            block["not_meaningful"] = self._mark(summary, health.reason)
            logger.warning("%s: attack metrics on it are not meaningful", health.reason)
        summary["health"] = block

    def _mark(self, summary: dict[str, Any], reason: str) -> list[str]:
        """The names of this run's measurements on the final model; flat blocks get ``meaningful = False``."""
        marked = []
        if self.ctx.facts.attack.success is not None:
            marked.append("attack_success")
        if "mia_advantage" in summary:
            marked.append("mia_advantage")
        for name in FINAL_MODEL_BLOCKS:
            block = summary.get(name)
            if not isinstance(block, dict):
                continue
            if name == "membership" and block.get("target", "global") != "global":
                continue  # one client's local model, not the final global one
            if name != "evasion":  # evasion's entries are per attack; the sheet reads them as counts
                block["meaningful"], block["note"] = False, f"not meaningful: {reason}"
            marked.append(name)
        return marked


def is_meaningful(summary: dict[str, Any]) -> bool:
    """False when ``summary["health"]`` says the final model is at chance or answers one class; True otherwise
    (healthy, or no health block: a run stopped before its end)."""
    health = summary.get("health")
    return not (isinstance(health, dict) and health.get("status") not in (None, "ok"))
