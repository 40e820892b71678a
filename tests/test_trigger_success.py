"""``trigger_success_rate``: the server measures what a trigger planted in honest clients' data taught the global
model, with the same trigger the clients' poisoning stamps (a model trained on poisoned digits scores high, a model
trained on clean digits low)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsec.arrays import model_to_record
from fedsec.data.federated import build_federated_data
from fedsec.data.poison import poison_client_data
from fedsec.hooks import ServerEvaluator
from fedsec.models import build_model
from fedsec.plan import plan_from_dict
from fedsec.training import train_local


@pytest.fixture(scope="module")
def setting():
    plan = plan_from_dict({"data": {"dataset": "digits", "partition": "iid", "num_clients": 4,
                                    "poison": {"kind": "trigger", "clients": [1], "rate": 0.3, "target": 3}},
                           "model": {"name": "cnn"}, "train": {"clients_per_round": 4}})
    data = build_federated_data(plan.experiment.data, plan.experiment.seed)
    return plan, data


def trained(x: np.ndarray, y: np.ndarray, input_shape) -> torch.nn.Module:
    torch.manual_seed(0)
    net = build_model("cnn", input_shape, 10, seed=0)
    train_local(net, torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), epochs=8, batch_size=32, lr=0.05,
                momentum=0.9, generator=torch.Generator().manual_seed(0))
    return net


@pytest.mark.slow  # trains poisoned and clean models (~1.5 min): bash scripts/dev.sh slow
def test_trigger_success_separates_a_poisoned_model_from_a_clean_one(setting):
    plan, data = setting
    evaluator = ServerEvaluator("cnn", plan.attack, data, poison=plan.experiment.data.poison)
    x, y = np.asarray(data.x_train), np.asarray(data.y_train)
    poisoned = poison_client_data(x, y, kind="trigger", rate=0.3, num_classes=10, seed=0, target=3)
    bad = evaluator(model_to_record(trained(poisoned.x, poisoned.y, data.input_shape)))
    clean = evaluator(model_to_record(trained(x, y, data.input_shape)))
    assert bad["trigger_success_rate"] > 0.8, bad
    assert clean["trigger_success_rate"] < 0.3, clean
    assert clean["accuracy"] > 0.8 and bad["accuracy"] > 0.8


def test_no_trigger_metric_without_a_planted_trigger(setting):
    plan, data = setting
    row = ServerEvaluator("cnn", plan.attack, data)(model_to_record(build_model("cnn", data.input_shape, 10, seed=0)))
    assert "trigger_success_rate" not in row
