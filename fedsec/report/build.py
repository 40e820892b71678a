"""``fedsec report DIR``: a Markdown and an HTML report of one run directory or of a sweep directory.

A run directory (results contract: :mod:`fedsec.results.contract`) has ``rounds.csv`` (and ``config.toml``,
``clients.csv``, ``summary.json``); a sweep directory has ``sweep.csv``, ``sweep.toml`` and one run directory per
cell under ``cells/``. :func:`write_report` tells them apart, draws the plots that apply into ``DIR/plots/``
(:mod:`fedsec.report.plots`) and writes ``DIR/report.md`` and ``DIR/report.html``: the same content, the HTML
self-contained but for the PNGs, which both reference by relative path.

Sweep statistics are recomputed from the cells' final metrics in ``sweep.csv``: mean and sample standard
deviation (n - 1) over the seeds of a group (the cells whose axes agree but for ``seed``), over finished cells only.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import statistics
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsec.errors import FedsecInputError
from fedsec.metrics.seed_sheet import seed_sheet_markdown
from fedsec.plan.results import attack_success_of, declared_metrics, final_metrics, metric_help, summary_metrics
from fedsec.report import plots as rp
from fedsec.report.collateral import add_collateral, add_collateral_by_defense
from fedsec.report.document import Document as _Document
from fedsec.report.worst_case import add_worst_case
from fedsec.results.contract import number
from fedsec.results.run_directory import lookup

__all__ = ["ReportError", "final_metric_names", "write_report"]

_SUCCESS = "attack_success"  # summary.json: the attack's success as its declaration reads it


def final_metric_names() -> list[str]:
    """The final metrics a report tabulates: every declared one (:mod:`fedsec.plan.results`), then the attack's
    success."""
    return [*final_metrics(), _SUCCESS]


def metric_meanings() -> dict[str, str]:
    return {**metric_help(), _SUCCESS: "the attack's success, as its declaration reads it (e.g. 1 - source_recall)"}


_RUN_EXPECTED = "a run directory (rounds.csv, with config.toml, clients.csv and summary.json)"
_SWEEP_EXPECTED = "a sweep directory (sweep.csv, with sweep.toml and cells/<cell>/ run directories)"
_NOT_AXES = {"cell", "status", "run_dir", "rounds_completed", "wall_seconds", "stopped_reason", "num_seeds", "error"}


class ReportError(FedsecInputError):
    """The directory is neither a run directory nor a sweep directory, or a file of it cannot be read."""


def write_report(path: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` and the plots (``plots/*.png``) of a run or a sweep directory.

    Returns the path of ``report.md``. Raises :class:`ReportError` when ``path`` is neither kind of directory.
    """
    root = Path(path)
    if not root.is_dir():
        raise ReportError(f"{root}: no such directory; expected {_RUN_EXPECTED} or {_SWEEP_EXPECTED}")
    if (root / "sweep.csv").is_file():
        doc = _sweep_report(root)
    elif (root / "rounds.csv").is_file():
        doc = _run_report(root)
    else:
        found = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())) or "nothing"
        hint = " (it has sweep.toml but no sweep.csv: the sweep has written no results yet)" if (
            root / "sweep.toml").is_file() else ""
        raise ReportError(f"{root} is neither {_RUN_EXPECTED} nor {_SWEEP_EXPECTED}{hint}; found: {found}")
    (root / "report.html").write_text(doc.html())
    out = root / "report.md"
    out.write_text(doc.markdown())
    return out


# ---------------------------------------------------------------------------------------------------- documents


def _number(text: Any) -> float | None:
    """A CSV or JSON value as a finite float; ``None`` for empty, NaN, Inf or text."""
    return number(text)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read it as CSV ({e})") from e


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ReportError(f"{path}: not valid TOML ({e})") from e


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from e
    return data if isinstance(data, dict) else {}


def _numeric_rows(columns: list[str], rows: list[dict[str, str]]) -> list[dict[str, float | None]]:
    return [{c: _number(r.get(c)) for c in columns} for r in rows]


def _present(rows: Sequence[dict[str, float | None]], key: str) -> bool:
    return any(r.get(key) is not None for r in rows)


