"""Post-hoc audits of a finished run (fedsec.studies.posthoc): ``fedsec audit membership|inversion|model-inversion
RUN_DIR`` and the sheet update after ``fedsec audit evasion``, on run directories written without Ray (the run's
resolved config, a centrally trained final model, a summary and rounds.csv)."""

from __future__ import annotations

import json
from pathlib import Path

import art.attacks.evasion  # noqa: F401  (ART configures logging at import: import it at collection, see test_audit_evasion_cli)
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from fedsec.data.federated import build_federated_data
from fedsec.models import build_model
from fedsec.plan import plan_from_dict
from fedsec.report import write_report
from fedsec.results.model_file import save_final_model
from fedsec.studies import posthoc
from fedsec.training import evaluate, train_local

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def digits_config(**sections) -> dict:
    raw = {"name": "posthoc", "seed": 0, "rounds": 2,
           "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
           "model": {"name": "logreg"}, "train": {"clients_per_round": 4, "batch_size": 16, "lr": 0.1}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def finished_run(path: Path, raw: dict, *, epochs: int = 3, summary: dict | None = None) -> Path:
    """A run directory as `fedsec run` leaves it, with the model trained centrally on the clients' union."""
    plan = plan_from_dict(raw)
    path.mkdir(parents=True)
    (path / "config.toml").write_text(plan.to_toml())
    data = build_federated_data(plan.data_config, plan.seed)
    idx = np.concatenate(data.partitions)
    net = build_model(plan.facts.model_name, data.input_shape, data.num_classes, seed=0)
    if epochs:
        train_local(net, torch.from_numpy(data.x_train[idx]), torch.from_numpy(data.y_train[idx].astype(np.int64)),
                    epochs=epochs, batch_size=16, lr=0.1, momentum=0.9, generator=torch.Generator().manual_seed(0))
    accuracy = evaluate(net, torch.from_numpy(data.x_test), torch.from_numpy(data.y_test.astype(np.int64)),
                        num_classes=data.num_classes).accuracy
    save_final_model(path, net, model_name=plan.facts.model_name, dataset=plan.facts.dataset_name,
                     input_shape=data.input_shape, num_classes=data.num_classes, server_round=plan.rounds,
                     normalisation=plan.dataset.normalisation)
    base = {"name": plan.name, "seed": plan.seed, "rounds_planned": plan.rounds, "rounds_completed": plan.rounds,
            "stopped_reason": "completed", "accuracy": accuracy}
    (path / "summary.json").write_text(json.dumps({**base, **(summary or {})}))
    (path / "rounds.csv").write_text(f"round,accuracy,loss,seconds\n0,0.1,2.3,0.1\n{plan.rounds},{accuracy},0.4,0.1\n")
    return path


def audit(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    group = typer.Typer()
    app.add_typer(group, name="audit")
    posthoc.register(group, report=write_report)
    result = CliRunner().invoke(app, ["audit", *args])
    return result.exit_code, " ".join(result.output.split())


def shows(out: str, label: str, value: str) -> bool:
    """Whether the console table has a row ``label | value`` (box characters between them)."""
    import re

    return re.search(re.escape(label) + r"[\s│┃|]+" + re.escape(value), out) is not None


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("runs") / "logreg", digits_config())


def test_membership_equals_the_servers_own_audit_and_fills_the_sheet(run):
    code, out = audit("membership", str(run), "--examples", "120")
    assert code == 0, out
    summary = summary_of(run)
    block = summary["membership"]
    assert block["status"] == "done" and block["target"] == "global" and block["num_members"] == 120
    # the same hook, run on a context built by hand from the run's config, data and model, gives the same AUC
    from fedsec.arrays import model_to_record
    from fedsec.hooks import ServerContext
    from fedsec.hooks.membership import MembershipAudit, MembershipAuditParams
    from fedsec.results.model_file import load_final_model

    plan = plan_from_dict(digits_config())
    ctx = ServerContext.build(plan.facts, build_federated_data(plan.data_config, 0), run / "plots", torch.device("cpu"))
    direct: dict = {}
    MembershipAudit(MembershipAuditParams(examples=120), ctx).at_end(
        model_to_record(load_final_model(run).module), direct)
    assert block["auc"] == pytest.approx(direct["membership"]["auc"], abs=1e-12)
    sheet = summary["security_sheet"]
    tpr = block["tpr_at_1%_fpr"]
    assert sheet["membership_auc"]["value"] == block["auc"]
    assert sheet["membership_tpr_at_1%_fpr"]["numerator"] == round(tpr * 120)
    assert sheet["membership_tpr_at_1%_fpr"]["denominator"] == 120
    assert sheet["membership_auc"]["command"] == f"fedsec audit membership {run} --method yeom --examples 120"
    assert summary["audit_commands"]["membership"] == sheet["membership_auc"]["command"]
    assert list(summary["seed_metrics"]) == ["R", "DQ_filtered", "A", "A/C", "P <= epsilon", "Q"]
    assert summary["health"]["status"] == "ok"  # the health hook ran on the final model
    assert shows(out, "auc", f"{block['auc']:.4f}") and "summary.json updated: membership" in out
    assert "membership_auc" in (run / "report.md").read_text()


def test_model_inversion_records_top1_with_its_counts(run):
    code, out = audit("model-inversion", str(run), "--max-iter", "20")
    assert code == 0, out
    block = summary_of(run)["model_inversion"]
    entry = summary_of(run)["security_sheet"]["model_inversion_top1"]
    assert block["classes"] == 10 and entry["value"] == block["top1_ssim"]
    assert entry["numerator"] == round(block["top1_ssim"] * 10) and entry["denominator"] == 10
    assert (run / "plots" / "model_inversion.png").read_bytes()[:4] == b"\x89PNG"
    assert shows(out, "top1_ssim", f"{block['top1_ssim']:.4f}")


def test_inversion_of_a_fresh_update(tmp_path):
    raw = digits_config(data={"partition": "sampled", "samples_per_client": 4}, model={"name": "mlp"},
                        train={"batch_size": 4, "local_epochs": 1})
    run = finished_run(tmp_path / "small", raw, epochs=20)
    code, out = audit("inversion", str(run), "--client", "1", "--iterations", "60")
    assert code == 0, out
    summary = summary_of(run)
    (record,) = summary["inversion"]
    assert record["status"] == "done" and record["round"] == 3 and record["client"] == 1  # rounds + 1
    assert record["examples"] == 4 and record["update"].startswith("fresh")
    assert np.isfinite(record["psnr"]) and 0 <= record["label_accuracy"] <= 1
    entry = summary["security_sheet"]["inversion_psnr"]
    assert entry["value"] == pytest.approx(record["psnr"]) and entry["attacked"] == ["round 3, client 1"]
    assert (run / "plots" / "inversion_round3_client1.png").is_file()
    assert f"PSNR {record['psnr']:.2f} dB" in out


def test_inversion_refuses_what_the_server_would_not_see(tmp_path):
    run = finished_run(tmp_path / "dp", digits_config(privacy={"mode": "local", "epsilon": 8.0, "delta": 1e-3}),
                       epochs=1)
    code, out = audit("inversion", str(run), "--client", "0")
    assert code == 0, out
    (record,) = summary_of(run)["inversion"]
    assert record["status"] == "unavailable" and "local DP" in record["reason"]
    entry = summary_of(run)["security_sheet"]["inversion_psnr"]
    assert entry["value"] == "not measured" and "local DP" in entry["note"]
    code, out = audit("inversion", str(run), "--client", "9")
    assert code == 2 and "--client=9: not a client of this run (0..3)" in out


def test_unhealthy_model_marks_the_new_numbers(tmp_path):
    run = finished_run(tmp_path / "untrained", digits_config(), epochs=0)
    code, out = audit("membership", str(run), "--examples", "60")
    assert code == 0, out
    summary = summary_of(run)
    assert summary["health"]["status"] != "ok"
    assert summary["membership"]["meaningful"] is False
    assert summary["security_sheet"]["membership_auc"]["meaningful"] is False
    assert "not meaningful" in out


def test_incomplete_or_locked_run_directories_exit_2(tmp_path, run):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = audit("membership", str(empty))
    assert code == 2 and "no config.toml" in out
    from fedsec.results.lock import RunLock

    lock = RunLock(run)
    lock.acquire()
    try:
        code, out = audit("model-inversion", str(run))
    finally:
        lock.release()
    assert code == 2 and "is in use by" in out


def test_evasion_curve_updates_the_sheet_at_the_runs_budget(tmp_path):
    from fedsec.studies.evasion_curve import evasion_curve

    in_run = {"pgd": {"correct": 1, "total": 2, "epsilon": 0.1}}
    run = finished_run(tmp_path / "ev", digits_config(model={"name": "mlp"}), summary={"evasion": in_run})
    evasion_curve(run, [0.05, 0.1], steps=3, examples=50, cw_max_iter=3, cw_binary_search_steps=1)
    assert posthoc.update_after_evasion(run, command="fedsec audit evasion RUN --epsilons 0.05,0.1")
    summary = summary_of(run)
    assert summary["evasion_in_run"] == in_run  # kept, not lost
    assert set(summary["evasion_curve"]) == {"0.05", "0.1"}
    at_01 = summary["evasion_curve"]["0.1"]
    assert summary["evasion"] == at_01 and summary["evasion"]["pgd"]["total"] == 50
    assert summary["evasion_cw"]["counts"].endswith("/ 50") and "cw" not in summary["evasion"]  # no budget: apart
    weakest = min(at_01, key=lambda a: (at_01[a]["correct"], a))
    r = summary["seed_metrics"]["R"]
    assert r["inputs"] == f"{at_01[weakest]['correct']} / 50"
    assert summary["security_sheet"]["R"]["epsilon"] == 0.1
    assert summary["security_sheet"]["R"]["command"] == "fedsec audit evasion RUN --epsilons 0.05,0.1"
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "final_model.pt").write_bytes((run / "final_model.pt").read_bytes())
    assert not posthoc.update_after_evasion(bare, command="x") and not (bare / "summary.json").exists()


