"""The one-run privacy audit (Steinke, Nasr and Jagielski 2023; fedsec/privacy/one_run_audit.py, [audit.canary]):
the bound against an independent root-finding of its definition, then runs through fedsec's real round loop (in
process): clearly above 0 without DP, below the accountant's epsilon under central DP, resumable."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from scipy import optimize, stats

from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict
from fedsec.privacy.one_run_audit import audit_guesses, epsilon_lower_bound, p_value
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