def _fmt(value: float | None, *, integer: bool = False) -> str:
    if value is None:
        return ""
    if integer or (value.is_integer() and abs(value) >= 1e3):
        return f"{value:.0f}"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def _column_is_integer(rows: Sequence[dict[str, float | None]], key: str) -> bool:
    return all(float(r[key]).is_integer() for r in rows if r.get(key) is not None)


# -------------------------------------------------------------------------------------------------------- a run


def _attack_text(config: dict[str, Any], summary: dict[str, Any]) -> str:
    kind = summary.get("attack") or lookup(config, "attack.kind") or "none"
    if kind == "none":
        return "none"
    attack = config.get("attack", {})
    parts = [f"`{kind}`"]
    if attack.get("client_ids"):
        parts.append(f"clients {attack['client_ids']}")
    elif attack.get("fraction") is not None:
        parts.append(f"fraction {attack['fraction']:g}")
    if summary.get("malicious_clients") is not None:
        parts.append(f"malicious clients {summary['malicious_clients']}")
    for key in ("source", "target", "boost", "scale", "z", "knowledge"):
        if attack.get(key) is not None:
            parts.append(f"{key} {attack[key]}")
    if attack.get("start_round", 1) != 1 or attack.get("end_round") is not None:
        parts.append(f"rounds {attack.get('start_round', 1)}-{attack.get('end_round', 'end')}")
    return ", ".join(parts)


def _privacy_text(config: dict[str, Any], spent: float | None) -> str:
    privacy = config.get("privacy", {})
    mode = privacy.get("mode", "none")
    if mode == "none":
        return "none"
    text = f"{mode} DP, budget epsilon {privacy.get('epsilon')} at delta {privacy.get('delta')}"
    if privacy.get("noise_multiplier") is not None:
        text += f", noise multiplier {privacy['noise_multiplier']}"
    return text + (f"; spent {spent:.4f}" if spent is not None else "")


def _health_text(summary: dict[str, Any]) -> str:
    """The final model's health (``summary["health"]``, :mod:`fedsec.hooks.health`): ``ok`` with its accuracy and
    chance, or the status in bold, why, and which numbers on the final model are not meaningful; "" without a
    health block (a run stopped before its end)."""
    health = summary.get("health")
    if not isinstance(health, dict) or not health.get("status"):
        return ""
    status = str(health["status"])
    accuracy, chance = _number(health.get("accuracy")), _number(health.get("chance"))
    numbers = f" (accuracy {accuracy:.4f}, chance {chance:.4f})" if accuracy is not None and chance is not None \
        else ""
    if status == "ok":
        return f"ok{numbers}"
    marked = ", ".join(str(m) for m in health.get("not_meaningful") or []) or "none measured"
    reason = f": {health['reason']}" if health.get("reason") else numbers
    return f"**{status}**{reason}; attack metrics on it are not meaningful ({marked})"


def _attack_window(rows: list[dict[str, float | None]], config: dict[str, Any]) -> tuple[int, int] | None:
    active = [int(r["round"]) for r in rows if r.get("attack_active") and r.get("round") is not None]
    if active:
        return min(active), max(active)
    attack = config.get("attack", {})
    if attack.get("kind", "none") == "none" or not rows:
        return None
    last = int(max(r["round"] or 0 for r in rows))
    return int(attack.get("start_round", 1)), int(attack.get("end_round") or last)


