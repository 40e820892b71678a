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
