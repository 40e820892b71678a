"""Privacy-budget studies: the same scenario at several epsilons, one table and one plot.

``fedsec privacy-study CONFIG --epsilons 0.5,1,2,4,8,inf`` runs CONFIG (its ``privacy.mode``: local or central)
once per budget (``inf`` = the same run without DP), each in ``DIR/eps-<epsilon>/``, then writes ``study.csv``
(one row per budget: final accuracy, attack metrics where an attack is configured, epsilon spent, noise, the
membership-inference advantage and the bound epsilon implies) and ``plots/privacy_study.png``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsec.config import ConfigError, Experiment, apply_overrides
from fedsec.plan import RunPlan, build_plan, plan_from_dict

STUDY_COLUMNS = ["epsilon_budget", "epsilon", "accuracy", "attack_success_rate", "source_recall", "flip_rate",
                 "mia_advantage", "mia_bound", "noise_multiplier", "rounds_completed", "stopped_reason"]


def parse_epsilons(text: str) -> list[float]:
    """"0.5,1,inf" -> [0.5, 1.0, inf]; every value must be > 0."""
    values = []
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError as e:
            raise ConfigError(f"--epsilons: {part.strip()!r} is not a number (use e.g. 0.5,1,2,4,8,inf)") from e
        if not value > 0:
            raise ConfigError(f"--epsilons: {value} must be > 0")
        values.append(value)
    if not values:
        raise ConfigError("--epsilons: give at least one budget")
    return values


def study_experiments(base: Experiment, epsilons: list[float]) -> list[tuple[float, RunPlan]]:
    """One validated run plan per budget (inf: privacy.mode = none)."""
    if base.privacy.mode == "none":
        raise ConfigError("privacy.mode='none': a privacy study needs privacy.mode = 'local' or 'central'")
    raw = build_plan(base).resolved
    out = []
    for eps in epsilons:
        sets = ["privacy.mode=none"] if math.isinf(eps) else [f"privacy.epsilon={eps}"]
        sets.append(f"name={base.name}-eps-{eps:g}")
        out.append((eps, plan_from_dict(apply_overrides(raw, sets), source=f"epsilon {eps:g}")))
    return out


def run_study(
    base: Experiment, epsilons: list[float], out_dir: Path, *, on_cell: Callable[[float, dict], None] | None = None
) -> list[dict[str, Any]]:
    """Run every budget, write study.csv and the plot; returns the rows."""
    import pandas as pd

    from fedsec.runtime.runner import run_experiment

    rows = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for eps, plan in study_experiments(base, epsilons):
        summary = run_experiment(plan, out_dir / f"eps-{eps:g}").summary
        privacy = summary.get("privacy", {})
        row = {"epsilon_budget": eps, "epsilon": privacy.get("epsilon", math.inf),
               "noise_multiplier": privacy.get("noise_multiplier", math.nan)}
        row.update({k: summary.get(k, math.nan) for k in STUDY_COLUMNS if k not in row})
        rows.append(row)
        pd.DataFrame(rows, columns=STUDY_COLUMNS).to_csv(out_dir / "study.csv", index=False)
        if on_cell is not None:
            on_cell(eps, row)
    plot_study(rows, out_dir / "plots" / "privacy_study.png", title=base.name)
    return rows


def plot_study(rows: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Accuracy (and attack success, membership advantage) against the budget; 'no DP' at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    finite = sorted(r["epsilon_budget"] for r in rows if math.isfinite(r["epsilon_budget"]))
    x_inf = (finite[-1] * 4) if finite else 1.0
    xs = [r["epsilon_budget"] if math.isfinite(r["epsilon_budget"]) else x_inf for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    series = [("accuracy", "test accuracy", "o-")] + [
        (key, label, "s--") for key, label in (("attack_success_rate", "backdoor success"),
                                               ("source_recall", "source-class recall"),
                                               ("mia_advantage", "membership advantage (Yeom)"))
        if any(isinstance(r.get(key), float) and math.isfinite(r[key]) for r in rows)
    ]
    order = sorted(range(len(rows)), key=lambda i: xs[i])
    for key, label, style in series:
        ax.plot([xs[i] for i in order], [rows[i].get(key, math.nan) for i in order], style, label=label)
    ax.set_xscale("log")
    ticks = sorted(set(xs))
    ax.set_xticks(ticks, [("no DP" if t == x_inf and any(math.isinf(r["epsilon_budget"]) for r in rows)
                           else f"{t:g}") for t in ticks])
    ax.set(xlabel="privacy budget epsilon", ylabel="metric", ylim=(-0.05, 1.05), title=f"{title}: privacy study")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
