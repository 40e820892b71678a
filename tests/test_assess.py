"""``fedsec assess DEPLOYMENT.toml`` and its security sheet (fedsec.studies.assess, fedsec.metrics.security_sheet).

The e2e test assesses a tiny digits deployment through Ray (logreg, 4 clients, 2 rounds; poisoned labels at two
clients and a label-issue filter for DQ_filtered and A; local DP-SGD for P; an in-run evasion audit for R; PRADA
blocking behind API keys for A/C and Q) and checks that the sheet has all six seed metrics with numbers, each equal
to what the separate commands give: the run's summary, the scenario's report.json, and `fedsec attack scenario` and
`fedsec audit membership` run again by themselves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedsec.config import ConfigError
from fedsec.metrics.security_sheet import (
    ENTRIES,
    SEED_ENTRIES,
    security_sheet,
    security_sheet_html,
    security_sheet_markdown,
    sheets_side_by_side_markdown,
)
from fedsec.metrics.seed_sheet import NOT_MEASURED
from fedsec.studies import posthoc
from fedsec.studies.assess import load_deployment

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "experiments" / "serving" / "policies" / "prada_block.toml"

SUMMARY = {
    "evasion": {"fgsm": {"correct": 95, "total": 120, "epsilon": 0.1}, "pgd": {"correct": 87, "total": 120,
                                                                            "epsilon": 0.1}},
    "sanitization": {"datapoints": 2000, "poisoned": 300, "dropped": 223, "poisoned_dropped": 213,
                     "anomalies_detected": 223},
    "privacy": {"epsilon": 2.84, "epsilon_budget": 8.0},
    "accuracy": 0.9, "health": {"status": "ok", "accuracy": 0.9, "examples": 450},
    "attack": "label_flip", "attack_success": 0.25, "attack_success_metric": "1 - source_recall",
    "mia_advantage": 0.02, "mia_tpr": 0.52, "mia_fpr": 0.5,
    "membership": {"status": "done", "attack": "loss_threshold", "target": "global", "auc": 0.61,
                   "tpr_at_0.1%_fpr": 0.01, "tpr_at_1%_fpr": 0.03, "num_members": 200, "num_nonmembers": 200,
                   "empirical_epsilon_lower_bound": 0.4, "accountant_epsilon": 2.84},
    "inversion": [{"status": "done", "round": 1, "client": 3, "psnr": 12.0, "ssim": 0.5, "label_accuracy": 0.75,
                   "examples": 4, "method": "ig"},
                  {"status": "done", "round": 2, "client": 3, "psnr": 10.0, "ssim": 0.3, "label_accuracy": 0.5,
                   "examples": 4, "method": "ig"},
                  {"status": "unavailable", "round": 1, "client": 5, "reason": "no reply from this client"}],
}
REPORT = {"scenario": "s", "A/C": {"blocked": 48, "attempts": 50, "value": 0.96},
          "Q": {"detected": 12, "queries": 1000, "value": 0.012},
          "extraction": {"method": "knockoff", "budget": 300, "queries_spent": 300, "stop_decision": "",
                         "final_agreement": 0.64, "final_accuracy": 0.6}}


def full_summary() -> dict:
    summary = json.loads(json.dumps(SUMMARY))
    summary["serving"] = posthoc.serving_block(REPORT, report_path="scenario/report.json", eval_inputs=225)
    summary["audit_commands"] = {"serving": "fedsec attack scenario S.toml", "membership": "fedsec audit membership R"}
    return summary


def test_sheet_entries_carry_counts_formula_and_command():
    sheet = security_sheet(full_summary(), {"privacy": {"mode": "local"}}, commands={"run": "fedsec run C.toml"})
    assert list(sheet) == list(ENTRIES)
    r = sheet["R"]  # PGD 87/120 is the strongest attack
    assert (r["numerator"], r["denominator"], r["attack"], r["epsilon"]) == (87, 120, "pgd", 0.1)
    assert r["command"] == "fedsec run C.toml" and r["group"] == "seed"
    # Table 1's variant and equation (2), side by side: 87 poisoned points left; 1777 of 2000 kept
    dq, eq2 = sheet["DQ_filtered"], sheet["DQ_filtered_eq2"]
    assert (dq["numerator"], dq["denominator"], dq["value"]) == (87, 2000, 1 - 87 / 2000)
    assert (eq2["numerator"], eq2["denominator"]) == (1777, 2000) and eq2["value"] == pytest.approx(1 - 1777 / 2000)
    assert "equation_2" not in dq and "N_after / N_before" in eq2["formula"]
    assert (sheet["A/C"]["numerator"], sheet["A/C"]["denominator"]) == (48, 50)
    assert sheet["A/C"]["command"] == sheet["Q"]["command"] == "fedsec attack scenario S.toml"
    assert (sheet["Q"]["numerator"], sheet["Q"]["denominator"]) == (12, 1000)
    assert sheet["P <= epsilon"]["value"] == "holds" and sheet["P <= epsilon"]["epsilon"] == 2.84
    assert (sheet["accuracy"]["numerator"], sheet["accuracy"]["denominator"]) == (405, 450)
    assert sheet["attack_success"]["value"] == 0.25 and sheet["attack_success"]["metric"] == "1 - source_recall"
    fidelity = sheet["extraction_fidelity"]  # 0.64 of the 225 held-out inputs
    assert (fidelity["numerator"], fidelity["denominator"], fidelity["method"]) == (144, 225, "knockoff")
    assert sheet["membership_tpr_at_1%_fpr"]["numerator"] == 6 and sheet["membership_auc"]["value"] == 0.61
    assert sheet["membership_auc"]["command"] == "fedsec audit membership R"
    assert sheet["empirical_epsilon"]["value"] == 0.4 and sheet["empirical_epsilon"]["accountant_epsilon"] == 2.84
    inv = sheet["inversion_psnr"]  # mean over the two done records; 3 + 2 of 8 labels
    assert inv["value"] == 11.0 and inv["labels_recovered"] == "5 / 8" and inv["unavailable"] == 1
    assert sheet["worst_case"]["value"] == NOT_MEASURED and "worst-case" in sheet["worst_case"]["how"]
    assert "meaningful" not in r
    json.dumps(sheet, allow_nan=False)


def test_a_model_at_chance_marks_what_was_measured_on_it():
    summary = full_summary()
    summary["health"] = {"status": "at_chance", "reason": "accuracy 0.1 is at chance", "accuracy": 0.1}
    sheet = security_sheet(summary, {})
    for name in ("R", "attack_success", "extraction_fidelity", "membership_auc", "empirical_epsilon"):
        assert sheet[name]["meaningful"] is False and "at chance" in sheet[name]["note"], name
    for name in ("DQ_filtered", "A", "A/C", "Q", "P <= epsilon", "inversion_psnr"):  # not about the final model
        assert "meaningful" not in sheet[name], name
    assert "(not meaningful)" in security_sheet_markdown(sheet)


def test_nothing_measured_says_how_and_renders_escaped():
    sheet = security_sheet({"name": "<b>x</b>"}, {"defense": {"sanitize": {"method": "none"}}})
    assert all(sheet[n]["value"] == NOT_MEASURED for n in SEED_ENTRIES)
    assert "note" not in sheet["DQ_filtered"]  # no filter configured: nothing to say it is missing
    assert sheet["R"]["how"] == "[audit.evasion]" and "command" not in sheet["R"]
    md = security_sheet_markdown(sheet)
    assert "| R | not measured |  | correctly classified" in md and "to measure: [audit.evasion]" in md
    html = security_sheet_html(sheet, title="<script>", paragraphs=["a & b"])
    assert "<script>" not in html and "&lt;script&gt;" in html and "a &amp; b" in html
    side = sheets_side_by_side_markdown({"open": security_sheet(full_summary(), {}), "none": sheet})
    assert "| A/C | 96.00% (48 / 50) | not measured |" in side


def _deployment(tmp: Path, text: str, experiment: str = "") -> Path:
    (tmp / "exp.toml").write_text(experiment or 'name = "e"\nrounds = 1\n[data]\ndataset = "digits"\n'
                                  'num_clients = 4\n[model]\nname = "logreg"\n[train]\nclients_per_round = 4\n')
    path = tmp / "dep.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "message"), [
    (f'name = "d"\naccess = "{POLICY}"\n', "give exactly one of experiment = CONFIG"),
    (f'name = "d"\nexperiment = "exp.toml"\nrun_dir = "r"\naccess = "{POLICY}"\n', "got both"),
    (f'name = "d"\nexperiment = "exp.toml"\naccess = "{POLICY}"\nsurprise = 1\n', "surprise: Extra inputs"),
    ('name = "d"\nexperiment = "exp.toml"\naccess = "nope.toml"\n', "access = 'nope.toml': no such file"),
    (f'name = "d"\nexperiment = "exp.toml"\naccess = "{POLICY}"\n[audits.membership]\nmethod = "x"\n',
     "audits.membership.method"),
    (f'name = "d"\nexperiment = "exp.toml"\naccess = "{POLICY}"\n[audits.evasion]\nepsilons = [2.0]\n',
     "audits.evasion.epsilons: 2.0 must be in (0, 1]"),
    (f'name = "d"\nexperiment = "exp.toml"\nset = ["rounds=0"]\naccess = "{POLICY}"\n', "rounds"),
])
def test_bad_deployments_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_deployment(_deployment(tmp_path, text))
    assert message in str(err.value)


def test_worst_case_row_of_the_runs_defense(tmp_path):
    from fedsec.studies.assess import worst_case_row

    study = tmp_path / "wc"
    study.mkdir()
    (study / "worst_case.csv").write_text(
        "defense,no_attack_accuracy,worst_accuracy,worst_accuracy_std,worst_accuracy_attack,worst_success,"
        "worst_success_metric,worst_success_attack,attacks_done,attacks_total,skipped\n"
        "median,0.9,0.61,,alie,,,,3,3,\nfedavg,0.9,0.42,,ipm,0.5,flip_rate,label_flip,3,3,\n")
    loaded = load_deployment(_deployment(tmp_path, f'name = "d"\nexperiment = "exp.toml"\naccess = "{POLICY}"\n'
                                         '[worst_case]\ndir = "wc"\n'))
    row = worst_case_row(loaded)  # the run's defense.strategy: fedavg
    entry = security_sheet({}, {}, worst_case=row)["worst_case"]
    assert entry["value"] == 0.42 and entry["attack"] == "ipm" and entry["worst_success"] == 0.5
    assert entry["source"].endswith("worst_case.csv") and entry["attacks"] == "3 of 3"
    loaded.deployment.worst_case.defense = "krum"
    with pytest.raises(ConfigError, match="worst_case.defense = 'krum': not a row"):
        worst_case_row(loaded)


@pytest.mark.parametrize("name", ["fmnist_undefended", "fmnist_defended"])
def test_shipped_assessments_are_valid(tmp_path, name):
    from fedsec.serving.scenario import load_scenario
    from fedsec.studies.assess import scenario_file

    loaded = load_deployment(REPO / "experiments" / "assess" / f"{name}.toml")
    assert loaded.plan.facts.dataset_name == "fashion-mnist" and loaded.plan.experiment.data.poison.kind != "none"
    defended = name == "fmnist_defended"
    assert (loaded.plan.experiment.privacy.mode == "local") == defended
    assert (loaded.plan.experiment.defense.sanitize.method != "none") == defended
    scenario, policy = load_scenario(scenario_file(loaded, tmp_path / "run", tmp_path))
    assert policy.require_key == defended and (policy.monitor.mode == "block") == defended
    assert scenario.attacker.method == "knockoff"


def test_a_deployment_must_serve_digits_or_fashion_mnist(tmp_path):
    experiment = ('name = "e"\n[data]\ndataset = "synthetic"\nnum_clients = 4\n[model]\nname = "logreg"\n'
                  '[train]\nclients_per_round = 4\n')
    path = _deployment(tmp_path, f'name = "d"\nexperiment = "exp.toml"\naccess = "{POLICY}"\n', experiment)
    with pytest.raises(ConfigError, match="data.dataset='synthetic': the scenario's users"):
        load_deployment(path)


# ------------------------------------------------------------------------------------------------- end to end

EXPERIMENT = """
name = "assess-digits"
seed = 0
rounds = 2

