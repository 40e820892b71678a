"""``fedsec report``: reports of a run directory and of a sweep directory, built on disk by hand (no Ray)."""

from __future__ import annotations

import csv
import itertools
import json
import re
from pathlib import Path

import matplotlib.image
import pytest

from fedsec.report import ReportError, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def make_run(path: Path, *, strategy: str = "median", attack: str = "label_flip", seed: int = 0,
             accuracy: float = 0.9, success: float = 0.3, epsilon: float | None = None, rounds: int = 3) -> Path:
    """A run directory in the results contract: 4 clients, client 1 malicious, metrics ramping to the finals."""
    path.mkdir(parents=True)
    (path / "plots").mkdir()
    privacy = 'mode = "central"\nepsilon = 8.0\ndelta = 1e-05\n' if epsilon is not None else 'mode = "none"\n'
    (path / "config.toml").write_text(
        f'name = "cell-{strategy}-{attack}-{seed}"\nseed = {seed}\nrounds = {rounds}\n\n'
        '[data]\ndataset = "digits"\npartition = "iid"\nnum_clients = 4\n\n[model]\nname = "logreg"\n\n'
        f'[attack]\nkind = "{attack}"\nfraction = 0.25\nstart_round = 1\n\n[defense]\nstrategy = "{strategy}"\n\n'
        f"[privacy]\n{privacy}\n[encryption]\nscheme = \"none\"\n"
    )
    rows, clients = [], []
    for r in range(rounds + 1):
        t = r / rounds
        row = {"round": r, "accuracy": 0.1 + (accuracy - 0.1) * t, "loss": 2.3 - 2.0 * t, "seconds": 0.5}
        if attack == "backdoor":
            row["attack_success_rate"] = success * t
        else:
            row["source_recall"] = 1.0 - success * t if r else 0.0
            row["flip_rate"] = success * t / 2
        if epsilon is not None:
            row["epsilon"] = epsilon * t
        row["detection_precision"] = (1.0 if strategy == "median" else "") if r else ""
        row["detection_recall"] = (1.0 if strategy == "median" else 0.0) if r else ""
        row["bytes_up"] = 11424.0 if r else ""
        for c in range(4) if r else []:
            rejected = strategy == "median" and c == 1
            clients.append({"round": r, "client": c, "malicious": int(c == 1), "num_examples": 337,
                            "update_norm": 9.0 - r + 3 * (c == 1), "accepted": 0.0 if rejected else 0.25,
                            "node": "n" * 20, "status": "rejected" if rejected else "accepted"})
        rows.append(row)
    _write_csv(path / "rounds.csv", rows)
    _write_csv(path / "clients.csv", clients)
    final = {k: v for k, v in rows[-1].items() if k not in ("round", "seconds")}
    summary = {"name": f"cell-{strategy}-{attack}-{seed}", "seed": seed, "rounds_planned": rounds,
               "rounds_completed": rounds, "stopped_reason": "completed",
               "versions": {"python": "3.11", "flwr": "1.41.0"},
               **{k: (v if v != "" else None) for k, v in final.items()}, "strategy": strategy, "attack": attack,
               "malicious_clients": [1], "wall_seconds": 12.5}
    if epsilon is not None:
        summary["privacy"] = {"epsilon": epsilon, "epsilon_budget": 8.0}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


# final accuracy per (defense, attack, seed); median/backdoor seed 1 failed
ACCURACY = {("fedavg", "label_flip"): (0.80, 0.90), ("fedavg", "backdoor"): (0.70, 0.74),
            ("median", "label_flip"): (0.85, 0.87), ("median", "backdoor"): (0.60, None)}
SUCCESS = {"label_flip": 0.5, "backdoor": 0.8}


def make_sweep(root: Path) -> Path:
    """2 defenses x 2 attacks x 2 seeds in the sweep layout; one cell failed."""
    root.mkdir()
    (root / "sweep.toml").write_text(
        'base = "experiments/digits_smoke.toml"\n[grid]\n"defense.strategy" = ["fedavg", "median"]\n'
        '"attack.kind" = ["label_flip", "backdoor"]\n"seed" = [0, 1]\n'
    )
    rows = []
    for (defense, attack), accs in ACCURACY.items():
        for seed, acc in enumerate(accs):
            cell = f"{defense}-{attack}-s{seed}"
            row = {"cell": cell, "defense.strategy": defense, "attack.kind": attack, "seed": seed,
                   "status": "done" if acc is not None else "failed", "run_dir": f"cells/{cell}"}
            if acc is None:  # what `fedsec sweep` leaves for a cell whose run exited non-zero
                (root / "cells" / cell).mkdir(parents=True)
                (root / "cells" / cell / "cell.json").write_text(json.dumps(
                    {"status": "failed", "exit_code": 1, "error": "run failed: Ray died"}))
                rows.append(row)
                continue
            run = make_run(root / "cells" / cell, strategy=defense, attack=attack, seed=seed, accuracy=acc,
                           success=SUCCESS[attack] * (0.5 if defense == "median" else 1.0), epsilon=2.0 + seed)
            summary = json.loads((run / "summary.json").read_text())
            for metric in ("accuracy", "loss", "attack_success_rate", "source_recall", "flip_rate", "epsilon",
                           "detection_precision", "detection_recall"):
                row[metric] = summary.get(metric, "")
            row.update(rounds_completed=3, stopped_reason="completed", wall_seconds=12.5)
            rows.append(row)
    _write_csv(root / "sweep.csv", rows)
    return root


