"""encryption.scheme = "secagg+": Flower's SecAgg+ workflow and client mod with fedsec's clients and round loop
(in this process, real Flower messages through the protocol's four stages): the same model as plaintext FedAvg,
mid-round dropouts recovered by the protocol, masked vectors only on the server's side, and the configs it refuses."""

from __future__ import annotations

import pytest
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict
from tests.in_process import InProcessGrid, run_in_process


def _raw(scheme: str, **clients: float) -> dict:
    raw = {"name": "secagg", "seed": 1, "rounds": 2,
           "data": {"dataset": "digits", "partition": "iid", "num_clients": 6},
           "model": {"name": "logreg"},
           "train": {"clients_per_round": 5, "local_epochs": 1, "batch_size": 16, "lr": 0.1},
           "defense": {"strategy": "fedavg", "weighting": "reported"},
           "encryption": {"scheme": scheme}}
    if clients:
        raw["clients"] = clients
    return raw


@pytest.mark.usefixtures("server_identity", "one_torch_thread")
@pytest.mark.parametrize("failure", [0.0, 0.2])
def test_secagg_gives_plaintext_fedavgs_model_and_survives_dropouts(tmp_path, failure, monkeypatch):
    seen: list = []
    pushed = InProcessGrid.push_messages

    def record(self, messages):  # every reply that reaches the server's process
        ids = pushed(self, messages)
        seen.extend(self._replies[i] for i in ids)
        return ids

    monkeypatch.setattr(InProcessGrid, "push_messages", record)
    extra = {"failure": failure} if failure else {}
    plain = run_in_process(_raw("none", **extra), tmp_path / "plain")
    seen.clear()
    masked = run_in_process(_raw("secagg+", **extra), tmp_path / "secagg")
    assert masked.attrs["stopped_reason"] == "completed"
    assert (masked["accuracy"] - plain["accuracy"]).abs().max() <= 1e-3
    assert (masked["loss"] - plain["loss"]).abs().max() <= 1e-3
    if failure:  # some clients' masked vectors were lost after they shared their keys, and the round still unmasked
        assert masked["clients_dropped"].fillna(0).sum() >= 1
        assert masked["clients_dropped"].equals(plain["clients_dropped"])
    masked_replies = [r for r in seen if not r.has_error() and RECORD_KEY_CONFIGS in r.content
                      and Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(masked_replies) >= 2 * 5 * (1 - failure) - 1
    for reply in seen:  # no reply the server received carries a model: the arrays were masked into bytes
        if not reply.has_error():
            assert all(len(a.data) == 0 for rec in reply.content.array_records.values() for a in rec.values())


@pytest.mark.parametrize(("key", "value", "why"), [
    ("defense.strategy", "median", "robust rules need each client's update"),
    ("privacy.mode", "central", "DP-FedAvg clips each update on the server"),
    ("backend.messages", "cohort", "each client needs its own node"),
    ("train.clients_per_round", 2, "at least 3 clients"),
])
def test_what_secagg_cannot_run_is_refused_with_the_reason(key, value, why):
    raw = _raw("secagg+")
    section, name = key.split(".")
    raw.setdefault(section, {})[name] = value
    if value == "central":
        raw["privacy"].update({"epsilon": 8.0, "delta": 1e-5, "clip_norm": 1.0})
    with pytest.raises(ConfigError, match=why):
        plan_from_dict(raw)


def test_capped_weighting_runs_as_uniform_under_secagg():
    raw = _raw("secagg+")
    del raw["defense"]["weighting"]
    plan = plan_from_dict(raw)
    assert plan.secagg is not None and not plan.secagg.weighted
    assert plan.resolved["defense"]["weighting"] == "uniform"


def _secagg_replies(claims: dict[int, dict], summed: dict[int, int], aggregate) -> list:
    """The replies SecAgg+'s transport hands the strategy: each survivor's node, its claimed metrics, the one
    unmasked aggregate and the record of which node the protocol summed as which partition."""
    from flower_messages import _instruction
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from fedsec.crypto.secaggplus import MEMBER_NODES_KEY, MEMBERS_KEY, SECAGG_RECORD

    pairs = sorted((pid, str(node)) for node, pid in summed.items())
    record = ConfigRecord({MEMBERS_KEY: [p for p, _ in pairs], MEMBER_NODES_KEY: [n for _, n in pairs]})
    return [Message(RecordDict({"arrays": aggregate, "metrics": MetricRecord(metrics), SECAGG_RECORD: record}),
                    reply_to=_instruction(node)) for node, metrics in claims.items()]


@pytest.mark.usefixtures("server_identity")
def test_a_client_that_lies_about_its_partition_is_recorded_and_the_round_still_applies_the_aggregate():
    import numpy as np
    from flower_messages import arrays_of, started

    from fedsec.strategies.secaggplus_fedavg import SecAggPlusFedAvg

    aggregate = arrays_of({"w": np.full((2, 2), 0.5)})
    summed = {101: 0, 102: 1, 103: 2}
    honest = {node: {"num-examples": 10, "partition-id": pid} for node, pid in summed.items()}
    for lie in ({"num-examples": 10, "partition-id": 0},  # another member's id
                {"num-examples": 10, "partition-id": -3},  # an invalid one
                {"num-examples": float("nan"), "partition-id": 2}):  # an invalid count
        strategy = started(SecAggPlusFedAvg(weighting="uniform", num_partitions=6),
                           arrays_of({"w": np.zeros((2, 2))}))
        arrays, _ = strategy.aggregate_train(1, _secagg_replies({**honest, 103: lie}, summed, aggregate))
        assert arrays is aggregate, lie  # applied: the protocol fixed the sum before any claim was read
        decisions = {d.node_id: d for d in strategy.last_report.decisions}
        assert decisions[103].partition_id == 2 and "its node holds partition 2" in decisions[103].status
        assert decisions[101].status == "accepted" and decisions[101].partition_id == 0

    # a member's reply missing (taken out after the sum) still skips the round: the aggregate includes it
    strategy = started(SecAggPlusFedAvg(weighting="uniform", num_partitions=6), arrays_of({"w": np.zeros((2, 2))}))
    arrays, _ = strategy.aggregate_train(1, _secagg_replies({101: honest[101], 102: honest[102]}, summed, aggregate))
    assert arrays is None and "taken out after the sum" in strategy.last_report.skipped_reason
    # a reply from a node the protocol did not sum is refused
    strategy = started(SecAggPlusFedAvg(weighting="uniform", num_partitions=6), arrays_of({"w": np.zeros((2, 2))}))
    extra = {**honest, 104: {"num-examples": 10, "partition-id": 3}}
    arrays, _ = strategy.aggregate_train(1, _secagg_replies(extra, summed, aggregate))
    decisions = {d.node_id: d for d in strategy.last_report.decisions}
    assert arrays is aggregate and "not in the SecAgg+ sum" in decisions[104].status
