"""Every rule in ``STRATEGIES`` refuses and records a reply without one valid ``partition-id``, and never
aggregates it; a rule that runs past ``aggregate_timeout`` is interrupted and its round skipped, naming the rule.

The replies are real Flower messages (``flower_messages``). Each rule is built from its ``[defense]`` defaults
through ``from_config`` (as a run builds it), so a newly registered rule is covered without a change here. The
wrong result feared: the bad reply moves the aggregate (it was weighted in), or FoolsGold raises on two id-less
replies from one node (it keyed them by node id)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from flower_messages import _instruction, arrays_of, started
from flwr.app import Message, MetricRecord, RecordDict

from fedsec.strategies import STRATEGIES, FedAvg, GeometricMedian, StrategyContext

pytestmark = pytest.mark.usefixtures("server_identity")
SHAPES = {"w": (2, 3), "b": (3,)}
PARTITIONS = 10
GLOBAL = {k: np.zeros(s, dtype=np.float32) for k, s in SHAPES.items()}


def build(name: str):
    cls = STRATEGIES.get(name)
    context = StrategyContext(expected_malicious=1, clients_per_round=8, seed=0,
                              server_update_fn=lambda arrays: torch.full((9,), 0.1))
    return started(cls.from_config(cls.Params(), context, device="cpu", num_partitions=PARTITIONS),
                   arrays_of(GLOBAL))


def message(node_id: int, values: dict[str, np.ndarray], *metric_records: dict) -> Message:
    content = RecordDict({"arrays": arrays_of(values)})
    for i, metrics in enumerate(metric_records):
        content[f"metrics{i}" if i else "metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=_instruction(node_id))


def honest() -> list[Message]:
    rng = np.random.default_rng(0)
    return [message(100 + i, {k: (0.1 + 0.01 * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()},
                    {"num-examples": 50, "partition-id": i}) for i in range(8)]


BIG = {k: np.full(s, 50.0, dtype=np.float32) for k, s in SHAPES.items()}  # would move any mean if it got in
BAD = {
    "missing": [{"num-examples": 50}],
    "negative": [{"num-examples": 50, "partition-id": -1}],
    "fraction": [{"num-examples": 50, "partition-id": 8.5}],
    "nan": [{"num-examples": 50, "partition-id": float("nan")}],
    "out_of_range": [{"num-examples": 50, "partition-id": PARTITIONS}],
    "a_list": [{"num-examples": 50, "partition-id": [8]}],
    "two_records": [{"num-examples": 50, "partition-id": 8}, {"partition-id": 9}],
}


@pytest.mark.parametrize("bad", sorted(BAD))
@pytest.mark.parametrize("name", STRATEGIES.names())
def test_a_reply_without_a_valid_partition_id_is_refused_recorded_and_not_aggregated(name, bad):
    reference, _ = build(name).aggregate_train(1, honest())
    strategy = build(name)
    arrays, _ = strategy.aggregate_train(1, [*honest(), message(200, BIG, *BAD[bad])])
    decisions = strategy.last_report.decisions
    refused = [d for d in decisions if d.node_id == 200]
    assert len(decisions) == 9 and len(refused) == 1
    assert refused[0].status.startswith("invalid: ") and "partition-id" in refused[0].status, refused[0].status
    assert refused[0].weight == 0 and refused[0].partition_id is None
    assert sorted(d.partition_id for d in decisions if d.node_id != 200) == list(range(8))
    assert (arrays is None) == (reference is None)
    if arrays is not None:  # exactly the honest aggregate: the bad reply had no part in it
        for key in SHAPES:
            np.testing.assert_array_equal(arrays[key].numpy(), reference[key].numpy())


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_two_id_less_replies_from_one_node_are_both_refused_and_no_rule_raises(name):
    strategy = build(name)
    id_less = [message(200, BIG, {"num-examples": 50}), message(200, BIG, {"num-examples": 50})]
    strategy.aggregate_train(1, [*honest(), *id_less])
    statuses = [d.status for d in strategy.last_report.decisions if d.node_id == 200]
    assert statuses == ["invalid: no 'partition-id' in the reply's metrics"] * 2


def test_one_node_replying_for_many_partitions_is_fine_for_foolsgold():
    """Cohort mode: one Flower node answers for several logical clients, each with its own partition id."""
    strategy = build("foolsgold")
    replies = [message(100, {k: np.full(s, 0.1 * (i + 1), dtype=np.float32) for k, s in SHAPES.items()},
                       {"num-examples": 50, "partition-id": i}) for i in range(4)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and [d.status for d in strategy.last_report.decisions].count("invalid") == 0
    assert set(strategy.histories) == {("partition", i) for i in range(4)}


class SlowFedAvg(FedAvg):
    """FedAvg that spins in Python for ``spin`` seconds per round (a stand-in for a runaway kernel)."""

    spin = 0.0

    def aggregate_updates(self, updates, num_examples):
        end = time.monotonic() + self.spin
        while time.monotonic() < end:
            pass
        return super().aggregate_updates(updates, num_examples)


def _aggregate_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("fedsec-aggregate")]


def test_a_rule_past_its_time_bound_is_stopped_the_round_skipped_and_the_next_round_runs():
    strategy = started(SlowFedAvg(device="cpu", num_partitions=PARTITIONS, aggregate_timeout=0.3), arrays_of(GLOBAL))
    SlowFedAvg.spin = 3600.0
    start = time.monotonic()
    arrays, metrics = strategy.aggregate_train(1, honest())
    assert time.monotonic() - start < 2.0  # 0.3 s, then the worker is interrupted (1 s of grace at most)
    assert arrays is None and metrics is None
    reason = strategy.last_report.skipped_reason
    assert reason == ("SlowFedAvg did not finish aggregating within backend.aggregate_timeout=0.3 s; the global "
                      "model stays")
    assert {d.status for d in strategy.last_report.decisions} == {"skipped: aggregation timeout"}
    assert _aggregate_threads() == []  # the worker was interrupted, not left spinning
    SlowFedAvg.spin = 0.0
    arrays, _ = strategy.aggregate_train(2, honest())  # the run goes on
    assert arrays is not None and strategy.last_report.skipped_reason is None


def test_geomed_with_a_huge_iteration_count_is_cut_off_naming_the_rule():
    strategy = started(GeometricMedian(iterations=10**9, device="cpu", aggregate_timeout=0.5), arrays_of(GLOBAL))
    start = time.monotonic()
    arrays, _ = strategy.aggregate_train(1, honest())
    assert arrays is None and time.monotonic() - start < 3.0
    assert strategy.last_report.skipped_reason.startswith("GeometricMedian(iterations=1000000000")
    assert "backend.aggregate_timeout=0.5 s" in strategy.last_report.skipped_reason
    time.sleep(0.2)
    assert _aggregate_threads() == []


def test_errors_of_a_rule_still_reach_the_caller_through_the_time_bound():
    class Broken(FedAvg):
        def aggregate_updates(self, updates, num_examples):
            raise ArithmeticError("kernel bug")

    strategy = started(Broken(device="cpu", aggregate_timeout=5.0), arrays_of(GLOBAL))
    with pytest.raises(ArithmeticError, match="kernel bug"):
        strategy.aggregate_train(1, honest())


@pytest.mark.parametrize("value", [0, -1, float("nan"), 7 * 86400 + 1, True])
def test_aggregate_timeout_is_checked(value):
    with pytest.raises(ValueError, match="backend.aggregate_timeout"):
        FedAvg(device="cpu", aggregate_timeout=value)


def test_no_bound_runs_the_rule_in_the_calling_thread():
    seen = []

    class Where(FedAvg):
        def aggregate_updates(self, updates, num_examples):
            seen.append(threading.current_thread() is threading.main_thread())
            return super().aggregate_updates(updates, num_examples)

    strategy = started(Where(device="cpu", aggregate_timeout=None), arrays_of(GLOBAL))
    strategy.aggregate_train(1, honest())
    assert seen == [True]