def _referenced_pngs(root: Path) -> list[Path]:
    md = (root / "report.md").read_text()
    page = (root / "report.html").read_text()
    in_md = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    in_html = re.findall(r'<img src="([^"]+\.png)"', page)
    assert in_md and in_md == in_html, "report.md and report.html show the same images"
    return [root / p for p in in_md]


def _assert_valid_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert 300 <= height <= 3000 and 500 <= width <= 4000, (path, image.shape)
    assert image.std() > 0.01, f"{path} is blank"


def test_run_report(tmp_path):
    run = make_run(tmp_path / "run", attack="backdoor", accuracy=0.92, success=0.6, epsilon=3.0)
    out = write_report(run)
    assert out == run / "report.md"
    md, page = out.read_text(), (run / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and page.rstrip().endswith("</html>")
    for tag in ("table", "tr", "figure", "p", "h2"):
        assert page.count(f"<{tag}>") + page.count(f"<{tag} ") == page.count(f"</{tag}>") > 0, tag
    assert "http" not in page  # self-contained: nothing loaded from elsewhere
    for text in ("cell-median-backdoor-0", "`median`", "`backdoor`", "completed", "3 completed of 3 planned",
                 "12.5 s", "flwr 1.41.0", "central DP, budget epsilon 8.0", "spent 3.0000"):
        assert text in md, text
    # header of the per-round table and the final values (accuracy 0.92, ASR 0.6, epsilon 3)
    assert "| round | accuracy | loss | attack_success_rate | epsilon | detection_precision |" in md
    assert "| 3 | 0.9200 | 0.3000 | 0.6000 | 3.0000 | 1.0000 | 1.0000 | 11424 | 0.5000 |" in md
    assert "| malicious | 3 | 0.000 |" in md and "| honest | 9 | 1.000 |" in md  # median rejected client 1
    pngs = {p.name for p in _referenced_pngs(run)}
    assert pngs == {"report_rounds.png", "report_epsilon.png", "report_detection.png", "report_clients.png"}
    for png in _referenced_pngs(run):
        assert png.parent == run / "plots"
        _assert_valid_png(png)


def test_run_report_plots_only_what_exists(tmp_path):
    run = make_run(tmp_path / "run", strategy="fedavg", attack="label_flip")
    write_report(run)
    pngs = {p.name for p in _referenced_pngs(run)}
    assert "report_epsilon.png" not in pngs and "report_rounds.png" in pngs
    md = (run / "report.md").read_text()
    assert "| epsilon |" not in md and "source_recall" in md and "flip_rate" in md and "privacy | none" in md


def test_sweep_report(tmp_path):
    root = make_sweep(tmp_path / "sweep")
    write_report(root)
    md, page = (root / "report.md").read_text(), (root / "report.html").read_text()
    assert "experiments/digits_smoke.toml" in md and "7 done, 1 failed, 0 pending, 8 cells in all" in md
    for defense, attack in ACCURACY:
        assert re.search(rf"\| {defense} \| {attack} \| \d/2 \|", md), (defense, attack)
        assert f"<td>{defense}</td><td>{attack}</td>" in page
    for metric in ("accuracy", "loss", "attack_success_rate", "source_recall", "flip_rate", "epsilon",
                   "detection_precision", "detection_recall"):
        assert metric in md and metric in page
    # fedavg/label_flip: accuracy 0.80 and 0.90 -> mean 0.85, sample std sqrt(2 * 0.05^2 / 1) = 0.0707;
    # epsilon 2 and 3 -> 2.5 +- 0.7071; median/backdoor has one finished seed: its mean alone
    assert "| fedavg | label_flip | 2/2 | 0.8500 ± 0.0707 |" in md
    assert "2.5000 ± 0.7071" in md
    assert "| median | backdoor | 1/2 | 0.6000 | " in md
    failed = md.split("## Cells not finished")[1].split("##")[0]
    assert "| median-backdoor-s1 | failed | median | backdoor | 1 | exit code 1: run failed: Ray died |" in failed
    pngs = {p.name for p in _referenced_pngs(root)}
    assert pngs == {"sweep_heatmap_accuracy.png", "sweep_heatmap_success.png", "sweep_accuracy_rounds.png",
                    "sweep_epsilon_accuracy.png", "sweep_detection.png"}
    assert "ttack success (1 - source_recall; attack_success_rate)" in md
    for png in _referenced_pngs(root):
        assert png.parent == root / "plots"
        _assert_valid_png(png)


def test_sweep_with_one_axis_draws_bars_and_with_three_axes_one_panel_per_value(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "sweep.toml").write_text('base = "b.toml"\n[grid]\n"defense.strategy" = ["fedavg", "median"]\n')
    rows = []
    for defense in ("fedavg", "median"):
        make_run(one / "cells" / defense, strategy=defense, accuracy=0.8)
        rows.append({"cell": defense, "defense.strategy": defense, "status": "done", "run_dir": f"cells/{defense}",
                     "accuracy": 0.8, "source_recall": 0.7, "flip_rate": 0.15})
    _write_csv(one / "sweep.csv", rows)
    write_report(one)
    assert {p.name for p in _referenced_pngs(one)} == {"sweep_final.png", "sweep_accuracy_rounds.png"}
    # without sweep.toml the axes are the columns that are not the contract's own
    (one / "sweep.toml").unlink()
    _write_csv(one / "sweep.csv", [{**r, "stopped_reason": "completed", "accuracy_mean": 0.8, "accuracy_std": 0.0,
                                    "num_seeds": 1} for r in rows])
    md = write_report(one).read_text()
    assert "| `defense.strategy` | fedavg, median |" in md and "| `stopped_reason` |" not in md
    assert "| `accuracy_mean` |" not in md

    three = tmp_path / "three"
    three.mkdir()
    (three / "sweep.toml").write_text('base = "b.toml"\n[grid]\n"defense.strategy" = ["fedavg", "median"]\n'
                                      '"attack.kind" = ["label_flip"]\n"attack.fraction" = [0.1, 0.3]\n')
    rows = []
    for defense in ("fedavg", "median"):
        for fraction in (0.1, 0.3):
            cell = f"{defense}-{fraction}"
            make_run(three / "cells" / cell, strategy=defense)
            rows.append({"cell": cell, "defense.strategy": defense, "attack.kind": "label_flip",
                         "attack.fraction": fraction, "status": "done", "run_dir": f"cells/{cell}",
                         "accuracy": 0.9 - fraction, "source_recall": 1 - fraction})
    _write_csv(three / "sweep.csv", rows)
    md = write_report(three).read_text()
    assert "one panel per attack.fraction" in md
    assert "| fedavg | label_flip | 0.3 | 1/1 | 0.6000 |" in md
    for png in _referenced_pngs(three):
        _assert_valid_png(png)


def test_neither_run_nor_sweep_raises_naming_the_expected_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ReportError, match=r"rounds\.csv.*sweep\.csv.*found: notes\.txt"):
        write_report(tmp_path)
    with pytest.raises(ReportError, match="no such directory"):
        write_report(tmp_path / "missing")
    (tmp_path / "sweep.toml").write_text('base = "x.toml"\n')
    with pytest.raises(ReportError, match="no sweep.csv"):
        write_report(tmp_path)
    assert issubclass(ReportError, ValueError)