def _run_report(root: Path) -> _Document:
    columns, raw = _read_csv(root / "rounds.csv")
    rows = [r for r in _numeric_rows(columns, raw) if r.get("round") is not None]
    config, summary = _read_toml(root / "config.toml"), _read_json(root / "summary.json")
    name = str(summary.get("name") or config.get("name") or root.name)
    doc = _Document(f"Run report: {name}")
    last = rows[-1] if rows else {}
    spent = _number(summary.get("privacy", {}).get("epsilon")) if isinstance(summary.get("privacy"), dict) else None
    header = [
        ("name", name), ("model health", _health_text(summary)),
        ("seed", str(summary.get("seed", config.get("seed", "")))),
        ("data", ", ".join(f"{k} {v}" for k, v in config.get("data", {}).items() if k in ("dataset", "partition",
                           "num_clients") or (k == "alpha" and lookup(config, "data.partition") == "dirichlet"))),
        ("model", str(lookup(config, "model.name") or "")),
        ("strategy", f"`{summary.get('strategy') or lookup(config, 'defense.strategy') or '?'}`"),
        ("attack", _attack_text(config, summary)),
        ("privacy", _privacy_text(config, spent if spent is not None else last.get("epsilon"))),
        ("encryption", str(lookup(config, "encryption.scheme") or "none")),
        ("stopped_reason", str(summary.get("stopped_reason", "no summary.json: still running or interrupted"))),
        ("rounds", f"{summary.get('rounds_completed', int(last.get('round') or 0))} completed of "
                   f"{summary.get('rounds_planned', config.get('rounds', '?'))} planned"),
        ("wall time", f"{summary['wall_seconds']:.1f} s" if _number(summary.get("wall_seconds")) else ""),
        ("versions", ", ".join(f"{k} {v}" for k, v in summary.get("versions", {}).items())),
    ]
    doc.paragraph(f"Run directory `{root.resolve()}`.")
    doc.table(["setting", "value"], [[k, v] for k, v in header if v])

    final = summary if summary else {k: v for k, v in last.items()}
    meanings = metric_meanings()
    names = [*final_metric_names(), *[m.name for m in summary_metrics() if not m.block]]
    metrics = [k for k in names if _number(final.get(k)) is not None]
    if metrics:
        doc.heading("Final metrics" + ("" if summary else " (last row of rounds.csv)"))
        doc.table(["metric", "value", "meaning"], [[k, _fmt(_number(final[k])), meanings[k]] for k in metrics])
    _audit_section(doc, summary)

    doc.heading("Per round")
    if not rows:
        doc.paragraph("`rounds.csv` has no rounds yet.")
        return doc
    declared = {m.name: m for m in declared_metrics()}
    # the round, the final metrics, then the others (participation, timings) as they are declared
    order = ["round", *[c for c, m in declared.items() if m.final], *[c for c, m in declared.items()
                                                                      if not m.final and c != "round"]]
    hidden = {"attack_active"}
    shown = [c for c in order if c in columns and c not in hidden and _present(rows, c)
             and (c == "seconds" or not c.endswith("_seconds"))]
    shown += [c for c in columns if c not in declared and _present(rows, c) and c not in hidden
              and not c.startswith("recall_") and not c.endswith("_seconds")]
    integer = {c: c == "round" or (declared[c].integer if c in declared else _column_is_integer(rows, c))
               for c in shown}
    doc.paragraph("Round 0 is the initial model; an empty cell: the metric does not apply to that round "
                  "(e.g. detection precision when nobody was flagged).")
    doc.table(shown, [[_fmt(r.get(c), integer=integer[c]) for c in shown] for r in rows])
    recalls = [c for c in columns if c.startswith("recall_") and last.get(c) is not None]
    if recalls:
        doc.paragraph(f"Per-class test recall in the last round ({int(last['round'] or 0)}):")
        doc.table(["class"] + [c.removeprefix("recall_") for c in recalls],
                  [["recall"] + [_fmt(last[c]) for c in recalls]])

    _seed_sheet(doc, summary)
    clients = _read_csv(root / "clients.csv")[1] if (root / "clients.csv").is_file() else []
    _run_clients_section(doc, clients)
    add_collateral(doc, root, config, last)
    _run_figures(doc, root, name, rows, clients, config)
    return doc


def _audit_section(doc: _Document, summary: dict[str, Any]) -> None:
    """The numbers of the hooks' summary blocks (membership AUC, inversion PSNR, ...), as they declare them."""
    rows = [[m.name, _fmt(v), m.meaning] for m in summary_metrics() if m.block
            if (v := m.of(summary)) is not None]
    if rows:
        doc.heading("Audits")
        doc.table(["metric", "value", "meaning"], rows)


