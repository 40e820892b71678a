"""End to end on digits through Ray: federated adversarial training raises the global model's robust accuracy R
over clean training (same data, seed and rounds), and a run with poisoned honest clients and a client-side filter
records the filter's counts per client and round, the totals, and the source surveys' metric sheet."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fedsec.plan import plan_from_dict
from fedsec.runtime.runner import run_experiment

pytestmark = pytest.mark.e2e


def base(**extra) -> dict:
    raw = {"name": "at", "seed": 0, "rounds": 6,
           "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
           "model": {"name": "mlp"},
           "train": {"clients_per_round": 4, "batch_size": 16, "lr": 0.1, "local_epochs": 2},
           "audit": {"evasion": {"attacks": ["fgsm", "pgd"], "epsilon": 0.2, "steps": 5, "examples": 300}}}
    for key, value in extra.items():
        raw[key] = {**raw.get(key, {}), **value}  # one level: sections merge, their sub-tables are replaced
    return raw


@pytest.mark.usefixtures("shared_ray")
def test_adversarial_training_raises_robust_accuracy(tmp_path):
    clean = run_experiment(plan_from_dict(base()), tmp_path / "clean").summary
    adversarial = {"attack": "pgd", "epsilon": 0.2, "steps": 3}
    robust = run_experiment(plan_from_dict(base(train={"adversarial": adversarial})), tmp_path / "pgd_at").summary
    r_clean, r_at = clean["evasion"]["pgd"]["robust_accuracy"], robust["evasion"]["pgd"]["robust_accuracy"]
    assert r_at > r_clean + 0.1, (r_clean, r_at)
    assert clean["evasion"]["fgsm"]["robust_accuracy"] >= r_clean  # FGSM is the weaker attack
    assert clean["evasion"]["pgd"]["counts"] == f"{clean['evasion']['pgd']['correct']} / 300"
    rounds = pd.read_csv(tmp_path / "pgd_at" / "rounds.csv")
    assert rounds["robust_accuracy_pgd"].iloc[-1] == pytest.approx(r_at)
    assert clean["seed_metrics"]["R"]["inputs"] == f"{clean['evasion']['pgd']['correct']} / 300"


@pytest.mark.usefixtures("shared_ray")
def test_poisoned_clients_and_their_filter_are_recorded(tmp_path):
    raw = base(data={"poison": {"kind": "label_noise", "clients": [1, 2], "rate": 0.3}},
               defense={"strategy": "fedavg", "sanitize": {"method": "label_issues", "n_folds": 3}})
    raw.pop("audit")
    raw["rounds"] = 2
    result = run_experiment(plan_from_dict(raw), tmp_path / "run")
    clients = pd.read_csv(result.run_dir / "clients.csv")
    poisoned = clients[clients["client"].isin([1, 2])]
    assert (poisoned["poisoned_points"] > 0).all() and (clients[~clients["client"].isin([1, 2])]
                                                       ["poisoned_points"] == 0).all()
    assert (clients["sanitize_kept"] + clients["sanitize_dropped"] == clients["num_examples"]
            + clients["sanitize_dropped"]).all()  # num_examples counts what the client trained on
    totals = result.summary["sanitization"]
    assert totals["dropped"] == clients["sanitize_dropped"].sum()
    assert totals["poisoned_dropped"] > 0.5 * totals["poisoned"]
    sheet = json.loads((result.run_dir / "summary.json").read_text())["seed_metrics"]
    assert sheet["DQ_filtered"]["value"] == pytest.approx(
        1 - (totals["poisoned"] - totals["poisoned_dropped"]) / totals["datapoints"])
    assert sheet["A/C"]["value"] == "not measured"
