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


# ------------------------------------------------------------------ stacking: one pass per reply, buffer reuse
def test_stack_updates_equals_stack_minus_reference_and_flags_non_finite_records():
    from flwr.app import Array, ArrayRecord

    from fedsec.arrays import record_to_vector, stack_records, stack_updates

    rng = np.random.default_rng(0)
    like = {"w": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    records = [
        arrays_of({"w": rng.normal(size=(2, 3)), "b": rng.normal(size=3)}),
        ArrayRecord({"w": Array(rng.normal(size=(2, 3))), "b": Array(np.arange(3))}),  # float64 and int64 arrays
        arrays_of({"w": np.full((2, 3), np.nan), "b": np.ones(3)}),
        ArrayRecord({"w": Array(np.full((2, 3), 1e300)), "b": Array(np.ones(3, np.float32))}),  # inf once float32
        arrays_of({"w": np.full((2, 3), 3e38), "b": np.ones(3)}),  # finite, but w - reference overflows
        arrays_of({"w": np.ones((2, 3)), "b": np.array([1.0, -np.inf, 0.0])}),
    ]
    reference = record_to_vector(arrays_of(like))
    updates, norms, finite = stack_updates(records, reference)
    assert finite == [True, True, False, False, True, False]
    expected = stack_records(records) - reference
    for i in (0, 1):
        torch.testing.assert_close(updates[i], expected[i])
        assert math.isclose(norms[i], float(torch.linalg.vector_norm(expected[i])), rel_tol=1e-6)
    like["w"] = -np.full((2, 3), 3e38, np.float32)
    _, norms, finite = stack_updates(records[4:5], record_to_vector(arrays_of(like)))
    assert finite == [True] and norms == [math.inf]  # valid values, an update too large for float32
    out = torch.empty(6, 9)
    assert stack_updates(records, reference, out=out)[0] is out
    with pytest.raises(ValueError, match="out has shape"):
        stack_updates(records, reference, out=torch.empty(5, 9))


def test_strategy_reuses_its_stacking_buffer_across_rounds_and_compacts_invalid_rows(monkeypatch):
    monkeypatch.setattr("fedsec.strategies._linalg.MIN_THREAD_WORK", 1)  # rows stacked by two threads, if available
    seen = []

    class Recording(FedAvg):
        def aggregate_updates(self, updates, num_examples):
            seen.append((updates.data_ptr(), updates.clone()))
            return super().aggregate_updates(updates, num_examples)

    strategy = started(Recording(device="cpu"), global_zero())
    rows = [{k: np.full(s, float(i)) for k, s in SHAPES.items()} for i in range(4)]
    strategy.aggregate_train(1, [reply(100 + i, i, v) for i, v in enumerate(rows)])
    bad = {"w": np.full((2, 3), np.nan), "b": np.ones(3)}
    arrays, _ = strategy.aggregate_train(2, [reply(100 + i, i, v) for i, v in enumerate([rows[0], bad, rows[2]])])
    assert seen[0][0] == seen[1][0]  # same storage, no new n x d allocation
    torch.testing.assert_close(seen[1][1], torch.tensor([[0.0] * 9, [2.0] * 9]))  # the NaN row dropped, 2 moved up
    np.testing.assert_allclose(arrays["w"].numpy(), np.full((2, 3), 1.0))
    assert [d.status for d in strategy.last_report.decisions][1].startswith("invalid: non-finite")
    bigger = [{k: np.full(s, 1.0) for k, s in SHAPES.items()}] * 6
    strategy.aggregate_train(3, [reply(100 + i, i, v) for i, v in enumerate(bigger)])  # grows the buffer
    assert seen[2][1].shape == (6, 9)
