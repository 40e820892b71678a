"""The source surveys' metric sheet: R, DQ_filtered, A, A/C, P <= epsilon and Q, from a run's summary.

Source: Al-Karaki, Khan, Mohamad, Chowdhury, "Deep Learning Under Siege: Identifying Security Vulnerabilities and
Risk Mitigation Strategies", 2024, sec. 3.2 (equations 1-6) and Table 1. Each metric comes out as
``{"formula", "inputs" (e.g. "87 / 120"), "numerator", "denominator", "value", "percent", "source"}`` where the run
measured it (DQ_filtered: value = 1 - numerator / denominator), else as ``{"value": "not measured", "how": <what
would measure it>}``. Values are fractions (0.725); ``percent`` is the survey's display (two decimals, "72.50%").
The deployment's full sheet (these six, equation (2)'s DQ as its own entry, and fedsec's other measurements, each
with the command that produced it) is :mod:`fedsec.metrics.security_sheet`.

Contract: the ``summary.json`` keys each metric reads (the run fills them; absent = not measured):

- **R** (eq. 1, "a count of the number of correct classifications" of adversarial examples, shown in Table 1 as
  correct / adversarial examples): ``summary["evasion"] = {attack: {"correct": int, "total": int, ...}}``. R is
  taken from the *strongest* attack measured (lowest correct / total); ``inputs`` names it.
- **DQ_filtered** (Table 1): ``summary["sanitization"] = {"datapoints", "poisoned", "dropped",
  "poisoned_dropped", "anomalies_detected"}`` (all ints, totals over clients and rounds; see
  :meth:`fedsec.metrics.filtering.FilterQuality.sanitization_summary`). Value = ``1 - (poisoned -
  poisoned_dropped) / datapoints``; the record also carries ``equation_2`` = ``1 - (datapoints - dropped) /
  datapoints`` (eq. 2 as written; it reads differently, see :mod:`fedsec.metrics.filtering`).
- **A** (eq. 3): same block; ``anomalies_detected / datapoints``.
- **A/C** (eq. 4): ``summary["serving"] = {"unauthorized_attempts", "unauthorized_blocked", ...}``; value =
  ``unauthorized_blocked / unauthorized_attempts`` (the project's reading, docs "Results"). Al-Karaki et al.'s N is "the
  total number of access attempts"; where the block also has ``access_attempts`` (all attempts, authorised
  included) the record adds ``equation_4_literal`` = ``unauthorized_blocked / access_attempts``.
- **P <= epsilon** (eq. 5): ``summary["privacy"] = {"epsilon": float, "epsilon_budget": float}`` (the budget falls
  back to ``config["privacy"]["epsilon"]``); value "holds" or "violated". Not measured when privacy mode is "none".
- **Q** (eq. 6): ``summary["serving"] = {"queries", "anomalous_detected", ...}``; ``anomalous_detected / queries``.

A block with inconsistent counts (negative, or more correct/blocked/detected than total) raises
:class:`SeedSheetError` naming the summary key.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

NOT_MEASURED = "not measured"
#: metric -> (its formula, what measures it), in the survey's order
SHEET: dict[str, tuple[str, str]] = {
    "R": ("correctly classified adversarial examples / adversarial examples (eq. 1, Table 1)", "[audit.evasion]"),
    "DQ_filtered": ("1 - poisoned points remaining after filtering / datapoints before filtering (Table 1)",
                    "[defense.sanitize] (with [data.poison] for the ground truth)"),
    "A": ("n_A / m = anomalies detected / datapoints (eq. 3)", "[defense.sanitize]"),
    "A/C": ("blocked unauthorized access attempts / unauthorized access attempts (eq. 4)",
            "fedsec attack scenario against `fedsec serve` (access control)"),
    "P <= epsilon": ("privacy loss spent P <= budget epsilon (eq. 5)", '[privacy] mode = "local" or "central"'),
    "Q": ("q_A / q = anomalous queries detected / queries (eq. 6)",
          "fedsec attack scenario against `fedsec serve` (query monitor)"),
}
METRICS = tuple(SHEET)
FORMULAS: dict[str, str] = {metric: formula for metric, (formula, _) in SHEET.items()}
HOW_TO_MEASURE: dict[str, str] = {metric: how for metric, (_, how) in SHEET.items()}
FORMULA_EQ2 = "1 - N_after / N_before (eq. 2 as written: the share of datapoints dropped)"


class SeedSheetError(ValueError):
    """A summary block the sheet cannot read; the message names the key, the rule and the value."""


def _percent(value: float) -> str:
    return f"{100 * value:.2f}%"


def _count(block: Mapping[str, Any], key: str, where: str) -> int:
    value = block.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise SeedSheetError(f'{where}["{key}"]={value!r}: must be an integer >= 0')
    return int(value)


def _part_of(part: int, whole: int, where: str, part_key: str, whole_key: str) -> None:
    if part > whole:
        raise SeedSheetError(f'{where}: "{part_key}"={part} exceeds "{whole_key}"={whole}; counts are inconsistent')


def _measured(metric: str, num: int, den: int, source: str, **extra: Any) -> dict[str, Any]:
    value = num / den
    return {
        "formula": FORMULAS[metric],
        "inputs": f"{num} / {den}",
        "numerator": num,
        "denominator": den,
        "value": value,
        "percent": _percent(value),
        "source": source,
        **extra,
    }


def _not_measured(metric: str, note: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"formula": FORMULAS[metric], "value": NOT_MEASURED, "how": HOW_TO_MEASURE[metric]}
    if note:
        out["note"] = note
    return out


def _robustness(summary: Mapping[str, Any]) -> dict[str, Any]:
    evasion = summary.get("evasion")
    if not evasion:
        return _not_measured("R")
    worst: tuple[float, str, int, int] | None = None
    for attack, block in sorted(evasion.items()):
        where = f'summary["evasion"]["{attack}"]'
        if not isinstance(block, Mapping):
            raise SeedSheetError(f'{where}={block!r}: must be a table {{"correct": int, "total": int}}')
        correct, total = _count(block, "correct", where), _count(block, "total", where)
        _part_of(correct, total, where, "correct", "total")
        if total and (worst is None or correct / total < worst[0]):
            worst = (correct / total, attack, correct, total)
    if worst is None:
        return _not_measured("R", note="every evasion attack had 0 examples")
    _, attack, correct, total = worst
    note = f"the strongest (lowest accuracy) of {len(evasion)} attacks measured"
    return _measured("R", correct, total, f'summary["evasion"]["{attack}"]', attack=attack, note=note)


def _sanitization(summary: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[dict, dict]:
    block = summary.get("sanitization")
    if not block:
        sanitize = (config.get("defense") or {}).get("sanitize") or {}
        method = sanitize.get("method", "none") if isinstance(sanitize, Mapping) else "none"
        note = (
            f"[defense.sanitize] method = {method!r} is configured but the summary has no sanitization block"
            if method != "none"
            else None
        )
        return _not_measured("DQ_filtered", note), _not_measured("A", note)
    where = 'summary["sanitization"]'
    n = _count(block, "datapoints", where)
    poisoned, dropped = _count(block, "poisoned", where), _count(block, "dropped", where)
    hit, flagged = _count(block, "poisoned_dropped", where), _count(block, "anomalies_detected", where)
    for part, key in ((poisoned, "poisoned"), (dropped, "dropped"), (flagged, "anomalies_detected")):
        _part_of(part, n, where, key, "datapoints")
    _part_of(hit, min(poisoned, dropped), where, "poisoned_dropped", "min(poisoned, dropped)")
    if n == 0:
        return _not_measured("DQ_filtered", "0 datapoints"), _not_measured("A", "0 datapoints")
    remaining, after = poisoned - hit, n - dropped
    dq = {
        "formula": FORMULAS["DQ_filtered"],
        "inputs": f"1 - {remaining} / {n}",
        "numerator": remaining,  # value = 1 - numerator / denominator
        "denominator": n,
        "value": 1 - remaining / n,
        "percent": _percent(1 - remaining / n),
        "source": where,
        "equation_2": {
            "formula": FORMULA_EQ2,
            "inputs": f"1 - {after} / {n}",
            "numerator": after,
            "denominator": n,
            "value": 1 - after / n,
            "percent": _percent(1 - after / n),
        },
    }
    return dq, _measured("A", flagged, n, where)


def _serving(summary: Mapping[str, Any]) -> tuple[dict, dict]:
    block = summary.get("serving") or {}
    where = 'summary["serving"]'
    access: dict[str, Any] = _not_measured("A/C")
    if "unauthorized_attempts" in block:
        attempts, blocked = _count(block, "unauthorized_attempts", where), _count(block, "unauthorized_blocked", where)
        _part_of(blocked, attempts, where, "unauthorized_blocked", "unauthorized_attempts")
        if attempts:
            access = _measured("A/C", blocked, attempts, where)
            if "access_attempts" in block:
                total = _count(block, "access_attempts", where)
                _part_of(attempts, total, where, "unauthorized_attempts", "access_attempts")
                access["equation_4_literal"] = {
                    "formula": "blocked unauthorized attempts / all access attempts",
                    "inputs": f"{blocked} / {total}",
                    "numerator": blocked,
                    "denominator": total,
                    "value": blocked / total,
                }
        else:
            access = _not_measured("A/C", note="0 unauthorized attempts")
    queries: dict[str, Any] = _not_measured("Q")
    if "queries" in block:
        q, detected = _count(block, "queries", where), _count(block, "anomalous_detected", where)
        _part_of(detected, q, where, "anomalous_detected", "queries")
        queries = _measured("Q", detected, q, where) if q else _not_measured("Q", note="0 queries")
    return access, queries


def _privacy(summary: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    privacy_cfg = config.get("privacy", {}) or {}
    block = summary.get("privacy") or {}
    if privacy_cfg.get("mode", "none") == "none" and "epsilon" not in block:
        return _not_measured("P <= epsilon")
    where = 'summary["privacy"]'
    spent, budget = block.get("epsilon"), block.get("epsilon_budget", privacy_cfg.get("epsilon"))
    if spent is None:
        return _not_measured(
            "P <= epsilon", note=f"privacy mode {privacy_cfg.get('mode')!r} but {where} has no epsilon"
        )
    for key, value in (("epsilon", spent), ("epsilon_budget", budget)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or value < 0:
            raise SeedSheetError(f'{where}["{key}"]={value!r}: must be a number >= 0 (privacy.epsilon sets the budget)')
    holds = spent <= budget
    return {
        "formula": FORMULAS["P <= epsilon"],
        "inputs": f"{spent:.4g} <= {budget:.4g}",
        "value": "holds" if holds else "violated",
        "epsilon": float(spent),
        "epsilon_budget": float(budget),
        "delta": block.get("delta", privacy_cfg.get("delta")),
        "source": where,
    }


def seed_metrics(summary: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The sheet for one run: ``{metric: record}`` in the survey's order (:data:`METRICS`); see the module contract."""
    config = config or {}
    dq, anomaly = _sanitization(summary, config)
    access, queries = _serving(summary)
    return {
        "R": _robustness(summary),
        "DQ_filtered": dq,
        "A": anomaly,
        "A/C": access,
        "P <= epsilon": _privacy(summary, config),
        "Q": queries,
    }


