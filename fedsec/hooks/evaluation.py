"""Server-side evaluation of the global model after every round: accuracy, loss, per-class recall, the attack's own
metrics (declared by the attack: ``Attack.metrics``) and, with a trigger planted in honest clients' data, the
trigger's success."""

from __future__ import annotations

from typing import Any

import torch

from fedsec.arrays import load_record
from fedsec.clients.attacks import Attack
from fedsec.config import PoisonConfig
from fedsec.data.federated import FederatedData
from fedsec.data.poison import DEFAULT_TRIGGER_SIZE, square_trigger_mask
from fedsec.results.contract import Metric
from fedsec.strategies.base import resolve_device
from fedsec.training import evaluate

from .base import RoundHook, RoundState, ServerContext


class ServerEvaluator:
    """Evaluates global arrays on the held-out test set, on the server's device, with the attack's metrics.

    - every run: ``accuracy``, ``loss``, ``recall_<class>``;
    - the attack's own metrics (:meth:`Attack.test_metrics`): ``source_recall`` and ``flip_rate`` for targeted
      label flipping, ``attack_success_rate`` for backdoors, ...
    - with a trigger planted in honest clients' data (``[data.poison] kind = "trigger"``):
      ``trigger_success_rate``, the share of non-target test inputs stamped with the same trigger (the square of
      :func:`fedsec.data.poison.square_trigger_mask` at the training data's largest value) that the model
      classifies as the poison's target: what the planted data taught the global model.

    ``model``, ``x_test``, ``y_test``: share the server's (:class:`ServerContext`); built here when omitted.
    """

    def __init__(self, model_name: str, attack: Attack, data: FederatedData, poison: PoisonConfig | None = None, *,
                 model: torch.nn.Module | None = None, x_test: torch.Tensor | None = None,
                 y_test: torch.Tensor | None = None) -> None:
        if model is None or x_test is None or y_test is None:
            import numpy as np

            from fedsec.models import build_model

            device = resolve_device("auto")
            model = build_model(model_name, data.input_shape, data.num_classes).to(device)
            x_test = torch.from_numpy(np.array(data.x_test, copy=True)).to(device)
            y_test = torch.from_numpy(np.array(data.y_test, dtype=np.int64, copy=True)).to(device)
        self.model, self.x, self.y = model, x_test, y_test
        self.num_classes = data.num_classes
        self.attack = attack
        data_max = float(data.x_train.max())
        self.attack_state = attack.prepare_test(self.x, self.y, data_max=data_max)
        self.trigger_target: int | None = None
        if poison is not None and poison.kind == "trigger":
            self.trigger_target = int(poison.target if poison.target is not None else 0)
            mask = torch.from_numpy(square_trigger_mask(tuple(self.x.shape[1:]), size=DEFAULT_TRIGGER_SIZE))
            keep = self.y != self.trigger_target
            self.triggered = torch.where(mask.to(self.x.device), data_max, self.x[keep])

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


class Evaluation(RoundHook):
    """Evaluates the initial model and every round's new global model on the held-out test set."""

    name = "evaluation"
    description = "accuracy, loss, per-class recall and the attack's own metrics of the global model"
    metrics = (
        Metric("accuracy", "main-task test accuracy of the global model", better="higher"),
        Metric("loss", "test cross-entropy of the global model", better="lower"),
        Metric("trigger_success_rate", "planted trigger: stamped non-target test inputs classified as the "
               "poison's target", better="lower"),
    )

    def __init__(self, params: Any, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        facts = ctx.facts
        self.evaluator = ServerEvaluator(facts.model_name, facts.attack, ctx.data, poison=facts.poison,
                                         model=ctx.model, x_test=ctx.x_test, y_test=ctx.y_test)

    def on_start(self, arrays: Any, row: dict[str, Any]) -> None:
        row.update(self.evaluator(arrays))

    def after_aggregate(self, rnd: RoundState) -> None:
        rnd.row.update(self.evaluator(rnd.arrays))