[data]
dataset = "digits"
partition = "iid"
num_clients = 4

[data.poison]
kind = "label_noise"
clients = [1, 2]
rate = 0.3

[model]
name = "logreg"

[train]
clients_per_round = 4
local_epochs = 1
batch_size = 16
lr = 0.1

[defense.sanitize]
method = "label_issues"
n_folds = 3

[privacy]
mode = "local"
epsilon = 8.0
delta = 1e-3

[audit.evasion]
attacks = ["fgsm", "pgd"]
epsilon = 0.1
steps = 5
examples = 200
"""

DEPLOYMENT = f"""
name = "digits-tiny"
experiment = "experiment.toml"
access = "{POLICY}"

[scenario]
seed = 0
honest = {{ users = 2, queries = 100, batch_size = 10 }}
unauthorized = {{ attempts = 2 }}
attacker = {{ method = "jacobian", budget = 200, batch_size = 20, epochs = 2, seeds = 20 }}

[audits.membership]
method = "yeom"
examples = 200
"""


def _app() -> typer.Typer:
    """fedsec's commands as the CLI mounts them: assess, the scenario, the post-hoc audits."""
    from fedsec.report import write_report
    from fedsec.serving.cli import register as register_serving
    from fedsec.serving.scenario import load_scenario, run_scenario
    from fedsec.studies.assess import register as register_assess

    app, audit = typer.Typer(), typer.Typer()
    register_serving(app)
    app.add_typer(audit, name="audit")
    posthoc.register(audit, report=write_report)
    register_assess(app, report=write_report, run_scenario=run_scenario, check_scenario=load_scenario)
    return app


