"""fedsec's strategy base on real Flower messages: checks, ordering, decisions, and agreement with Flower's FedAvg."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flower_messages import arrays_of, error_reply, reply, started
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedsec.strategies import FedAvg, fedavg_aggregate

SHAPES = {"w": (2, 3), "b": (3,)}
pytestmark = pytest.mark.usefixtures("server_identity")


def global_zero():
    return arrays_of({k: np.zeros(s) for k, s in SHAPES.items()})


def test_fedavg_kernel_weights_by_examples():
    updates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [4.0, 4.0]])
    aggregate, weights = fedavg_aggregate(updates, torch.tensor([1.0, 1.0, 2.0]))
    # weights 1/4, 1/4, 1/2 -> [0.25 + 2, 0.25 + 2]
    torch.testing.assert_close(weights, torch.tensor([0.25, 0.25, 0.5]))
    torch.testing.assert_close(aggregate, torch.tensor([2.25, 2.25]))


def test_invalid_and_failed_replies_are_rejected_and_recorded():
    strategy = started(FedAvg(device="cpu"), global_zero())
    good = {"w": np.ones((2, 3)), "b": np.ones(3)}
    nan = {"w": np.full((2, 3), np.nan), "b": np.ones(3)}
    wrong_shape = {"w": np.ones((3, 2)), "b": np.ones(3)}
    replies = [
        reply(105, 5, nan),
        reply(101, 1, good, num_examples=30, node="ray-1"),
        reply(103, 3, wrong_shape),
        reply(102, 2, {"w": 3 * np.ones((2, 3)), "b": 3 * np.ones(3)}, num_examples=10),
        reply(104, 4, good, num_examples=0),
        error_reply(106),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # only partitions 1 (30 ex., value 1) and 2 (10 ex., value 3) count: 0.75 * 1 + 0.25 * 3 = 1.5
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), 1.5), rtol=1e-6)
    decisions = strategy.last_report.decisions
    assert [d.partition_id for d in decisions] == [1, 2, 3, 4, 5, None]  # sorted by partition, errors last
    status = {d.partition_id: d.status for d in decisions}
    assert status[1] == status[2] == "accepted"
    assert status[3].startswith("invalid") and "shapes" in status[3]
    assert status[4].startswith("invalid") and "num-examples" in status[4]
    assert status[5].startswith("invalid") and "non-finite" in status[5]
    assert status[None] == "failed: boom: CUDA out of memory"
    weights = {d.partition_id: d.weight for d in decisions}
    assert weights == {1: 0.75, 2: 0.25, 3: 0.0, 4: 0.0, 5: 0.0, None: 0.0}
    assert math.isclose(decisions[0].update_norm, math.sqrt(9), rel_tol=1e-6)  # |(1,...,1)| over 9 entries
    assert decisions[0].node == "ray-1"
    assert metrics["num-examples"] == 40 and math.isclose(metrics["train_loss"], 1.0)


def test_round_with_no_valid_update_is_skipped_not_crashed():
    strategy = started(FedAvg(device="cpu"), global_zero())
    arrays, metrics = strategy.aggregate_train(1, [error_reply(1), reply(2, 0, {"w": np.full((2, 3), np.inf),
                                                                                "b": np.ones(3)})])
    assert arrays is None and metrics is None
    assert "0 valid updates" in strategy.last_report.skipped_reason


def test_reply_order_does_not_change_the_aggregate():
    rng = np.random.default_rng(0)
    values = [{k: rng.normal(size=s) for k, s in SHAPES.items()} for _ in range(5)]
    replies = [reply(100 + i, i, v, num_examples=float(i + 1)) for i, v in enumerate(values)]
    a, _ = started(FedAvg(device="cpu"), global_zero()).aggregate_train(1, replies)
    b, _ = started(FedAvg(device="cpu"), global_zero()).aggregate_train(1, list(reversed(replies)))
    for key in SHAPES:
        assert np.array_equal(a[key].numpy(), b[key].numpy())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fedavg_agrees_with_flowers_fedavg(seed):
    rng = np.random.default_rng(seed)
    global_arrays = arrays_of({k: rng.normal(size=s) for k, s in SHAPES.items()})
    replies = [
        reply(100 + i, i, {k: rng.normal(size=s) for k, s in SHAPES.items()}, num_examples=float(rng.integers(1, 50)))
        for i in range(6)
    ]
    ours, _ = started(FedAvg(device="cpu"), global_arrays).aggregate_train(1, replies)
    theirs, _ = FlowerFedAvg().aggregate_train(1, replies)
    for key in SHAPES:
        np.testing.assert_allclose(ours[key].numpy(), theirs[key].numpy(), rtol=1e-5, atol=1e-6)