def _seed_sheet(doc: _Document, summary: dict[str, Any]) -> None:
    """The source surveys' metric sheet (R, DQ_filtered, A, A/C, P <= epsilon, Q) when ``summary.json`` has
    ``seed_metrics``, rendered by :func:`fedsec.metrics.seed_sheet.seed_sheet_markdown` and read back into a table."""
    sheet = summary.get("seed_metrics")
    if not isinstance(sheet, dict) or not sheet:
        return
    lines = [line for line in seed_sheet_markdown(sheet).splitlines() if line.startswith("|")]
    cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    doc.heading("Seed metric sheet")
    doc.paragraph("The metrics of the source surveys (Al-Karaki et al. 2024, sec. 3.2 and Table 1) from this run's "
                  "`summary.json` (`seed_metrics`); \"not measured\" names the config section that would measure it.")
    doc.table(cells[0], cells[2:])


def _run_clients_section(doc: _Document, clients: list[dict[str, str]]) -> None:
    if not clients:
        return
    doc.heading("Clients")
    table = []
    for flag, label in (("1", "malicious"), ("0", "honest")):  # 0/1 as clients.csv writes it
        mine = [c for c in clients if bool(_number(c.get("malicious"))) == (flag == "1")]
        if not mine:
            continue
        weights = [w for w in (_number(c.get("accepted")) for c in mine) if w is not None]
        norms = [n for n in (_number(c.get("update_norm")) for c in mine) if n is not None]
        others = sorted({c.get("status", "") for c in mine} - {"accepted", "rejected", ""})
        table.append([label, str(len(mine)), f"{sum(w > 0 for w in weights) / len(mine):.3f}",
                      _fmt(statistics.fmean(weights)) if weights else "", _fmt(statistics.fmean(norms)) if norms
                      else "", "; ".join(f"{s} ({sum(c.get('status') == s for c in mine)})" for s in others)])
    doc.paragraph("Replies over all rounds (`clients.csv`); a reply counts as accepted when the strategy gave it a "
                  "weight above 0.")
    doc.table(["clients", "replies", "share accepted", "mean weight", "mean update norm", "other statuses"], table)


def _run_figures(doc: _Document, root: Path, name: str, rows: list[dict[str, float | None]],
                 clients: list[dict[str, str]], config: dict[str, Any]) -> None:
    plots = root / "plots"
    doc.heading("Plots")
    if _present(rows, "accuracy"):
        window = _attack_window(rows, config)
        rp.plot_run_rounds(rows, plots / "report_rounds.png", title=name, attack_window=window)
        attack = [m for m in rp.ATTACK_LABELS if _present(rows, m)]
        doc.figure("plots/report_rounds.png", "Test accuracy" + (f" and {', '.join(attack)}" if attack else "")
                   + " per round" + (" (shaded: rounds the attack acts in)" if window else "")
                   + "; test and training loss per round.")
    robust = [c.removeprefix("robust_accuracy_") for c in (rows[0] if rows else {})
              if c.startswith("robust_accuracy_") and _present(rows, c)]
    if robust:
        rp.plot_robust_accuracy(rows, plots / "report_robust_accuracy.png", title=name, attacks=robust)
        doc.figure("plots/report_robust_accuracy.png", "Clean test accuracy and robust accuracy (accuracy on the "
                   "evasion audit's adversarial test examples: " + ", ".join(robust) + ") per round.")
    if _present(rows, "epsilon"):
        budget = _number(lookup(config, "privacy.epsilon"))
        rp.plot_run_epsilon(rows, plots / "report_epsilon.png", title=name, budget=budget)
        doc.figure("plots/report_epsilon.png", "Privacy spent (epsilon) per round, with the budget.")
    if _present(rows, "detection_precision") or _present(rows, "detection_recall"):
        rp.plot_run_detection(rows, plots / "report_detection.png", title=name)
        doc.figure("plots/report_detection.png", "Detection precision and recall per round.")
    numeric = _numeric_rows(["round", "malicious", "accepted", "update_norm"], clients)
    numeric = [c for c in numeric if c["round"] is not None]
    if any(c["malicious"] for c in numeric) or any(c["accepted"] == 0 for c in numeric):
        rp.plot_run_clients(numeric, plots / "report_clients.png", title=name)
        doc.figure("plots/report_clients.png", "Malicious vs honest clients per round: share of replies accepted, "
                   "mean aggregation weight, mean update norm.")
    others = sorted(p.name for p in plots.glob("*.png") if not p.name.startswith("report_"))
    if others:
        doc.paragraph("Other plots of the run: " + ", ".join(f"[{n}](plots/{n})" for n in others) + ".")


