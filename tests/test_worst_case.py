"""The worst case per defense (``fedsec worst-case``): tables from a hand-made sweep, the refused combinations a
grid may hold, the report section and heatmap, and the CLI command; one real tiny grid end to end."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.image
import pytest
import typer
from typer.testing import CliRunner

from fedsec.config import ConfigError
from fedsec.report import write_report
from fedsec.studies.worst_case import (
    load_worst_case,
    parse_tune,
    register,
    run_worst_case,
    tuned_table,
    worst_case_tables,
    write_worst_case,
)

AXES = ["defense.strategy", "attack.kind", "seed"]
# (defense, attack) -> per seed (accuracy, attack_success_rate or None); None: the cell failed
CELLS = {
    ("fedavg", "none"): [(0.90, None), (0.92, None)],
    ("fedavg", "alie_search"): [(0.80, None), (0.84, None)],
    ("fedavg", "neurotoxin"): [(0.89, 0.9), (0.89, 0.7)],
    ("krum", "none"): [(0.88, None), (0.86, None)],
    ("krum", "alie_search"): [(0.70, None), (0.74, None)],
    ("krum", "fang"): [(0.30, None), None],
    ("krum", "neurotoxin"): [(0.85, 0.2), (0.85, 0.4)],
}
SKIPPED = {"strategy-fedavg__kind-fang__seed-0": {"defense.strategy": "fedavg", "attack.kind": "fang", "seed": 0},
           "strategy-fedavg__kind-fang__seed-1": {"defense.strategy": "fedavg", "attack.kind": "fang", "seed": 1}}


def sweep_rows() -> list[dict[str, str]]:
    rows = []
    for (defense, attack), seeds in CELLS.items():
        for seed, result in enumerate(seeds):
            row = {"cell": f"{defense}-{attack}-{seed}", "defense.strategy": defense, "attack.kind": attack,
                   "seed": str(seed), "status": "failed" if result is None else "done"}
            if result is not None:
                row["accuracy"] = str(result[0])
                row["attack_success_rate"] = "" if result[1] is None else str(result[1])
            rows.append(row)
    return rows


def make_sweep_dir(root: Path) -> Path:
    root.mkdir()
    (root / "sweep.toml").write_text('base = "x.toml"\n[grid]\n"defense.strategy" = ["fedavg", "krum"]\n'
                                     '"attack.kind" = ["none", "alie_search", "fang", "neurotoxin"]\nseed = [0, 1]\n')
    rows = sweep_rows()
    with (root / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["cell", *AXES, "status", "accuracy", "attack_success_rate"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_worst_case_tables_by_hand():
    grid, table = worst_case_tables(sweep_rows(), AXES, skipped=SKIPPED)
    by = {r["defense"]: r for r in table}
    assert list(by) == ["fedavg", "krum"]
    # fedavg: alie_search mean (0.80 + 0.84) / 2 = 0.82 is below neurotoxin's 0.89; the no-attack mean is 0.91
    assert by["fedavg"]["worst_accuracy"] == pytest.approx(0.82)
    assert by["fedavg"]["worst_accuracy_std"] == pytest.approx(math.sqrt(2 * 0.02**2))
    assert by["fedavg"]["worst_accuracy_attack"] == "alie_search"
    assert by["fedavg"]["no_attack_accuracy"] == pytest.approx(0.91)
    # the fang cells were refused for fedavg: counted as attacks tried but not done
    assert (by["fedavg"]["attacks_done"], by["fedavg"]["attacks_total"], by["fedavg"]["skipped"]) == (2, 3, 1)
    # krum: Fang's one finished seed (0.30) is the worst; its failed seed does not count (std undefined)
    assert by["krum"]["worst_accuracy"] == pytest.approx(0.30) and by["krum"]["worst_accuracy_attack"] == "fang"
    assert by["krum"]["worst_accuracy_std"] is None
    # attack success: only neurotoxin has one; means 0.8 (fedavg) and 0.3 (krum)
    assert by["fedavg"]["worst_success"] == pytest.approx(0.8) and by["krum"]["worst_success"] == pytest.approx(0.3)
    assert by["krum"]["worst_success_attack"] == "neurotoxin"
    assert by["krum"]["worst_success_metric"] == "attack_success_rate"
    cell = {(g["defense"], g["attack"]): g for g in grid}
    assert cell[("krum", "fang")]["seeds"] == 1 and ("fedavg", "fang") not in cell
    assert cell[("fedavg", "none")]["accuracy_mean"] == pytest.approx(0.91)


def test_attack_settings_over_several_axes_and_defense_settings():
    rows = [{"defense.strategy": "krum", "defense.num_malicious": nm, "attack.kind": "alie_search",
             "attack.knowledge": kn, "seed": "0", "status": "done", "accuracy": str(acc)}
            for nm, kn, acc in (("1", "colluding", 0.6), ("1", "omniscient", 0.5), ("2", "colluding", 0.4),
                                ("2", "omniscient", 0.7))]
    axes = ["defense.strategy", "defense.num_malicious", "attack.kind", "attack.knowledge", "seed"]
    _, table = worst_case_tables(rows, axes)
    assert [(r["defense"], r["worst_accuracy"], r["worst_accuracy_attack"]) for r in table] == [
        ("krum, num_malicious=1", 0.5, "alie_search, knowledge=omniscient"),
        ("krum, num_malicious=2", 0.4, "alie_search, knowledge=colluding")]
    with pytest.raises(ConfigError, match=r"grid\.defense\.strategy"):
        worst_case_tables(rows, ["attack.kind", "seed"])
    with pytest.raises(ConfigError, match=r"attack axis"):
        worst_case_tables(rows, ["defense.strategy", "seed"])


def test_write_worst_case_and_the_report_section(tmp_path):
    root = make_sweep_dir(tmp_path / "sweep")
    path = write_worst_case(root, skipped=SKIPPED)
    with path.open(newline="") as f:
        table = {r["defense"]: r for r in csv.DictReader(f)}
    assert table["krum"]["worst_accuracy_attack"] == "fang" and float(table["krum"]["worst_accuracy"]) == 0.3
    assert table["fedavg"]["worst_success_attack"] == "neurotoxin"
    assert (root / "worst_case_grid.csv").is_file()
    md = write_report(root).read_text()
    assert "## Worst case per defense" in md
    assert "| `krum` | 0.8700 | 0.3000 | fang | 0.3000 (attack_success_rate) | neurotoxin | 3/3 | 0 |" in md
    fedavg = "| `fedavg` | 0.9100 | 0.8200 ± 0.0283 | alie_search | 0.8000 (attack_success_rate) | neurotoxin |"
    assert fedavg + " 2/3 | 1 |" in md
    for name in ("worst_case_accuracy.png", "worst_case_success.png"):
        assert f"(plots/{name})" in md
        image = matplotlib.image.imread(root / "plots" / name)
        assert image.std() > 0.01


def write_base(tmp_path: Path, *, per_round: int = 7, attack: str = "fraction = 0.2",
               partition: str = 'partition = "iid"') -> Path:
    base = tmp_path / "base.toml"
    base.write_text(f'name = "wc"\nseed = 0\nrounds = 2\n[data]\ndataset = "digits"\n{partition}\n'
                    f'num_clients = 10\n[model]\nname = "logreg"\n[train]\nclients_per_round = {per_round}\n'
                    'local_epochs = 1\nbatch_size = 32\nlr = 0.1\n'
                    f'[attack]\nkind = "none"\n{attack}\nknowledge = "omniscient"\n[defense]\nstrategy = "fedavg"\n')
    return base


def test_load_skips_refused_combinations_and_stops_on_real_errors(tmp_path):
    write_base(tmp_path)
    sweep = tmp_path / "wc.toml"
    sweep.write_text('base = "base.toml"\n[grid]\n"defense.strategy" = ["fedavg", "median"]\n'
                     '"attack.kind" = ["alie_search", "fang"]\n')
    study = load_worst_case(sweep)
    assert [c.id for c in study.sweep.cells] == [
        "strategy-fedavg__kind-alie_search", "strategy-median__kind-alie_search", "strategy-median__kind-fang"]
    assert list(study.skipped) == ["strategy-fedavg__kind-fang"]
    assert "defense.strategy='fedavg': Fang's attacks target" in study.skipped["strategy-fedavg__kind-fang"]
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "base.toml"\n[grid]\n"defense.strategy" = ["fedavg", "median"]\n'
                   '"attack.kind" = ["alie_search", "fang"]\n[set]\n"attack.z_range" = [3.0, 1.0]\n')
    with pytest.raises(ConfigError, match=r"attack\.z_range=\[3\.0, 1\.0\]: empty search range"):
        load_worst_case(bad)
    no_defense = tmp_path / "nodef.toml"
    no_defense.write_text('base = "base.toml"\n[grid]\n"attack.kind" = ["alie_search"]\n')
    with pytest.raises(ConfigError, match=r"grid\.defense\.strategy"):
        load_worst_case(no_defense)


def test_cli_command_tabulates_a_sweep_directory_and_reports(tmp_path):
    root = make_sweep_dir(tmp_path / "sweep")
    app = typer.Typer()
    reported: list[Path] = []
    register(app, report=reported.append)

    @app.command("noop")
    def noop() -> None:  # a second command, so typer keeps "worst-case" as a subcommand name
        """Nothing."""

    result = CliRunner().invoke(app, ["worst-case", str(root)])
    assert result.exit_code == 0, result.output
    assert "krum: worst accuracy 0.3 (fang)" in result.output and reported == [root]
    missing = CliRunner().invoke(app, ["worst-case", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "config error" in missing.output


@pytest.mark.slow  # a real defense x attack grid (~3 min): bash scripts/dev.sh slow
@pytest.mark.e2e
def test_tiny_real_grid(tmp_path):
    """2 defenses x (no attack, Fang) on digits with Dirichlet(1.0) label skew, 2 rounds, 3 omniscient attackers of
    10 clients, all sampled: against Krum, Fang's crafted update is the one Krum selects in every round and the
    worst case; the tables cover both defenses. (Under Dirichlet(0.1) Krum alone, selecting one skewed client,
    stays at chance after 2 rounds, so no attack could lower it.)"""
    write_base(tmp_path, per_round=10, attack="fraction = 0.3", partition='partition = "dirichlet"\nalpha = 1.0')
    sweep = tmp_path / "wc.toml"
    sweep.write_text('base = "base.toml"\n[grid]\n"defense.strategy" = ["median", "krum"]\n'
                     '"attack.kind" = ["none", "fang"]\n')
    path = run_worst_case(sweep, tmp_path / "out")
    with path.open(newline="") as f:
        table = {r["defense"]: r for r in csv.DictReader(f)}
    assert set(table) == {"median", "krum"}
    assert all(r["worst_accuracy_attack"] == "fang" and r["attacks_done"] == "1" for r in table.values())
    assert float(table["krum"]["worst_accuracy"]) < float(table["krum"]["no_attack_accuracy"])
    with (tmp_path / "out" / "cells" / "strategy-krum__kind-fang" / "clients.csv").open(newline="") as f:
        selected = {int(r["round"]) for r in csv.DictReader(f) if r["malicious"] == "1" and float(r["accepted"]) > 0}
    assert selected == {1, 2}


def test_fedsec_cli_has_the_worst_case_command(tmp_path):
    """``fedsec worst-case`` is mounted on the real CLI: it tabulates a finished sweep directory and writes its
    report, and a missing sweep file is a config error (exit 2)."""
    from fedsec.cli import app as fedsec_app

    root = make_sweep_dir(tmp_path / "sweep")
    result = CliRunner().invoke(fedsec_app, ["worst-case", str(root), "--no-report"])
    assert result.exit_code == 0, result.output
    assert "krum: worst accuracy 0.3 (fang)" in result.output and (root / "worst_case.csv").is_file()
    missing = CliRunner().invoke(fedsec_app, ["worst-case", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 2 and "config error" in missing.output


@pytest.mark.parametrize("name", ["papers/fang2020_krum.toml", "papers/shejwalkar2021_tailored.toml",
                                  "worst_case/all_defenses.toml"])
def test_shipped_worst_case_grids_plan_every_cell_they_keep(name):
    """The shipped grids load: every kept cell plans, and only Fang / the stateful rules are skipped."""
    study = load_worst_case(Path(__file__).resolve().parents[1] / "experiments" / name)
    assert study.sweep.cells
    # Fang has variants for five rules; FLTrust, FoolsGold and FLDetector hold server-side state (root data, client
    # histories) that the searching attacks cannot simulate
    assert all(any(part in cid for part in ("fang", "fltrust", "foolsgold", "fldetector")) for cid in study.skipped)
    if name.startswith("worst_case"):
        defenses = {c.values["defense.strategy"] for c in study.sweep.cells}
        from fedsec.strategies import STRATEGIES

        assert defenses == set(STRATEGIES)  # every shipped defense has its worst case


def test_tune_parses_values_and_refuses_what_it_cannot_tune():
    assert parse_tune(["defense.trim_ratio=0.1, 0.3", "defense.num_malicious=1,2"]) == {
        "defense.trim_ratio": [0.1, 0.3], "defense.num_malicious": [1, 2]}
    for spec, fragment in (("defense.trim_ratio", "expected KEY=v1,v2"), ("attack.z=1,2", "a defense's own key"),
                           ("defense.strategy=krum", "a defense's own key"), ("defense.trim_ratio=0.1,0.1", "repeat")):
        with pytest.raises(ConfigError, match=fragment):
            parse_tune([spec])


def test_tuned_cells_vary_the_key_only_for_the_defenses_that_read_it(tmp_path):
    write_base(tmp_path)
    sweep = tmp_path / "wc.toml"
    sweep.write_text('base = "base.toml"\n[grid]\n"defense.strategy" = ["trimmed_mean", "krum"]\n'
                     '"attack.kind" = ["alie"]\n')
    study = load_worst_case(sweep, tune=parse_tune(["defense.trim_ratio=0.1,0.3"]))
    assert [c.id for c in study.sweep.cells] == [
        "strategy-trimmed_mean__kind-alie", "strategy-trimmed_mean__kind-alie__trim_ratio-0.1",
        "strategy-trimmed_mean__kind-alie__trim_ratio-0.3", "strategy-krum__kind-alie"]
    assert study.sweep.cells[2].plan.resolved["defense"]["trim_ratio"] == 0.3
    assert study.sweep.axes["defense.trim_ratio"] == [0.1, 0.3]
    with pytest.raises(ConfigError, match=r"--tune defense\.keep: none of the grid's defenses"):
        load_worst_case(sweep, tune={"defense.keep": [0.2]})


def test_the_tuned_table_picks_the_highest_worst_case_per_defense(tmp_path):
    axes = ["defense.strategy", "attack.kind", "defense.trim_ratio"]
    results = {("trimmed_mean", "alie", ""): 0.50, ("trimmed_mean", "ipm", ""): 0.60,
               ("trimmed_mean", "alie", "0.1"): 0.40, ("trimmed_mean", "ipm", "0.1"): 0.70,
               ("trimmed_mean", "alie", "0.3"): 0.65, ("trimmed_mean", "ipm", "0.3"): 0.55,
               ("krum", "alie", ""): 0.45, ("krum", "ipm", ""): 0.30}
    rows = [{"defense.strategy": d, "attack.kind": a, "defense.trim_ratio": t, "status": "done", "accuracy": str(acc)}
            for (d, a, t), acc in results.items()]
    table = {r["defense"]: r for r in tuned_table(rows, axes, ["defense.trim_ratio"])}
    assert set(table) == {"trimmed_mean"}  # krum reads no tuned key
    row = table["trimmed_mean"]
    assert row["tuned"] == "trim_ratio=0.3" and row["tuned_worst_accuracy"] == 0.55
    assert row["tuned_worst_attack"] == "ipm" and row["default_worst_accuracy"] == 0.50
    assert row["gain"] == pytest.approx(0.05) and row["settings"] == 3
    root = tmp_path / "tuned"
    root.mkdir()
    (root / "sweep.toml").write_text('base = "x.toml"\n[grid]\n"defense.strategy" = ["trimmed_mean", "krum"]\n'
                                     '"attack.kind" = ["alie", "ipm"]\n')
    (root / "tune.json").write_text('["defense.trim_ratio"]\n')
    with (root / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["defense.strategy", "attack.kind", "defense.trim_ratio", "status",
                                               "accuracy"])
        writer.writeheader()
        writer.writerows(rows)
    from fedsec.cli import app as fedsec_app

    result = CliRunner().invoke(fedsec_app, ["worst-case", str(root), "--no-report"])
    assert result.exit_code == 0, result.output
    assert "trimmed_mean: trim_ratio=0.3: worst accuracy 0.55 (ipm); default 0.5 (alie)" in result.output
    assert "trimmed_mean, trim_ratio=0.1: worst accuracy 0.4 (alie)" in result.output
