"""Server-side evaluation of the global model: accuracy, loss, per-class recall, the attack's metrics, detection
scores and the final membership-inference check."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedsec.config import Experiment
from fedsec.federated_data import FederatedData
from fedsec.models import build_model
from fedsec.records import load_record
from fedsec.strategies.base import resolve_device
from fedsec.training import evaluate


class ServerEvaluator:
    """Evaluates global arrays on the held-out test set, on the server's device, with the attack's metrics.

    - every run: ``accuracy``, ``loss``, ``recall_<class>``;
    - targeted label flipping: ``source_recall`` (recall of the source class) and ``flip_rate`` (share of
      source-class test inputs classified as the target);
    - backdoor: ``attack_success_rate``: share of triggered test inputs whose true label is not the target that
      the model classifies as the target (the full trigger; for DBA the union of the local triggers).
    """

    def __init__(self, experiment: Experiment, data: FederatedData) -> None:
        self.device = resolve_device("auto")
        self.num_classes = data.num_classes
        self.attack = experiment.attack
        self.model = build_model(experiment.model.name, data.input_shape, data.num_classes).to(self.device)
        self.x = torch.from_numpy(np.array(data.x_test, copy=True)).to(self.device)
        self.y = torch.from_numpy(np.array(data.y_test, dtype=np.int64, copy=True)).to(self.device)
        self.x_triggered: torch.Tensor | None = None
        if self.attack.kind == "backdoor":
            from fedsec.clients.attacks.backdoor import stamp, trigger_mask

            keep = self.y != self.attack.backdoor_target
            mask = trigger_mask(data.input_shape, trigger=self.attack.trigger)
            self.x_triggered = stamp(self.x[keep], mask, float(data.x_train.max()))

    def membership_inference(self, arrays: Any, data: FederatedData, experiment: Experiment) -> dict[str, float]:
        """Yeom et al.'s loss-threshold attack on the clients' training data vs the test set (fedsec.mia)."""
        from fedsec.mia import advantage_bound, balanced_sample, loss_threshold_attack

        load_record(self.model, arrays)
        trained = np.concatenate(data.partitions)
        members, others = balanced_sample(trained.size, data.y_test.size, seed=experiment.seed)
        idx = trained[members]
        x_in = torch.from_numpy(np.array(data.x_train[idx])).to(self.device)
        y_in = torch.from_numpy(np.array(data.y_train[idx], dtype=np.int64)).to(self.device)
        result = loss_threshold_attack(self.model, (x_in, y_in), (self.x[others], self.y[others]))
        if experiment.privacy.mode != "none":
            result["mia_bound"] = advantage_bound(experiment.privacy.epsilon, experiment.privacy.delta)
        return result

    @torch.no_grad()
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        return torch.cat([self.model(x[i : i + 2048]).argmax(dim=1) for i in range(0, x.shape[0], 2048)])

    def __call__(self, arrays: Any) -> dict[str, float]:
        load_record(self.model, arrays)
        result = evaluate(self.model, self.x, self.y, num_classes=self.num_classes)
        row: dict[str, float] = {"accuracy": result.accuracy, "loss": result.loss}
        if self.attack.kind == "label_flip" and self.attack.source is not None:
            source = self.y == self.attack.source
            row["source_recall"] = result.per_class_recall[self.attack.source]
            row["flip_rate"] = float((self._predict(self.x[source]) == self.attack.target).double().mean())
        if self.x_triggered is not None:
            hits = self._predict(self.x_triggered) == self.attack.backdoor_target
            row["attack_success_rate"] = float(hits.double().mean())
        row.update({f"recall_{c}": r for c, r in enumerate(result.per_class_recall)})
        return row


def detection_scores(decisions: list[Any], malicious: set[int]) -> dict[str, float]:
    """Precision and recall of the strategy's rejections against the truth (NaN where undefined).

    A client counts as flagged when the strategy rejected it or gave it less than half the weight FedAvg would
    (its share of the round's examples); failed or invalid replies are not counted as detections.
    """
    valid = [d for d in decisions if d.status in ("accepted", "rejected")]
    total = sum(d.num_examples for d in valid)
    if not valid or total <= 0:
        return {"detection_precision": float("nan"), "detection_recall": float("nan")}
    flagged = {d.partition_id for d in valid if d.weight < 0.5 * d.num_examples / total}
    bad = {d.partition_id for d in valid if d.partition_id in malicious}
    hits = len(flagged & bad)
    return {
        "detection_precision": hits / len(flagged) if flagged else float("nan"),
        "detection_recall": hits / len(bad) if bad else float("nan"),
    }