# ------------------------------------------------------------------------------------------------------ a sweep


@dataclass
class _Cell:
    name: str
    axes: dict[str, str]
    status: str
    run_dir: Path
    metrics: dict[str, float | None]
    error: str = ""

    success_metric: str = ""  # sweep.csv's attack_success_metric: how the cell's attack_success was read

    def success(self) -> tuple[float | None, str]:
        """The attack's success in this cell and how it was read (``None``: the attack declares none)."""
        if self.metrics.get(_SUCCESS) is not None:
            return self.metrics[_SUCCESS], self.success_metric or _SUCCESS
        return attack_success_of(self.metrics, self.axes.get("attack.kind") or None)


def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample std (``None`` for fewer than 2 values) and count of the values present."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None, 0
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None, len(present)


def _pm(values: Sequence[float | None]) -> str:
    mean, std, _ = _stats(values)
    return "" if mean is None else _fmt(mean) + ("" if std is None else f" ± {_fmt(std)}")


def _sweep_report(root: Path) -> _Document:
    sweep = _read_toml(root / "sweep.toml")
    columns, raw = _read_csv(root / "sweep.csv")
    if "cell" not in columns or "status" not in columns:
        raise ReportError(f"{root / 'sweep.csv'}: expected columns `cell` and `status`, got {columns}")
    grid = {k: [str(v) for v in vs] for k, vs in sweep.get("grid", {}).items() if k in columns}
    finals = final_metric_names()
    axes = list(grid) or [c for c in columns if c not in _NOT_AXES and c not in finals
                          and not c.endswith(("_mean", "_std", "_status")) and c != "attack_success_metric"
                          and c not in {m.name for m in summary_metrics()}]
    cells = [_Cell(r["cell"], {a: r.get(a, "") for a in axes}, r.get("status", "").strip() or "pending",
                   root / (r.get("run_dir") or f"cells/{r['cell']}"),
                   {m: _number(r.get(m)) for m in finals}, r.get("error", ""), r.get("attack_success_metric", ""))
             for r in raw]
    values = {a: list(dict.fromkeys(grid.get(a, []) + [c.axes[a] for c in cells])) for a in axes}
    group_axes = [a for a in axes if a != "seed"]
    groups: dict[tuple[str, ...], list[_Cell]] = {}
    for key in itertools.product(*(values[a] for a in group_axes)):
        groups[key] = []
    for cell in cells:
        groups[tuple(cell.axes[a] for a in group_axes)].append(cell)
    groups = {k: v for k, v in groups.items() if v}
    done = [c for c in cells if c.status == "done"]
    metrics = [m for m in finals if any(c.metrics[m] is not None for c in done)]

    doc = _Document(f"Sweep report: {root.resolve().name}")
    counts = {s: sum(c.status == s for c in cells) for s in dict.fromkeys(["done", "failed", "pending"]
                                                                          + [c.status for c in cells])}
    doc.paragraph(f"Sweep directory `{root.resolve()}`; base config `{sweep.get('base', '?')}`; "
                  + ", ".join(f"{n} {s}" for s, n in counts.items()) + f", {len(cells)} cells in all.")
    doc.table(["axis", "values"], [[f"`{a}`", ", ".join(values[a])] for a in axes])
    _fixed_settings(doc, done, axes)

    label_of = {k: " / ".join(k) or "all cells" for k in groups}
    legend = " / ".join(group_axes) or "group"
    doc.heading("Final metrics per group (mean ± std over seeds)")
    doc.paragraph("Groups: the cells that agree on every axis but `seed`. Only finished cells count; std is the "
                  "sample standard deviation (n - 1), left out for a single seed. Metrics: "
                  + "; ".join(f"`{m}`: {metric_meanings()[m]}" for m in metrics) + ".")
    doc.table(group_axes + ["seeds done"] + metrics,
              [list(k) + [f"{sum(c.status == 'done' for c in v)}/{len(v)}"]
               + [_pm([c.metrics[m] for c in v if c.status == "done"]) for m in metrics] for k, v in groups.items()])
    bad = [c for c in cells if c.status != "done"]
    if bad:
        doc.heading("Cells not finished (not plotted)")
        doc.table(["cell", "status"] + axes + ["reason"],
                  [[c.name, c.status] + [c.axes[a] for a in axes] + [c.error or _reason(c.run_dir)] for c in bad])
    if done:
        _sweep_figures(doc, root, groups, group_axes, values, label_of, legend)
    add_worst_case(doc, root)
    add_collateral_by_defense(doc, root)
    doc.heading("All cells")
    extra = [c for c in ("rounds_completed", "stopped_reason", "wall_seconds") if c in columns]
    doc.table(["cell", "status"] + axes + metrics + extra,
              [[f"[{c.name}]({c.run_dir.relative_to(root).as_posix()}/)" if c.run_dir.is_relative_to(root)
                else c.name, c.status] + [c.axes[a] for a in axes] + [_fmt(c.metrics[m]) for m in metrics]
               + [r.get(x) or "" if x == "stopped_reason" else _fmt(_number(r.get(x)), integer=x == "rounds_completed")
                  for x in extra]
               for c, r in zip(cells, raw, strict=True)])
    return doc


