"""One security sheet per deployment: the source survey's six metrics and fedsec's other measurements of a run.

Each entry says what it measured and how: ``value``, ``numerator`` and ``denominator`` where it is a ratio (or a
``1 - ratio``), the ``formula``, where in ``summary.json`` it was read (``source``), the ``command`` that produced the
number, and ``meaningful = False`` with the reason when the final model it was measured on is at chance or answers
one class (``summary["health"]``). An entry nothing measured has ``value = "not measured"`` and ``how`` (what would
measure it). The sheet is a plain ``{name: entry}`` mapping in :data:`ENTRIES` order, written into ``summary.json``
as ``security_sheet`` (by ``fedsec assess`` and the post-hoc audits).

Seed metrics (Al-Karaki, Khan, Mohamad, Chowdhury, "Deep Learning Under Siege", 2024, sec. 3.2 and Table 1; the
records of :func:`fedsec.metrics.seed_sheet.seed_metrics`, whose keys stay as they are):

- ``R``: correct adversarial examples / adversarial examples, the strongest attack measured;
- ``DQ_filtered`` (Table 1's worked example): 1 - poisoned points left after filtering / datapoints before;
- ``DQ_filtered_eq2`` (equation 2 as printed): 1 - N_after / N_before, i.e. the share of datapoints the filter
  dropped; both are listed because they answer different questions (is the data clean? how much was dropped?);
- ``A``: anomalies detected / datapoints; ``A/C``: blocked unauthorized attempts / unauthorized attempts;
- ``P <= epsilon``: the privacy spent against the budget ("holds" / "violated");
- ``Q``: anomalous queries detected / queries.

Other measurements: the final model's clean ``accuracy``; ``attack_success`` (with the attack's own success metric);
``worst_case`` (lowest mean accuracy over a worst-case study's attacks on this defense, when a study is named);
``extraction_fidelity`` (the extraction attacker's surrogate agreeing with the served model on held-out inputs);
``membership_auc``, ``membership_tpr_at_0.1%_fpr``, ``membership_tpr_at_1%_fpr`` and ``empirical_epsilon`` (the
epsilon lower bound the membership attack implies) from ``[audit.membership]`` or ``fedsec audit membership``;
``membership_advantage`` (the loss-threshold check every run ends with); ``inversion_psnr`` (mean over the attacked
updates) and ``model_inversion_top1`` (MI-Face: the share of class representatives closest, by SSIM, to their own
class's mean; chance is 1 / classes).
"""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from .seed_sheet import FORMULA_EQ2, NOT_MEASURED, seed_metrics

SEED_ENTRIES = ("R", "DQ_filtered", "DQ_filtered_eq2", "A", "A/C", "P <= epsilon", "Q")
OTHER_ENTRIES = ("accuracy", "attack_success", "worst_case", "extraction_fidelity", "membership_auc",
                 "membership_tpr_at_0.1%_fpr", "membership_tpr_at_1%_fpr", "empirical_epsilon",
                 "membership_advantage", "inversion_psnr", "model_inversion_top1")
ENTRIES = SEED_ENTRIES + OTHER_ENTRIES

#: the summary block each entry is read from: its command is the one that wrote the block
BLOCK_OF = {"R": "evasion", "DQ_filtered": "sanitization", "DQ_filtered_eq2": "sanitization", "A": "sanitization",
            "A/C": "serving", "P <= epsilon": "privacy", "Q": "serving", "accuracy": "run", "attack_success": "run",
            "worst_case": "worst_case", "extraction_fidelity": "serving", "membership_auc": "membership",
            "membership_tpr_at_0.1%_fpr": "membership", "membership_tpr_at_1%_fpr": "membership",
            "empirical_epsilon": "membership", "membership_advantage": "run", "inversion_psnr": "inversion",
            "model_inversion_top1": "model_inversion"}
#: entries measured on the final global model: not meaningful when the model is at chance or answers one class
ON_FINAL_MODEL = frozenset({"R", "attack_success", "worst_case", "extraction_fidelity", "membership_auc",
                            "membership_tpr_at_0.1%_fpr", "membership_tpr_at_1%_fpr", "empirical_epsilon",
                            "membership_advantage", "model_inversion_top1"})

