"""Server-side evaluation of the global model: accuracy, loss, per-class recall, the attack's own metrics (declared by
the attack: ``Attack.metrics``) and, with a trigger planted in honest clients' data, the trigger's success.

``[eval]`` sets how often and on how much: every ``every`` rounds, on a seeded, stratified subset of ``examples``
test examples (:func:`stratified_subset`); round 0 and the last planned round always on the whole test set, and when a
run ends (a budget stop, a failure, ...) after a round that was skipped or evaluated on the subset, the final model
is evaluated on the whole test set into ``summary.json`` (``final_evaluation`` says after which round)."""

from __future__ import annotations

import time
from typing import Any

import torch

from fedsec.arrays import load_record
from fedsec.clients.attacks import Attack
from fedsec.config import PoisonConfig
from fedsec.data.federated import FederatedData
from fedsec.data.poison import DEFAULT_TRIGGER_SIZE, square_trigger_mask
from fedsec.results.contract import Metric
from fedsec.strategies.base import resolve_device
from fedsec.training import evaluate, predict

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
        data_max = data.data_max  # once per run: the full and the subset evaluator share it
        self.attack_state = attack.prepare_test(self.x, self.y, data_max=data_max)
        self.trigger_target: int | None = None
        if poison is not None and poison.kind == "trigger":
            self.trigger_target = int(poison.target if poison.target is not None else 0)
            mask = torch.from_numpy(square_trigger_mask(tuple(self.x.shape[1:]), size=DEFAULT_TRIGGER_SIZE))
            keep = self.y != self.trigger_target
            self.triggered = torch.where(mask.to(self.x.device), data_max, self.x[keep])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Labels the current model predicts for ``x`` (:func:`fedsec.training.predict`)."""
        return predict(self.model, x)

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


def stratified_subset(labels: torch.Tensor, size: int, *, seed: int) -> torch.Tensor:
    """Indices of ``size`` of the ``labels`` (sorted), each class keeping its share (largest remainders first),
    drawn from a permutation seeded by ``seed``.

    >>> labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    >>> labels[stratified_subset(labels, 5, seed=0)].bincount().tolist()
    [2, 3]
    """
    n = labels.numel()
    if size >= n:
        return torch.arange(n)
    labels = labels.cpu()
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * size / n
    take = exact.floor().long()
    for i in torch.argsort(exact - take, descending=True, stable=True)[: size - int(take.sum())]:
        take[i] += 1
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    chosen = [order[labels[order] == c][:k] for c, k in zip(classes.tolist(), take.tolist(), strict=True)]
    return torch.cat(chosen).sort().values


class Evaluation(RoundHook):
    """Evaluates the initial model and the new global model of the rounds ``[eval]`` picks on the held-out test set
    (or its subset); the final model always on all of it."""

    name = "evaluation"
    description = "accuracy, loss, per-class recall and the attack's own metrics of the global model"
    metrics = (
        Metric("accuracy", "main-task test accuracy of the global model", better="higher"),
        Metric("loss", "test cross-entropy of the global model", better="lower"),
        Metric("trigger_success_rate", "planted trigger: stamped non-target test inputs classified as the "
               "poison's target", better="lower"),
        Metric("eval_examples", "[eval] examples: test examples the round was evaluated on, when a subset",
               final=False, integer=True),
    )

    def __init__(self, params: Any, ctx: ServerContext) -> None:
        super().__init__(params, ctx)
        facts = ctx.facts
        self.evaluator = ServerEvaluator(facts.model_name, facts.attack, ctx.data, poison=facts.poison,
                                         model=ctx.model, x_test=ctx.x_test, y_test=ctx.y_test)
        self.every, self.last_round = facts.eval_every, facts.rounds
        self.subset: ServerEvaluator | None = None
        if 0 < facts.eval_examples < ctx.y_test.shape[0]:
            index = stratified_subset(ctx.y_test, facts.eval_examples, seed=facts.seed).to(ctx.y_test.device)
            self.subset = ServerEvaluator(facts.model_name, facts.attack, ctx.data, poison=facts.poison,
                                          model=ctx.model, x_test=ctx.x_test[index], y_test=ctx.y_test[index])
        self.unevaluated: tuple[int, Any] | None = None  # (round, arrays) of a newest model not evaluated in full

    def on_start(self, arrays: Any, row: dict[str, Any]) -> None:
        row.update(self.evaluator(arrays))

    def after_aggregate(self, rnd: RoundState) -> None:
        r, t0 = rnd.server_round, time.perf_counter()
        if r >= self.last_round or (r % self.every == 0 and self.subset is None):
            rnd.row.update(self.evaluator(rnd.arrays))
            self.unevaluated = None
        else:
            self.unevaluated = (r, rnd.arrays)
            if r % self.every == 0 and self.subset is not None:
                rnd.row.update(self.subset(rnd.arrays))
                rnd.row["eval_examples"] = int(self.subset.y.shape[0])
        rnd.row["eval_seconds"] = time.perf_counter() - t0

    def on_stop(self, summary: dict[str, Any]) -> None:
        """The run ended after a round without a full evaluation: evaluate its model on the whole test set, so the
        summary's final metrics are the final model's."""
        if self.unevaluated is None:
            return
        r, arrays = self.unevaluated
        summary.update({k: v for k, v in self.evaluator(arrays).items() if not k.startswith("recall_")})
        summary["final_evaluation"] = f"the whole test set, after round {r} ([eval] had not evaluated it in full)"
        self.unevaluated = None