def _reason(run_dir: Path) -> str:
    """Why a cell has no final metrics, as far as its run directory tells."""
    if not run_dir.is_dir():
        return "no run directory"
    try:
        marker, summary = _read_json(run_dir / "cell.json"), _read_json(run_dir / "summary.json")
    except ReportError as e:
        return str(e)
    if marker.get("error"):  # written by `fedsec sweep`: the last error line of the cell's log.txt
        return f"exit code {marker.get('exit_code', '?')}: {marker['error']}"
    if summary:
        return f"stopped_reason: {summary.get('stopped_reason', '?')}"
    rounds = _read_csv(run_dir / "rounds.csv")[1] if (run_dir / "rounds.csv").is_file() else []
    return "no summary.json" + (f" ({len(rounds)} rounds recorded, round 0 included)" if rounds else "")


def _fixed_settings(doc: _Document, done: list[_Cell], axes: list[str]) -> None:
    config = _read_toml(done[0].run_dir / "config.toml") if done else {}
    keys = ["rounds", "data.dataset", "data.partition", "data.num_clients", "train.clients_per_round",
            "model.name", "defense.strategy", "attack.kind", "attack.fraction", "privacy.mode", "privacy.epsilon",
            "encryption.scheme"]
    rows = [[f"`{k}`", str(lookup(config, k))] for k in keys if k not in axes and lookup(config, k) is not None]
    if rows:
        doc.paragraph(f"Settings shared by the cells (from `{done[0].name}/config.toml`):")
        doc.table(["key", "value"], rows)