FORMULAS: dict[str, str] = {
    "DQ_filtered_eq2": FORMULA_EQ2,
    "accuracy": "correctly classified test examples / test examples (clean inputs, final model)",
    "attack_success": "the attack's declared success metric on the final model",
    "worst_case": "lowest mean final accuracy over the attacks of a worst-case study, for this defense",
    "extraction_fidelity": "surrogate's answers equal to the served model's / held-out inputs",
    "membership_auc": "area under the membership attack's ROC curve (members vs non-members)",
    "membership_tpr_at_0.1%_fpr": "members detected / members, at the threshold with FPR <= 0.1%",
    "membership_tpr_at_1%_fpr": "members detected / members, at the threshold with FPR <= 1%",
    "empirical_epsilon": "epsilon lower bound implied by the membership attack's TPR and FPR (Clopper-Pearson, 95%)",
    "membership_advantage": "TPR - FPR of the loss-threshold attack (Yeom et al.) on the final model",
    "inversion_psnr": "mean PSNR (dB) of the reconstructions from the attacked updates",
    "model_inversion_top1": "MI-Face class representatives closest (by SSIM) to their own class's mean / classes",
}
HOW: dict[str, str] = {
    "accuracy": "fedsec run (the run's final evaluation)",
    "attack_success": "[attack] kind with a success metric (backdoor, label_flip, ...)",
    "worst_case": "fedsec worst-case SWEEP.toml, then [worst_case] dir = ... in the deployment",
    "extraction_fidelity": "fedsec attack scenario (its extraction attacker)",
    "membership_auc": "[audit.membership] or fedsec audit membership RUN_DIR",
    "membership_tpr_at_0.1%_fpr": "[audit.membership] or fedsec audit membership RUN_DIR",
    "membership_tpr_at_1%_fpr": "[audit.membership] or fedsec audit membership RUN_DIR",
    "empirical_epsilon": "[audit.membership] or fedsec audit membership RUN_DIR",
    "membership_advantage": "fedsec run (every completed run ends with it)",
    "inversion_psnr": "[audit.inversion] or fedsec audit inversion RUN_DIR",
    "model_inversion_top1": "[audit.model_inversion] or fedsec audit model-inversion RUN_DIR",
    "DQ_filtered_eq2": "[defense.sanitize]",
}
DEFAULT_RUN_COMMAND = "fedsec run CONFIG (the run's own evaluation and audits)"


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _count_of(rate: float | None, total: Any) -> int | None:
    """``rate * total`` when it is a whole number (a rate measured over ``total`` items), else None."""
    n = _number(total)
    if rate is None or n is None or n <= 0 or n != int(n):
        return None
    count = rate * n
    return int(round(count)) if abs(count - round(count)) < 1e-6 else None


def _entry(name: str, value: Any, *, source: str, numerator: Any = None, denominator: Any = None,
           **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"formula": FORMULAS.get(name, ""), "value": value}
    if numerator is not None and denominator is not None:
        out["numerator"], out["denominator"] = numerator, denominator
    out["source"] = source
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def _not_measured(name: str, note: str | None = None) -> dict[str, Any]:
    out = {"formula": FORMULAS.get(name, ""), "value": NOT_MEASURED, "how": HOW.get(name, "")}
    if note:
        out["note"] = note
    return out


