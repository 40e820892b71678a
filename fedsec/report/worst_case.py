"""The "Worst case per defense" section of a sweep report, from the tables ``fedsec worst-case`` writes.

``worst_case.csv`` (one row per defense: its worst mean final accuracy and worst mean attack success over the
attack settings of the grid, and the attacks that caused them) and ``worst_case_grid.csv`` (one row per defense x
attack setting: mean and std over seeds) are written by :mod:`fedsec.studies.worst_case`; this module only reads
them: a table and a heatmap of accuracy (and of attack success when some attack has one) with each defense's worst
cell outlined. Nothing is drawn when the sweep directory has no ``worst_case.csv``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from fedsec.report import plots as rp
from fedsec.report.document import Document

TABLE_FILE, GRID_FILE, TUNED_FILE = "worst_case.csv", "worst_case_grid.csv", "worst_case_tuned.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(text: str | None) -> float:
    try:
        value = float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _fmt(text: str | None, std: str | None = None) -> str:
    value = _num(text)
    if not math.isfinite(value):
        return "n/a"
    spread = _num(std)
    return f"{value:.4f}" + (f" ± {spread:.4f}" if math.isfinite(spread) else "")


def add_worst_case(doc: Document, root: Path) -> bool:
    """Append the section to ``doc`` when ``root`` has ``worst_case.csv``; returns whether it did."""
    if not (root / TABLE_FILE).is_file():
        return False
    table = _rows(root / TABLE_FILE)
    grid = _rows(root / GRID_FILE) if (root / GRID_FILE).is_file() else []
    doc.heading("Worst case per defense")
    doc.paragraph("For each defense, the attack setting (of the grid's `attack.*` axes) that left the lowest mean "
                  "final accuracy and the one with the highest mean attack success, means over the finished seeds "
                  "(± sample std). Adaptive attacks (`fang`, `agr_tailored`, `alie_search`, `ipm_search`) search "
                  "their own parameters against the deployed rule. `skipped`: combinations the run plan refused "
                  "(e.g. Fang's attack against a rule it does not target). Table: `worst_case.csv`; every cell: "
                  "`worst_case_grid.csv`.")
    doc.table(["defense", "no attack", "worst accuracy", "worst attack (accuracy)", "worst attack success",
               "worst attack (success)", "attacks done", "skipped"],
              [[f"`{r['defense']}`", _fmt(r.get("no_attack_accuracy")),
                _fmt(r.get("worst_accuracy"), r.get("worst_accuracy_std")), r.get("worst_accuracy_attack") or "-",
                _fmt(r.get("worst_success")) + (f" ({r['worst_success_metric']})" if r.get("worst_success_metric")
                                                 else ""),
                r.get("worst_success_attack") or "-", f"{r.get('attacks_done', '')}/{r.get('attacks_total', '')}",
                r.get("skipped") or "0"] for r in table])
    if (root / TUNED_FILE).is_file():
        doc.paragraph("Tuned (`--tune`): per defense that reads a tuned key, the setting whose worst accuracy over "
                      "the attacks is highest, next to the setting the grid file gives (the default). Table: "
                      "`worst_case_tuned.csv`.")
        doc.table(["defense", "tuned setting", "its worst accuracy", "its worst attack", "default's worst accuracy",
                   "default's worst attack", "settings tried"],
                  [[f"`{r['defense']}`", r.get("tuned") or "-", _fmt(r.get("tuned_worst_accuracy")),
                    r.get("tuned_worst_attack") or "-", _fmt(r.get("default_worst_accuracy")),
                    r.get("default_worst_attack") or "-", r.get("settings") or ""]
                   for r in _rows(root / TUNED_FILE)])
    if grid:
        _heatmaps(doc, root, table, grid)
    return True


def _heatmaps(doc: Document, root: Path, table: list[dict[str, str]], grid: list[dict[str, str]]) -> None:
    defenses = [r["defense"] for r in table]
    attacks = list(dict.fromkeys(g["attack"] for g in grid))
    cell = {(g["defense"], g["attack"]): g for g in grid}
    for metric, column, cmap, pick in (("accuracy", "worst_accuracy_attack", "viridis", "lowest"),
                                       ("success", "worst_success_attack", "Reds", "highest")):
        values = [[_num(cell.get((d, a), {}).get(f"{metric}_mean")) for a in attacks] for d in defenses]
        if not any(math.isfinite(v) for row in values for v in row):
            continue
        marked = [(i, attacks.index(r[column])) for i, r in enumerate(table) if r.get(column) in attacks]
        panel = rp.Heatmap("defense", "attack", defenses, attacks, values, "", marked)
        file = f"worst_case_{metric}.png"
        label = "final test accuracy" if metric == "accuracy" else "attack success"
        rp.plot_heatmaps([panel], root / "plots" / file, title=f"Worst case per defense: {label}, mean over seeds",
                         cbar_label=label, cmap=cmap)
        doc.figure(f"plots/{file}", f"Mean {label} per defense x attack; outlined: each defense's worst case "
                   f"({pick} {label}); grey: no finished cell or a skipped combination.")
