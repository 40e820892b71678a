"""Central DP end to end with Poisson client sampling: the cohorts drawn, both accountants' epsilons
round by round, the empty round, the guard; and the refusal of fixed-size sampling without its accountant."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting as dpa
import pandas as pd
import pytest
from dp_accounting import rdp
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from fedsec.cli import app
from fedsec.plan import load_plan
from fedsec.runtime.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "digits_smoke.toml"
Z, Q, DELTA, BUDGET = 1.5, 0.5, 1e-3, 3.0
# seed 0, 4 clients, q = 2 / 4: cohorts [], [0, 1, 3], [2, 3], [1, 2, 3], [0, 2, 3], ... (round 1 is empty)
OVERRIDES = ["seed=0", "train.clients_per_round=2", "privacy.mode=central", f"privacy.noise_multiplier={Z}",
             f"privacy.epsilon={BUDGET}", f"privacy.delta={DELTA}", "privacy.clip_norm=5.0", "rounds=6"]


def opacus_rdp(rounds: int) -> float:
    accountant = RDPAccountant()
    accountant.history = [(Z, Q, rounds)]
    return accountant.get_epsilon(delta=DELTA)


def dp_accounting_rdp(rounds: int) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dpa.PoissonSampledDpEvent(Q, dpa.GaussianDpEvent(Z)), rounds)
    return accountant.get_epsilon(DELTA)


@pytest.mark.usefixtures("shared_ray")
@pytest.mark.e2e
def test_central_dp_samples_poisson_cohorts_and_records_both_accountants_round_by_round(tmp_path):
    plan = load_plan(SMOKE, OVERRIDES)
    assert plan.schedule.sampling == "poisson" and plan.privacy.scheme == "poisson"  # train.sampling = "auto"
    result = run_experiment(plan, tmp_path / "run")
    rounds = pd.read_csv(result.run_dir / "rounds.csv")
    clients = pd.read_csv(result.run_dir / "clients.csv")

    # the guard: rounds 1-4 spend 1.484, 2.057, 2.504, 2.889; a 5th would spend 3.236 > 3.0
    assert list(rounds["round"]) == [0, 1, 2, 3, 4]
    assert result.summary["stopped_reason"] == "privacy_budget" and (rounds["epsilon"] <= BUDGET).all()
    assert opacus_rdp(5) > BUDGET

    # the cohorts actually drawn: Poisson with q = 0.5, varying, round 1 empty, each as the schedule says
    drawn = {r: sorted(clients.loc[clients["round"] == r, "client"]) for r in range(1, 5)}
    assert drawn == {r: plan.schedule.sampled(r) for r in range(1, 5)}
    assert [len(c) for c in drawn.values()] == [0, 3, 2, 3]
    assert rounds["clients_sampled"].tolist()[1:] == [0, 3, 2, 3]

    # round by round, the recorded epsilons equal two independent accountants' (computed here, not by fedsec)
    for r in range(1, 5):
        row = rounds.loc[rounds["round"] == r].iloc[0]
        assert row["epsilon_opacus_rdp"] == pytest.approx(opacus_rdp(r), rel=1e-6)
        assert row["epsilon_dp_accounting_rdp"] == pytest.approx(dp_accounting_rdp(r), rel=1e-6)
        assert row["epsilon"] == pytest.approx(max(opacus_rdp(r), dp_accounting_rdp(r)), rel=1e-6)

    # the empty round still released the noise (the model moved; skipping would reveal the empty cohort)
    assert rounds.loc[1, "skipped"] == 0 and not math.isclose(rounds.loc[1, "loss"], rounds.loc[0, "loss"])

    privacy = result.summary["privacy"]
    assert privacy["sampling"] == "poisson" and privacy["neighboring_relation"] == "add_or_remove_one"
    assert set(privacy["epsilon_by_accountant"]) == {"opacus.rdp", "dp_accounting.rdp"}
    assert privacy["epsilon"] == pytest.approx(rounds["epsilon"].iloc[-1])


def test_fixed_size_sampling_without_its_accountant_is_refused_naming_the_keys(tmp_path):
    base = ["privacy.mode=central", "privacy.noise_multiplier=1.5", "privacy.epsilon=8", "train.sampling=fixed"]
    refused = CliRunner().invoke(app, ["validate", str(SMOKE), *[a for o in [*base, "privacy.accountant=prv"]
                                                                 for a in ("--set", o)]])
    assert refused.exit_code == 2
    assert "train.sampling='fixed'" in refused.output and "privacy.accountant='prv'" in refused.output
    assert "Traceback" not in refused.output
    # with the RDP pair it is accounted under replace-one, which costs more than Poisson at the same noise and q
    fixed = load_plan(SMOKE, [*base, "train.clients_per_round=2"])
    poisson = load_plan(SMOKE, [*base[:-1], "train.clients_per_round=2"])
    assert fixed.privacy.scheme == "fixed" and fixed.schedule.sampling == "fixed"
    assert fixed.privacy.planned_epsilon > poisson.privacy.planned_epsilon
    assert [len(fixed.schedule.sampled(r)) for r in range(1, 6)] == [2] * 5