def _seed_entries(summary: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    seed = {k: dict(v) for k, v in seed_metrics(summary, config).items()}
    dq = seed["DQ_filtered"]
    eq2 = dq.get("equation_2")
    if isinstance(eq2, Mapping):
        seed_eq2 = {"formula": FORMULA_EQ2, **{k: v for k, v in eq2.items() if k != "formula"},
                    "source": dq.get("source")}
    else:
        seed_eq2 = {"formula": FORMULA_EQ2, "value": NOT_MEASURED, "how": dq.get("how", HOW["DQ_filtered_eq2"]),
                    **({"note": dq["note"]} if "note" in dq else {})}
    dq.pop("equation_2", None)  # its own entry here, side by side
    out = {}
    for name in SEED_ENTRIES:
        out[name] = seed_eq2 if name == "DQ_filtered_eq2" else seed[name]
    evasion = summary.get("evasion")
    if "attack" in out["R"] and isinstance(evasion, Mapping):  # the budget R was measured at
        block = evasion.get(out["R"]["attack"])
        if isinstance(block, Mapping) and _number(block.get("epsilon")) is not None:
            out["R"]["epsilon"] = block["epsilon"]
    return out


def _membership(summary: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    names = ("membership_auc", "membership_tpr_at_0.1%_fpr", "membership_tpr_at_1%_fpr", "empirical_epsilon")
    block = summary.get("membership")
    if not isinstance(block, Mapping) or block.get("status") != "done":
        note = block.get("reason") if isinstance(block, Mapping) else None
        return {n: _not_measured(n, note) for n in names}
    where = 'summary["membership"]'
    members, others = block.get("num_members"), block.get("num_nonmembers")
    common = {"attack": block.get("attack"), "target": block.get("target")}
    auc = _entry("membership_auc", _number(block.get("auc")), source=f'{where}["auc"]',
                 inputs=f"{members} members vs {others} non-members", **common)
    out = {"membership_auc": auc}
    for name, key in (("membership_tpr_at_0.1%_fpr", "tpr_at_0.1%_fpr"), ("membership_tpr_at_1%_fpr", "tpr_at_1%_fpr")):
        rate = _number(block.get(key))
        out[name] = _entry(name, rate, source=f'{where}["{key}"]', numerator=_count_of(rate, members),
                           denominator=members, **common)
    bound = _number(block.get("empirical_epsilon_lower_bound"))
    accountant = _number(block.get("accountant_epsilon"))
    out["empirical_epsilon"] = _entry(
        "empirical_epsilon", bound, source=f'{where}["empirical_epsilon_lower_bound"]',
        delta=block.get("bound_delta"), accountant_epsilon=accountant, alarm=block.get("alarm"), **common)
    return out


def _inversion(summary: Mapping[str, Any]) -> dict[str, Any]:
    records = summary.get("inversion")
    records = [r for r in records if isinstance(r, Mapping)] if isinstance(records, list) else []
    done = [r for r in records if r.get("status") == "done" and _number(r.get("psnr")) is not None]
    if not done:
        reasons = sorted({str(r.get("reason")) for r in records if r.get("reason")})
        return _not_measured("inversion_psnr", "; ".join(reasons) or None)
    examples = sum(int(r.get("examples", 0) or 0) for r in done)
    labels = [_count_of(_number(r.get("label_accuracy")), r.get("examples")) for r in done]
    recovered = sum(labels) if all(v is not None for v in labels) else None
    return _entry(
        "inversion_psnr", sum(float(r["psnr"]) for r in done) / len(done), source='summary["inversion"]',
        attacked=[f"round {r.get('round')}, client {r.get('client')}" for r in done],
        unavailable=len(records) - len(done) or None,
        ssim=sum(float(r.get("ssim") or 0.0) for r in done) / len(done),
        labels_recovered=None if recovered is None else f"{recovered} / {examples}",
        method=done[0].get("method"))


def _serving_extras(summary: Mapping[str, Any]) -> dict[str, Any]:
    block = summary.get("serving")
    ex = block.get("extraction") if isinstance(block, Mapping) else None
    if not isinstance(ex, Mapping) or _number(ex.get("agreement")) is None:
        return _not_measured("extraction_fidelity")
    rate, inputs = _number(ex.get("agreement")), ex.get("eval_inputs")
    return _entry("extraction_fidelity", rate, source='summary["serving"]["extraction"]["agreement"]',
                  numerator=_count_of(rate, inputs), denominator=inputs if _count_of(rate, inputs) is not None
                  else None, method=ex.get("method"),
                  queries=f"{ex.get('queries_spent')} answered of a budget of {ex.get('budget')}",
                  stopped=ex.get("stop_decision") or None, surrogate_accuracy=_number(ex.get("accuracy")))


def _accuracy(summary: Mapping[str, Any]) -> dict[str, Any]:
    acc = _number(summary.get("accuracy"))
    if acc is None:
        return _not_measured("accuracy")
    health = summary.get("health") if isinstance(summary.get("health"), Mapping) else {}
    n = health.get("examples") if _number(health.get("accuracy")) == acc else None
    return _entry("accuracy", acc, source='summary["accuracy"]', numerator=_count_of(acc, n),
                  denominator=n if _count_of(acc, n) is not None else None)


def _attack_success(summary: Mapping[str, Any]) -> dict[str, Any]:
    value = _number(summary.get("attack_success"))
    if value is None:
        kind = summary.get("attack")
        note = f"attack {kind!r} declares no success metric" if kind not in (None, "none") else None
        return _not_measured("attack_success", note)
    return _entry("attack_success", value, source='summary["attack_success"]', attack=summary.get("attack"),
                  metric=summary.get("attack_success_metric"))


def _worst_case(worst: Mapping[str, Any] | None) -> dict[str, Any]:
    if not worst:
        return _not_measured("worst_case")
    value = _number(worst.get("worst_accuracy"))
    if value is None:
        return _not_measured("worst_case", f"no finished attack for defense {worst.get('defense')!r}")
    return _entry("worst_case", value, source=str(worst.get("source", "worst_case.csv")),
                  defense=worst.get("defense"), attack=worst.get("worst_accuracy_attack"),
                  worst_success=_number(worst.get("worst_success")),
                  worst_success_attack=worst.get("worst_success_attack") or None,
                  attacks=f"{worst.get('attacks_done')} of {worst.get('attacks_total')}")


def security_sheet(summary: Mapping[str, Any], config: Mapping[str, Any] | None = None, *,
                   commands: Mapping[str, str] | None = None,
                   worst_case: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The sheet of one run (its ``summary.json`` and resolved ``config.toml``); see the module docstring.

    ``commands`` maps a summary block (``"run"``, ``"evasion"``, ``"serving"``, ``"membership"``, ...) to the command
    that wrote it; ``summary["audit_commands"]`` (written by the post-hoc audits) takes precedence, and entries of
    blocks nobody named get ``commands["run"]``. ``worst_case``: the row of a worst-case study's ``worst_case.csv``
    for this run's defense (plus ``source``, the file).
    """
    config = config or {}
    sheet = _seed_entries(summary, config)
    sheet["accuracy"] = _accuracy(summary)
    sheet["attack_success"] = _attack_success(summary)
    sheet["worst_case"] = _worst_case(worst_case)
    sheet["extraction_fidelity"] = _serving_extras(summary)
    sheet.update(_membership(summary))
    adv = _number(summary.get("mia_advantage"))
    sheet["membership_advantage"] = (_not_measured("membership_advantage") if adv is None else _entry(
        "membership_advantage", adv, source='summary["mia_advantage"]', tpr=_number(summary.get("mia_tpr")),
        fpr=_number(summary.get("mia_fpr")), dp_bound=_number(summary.get("mia_bound"))))
    sheet["inversion_psnr"] = _inversion(summary)
    mi = summary.get("model_inversion")
    top1 = _number(mi.get("top1_ssim")) if isinstance(mi, Mapping) else None
    classes = mi.get("classes") if isinstance(mi, Mapping) else None
    sheet["model_inversion_top1"] = (_not_measured("model_inversion_top1") if top1 is None else _entry(
        "model_inversion_top1", top1, source='summary["model_inversion"]["top1_ssim"]',
        numerator=_count_of(top1, classes), denominator=classes if _count_of(top1, classes) is not None else None,
        ssim_true_class=_number(mi.get("ssim_true_class")), ssim_other_classes=_number(mi.get("ssim_other_classes"))))
    known = {**(commands or {}), **(summary.get("audit_commands") or {})}
    health = summary.get("health") if isinstance(summary.get("health"), Mapping) else {}
    unhealthy = health.get("status") not in (None, "ok")
    for name in ENTRIES:
        entry = sheet[name]
        entry["group"] = "seed" if name in SEED_ENTRIES else "measurement"
        if entry["value"] == NOT_MEASURED:
            continue
        block = BLOCK_OF[name]
        entry["command"] = known.get(block) or known.get("run") or DEFAULT_RUN_COMMAND
        if unhealthy and name in ON_FINAL_MODEL:
            entry["meaningful"] = False
            entry["note"] = f"not meaningful: {health.get('reason') or health.get('status')}"
    return {name: sheet[name] for name in ENTRIES}


# ------------------------------------------------------------------------------------------------- rendering

_PERCENT = {"R", "DQ_filtered", "DQ_filtered_eq2", "A", "A/C", "Q"}


def display_value(name: str, entry: Mapping[str, Any]) -> str:
    """The entry's value as a person reads it: percents for the survey's ratios, dB for PSNR, "not measured"."""
    value = entry.get("value")
    if value == NOT_MEASURED or value is None:
        return NOT_MEASURED if value == NOT_MEASURED else "n/a"
    if isinstance(value, str):  # P <= epsilon: "holds" / "violated"
        return value
    if name in _PERCENT:
        text = f"{100 * float(value):.2f}%"
    elif name == "inversion_psnr":
        text = f"{float(value):.2f} dB"
    else:
        text = f"{float(value):.4f}"
    if entry.get("meaningful") is False:
        text += " (not meaningful)"
    return text


def ratio_text(name: str, entry: Mapping[str, Any]) -> str:
    """``numerator / denominator`` (``1 - n / d`` for DQ), or the entry's other inputs, or ""."""
    if "numerator" in entry and "denominator" in entry:
        text = f"{entry['numerator']} / {entry['denominator']}"
        return f"1 - {text}" if name in ("DQ_filtered", "DQ_filtered_eq2") else text
    for key in ("inputs", "metric", "attacks"):
        if entry.get(key):
            return str(entry[key])
    return ""


def sheet_rows(sheet: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """One row per entry: metric, value, numerator / denominator, formula, command (or what would measure it)."""
    rows = []
    for name, entry in sheet.items():
        detail = ratio_text(name, entry)
        if name == "R" and entry.get("attack"):
            eps = f", epsilon {entry['epsilon']:g}" if _number(entry.get("epsilon")) is not None else ""
            detail = f"{detail} ({entry['attack']}{eps})"
        how = entry.get("command") or (f"to measure: {entry['how']}" if entry.get("how") else "")
        rows.append([name, display_value(name, entry), detail, str(entry.get("formula", "")), how])
    return rows


HEADER = ["metric", "value", "numerator / denominator", "formula", "command"]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def security_sheet_markdown(sheet: Mapping[str, Mapping[str, Any]]) -> str:
    """Two Markdown tables: the seed metrics, then fedsec's other measurements."""
    rows = dict(zip(sheet, sheet_rows(sheet), strict=True))
    out = []
    for title, names in (("Seed metrics (Al-Karaki et al. 2024, sec. 3.2, Table 1)", SEED_ENTRIES),
                         ("Other measurements", OTHER_ENTRIES)):
        out += [f"### {title}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        out += ["| " + " | ".join(_md_cell(c) for c in rows[n]) + " |" for n in names if n in rows]
        out.append("")
    notes = [f"- {n}: {e['note']}" for n, e in sheet.items() if e.get("note")]
    if notes:
        out += ["Notes:", "", *notes, ""]
    return "\n".join(out)


def security_sheet_html(sheet: Mapping[str, Mapping[str, Any]], *, title: str,
                        paragraphs: Sequence[str] = ()) -> str:
    """A self-contained HTML page of the sheet (every text escaped)."""
    rows = dict(zip(sheet, sheet_rows(sheet), strict=True))
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:0.9em;margin:0.8em 0}th,td{border:1px solid #ccc;"
             "padding:3px 8px;vertical-align:top}th{background:#f3f3f3}</style></head><body>",
             f"<h1>{esc(title)}</h1>"]
    parts += [f"<p>{esc(p)}</p>" for p in paragraphs]
    for heading, names in (("Seed metrics (Al-Karaki et al. 2024, sec. 3.2, Table 1)", SEED_ENTRIES),
                           ("Other measurements", OTHER_ENTRIES)):
        parts.append(f"<h2>{esc(heading)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in HEADER) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in rows[n]) + "</tr>" for n in names if n in rows]
        parts.append("</table>")
    notes = [(n, e["note"]) for n, e in sheet.items() if e.get("note")]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}: {esc(str(t))}</li>" for n, t in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def sheets_side_by_side_markdown(sheets: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """One Markdown table, a column per sheet (``{label: sheet}``): each entry's value and its counts."""
    labels = list(sheets)
    lines = ["| metric | " + " | ".join(_md_cell(label) for label in labels) + " |",
             "|---|" + "---|" * len(labels)]
    for name in ENTRIES:
        cells = []
        for label in labels:
            entry = sheets[label].get(name)
            if entry is None:
                cells.append("")
                continue
            detail = ratio_text(name, entry)
            value = display_value(name, entry)
            cells.append(f"{value} ({detail})" if detail else value)
        lines.append(f"| {_md_cell(name)} | " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"
