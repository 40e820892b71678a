"""Deployment scenarios end to end through the CLI: A/C and Q on an open endpoint and with PRADA blocking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedsec.serving.cli import register

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POLICIES = Path(__file__).resolve().parents[1] / "experiments" / "serving" / "policies"


def _scenario(tmp: Path, policy: str, method: str) -> Path:
    path = tmp / f"{policy}.toml"
    path.write_text(f"""
name = "{policy}"
seed = 0
access = "{POLICIES / (policy + '.toml')}"
[target]
model = "cnn"
dataset = "digits"
epochs = 4
[honest]
users = 2
queries = 150
batch_size = 10
[unauthorized]
attempts = 2
[attacker]
method = "{method}"
budget = 300
batch_size = 20
epochs = 3
seeds = 20
""")
    return path


def _run(path: Path, out: Path) -> dict:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["attack", "scenario", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_open_endpoint_blocks_nothing(tmp_path):
    report = _run(_scenario(tmp_path, "open", "knockoff"), tmp_path / "open")
    assert report["A/C"]["attempts"] == 10 and report["A/C"]["value"] == 0.0  # 5 kinds x 2, all served
    assert report["Q"]["value"] == 0.0 and report["Q"]["queries"] == 2 * 150 + 300
    assert report["extraction"]["queries_spent"] == 300 and not report["extraction"]["stopped_early"]
    assert (tmp_path / "open" / "attacker" / "curve.csv").exists()
    assert "| A/C | 0.000 | 0 blocked / 10 attempts |" in (tmp_path / "open" / "report.md").read_text()


def test_prada_blocking_stops_jacobian_attacker(tmp_path):
    report = _run(_scenario(tmp_path, "prada_block", "jacobian"), tmp_path / "block")
    assert report["A/C"]["value"] == 1.0 and report["A/C"]["blocked"] == 10
    by_kind = report["A/C"]["by_kind"]
    assert by_kind["no_key"]["statuses"] == [401, 401] and by_kind["wrong_role"]["statuses"] == [403, 403]
    assert report["monitor_false_positive_rate_honest"] == 0.0 and report["honest_users_flagged"] == 0
    ex = report["extraction"]
    assert ex["stopped_early"] and ex["stop_decision"] == "blocked_by_monitor" and ex["queries_spent"] < 300
    assert 0 < report["Q"]["value"] < 1 and report["monitor_detection_rate_attacker"] > 0
    log = [json.loads(line) for line in (tmp_path / "block" / "queries.jsonl").read_text().splitlines()]
    assert any(e["decision"] == "blocked_by_monitor" and e["status"] == 403 for e in log)