def _sheet_of(item: Mapping[str, Any]) -> Mapping[str, Any]:
    if "seed_metrics" in item:
        return item["seed_metrics"]
    if set(item) and set(item) <= set(METRICS):
        return item
    raise SeedSheetError("sweep_seed_metrics: each item must be a summary with a 'seed_metrics' block or a sheet")


def sweep_seed_metrics(summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per metric over a sweep's cells: cells, cells measured, mean/min/max of the measured values
    (for P <= epsilon: how many measured cells hold), and a display ``value``."""
    sheets = [_sheet_of(s) for s in summaries]
    rows = []
    for metric in METRICS:
        records = [sheet.get(metric, {}) for sheet in sheets]
        measured = [r["value"] for r in records if r.get("value", NOT_MEASURED) != NOT_MEASURED]
        row: dict[str, Any] = {
            "metric": metric,
            "formula": FORMULAS[metric],
            "cells": len(sheets),
            "measured": len(measured),
            "mean": None,
            "min": None,
            "max": None,
        }
        if not measured:
            row["value"] = NOT_MEASURED
            row["how"] = HOW_TO_MEASURE[metric]
        elif metric == "P <= epsilon":
            holds = sum(v == "holds" for v in measured)
            row["value"] = f"holds in {holds} of {len(measured)} cells"
            row["mean"] = holds / len(measured)
        else:
            row["mean"], row["min"], row["max"] = sum(measured) / len(measured), min(measured), max(measured)
            row["value"] = f"{_percent(row['mean'])} (min {_percent(row['min'])}, max {_percent(row['max'])})"
        rows.append(row)
    return rows


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def seed_sheet_markdown(sheet: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of one run's sheet: Metric | Formula | Inputs | Value (for ``fedsec report``)."""
    lines = ["| Metric | Formula | Inputs | Value |", "|---|---|---|---|"]
    for metric in METRICS:
        r = sheet.get(metric, {})
        if r.get("value", NOT_MEASURED) == NOT_MEASURED:
            inputs, value = "-", f"not measured (set {r.get('how', HOW_TO_MEASURE[metric])})"
        else:
            inputs, value = r.get("inputs", ""), r.get("percent", r["value"])
            if "attack" in r:
                inputs = f"{inputs} ({r['attack']})"
            if "equation_2" in r:
                value = f"{value} (eq. 2 as written: {r['equation_2']['percent']})"
        lines.append(
            f"| {_cell(metric)} | {_cell(r.get('formula', FORMULAS[metric]))} | {_cell(inputs)} | {_cell(value)} |"
        )
    return "\n".join(lines) + "\n"


def sweep_sheet_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`sweep_seed_metrics` rows: Metric | Formula | Cells measured | Value."""
    lines = ["| Metric | Formula | Cells measured | Value |", "|---|---|---|---|"]
    for r in rows:
        value = r["value"] if r["value"] != NOT_MEASURED else f"not measured (set {r['how']})"
        lines.append(
            f"| {_cell(r['metric'])} | {_cell(r['formula'])} | {r['measured']} of {r['cells']} | {_cell(value)} |"
        )
    return "\n".join(lines) + "\n"