def _with_health(run: Path, health: dict | None) -> Path:
    summary = json.loads((run / "summary.json").read_text())
    if health is not None:
        summary["health"] = health
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def _setting_rows(md: str) -> list[str]:
    """The rows of the report's first table (setting | value), in order."""
    lines = md.splitlines()
    start = lines.index("| setting | value |")
    return [line for line in itertools.takewhile(lambda x: x.startswith("|"), lines[start + 2:])]


def test_run_report_shows_the_model_health_near_the_top(tmp_path):
    ok = _with_health(make_run(tmp_path / "ok", accuracy=0.92),
                      {"status": "ok", "accuracy": 0.92, "chance": 0.1028, "reason": ""})
    write_report(ok)
    rows = _setting_rows((ok / "report.md").read_text())
    assert rows[:2] == ["| name | cell-median-label_flip-0 |", "| model health | ok (accuracy 0.9200, chance 0.1028) |"]

    sick = _with_health(make_run(tmp_path / "sick", attack="backdoor", accuracy=0.1), {
        "status": "one_class", "accuracy": 0.1, "chance": 0.1028, "not_meaningful": ["attack_success", "evasion"],
        "reason": "the final model predicts class 0 for 100.0% of the 360 test inputs (>= 90%; accuracy 0.1000)"})
    write_report(sick)
    md, page = (sick / "report.md").read_text(), (sick / "report.html").read_text()
    assert _setting_rows(md)[1] == (
        "| model health | **one_class**: the final model predicts class 0 for 100.0% of the 360 test inputs (>= 90%; "
        "accuracy 0.1000); attack metrics on it are not meaningful (attack_success, evasion) |")
    assert "<strong>one_class</strong>" in page

    bare = make_run(tmp_path / "bare")  # no health block (a run stopped before its end): no row, nothing made up
    write_report(bare)
    assert not any("model health" in row for row in _setting_rows((bare / "report.md").read_text()))