@pytest.mark.parametrize(("epsilons", "config", "expected"), [
    ([0.05, 0.1, 0.3], {}, 0.1),
    ([0.05, 0.3], {"audit": {"evasion": {"epsilon": 0.3}}}, 0.3),
    ([0.05, 0.3], {}, 0.05),
])
def test_the_sheets_budget(epsilons, config, expected):
    assert posthoc.choose_epsilon(epsilons, config) == expected


def test_cli_audit_evasion_puts_the_printed_r_on_the_sheet_and_report(tmp_path, monkeypatch):
    """`fedsec audit evasion RUN_DIR` (the real CLI): curve.csv, the printed "R on the sheet" and the sheet's R are one
    number; the command that produced it is quoted; the report shows it."""
    import pandas as pd

    import fedsec.cli as cli

    run = finished_run(tmp_path / "ev-cli", digits_config())
    monkeypatch.setenv("COLUMNS", "200")  # the numbers tables on one line per row
    monkeypatch.setattr(cli.console, "width", 200)
    result = CliRunner().invoke(cli.app, ["audit", "evasion", str(run), "--epsilons", "0.05,0.1", "--steps", "3",
                                      "--examples", "40"])
    out = " ".join(result.output.split())
    assert result.exit_code == 0, out
    sheet_r = summary_of(run)["security_sheet"]["R"]
    curve = pd.read_csv(run / "evasion" / "curve.csv")
    at_01 = curve[curve["epsilon"] == 0.1].set_index("attack")
    weakest = at_01["correct"].idxmin()
    assert sheet_r["numerator"] == at_01.loc[weakest, "correct"] and sheet_r["denominator"] == 40
    assert sheet_r["value"] == pytest.approx(at_01.loc[weakest, "robust_accuracy"], abs=1e-12)
    assert sheet_r["epsilon"] == 0.1 and sheet_r["attack"] == weakest
    assert sheet_r["value"] < summary_of(run)["accuracy"]  # a real attack, not the clean accuracy
    assert shows(out, "R on the sheet", f"{sheet_r['percent']} ({sheet_r['inputs']}, {weakest})")
    assert f"seed_metrics (R {sheet_r['percent']}" in out
    assert sheet_r["command"] == f"fedsec audit evasion {run} --epsilons 0.05,0.1 --steps 3 --examples 40"
    assert "evasion (FGSM, PGD) on" in out and "done in" in out  # the long step shows progress
    (row,) = [line for line in (run / "report.md").read_text().splitlines() if line.startswith("| R |")]
    assert row.endswith(f"| {sheet_r['inputs']} ({weakest}) | {sheet_r['percent']} |")
