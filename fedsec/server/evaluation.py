"""Server-side evaluation of the global model: accuracy, loss, per-class recall, the attack's own metrics,
detection scores and the final membership-inference check."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedsec.arrays import load_record
from fedsec.audits.membership import advantage_bound, balanced_sample, loss_threshold_attack
from fedsec.clients.attacks import Attack
from fedsec.config import PoisonConfig, PrivacyConfig
from fedsec.data.federated import FederatedData
from fedsec.data.poison import DEFAULT_TRIGGER_SIZE, square_trigger_mask
from fedsec.models import build_model
from fedsec.strategies.base import resolve_device
from fedsec.training import evaluate


class ServerEvaluator:
    """Evaluates global arrays on the held-out test set, on the server's device, with the attack's metrics.

    - every run: ``accuracy``, ``loss``, ``recall_<class>``;
    - the attack's own metrics (:meth:`Attack.test_metrics`): ``source_recall`` and ``flip_rate`` for targeted
      label flipping, ``attack_success_rate`` for backdoors, ...
    - with a trigger planted in honest clients' data (``[data.poison] kind = "trigger"``):
      ``trigger_success_rate``, the share of non-target test inputs stamped with the same trigger (the square of
      :func:`fedsec.data.poison.square_trigger_mask` at the training data's largest value) that the model
      classifies as the poison's target: what the planted data taught the global model.
    """

    def __init__(self, model_name: str, attack: Attack, data: FederatedData,
                 poison: PoisonConfig | None = None) -> None:
        self.device = resolve_device("auto")
        self.num_classes = data.num_classes
        self.attack = attack
        self.model = build_model(model_name, data.input_shape, data.num_classes).to(self.device)
        self.x = torch.from_numpy(np.array(data.x_test, copy=True)).to(self.device)
        self.y = torch.from_numpy(np.array(data.y_test, dtype=np.int64, copy=True)).to(self.device)
        data_max = float(data.x_train.max())
        self.attack_state = attack.prepare_test(self.x, self.y, data_max=data_max)
        self.trigger_target: int | None = None
        if poison is not None and poison.kind == "trigger":
            self.trigger_target = int(poison.target if poison.target is not None else 0)
            mask = torch.from_numpy(square_trigger_mask(tuple(self.x.shape[1:]), size=DEFAULT_TRIGGER_SIZE))
            keep = self.y != self.trigger_target
            self.triggered = torch.where(mask.to(self.device), data_max, self.x[keep])

    def membership_inference(self, arrays: Any, data: FederatedData, *, seed: int,
                             privacy: PrivacyConfig) -> dict[str, float]:
        """Yeom et al.'s loss-threshold attack on the clients' training data vs the test set
        (:mod:`fedsec.audits.membership`)."""
        load_record(self.model, arrays)
        trained = np.concatenate(data.partitions)
        members, others = balanced_sample(trained.size, data.y_test.size, seed=seed)
        idx = trained[members]
        x_in = torch.from_numpy(np.array(data.x_train[idx])).to(self.device)
        y_in = torch.from_numpy(np.array(data.y_train[idx], dtype=np.int64)).to(self.device)
        result = loss_threshold_attack(self.model, (x_in, y_in), (self.x[others], self.y[others]))
        if privacy.mode != "none":
            result["mia_bound"] = advantage_bound(privacy.epsilon, privacy.delta)
        return result

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels the current model predicts for ``x`` (batches of 2048)."""
        self.model.eval()
        return torch.cat([self.model(x[i : i + 2048]).argmax(dim=1) for i in range(0, x.shape[0], 2048)])

    def __call__(self, arrays: Any) -> dict[str, float]:
        load_record(self.model, arrays)
        result = evaluate(self.model, self.x, self.y, num_classes=self.num_classes)
        row: dict[str, float] = {"accuracy": result.accuracy, "loss": result.loss}
        row.update(self.attack.test_metrics(self.attack_state, self.predict, self.x, self.y, result.per_class_recall))
        if self.trigger_target is not None:
            hits = self.predict(self.triggered) == self.trigger_target
            row["trigger_success_rate"] = float(hits.double().mean())
        row.update({f"recall_{c}": r for c, r in enumerate(result.per_class_recall)})
        return row


def detection_scores(decisions: list[Any], malicious: set[int]) -> dict[str, float]:
    """Precision and recall of the strategy's rejections against the truth (NaN where undefined).

    A client counts as flagged when the strategy rejected it or gave it less than half the weight FedAvg would
    (its share of the round's examples); failed, refused or invalid replies are not counted as detections.
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
