"""The one-run privacy audit (Steinke, Nasr and Jagielski 2023; fedsec/privacy/one_run_audit.py, [audit.canary]):
the bound against an independent root-finding of its definition, then runs through fedsec's real round loop (in
process): clearly above 0 without DP, below the accountant's epsilon under central DP, resumable; with example
canaries at one client: clearly above 0 on a run that memorises, below that client's epsilon under local DP-SGD."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from scipy import optimize, stats

from fedsec.config import ConfigError
from fedsec.data.federated import build_federated_data
from fedsec.plan import plan_from_dict
from fedsec.privacy.one_run_audit import (
    audit_guesses,
    draw_example_canaries,
    epsilon_lower_bound,
    p_value,
    with_example_canaries,
)
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {"name": "canary", "seed": 1, "rounds": 5,
        "data": {"dataset": "digits", "partition": "iid", "num_clients": 10}, "model": {"name": "logreg"},
        "train": {"clients_per_round": 5, "local_epochs": 1, "batch_size": 32, "lr": 0.1},
        "audit": {"canary": {"canaries": 600, "guesses": 60}}}


def config(**sections) -> dict:
    raw = copy.deepcopy(BASE)
    raw.update(sections)
    return raw


@pytest.mark.parametrize(("r", "v"), [(200, 200), (200, 180), (100, 70), (60, 45)])
def test_the_bound_without_delta_is_where_the_binomial_tail_meets_the_confidence(r, v):
    """delta = 0: the bound solves P[Binomial(r, e^eps / (1 + e^eps)) >= v] = 0.05 (the paper's Theorem 3.1)."""
    def tail(eps: float) -> float:
        return stats.binom.sf(v - 1, r, 1 / (1 + math.exp(-eps))) - 0.05

    expected = optimize.brentq(tail, 0.0, 50.0) if tail(0.0) < 0 else 0.0
    assert epsilon_lower_bound(1000, r, v, delta=0.0) == pytest.approx(expected, abs=1e-6)


def test_delta_only_weakens_the_bound_and_more_correct_guesses_only_raise_it():
    bounds = [epsilon_lower_bound(1000, 200, v, delta=1e-5) for v in (120, 150, 180, 200)]
    assert bounds == sorted(bounds) and bounds[0] > 0
    assert epsilon_lower_bound(1000, 200, 180, delta=1e-3) < epsilon_lower_bound(1000, 200, 180, delta=0.0)
    assert p_value(1000, 200, 180, 2.0, 1e-3) >= p_value(1000, 200, 180, 2.0, 0.0)


def test_guesses_take_the_extremes_and_count_both_sides():
    scores = torch.tensor([5.0, 4.0, -3.0, 0.1, -0.2, -4.0])
    included = torch.tensor([True, False, False, True, True, False])
    assert audit_guesses(scores, included, 2) == (4, 3)  # top: 0 (in), 1 (out); bottom: 5 (out), 2 (out)


def test_without_dp_the_canaries_are_found(tmp_path, server_identity):
    rows = run_in_process(config(), tmp_path / "plain")
    last = rows.iloc[-1]
    assert last["canary_guesses"] == 120 and last["canary_correct"] >= 110
    assert last["canary_epsilon_lower_bound"] > 2.0  # clearly above 0: nothing hides a client's update
    assert (rows["canaries_taking_part"].dropna() > 0).all()


@pytest.mark.parametrize("epsilon", [1.0, 8.0])
def test_under_central_dp_the_bound_stays_below_the_accountants_epsilon(tmp_path, server_identity, epsilon):
    privacy = {"mode": "central", "epsilon": epsilon, "delta": 1e-3, "clip_norm": 1.0}
    rows = run_in_process(config(privacy=privacy), tmp_path / "dp")
    rounds = rows[rows["round"] > 0]
    assert (rounds["canary_epsilon_lower_bound"] <= rounds["epsilon"]).all()
    assert rounds["epsilon"].iloc[-1] <= epsilon


def test_the_audit_resumes_with_its_scores(tmp_path, server_identity):
    raw = config(privacy={"mode": "central", "epsilon": 8.0, "delta": 1e-3, "clip_norm": 1.0})
    whole = run_in_process(raw, tmp_path / "whole")
    run_in_process(raw, tmp_path / "killed", stop_after=2)
    resumed = run_in_process(raw, tmp_path / "killed", resume=True)
    pd.testing.assert_frame_equal(resumed, whole)


#: a run built to memorise client 0's mislabelled canaries: 2 clients (client 0's update is half of the model), a
#: 2NN and 15 local epochs per round; without DP the bound is 1.74 (29 of 30 guesses right, measured 2026-12-03)
EXAMPLES = {"name": "canary-examples", "seed": 1, "rounds": 3,
            "data": {"dataset": "digits", "partition": "iid", "num_clients": 2}, "model": {"name": "mlp"},
            "train": {"clients_per_round": 2, "local_epochs": 15, "batch_size": 32, "lr": 0.1},
            "audit": {"canary": {"level": "example", "client": 0, "canaries": 100, "guesses": 15}}}


def test_example_canaries_replace_labels_and_drop_the_excluded():
    y = torch.arange(40) % 4
    canaries = draw_example_canaries(y, canaries=10, num_classes=4, seed=3)
    assert (canaries.label != y[canaries.index]).all() and canaries.index.unique().numel() == 10
    x_in, y_in = with_example_canaries(y.to(torch.float32), y, canaries)  # x = the original label, to track rows
    assert len(y_in) == 40 - int((~canaries.included).sum())
    kept = x_in.long()  # every canary is wrong-labelled where it stays, every other example untouched
    relabelled = y_in != kept
    assert int(relabelled.sum()) == int(canaries.included.sum())
    assert draw_example_canaries(y, canaries=10, num_classes=4, seed=3).included.equal(canaries.included)


def test_example_canaries_without_dp_are_found_on_a_model_that_memorises(tmp_path, server_identity):
    rows = run_in_process(EXAMPLES, tmp_path / "plain")
    last, block = rows.iloc[-1], rows.attrs["summary"]["canary_audit"]
    assert last["canary_guesses"] == 30 and last["canary_correct"] >= 27
    assert last["canary_epsilon_lower_bound"] > 1.0  # above the budget the DP twin below is given
    assert block["level"] == "example" and block["accountant_epsilon"] is None
    included = sum(block["canary_included"])
    assert last["canaries_taking_part"] == included
    # client 0 trained on its partition less the excluded canaries (the included ones are in it, relabelled)
    partition = build_federated_data(plan_from_dict(EXAMPLES).data_config, 1).partitions[0]
    clients = pd.read_csv(tmp_path / "plain" / "clients.csv")
    assert (clients[clients["client"] == 0]["num_examples"] == partition.size - (100 - included)).all()


def test_example_canaries_under_local_dp_stay_below_the_clients_epsilon(tmp_path, server_identity):
    """The memorising run above under DP-SGD with epsilon 1: its bound (1.74 without DP) must fall to at most the
    audited client's accountant epsilon, in every round."""
    raw = {**EXAMPLES, "privacy": {"mode": "local", "epsilon": 1.0, "delta": 1e-5, "max_grad_norm": 1.0}}
    rows = run_in_process(raw, tmp_path / "dp")
    rounds = rows[rows["round"] > 0]
    assert (rounds["canary_client_epsilon"] > 0).all()
    assert (rounds["canary_epsilon_lower_bound"] <= rounds["canary_client_epsilon"]).all()
    block = rows.attrs["summary"]["canary_audit"]
    assert block["below_accountant_epsilon"] and 0 < block["accountant_epsilon"] <= 1.0
    assert block["accountant_epsilon"] == pytest.approx(rows.attrs["summary"]["privacy"]["client_epsilon"]["0"])


def test_example_canaries_fit_any_rule_and_local_dp():
    plan_from_dict({**EXAMPLES, "defense": {"strategy": "median"},
                    "privacy": {"mode": "local", "epsilon": 1.0, "delta": 1e-5}})


@pytest.mark.parametrize(("change", "fragment"), [
    ({"audit": {"canary": {"level": "example", "client": 10, "canaries": 20, "guesses": 5}}},
     "audit.canary.client=10"),
    ({"audit": {"canary": {"level": "example", "canaries": 600, "guesses": 60}}}, "audit.canary.canaries=600"),
    ({"audit": {"canary": {"level": "example", "canaries": 20, "guesses": 5}},
      "privacy": {"mode": "central", "delta": 1e-3}}, "privacy.mode='central'"),
    ({"audit": {"canary": {"level": "example", "canaries": 20, "guesses": 5}},
      "attack": {"kind": "label_flip", "client_ids": [0]}}, "audit.canary.client=0 is malicious"),
])
def test_example_canaries_it_cannot_place_are_refused_with_the_reason(change, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        plan_from_dict(config(**change))


@pytest.mark.parametrize(("change", "fragment"), [
    ({"defense": {"strategy": "krum"}}, "defense.strategy='krum'"),
    ({"privacy": {"mode": "local", "delta": 1e-4}}, "privacy.mode='local'"),
    ({"privacy": {"mode": "central", "delta": 1e-3}, "train": {**BASE["train"], "sampling": "fixed"}},
     "train.sampling='fixed'"),
    ({"audit": {"canary": {"canaries": 100, "guesses": 60}}}, "audit.canary.guesses=60"),
    ({"audit": {"canary": {"canaries": 5000}}}, "650 parameters"),
    ({"encryption": {"scheme": "ckks"}}, "encryption"),
])
def test_audits_it_cannot_do_are_refused_with_the_reason(change, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        plan_from_dict(config(**change))