def _sweep_figures(doc: _Document, root: Path, groups: dict[tuple[str, ...], list[_Cell]], group_axes: list[str],
                   values: dict[str, list[str]], label_of: dict[tuple[str, ...], str], legend: str) -> None:
    plots = root / "plots"
    doc.heading("Plots")
    done = {k: [c for c in v if c.status == "done"] for k, v in groups.items()}
    done = {k: v for k, v in done.items() if v}
    used = sorted({c.success()[1] for v in done.values() for c in v} - {""})
    what = "attack success (" + "; ".join(used) + ")" if used else ""
    short = {"accuracy": "final test accuracy", "success": "attack success"}

    def metric(cells: list[_Cell], name: str) -> float | None:
        return _stats([c.success()[0] if name == "success" else c.metrics[name] for c in cells])[0]

    wanted = [("accuracy", "final test accuracy", "viridis")] + ([("success", what, "Reds")] if used else [])
    if len(group_axes) >= 2:
        if "defense.strategy" in group_axes and "attack.kind" in group_axes:
            row_axis, col_axis = "defense.strategy", "attack.kind"
        else:
            row_axis, col_axis = group_axes[:2]
        rest = [a for a in group_axes if a not in (row_axis, col_axis)]
        combos = list(itertools.product(*(values[a] for a in rest)))
        aggregate = len(combos) > 6
        for name, title, cmap in wanted:
            panels = []
            for combo in [()] if aggregate else combos:
                picked = {} if aggregate else dict(zip(rest, combo, strict=True))

                def cells_at(r: str, c: str, picked: dict[str, str] = picked) -> list[_Cell]:
                    return [cell for v in done.values() for cell in v if cell.axes[row_axis] == r
                            and cell.axes[col_axis] == c and all(cell.axes[a] == x for a, x in picked.items())]

                grid = [[_nan(metric(cells_at(r, c), name)) for c in values[col_axis]] for r in values[row_axis]]
                sub = ", ".join(f"{a}={x}" for a, x in picked.items()) or (f"mean over {', '.join(rest)}"
                                                                             if rest else "")
                panels.append(rp.Heatmap(row_axis, col_axis, values[row_axis], values[col_axis], grid, sub))
            file = f"sweep_heatmap_{name}.png"
            rp.plot_heatmaps(panels, plots / file, title=f"{short[name]}, mean over seeds"
                             + (f"\n{title.removeprefix('attack success ')}" if name == "success" else ""),
                             cbar_label=short[name], cmap=cmap)
            doc.figure(f"plots/{file}", f"{title[0].upper()}{title[1:]}, mean over seeds, {row_axis} x {col_axis}"
                       + (f" (one panel per {', '.join(rest)})" if rest and not aggregate else "")
                       + (f" (mean over {', '.join(rest)})" if aggregate else "") + "; grey: no finished cell.")
    else:
        labels = [label_of[k] for k in done]
        series = {title: ([_nan(metric(v, name)) for v in done.values()],
                          [_nan(_stats([c.success()[0] if name == "success" else c.metrics[name] for c in v])[1])
                           for v in done.values()]) for name, title, _ in wanted}
        rp.plot_group_bars(labels, series, plots / "sweep_final.png", title="Final metrics per group, mean ± std "
                           "over seeds", xlabel=legend, ylabel="rate")
        doc.figure("plots/sweep_final.png", f"Final accuracy{' and ' + what if what else ''} per group "
                   "(error bars: std over seeds).")
    _curves_figure(doc, plots, done, group_axes)
    _epsilon_figure(doc, plots, done, group_axes)
    labels = [k for k, v in done.items() if any(c.metrics[m] is not None for c in v
                                                for m in ("detection_precision", "detection_recall"))]
    if labels:
        series = {m.replace("_", " "): ([_nan(_stats([c.metrics[m] for c in done[k]])[0]) for k in labels],
                                        [_nan(_stats([c.metrics[m] for c in done[k]])[1]) for k in labels])
                  for m in ("detection_precision", "detection_recall")}
        rp.plot_group_bars([label_of[k] for k in labels], series, plots / "sweep_detection.png",
                           title="Detection of malicious clients (final round), mean ± std over seeds",
                           xlabel=legend, ylabel="rate")
        doc.figure("plots/sweep_detection.png", "Detection precision and recall in the final round per group "
                   "(n/a: no finished cell had a value, e.g. precision when nobody was flagged).")


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _preferred(axes: list[str], name: str) -> str:
    return name if name in axes else axes[0]


def _pool(cells: list[_Cell], key_axes: list[str]) -> dict[tuple[str, ...], list[_Cell]]:
    """The cells by their values of ``key_axes`` (grid order kept); seeds and all other axes pooled."""
    out: dict[tuple[str, ...], list[_Cell]] = {}
    for cell in cells:
        out.setdefault(tuple(cell.axes[a] for a in key_axes), []).append(cell)
    return out


def _accuracy_per_round(cell: _Cell) -> dict[int, float]:
    if not (cell.run_dir / "rounds.csv").is_file():
        return {}
    columns, raw = _read_csv(cell.run_dir / "rounds.csv")
    return {int(r["round"]): r["accuracy"] for r in _numeric_rows(columns, raw)
            if r.get("round") is not None and r.get("accuracy") is not None}


