"""Privacy studies (budget parsing, one experiment per budget) and the loss-threshold membership attack."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fedsec.audits.lira import MembershipConfigError
from fedsec.audits.membership import advantage_bound, balanced_sample, loss_threshold_attack, loss_threshold_point
from fedsec.config import ConfigError, experiment_from_dict
from fedsec.plan import build_plan, load_plan
from fedsec.studies.privacy_study import parse_epsilons, parse_seeds, study_experiments, summarize

REPO = Path(__file__).resolve().parents[1]


def test_advantage_bound():
    # (e^1 - 1) / (e^1 + 1) = 0.46212; delta adds 2 delta / (e^eps + 1)
    assert advantage_bound(1.0, 0.0) == pytest.approx(0.462117, abs=1e-6)
    assert advantage_bound(1.0, 1e-3) == pytest.approx(0.462117 + 2e-3 / (math.e + 1), abs=1e-6)
    assert advantage_bound(math.inf, 1e-5) == 1.0 and advantage_bound(50.0, 0.0) == 1.0


def test_loss_threshold_attack_separates_memorised_examples():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, 0.0], [0.0, 5.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]).repeat(2, 1)
    right, wrong = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 0, 1, 0])
    is_member = torch.arange(8) < 4
    # members carry the labels the model predicts (loss log(1 + e^-5) = 0.0067), non-members the wrong ones (5.0067)
    result = loss_threshold_attack(model, x, torch.cat([right, wrong]), is_member=is_member, threshold=1.0)
    assert (result.point.tpr, result.point.fpr, result.point.advantage) == (1.0, 0.0, 1.0)
    assert result.point.as_dict()["mia_threshold"] == 1.0 and result.auc == 1.0
    default = loss_threshold_attack(model, x, torch.cat([right, wrong]), is_member=is_member)
    assert default.point.threshold == pytest.approx(math.log1p(math.exp(-5.0)))  # the members' mean loss
    same = loss_threshold_attack(model, x, torch.cat([right, right]), is_member=is_member)
    assert same.point.advantage == 0.0 and same.auc == 0.5  # identical sets: no advantage


def test_the_point_alone_equals_the_attacks_point_and_skips_scikit_learn():
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(3, 4)
    x, y = torch.randn(40, 3, generator=gen), torch.randint(0, 4, (40,), generator=gen)
    is_member = torch.arange(40) % 3 == 0
    for threshold in (None, 1.2):
        full = loss_threshold_attack(model, x, y, is_member=is_member, threshold=threshold).point
        assert loss_threshold_point(model, x, y, is_member=is_member, threshold=threshold) == full
    assert 0 < full.tpr < 1 and full.tpr != full.fpr  # a point that tells members apart, not a degenerate one
    with pytest.raises(MembershipConfigError, match="both members and non-members"):
        loss_threshold_point(model, x, y, is_member=torch.ones(40, dtype=torch.bool))
    with torch.no_grad():
        model.bias.fill_(float("nan"))
    with pytest.raises(MembershipConfigError, match="NaN"):
        loss_threshold_point(model, x, y, is_member=is_member)
    code = ("import sys, torch\nfrom fedsec.audits.membership import loss_threshold_point\n"
            "loss_threshold_point(torch.nn.Linear(3, 2), torch.randn(6, 3), torch.tensor([0, 1] * 3),"
            " is_member=torch.arange(6) < 3)\nprint('sklearn' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"  # every run's membership check: no 1.1 s scikit-learn import


def test_balanced_sample_is_seeded_and_balanced():
    a, b = balanced_sample(10_000, 300, seed=0)
    assert len(a) == len(b) == 300 and len(set(a.tolist())) == 300
    assert (balanced_sample(10_000, 300, seed=0)[0] == a).all()


def test_parse_epsilons():
    assert parse_epsilons("0.5, 1,inf") == [0.5, 1.0, math.inf]
    with pytest.raises(ConfigError, match="'abc' is not a number"):
        parse_epsilons("1,abc")
    with pytest.raises(ConfigError, match="must be > 0"):
        parse_epsilons("0")


def test_study_makes_one_experiment_per_budget():
    base = experiment_from_dict({"name": "s", "data": {"dataset": "digits", "num_clients": 4},
                                 "train": {"clients_per_round": 4},
                                 "privacy": {"mode": "local", "delta": 1e-4}})
    cells = study_experiments(build_plan(base), [1.0, 4.0, math.inf])
    assert [p.experiment.privacy.mode for _, p in cells] == ["local", "local", "none"]
    assert [p.experiment.privacy.epsilon for _, p in cells][:2] == [1.0, 4.0]
    assert [p.experiment.name for _, p in cells] == ["s-eps-1", "s-eps-4", "s-eps-inf"]
    with pytest.raises(ConfigError, match="needs privacy.mode"):
        study_experiments(build_plan(experiment_from_dict({"data": {"dataset": "digits"},
                                                           "train": {"clients_per_round": 4}})), [1.0])


@pytest.mark.parametrize("name", ["dpsgd_fmnist.toml", "dpfedavg_fmnist.toml"])
def test_shipped_privacy_studies_plan_every_budget_and_seed(name):
    """The README's privacy studies: every (budget, seed) cell validates; the central one samples Poisson cohorts
    in every cell, the no-DP cell included, so the cells differ only by DP."""
    plan = load_plan(REPO / "experiments" / "papers" / name)
    experiment = plan.experiment
    cells = study_experiments(plan, [0.5, 1, 2, 4, 8, math.inf], [0, 1, 2])
    assert len(cells) == 18 and {p.experiment.seed for _, p in cells} == {0, 1, 2}
    assert [p.experiment.privacy.mode for _, p in cells].count("none") == 3
    if experiment.privacy.mode == "central":
        assert {p.schedule.sampling for _, p in cells} == {"poisson"}
        noise = [p.privacy.noise_multiplier for eps, p in cells if p.privacy is not None and p.experiment.seed == 0]
        assert noise == sorted(noise, reverse=True)  # more budget, less noise


def test_study_summary_gives_mean_and_std_over_seeds():
    rows = [{"epsilon_budget": eps, "seed": seed, "epsilon": eps, "accuracy": acc, "mia_advantage": 0.0}
            for eps, seed, acc in [(1.0, 0, 0.5), (1.0, 1, 0.7), (math.inf, 0, 0.9), (math.inf, 1, 0.9)]]
    summary = {r["epsilon_budget"]: r for r in summarize(rows)}
    assert summary[1.0]["accuracy_mean"] == pytest.approx(0.6) and summary[1.0]["accuracy_std"] == pytest.approx(
        0.1414, abs=1e-4)
    assert summary[math.inf]["epsilon_mean"] == math.inf and summary[1.0]["seeds"] == 2
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(None) is None
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("0,0")
