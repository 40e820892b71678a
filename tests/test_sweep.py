"""`fedsec sweep`: grid expansion and validation (fast), and a tiny real sweep killed mid-way and resumed (e2e)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedsec.cli import app
from fedsec.config import ConfigError
from fedsec.studies.sweep import cell_id, load_sweep

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "digits_smoke.toml"


def write_sweep(tmp_path: Path, body: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(f'base = "{SMOKE}"\n{body}')
    return path


def test_grid_expands_to_the_product_of_its_axes_in_order(tmp_path):
    path = write_sweep(tmp_path, """
[grid]
"defense.strategy" = ["fedavg", "median", "krum"]
"attack.kind" = ["none", "sign_flip"]
seed = [0, 1]
[set]
rounds = 1
attack.fraction = 0.25
defense.num_malicious = 0
""")
    sweep = load_sweep(path)
    assert len(sweep.cells) == 3 * 2 * 2
    assert len({c.id for c in sweep.cells}) == 12
    first, last = sweep.cells[0], sweep.cells[-1]
    assert first.values == {"defense.strategy": "fedavg", "attack.kind": "none", "seed": 0}
    assert last.values == {"defense.strategy": "krum", "attack.kind": "sign_flip", "seed": 1}
    assert first.id == "strategy-fedavg__kind-none__seed-0"
    e = last.plan.experiment
    assert (e.defense.strategy, e.attack.kind, e.seed) == ("krum", "sign_flip", 1)
    assert all(c.plan.experiment.rounds == 1 and c.plan.experiment.attack.fraction == 0.25 for c in sweep.cells)
    # cells that differ only by seed form one group (mean / std over seeds)
    assert sweep.cells[0].group == sweep.cells[1].group != sweep.cells[2].group
    assert sweep.name == "sweep" and sweep.base == SMOKE


def test_cell_ids_are_file_system_safe():
    assert cell_id({"attack.fraction": 0.1, "data.dataset": "fashion-mnist", "x": "a/b c"}) == (
        "fraction-0.1__dataset-fashion-mnist__x-abc")


@pytest.mark.parametrize(("body", "message"), [
    ('[grid]\n"defense.strategy" = ["fedavg", "nope"]\n', "cell strategy-nope"),
    ('[grid]\n"defense.stratgy" = ["fedavg"]\n', "defense.stratgy: unknown key"),
    ('[grid]\nseed = []\n', "grid.seed: expected a non-empty list"),
    ('[grid]\nseed = [1, 1]\n', "grid.seed: values repeat"),
    ("", "grid: required table is missing"),
    ('[grid]\nseed = [0]\n[set]\nseed = 1\n', "set.seed: also a grid axis"),
    ('rounds = 3\n[grid]\nseed = [0]\n', "rounds: unknown key"),
])
def test_invalid_sweeps_name_the_key_and_reason(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_sweep(write_sweep(tmp_path, body))


def test_missing_base_is_a_clear_cli_error(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('base = "nowhere.toml"\n[grid]\nseed = [0]\n')
    result = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "base: config file" in result.output and "not found" in result.output
    assert "Traceback" not in result.output


def test_parallel_cells_are_refused_on_a_shared_cluster(tmp_path):
    path = write_sweep(tmp_path, "[grid]\nseed = [0, 1]\n")
    result = CliRunner().invoke(app, ["sweep", str(path), "--parallel", "2", "--address", "10.0.0.1:6379"])
    assert result.exit_code == 2 and "--parallel 2 with a Ray cluster" in result.output


def test_a_cell_worker_runs_commands_one_after_another_and_is_replaced_when_it_dies(tmp_path):
    """The sweep's cell worker (fedsec/studies/cell_worker.py, fedsec/sweep_worker.py) without Ray: `fedsec
    validate` as cells, each with its own log and exit code, in one process; a killed worker is started again."""
    from fedsec.studies.cell_worker import CellWorker

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nrounds = 0\n')
    worker = CellWorker([sys.executable, "-m", "fedsec.sweep_worker", str(tmp_path)],
                        log=tmp_path / "worker.log", env={**os.environ, "COLUMNS": "120"})
    try:
        assert worker.run(["validate", str(SMOKE)], log=tmp_path / "a.txt", append=False) == 0
        first = worker.process.pid
        assert worker.run(["validate", str(bad)], log=tmp_path / "b.txt", append=False) == 2
        assert worker.run(["validate", str(SMOKE)], log=tmp_path / "a.txt", append=True) == 0
        assert worker.process.pid == first  # one process for all three
        assert (tmp_path / "a.txt").read_text().count("valid: digits-smoke") == 2
        assert "rounds" in (tmp_path / "b.txt").read_text() and "Traceback" not in (tmp_path / "b.txt").read_text()
        worker.process.kill()
        worker.process.wait()
        assert worker.run(["validate", str(SMOKE)], log=tmp_path / "c.txt", append=False) == 0
        assert worker.process.pid != first
    finally:
        worker.stop()
    assert worker.process is None


@pytest.mark.e2e
@pytest.mark.slow  # a two-cell sweep and the same two runs alone (~2 min): bash scripts/dev.sh slow
def test_cells_run_in_a_cell_worker_equal_the_same_runs_of_fedsec_run(tmp_path):
    path = write_sweep(tmp_path, '[grid]\n"defense.strategy" = ["fedavg", "median"]\n[set]\nrounds = 2\n')
    out = tmp_path / "out"
    swept = subprocess.run([sys.executable, "-m", "fedsec.cli", "sweep", str(path), "--out", str(out), "--no-report"],
                           capture_output=True, text=True, timeout=600)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    for cell in sorted((out / "cells").iterdir()):
        alone = tmp_path / "alone" / cell.name
        ran = subprocess.run([sys.executable, "-m", "fedsec.cli", "run", str(cell / "experiment.toml"), "--out",
                              str(alone)], capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        for table in ("rounds.csv", "clients.csv"):
            a, b = (pd.read_csv(d / table).filter(regex=r"^(?!.*seconds$)(?!node$)") for d in (cell, alone))
            pd.testing.assert_frame_equal(a, b)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _sweep_processes(sweep_dir: Path) -> list[str]:
    """Live processes whose command line names the sweep directory (cells and Ray heads log there)."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(sweep_dir) in cmdline and state != "Z":
            out.append(cmdline.replace("\0", " "))
    return out


@pytest.mark.e2e
@pytest.mark.slow  # a sweep SIGKILLed and resumed (~4-6 min): bash scripts/dev.sh slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_sweep_resumes_without_losing_or_repeating_cells(tmp_path):
    path = write_sweep(tmp_path, """
[grid]
"defense.strategy" = ["fedavg", "median"]
seed = [0, 1]
[set]
rounds = 2
""")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "fedsec.cli", "sweep", str(path), "--out", str(out), "--no-report"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    cells = out / "cells"
    deadline = time.monotonic() + 240
    # kill the sweep (SIGKILL: no chance to clean up) once one cell is done and the next one has checkpointed round 1
    while time.monotonic() < deadline:
        if first.poll() is not None:
            pytest.fail(f"sweep ended before it could be killed: {first.stdout.read().decode()}")
        done = list(cells.glob("*/cell.json"))
        started = [d for d in cells.glob("*") if d.is_dir()]
        checkpointed = [d for d in started if (d / "checkpoints" / "latest.pt").exists() and d.name not in
                        {c.parent.name for c in done}]
        if len(done) == 1 and len(started) == 2 and checkpointed:
            break
        time.sleep(0.05)
    else:
        pytest.fail("no cell finished within 240 s")
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished_before = done[0].parent.name
    marker_before = done[0].read_text()
    interrupted = next(d for d in started if d.name != finished_before)
    assert not (interrupted / "cell.json").exists()
    round_one = pd.read_csv(interrupted / "rounds.csv").set_index("round").loc[1]

    # the cell process and the Ray head it joined go away with the sweep (no orphans)
    address = tomllib.loads((cells / finished_before / "config.toml").read_text())["backend"]["address"]
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + 30
    while (_sweep_processes(out) or _listening(host, int(port))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _sweep_processes(out)
    assert not _listening(host, int(port)), f"the sweep's Ray head at {address} outlived the sweep"
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["status"]).count("done") == 1 and len(table) == 4

    second = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "1 already done" in second.stdout.replace("\n", " ")
    assert (cells / finished_before / "cell.json").read_text() == marker_before  # not rerun
    # the interrupted cell went on from its checkpoint: round 1 was not trained again (its row, timing included,
    # is the one written before the kill)
    assert "resumed from checkpoints/latest.pt" in (interrupted / "log.txt").read_text()
    again = pd.read_csv(interrupted / "rounds.csv").set_index("round")
    assert list(again.index) == [0, 1, 2]
    pd.testing.assert_series_equal(again.loc[1], round_one)
    table = pd.read_csv(out / "sweep.csv")
    assert len(table) == 4 and table["cell"].is_unique and set(table["status"]) == {"done"}
    assert set(table["cell"]) == {d.name for d in cells.iterdir() if d.is_dir()}
    assert (table["rounds_completed"] == 2).all() and table["accuracy"].between(0.3, 1.0).all()
    for _, row in table.iterrows():  # each cell ran the config of its grid point
        summary = json.loads((out / row["run_dir"] / "summary.json").read_text())
        assert (summary["strategy"], summary["seed"]) == (row["defense.strategy"], row["seed"])
    # mean / std over the seeds of each group
    fedavg = table[table["defense.strategy"] == "fedavg"]
    assert fedavg["accuracy_mean"].iloc[0] == pytest.approx(fedavg["accuracy"].mean())
    assert fedavg["accuracy_std"].iloc[0] == pytest.approx(fedavg["accuracy"].std(ddof=1))
    assert (table["num_seeds"] == 2).all()

    # a third run has nothing left to do; it writes the report of the real sweep
    third = subprocess.run(command[:-1], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert third.returncode == 0 and "4 already done" in third.stdout.replace("\n", " "), third.stdout
    report = (out / "report.md").read_text()
    assert "| fedavg | 2/2 |" in report and "| median | 2/2 |" in report
    images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert images and all((out / image).stat().st_size > 5_000 for image in images)
    assert (out / "report.html").is_file() and os.path.getsize(out / "sweep.toml") > 0


def test_audit_columns_flatten_the_privacy_audits_of_a_summary():
    from fedsec.studies.sweep import audit_columns

    summary = {"inversion": [
        {"status": "done", "psnr": 30.0, "ssim": 0.8, "label_accuracy": 1.0},
        {"status": "done", "psnr": 20.0, "ssim": 0.6, "label_accuracy": 0.5},
        {"status": "skipped", "reason": "too many examples"}],
        "membership": {"status": "done", "auc": 0.79, "tpr_at_0.1%_fpr": 0.02, "tpr_at_1%_fpr": 0.09,
                       "empirical_epsilon_lower_bound": 1.24}}
    cols = audit_columns(summary)
    assert cols["inversion_status"] == "done" and cols["inversion_psnr"] == 25.0
    assert cols["inversion_ssim"] == pytest.approx(0.7) and cols["inversion_label_accuracy"] == 0.75
    assert cols["membership_auc"] == 0.79 and cols["membership_tpr_at_1%_fpr"] == 0.09
    assert cols["membership_epsilon_lower_bound"] == 1.24
    ckks = audit_columns({"inversion": [{"status": "unavailable", "reason": "no plaintext update available: the "
                                         "server holds only CKKS ciphertexts"}]})
    assert ckks == {"inversion_status": "unavailable: no plaintext update available: the server holds only CKKS "
                                        "ciphertexts"}
    assert audit_columns({"accuracy": 0.9}) == {}


def _shipped_sweeps() -> list[Path]:
    out = []
    for path in sorted((REPO / "experiments").rglob("*.toml")):
        raw = tomllib.loads(path.read_text())
        if "base" in raw and "grid" in raw:
            out.append(path)
    return out


@pytest.mark.parametrize("path", _shipped_sweeps(), ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_every_shipped_sweep_plans_every_cell(path):
    """Every cell of a shipped sweep plans (worst-case grids may skip only the combinations a rule refuses). The
    privacy-attacks sweep once failed in its central-DP cells: Poisson cohorts left the inversion target out."""
    from fedsec.studies.worst_case import load_worst_case

    grid = tomllib.loads(path.read_text())["grid"]
    if "defense.strategy" in grid and any(k.startswith("attack.") for k in grid):
        assert load_worst_case(path).sweep.cells
    else:
        assert load_sweep(path).cells


def test_a_finished_cell_says_its_accuracy_and_attack_success_on_the_console(tmp_path):
    from fedsec.studies.sweep import cell_headline

    sweep = load_sweep(write_sweep(tmp_path, """
[grid]
"defense.strategy" = ["fedavg"]
"""))
    (cell,) = sweep.cells
    assert cell_headline(tmp_path, cell) == ""  # not run yet
    cell_dir = tmp_path / "cells" / cell.id
    cell_dir.mkdir(parents=True)
    (cell_dir / "summary.json").write_text(json.dumps({
        "accuracy": 0.8123456, "attack_success": 0.77, "attack_success_metric": "backdoor_success",
        "stopped_reason": "privacy_budget"}))
    assert cell_headline(tmp_path, cell) == ("accuracy 0.8123, attack success 0.7700 (backdoor_success), "
                                             "stopped: privacy_budget")
