"""Cohort mode (``backend.messages``): many logical clients per Flower message give the results of one message per
client, through Flower's simulation engine on Ray (digits, small), and one failing client fails alone. Under CKKS:
``tests/test_e2e.py::test_ckks_encrypted_run_matches_the_plaintext_run`` runs in cohort mode."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from fedsec.arrays import model_to_record
from fedsec.clients.app import make_client_app
from fedsec.clients.spec import ClientSpec
from fedsec.models import build_model
from fedsec.plan import load_plan, plan_from_dict
from fedsec.protocol import COHORT_IDS_KEY, COHORT_RECORD, cohort_reply, split_cohort_reply
from fedsec.runtime.runner import run_experiment
from fedsec.server.cohorts import cohort_node_count
from tests.test_e2e import SMOKE

# local DP (per-client accountant state kept across rounds), an attacker and a robust rule: 6 clients, 4 per
# round, 3 rounds, so clients train more than once and their state must follow them
DP_ATTACK = ["rounds=3", "data.num_clients=6", "train.clients_per_round=4", "privacy.mode='local'",
             "privacy.noise_multiplier=1.0", "privacy.epsilon=3.3", "privacy.delta=1e-4", "attack.kind='sign_flip'",
             "attack.client_ids=[1]", "defense.strategy='median'"]


def test_auto_mode_uses_cohorts_only_when_there_are_more_clients_than_cohort_nodes():
    assert cohort_node_count("auto", 0, num_clients=10_000, client_slots=2) == 8
    assert cohort_node_count("auto", 0, num_clients=8, client_slots=2) == 0  # one client per node anyway
    assert cohort_node_count("auto", 3, num_clients=8, client_slots=2) == 3
    assert cohort_node_count("cohort", 0, num_clients=4, client_slots=2) == 4
    assert cohort_node_count("per_client", 5, num_clients=10_000, client_slots=2) == 0


@pytest.mark.usefixtures("shared_ray")
@pytest.mark.e2e
def test_cohort_and_per_client_messages_give_identical_runs(tmp_path):
    runs = {}
    for mode in ("per_client", "cohort"):
        plan = load_plan(SMOKE, [*DP_ATTACK, f"backend.messages='{mode}'", "backend.cohort_nodes=2"])
        runs[mode] = run_experiment(plan, tmp_path / mode)
    assert runs["per_client"].summary["client_messages"] == "per_client"
    assert runs["cohort"].summary["client_messages"] == "cohort (2 nodes)"
    ra, rb = (pd.read_csv(r.run_dir / "rounds.csv").filter(regex=r"^(?!.*seconds$)") for r in runs.values())
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    ca, cb = (pd.read_csv(r.run_dir / "clients.csv").drop(columns=["node"]) for r in runs.values())
    pd.testing.assert_frame_equal(ca, cb, check_exact=True)
    # each client's accountant followed it from round to round (its state kept in its cohort node): a client
    # refuses only after it has trained, when one more round would overspend epsilon = 3.3
    refused = cb[cb["status"].str.contains("privacy budget exhausted")]
    assert len(refused) > 0 and (cb.loc[(cb["status"] == "accepted") & (cb["malicious"] == 0), "epsilon"] > 2).all()
    for client, server_round in zip(refused["client"], refused["round"], strict=True):
        assert ((cb["client"] == client) & (cb["round"] < server_round) & (cb["status"] == "accepted")).any()
    assert (cb["malicious"] == 1).any() and (cb["status"] == "accepted").any()
    summaries = [json.loads((r.run_dir / "summary.json").read_text()) for r in runs.values()]
    assert summaries[0]["privacy"] == summaries[1]["privacy"]


def test_a_cohort_message_trains_each_client_as_its_own_message_and_a_failing_client_fails_alone(server_identity):
    plan = plan_from_dict({"data": {"dataset": "digits", "num_clients": 6, "partition": "iid"},
                           "model": {"name": "logreg"}, "train": {"clients_per_round": 3}, "rounds": 1})
    app = make_client_app(ClientSpec.from_plan(plan))
    arrays = model_to_record(build_model("logreg", (64,), 10, seed=0))
    shared = {"arrays": arrays, "config": ConfigRecord({"server-round": 1})}

    def message(content: dict) -> Message:
        return Message(content=RecordDict(content), dst_node_id=7, message_type=MessageType.TRAIN)

    def context(pid: int) -> Context:
        return Context(run_id=1, node_id=7, node_config={"partition-id": pid}, state=RecordDict(), run_config={})

    cohort = message({**shared, COHORT_RECORD: ConfigRecord({COHORT_IDS_KEY: [0, 4, 60, 5]})})
    parts = split_cohort_reply(app(cohort, context(1)), 4)
    assert isinstance(parts[2], tuple) and "IndexError" in parts[2][1]  # partition 60 does not exist: it fails
    for pid, part in zip((0, 4, 5), (parts[0], parts[1], parts[3]), strict=True):
        alone = app(message(shared), context(pid)).content
        assert part["metrics"]["partition-id"] == pid
        assert part["metrics"]["train_loss"] == alone["metrics"]["train_loss"]
        for key, array in alone["arrays"].items():
            np.testing.assert_array_equal(part["arrays"][key].numpy(), array.numpy())


def test_cohort_replies_round_trip_content_and_errors(server_identity):
    request = Message(content=RecordDict({"config": ConfigRecord()}), dst_node_id=3, message_type=MessageType.TRAIN)
    a = Message(content=RecordDict({"info": ConfigRecord({"node": "x"})}), reply_to=request)
    reply = cohort_reply(request, [a, (2, "ValueError: boom")])
    parts = split_cohort_reply(reply, 3)
    assert parts[0]["info"]["node"] == "x"
    assert parts[1] == (2, "ValueError: boom")
    assert parts[2] == (0, "the cohort reply holds nothing for this client")