@pytest.fixture(scope="module")
def assessed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("assess")
    (tmp / "experiment.toml").write_text(EXPERIMENT)
    (tmp / "deployment.toml").write_text(DEPLOYMENT)
    result = CliRunner().invoke(_app(), ["assess", str(tmp / "deployment.toml"), "--out", str(tmp / "out")])
    assert result.exit_code == 0, result.output
    return tmp / "out", " ".join(result.output.split())


@pytest.mark.e2e
@pytest.mark.slow  # trains, serves and attacks a deployment (~2 min): bash scripts/dev.sh slow
def test_assess_sheet_has_all_six_seed_metrics_from_the_separate_commands(assessed):
    out, console = assessed
    summary = json.loads((out / "summary.json").read_text())
    sheet = summary["security_sheet"]
    for name in SEED_ENTRIES:
        assert sheet[name]["value"] != NOT_MEASURED, (name, sheet[name])
    run = json.loads((out / "run" / "summary.json").read_text())
    assert run["stopped_reason"] == "completed" and run["security_sheet"] == sheet
    # R, DQ_filtered, A, P: the run's own summary (fedsec run)
    pgd, fgsm = run["evasion"]["pgd"], run["evasion"]["fgsm"]
    worst = min((pgd, fgsm), key=lambda b: b["correct"])
    assert (sheet["R"]["numerator"], sheet["R"]["denominator"]) == (worst["correct"], 200)
    s = run["sanitization"]
    assert s["poisoned"] > 0 and s["dropped"] > 0
    assert sheet["DQ_filtered"]["value"] == pytest.approx(1 - (s["poisoned"] - s["poisoned_dropped"]) / s["datapoints"])
    assert sheet["DQ_filtered_eq2"]["value"] == pytest.approx(s["dropped"] / s["datapoints"])
    assert sheet["A"]["numerator"] == s["anomalies_detected"] and sheet["A"]["denominator"] == s["datapoints"]
    assert sheet["P <= epsilon"]["value"] == "holds" and sheet["P <= epsilon"]["epsilon"] == run["privacy"]["epsilon"]
    assert run["privacy"]["epsilon"] <= 8.0
    # A/C and Q: the scenario's report.json of the served run, and the same scenario run again on its own
    report = json.loads((out / "scenario" / "report.json").read_text())
    assert (sheet["A/C"]["numerator"], sheet["A/C"]["denominator"]) == (report["A/C"]["blocked"], 10)
    assert sheet["A/C"]["value"] == report["A/C"]["value"] == 1.0  # keys required, viewer may not predict
    assert (sheet["Q"]["numerator"], sheet["Q"]["denominator"]) == (report["Q"]["detected"], report["Q"]["queries"])
    assert sheet["Q"]["value"] > 0  # PRADA flagged the Jacobian attacker
    again = CliRunner().invoke(_app(), ["attack", "scenario", str(out / "scenario.toml"), "--out", str(out / "again")])
    assert again.exit_code == 0, again.output
    separate = json.loads((out / "again" / "report.json").read_text())
    assert separate["A/C"]["value"] == sheet["A/C"]["value"] and separate["Q"]["value"] == sheet["Q"]["value"]
    assert separate["extraction"]["final_agreement"] == sheet["extraction_fidelity"]["value"]
    assert sheet["A/C"]["command"] == f"fedsec attack scenario {out / 'scenario.toml'} --out {out / 'scenario'}"
    # membership: the post-hoc audit, run again by itself
    audit = CliRunner().invoke(_app(), ["audit", "membership", str(out / "run"), "--method", "yeom",
                                        "--examples", "200"])
    assert audit.exit_code == 0, audit.output
    after = json.loads((out / "run" / "summary.json").read_text())
    assert after["membership"]["auc"] == sheet["membership_auc"]["value"]
    assert after["security_sheet"]["R"]["command"] == sheet["R"]["command"] == (
        f"fedsec run {out.parent / 'experiment.toml'} --out {out / 'run'}")  # the audit keeps the run's command
    # where a person looks: the console table, the report, the run's report
    assert "security sheet" in console and "DQ_filtered_eq2" in console
    md = (out / "report.md").read_text()
    assert f"| A/C | 100.00% | {report['A/C']['blocked']} / 10 |" in md and "### Steps" in md
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert "Seed metric sheet" in (out / "run" / "report.md").read_text()