def _curves_figure(doc: _Document, plots: Path, done: dict[tuple[str, ...], list[_Cell]],
                   group_axes: list[str]) -> None:
    """Accuracy per round: one line per group; with more than 8 groups one panel per defense (or first axis), and
    with more than 10 lines in a panel, lines by attack (or the next axis) averaged over the other axes."""
    cells = [c for v in done.values() for c in v]
    panel_axis, line_axes = "", list(group_axes)
    if len(done) > 8 and len(group_axes) >= 2:
        panel_axis = _preferred(group_axes, "defense.strategy")
        line_axes = [a for a in group_axes if a != panel_axis]
        if len(_pool(cells, line_axes)) > 10:
            line_axes = [_preferred(line_axes, "attack.kind")]
    averaged = [a for a in group_axes if a != panel_axis and a not in line_axes]
    series = {cell.name: _accuracy_per_round(cell) for cell in cells}
    curves = []
    for key, pooled in _pool(cells, ([panel_axis] if panel_axis else []) + line_axes).items():
        per_round: dict[int, list[float]] = {}
        for cell in pooled:
            for r, acc in series[cell.name].items():
                per_round.setdefault(r, []).append(acc)
        if not per_round:
            continue
        rounds = sorted(per_round)
        stats = [_stats(per_round[r]) for r in rounds]
        panel = f"{panel_axis}={key[0]}" if panel_axis else ""
        label = " / ".join(key[1:] if panel_axis else key) or "all cells"
        curves.append(rp.Curve(label, rounds, [_nan(s[0]) for s in stats], [_nan(s[1]) for s in stats], panel))
    if not curves:
        return
    over = "seeds" + (f" and {', '.join(averaged)}" if averaged else "")
    rp.plot_group_curves(curves, plots / "sweep_accuracy_rounds.png", title=f"Test accuracy per round, mean over "
                         f"{over}", ylabel="test accuracy", legend_title=" / ".join(line_axes) or "group")
    doc.figure("plots/sweep_accuracy_rounds.png", f"Test accuracy per round, mean over {over} (band: ± std)"
               + (f", one panel per `{panel_axis}`" if panel_axis else "") + ".")


def _epsilon_figure(doc: _Document, plots: Path, done: dict[tuple[str, ...], list[_Cell]],
                    group_axes: list[str]) -> None:
    """Final accuracy against final epsilon: one series per setting of the non-privacy axes (at most 10, else per
    defense), its points joined along the privacy axes."""
    cells = [c for v in done.values() for c in v]
    if not any(c.metrics["epsilon"] is not None for c in cells):
        return
    privacy = [a for a in group_axes if a.startswith("privacy.")]
    series_axes = [a for a in group_axes if a not in privacy]
    if len(_pool(cells, series_axes)) > 10:
        series_axes = [_preferred(series_axes, "defense.strategy")]
    point_axes = privacy or [a for a in group_axes if a not in series_axes]
    averaged = [a for a in group_axes if a not in series_axes and a not in point_axes]
    series: dict[str, list[tuple[float, float, float, float]]] = {}
    for key, pooled in _pool(cells, series_axes + point_axes).items():
        eps, acc = _stats([c.metrics["epsilon"] for c in pooled]), _stats([c.metrics["accuracy"] for c in pooled])
        name = " / ".join(key[: len(series_axes)]) or "all cells"
        series.setdefault(name, []).append((_nan(eps[0]), _nan(eps[1]), _nan(acc[0]), _nan(acc[1])))
    over = "seeds" + (f" and {', '.join(averaged)}" if averaged else "")
    rp.plot_epsilon_accuracy(series, plots / "sweep_epsilon_accuracy.png", title="Privacy spent vs final accuracy",
                             legend_title=" / ".join(series_axes) or "group")
    doc.figure("plots/sweep_epsilon_accuracy.png", f"Final accuracy against final epsilon, mean ± std over {over}"
               + (f"; each line joins the values of {', '.join(point_axes)}" if point_axes else "") + ".")
