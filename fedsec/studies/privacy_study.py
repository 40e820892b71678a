"""Privacy-budget studies: the same scenario at several epsilons (and seeds), one table and one plot.

``fedsec privacy-study CONFIG --epsilons 0.5,1,2,4,8,inf [--seeds 0,1,2]`` runs CONFIG (its ``privacy.mode``: local
or central) once per budget and seed (``inf`` = the same run without DP), each in ``DIR/eps-<epsilon>/`` (one seed)
or ``DIR/eps-<epsilon>-seed-<seed>/``, then writes ``study.csv`` (one row per run: final accuracy, attack metrics
where an attack is configured, epsilon spent, noise, the membership-inference advantage and the bound epsilon
implies), ``study_summary.csv`` (per budget: mean and standard deviation over the seeds) and
``plots/privacy_study.png`` (means with the seeds' standard deviation as error bars).

A study is resumable: run the same command again and a cell that finished with the same config is read back
instead of rerun, and a cell that was killed or interrupted goes on from its last checkpoint (``fedsec run
--resume``), so a long study survives a reboot.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tomllib
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from fedsec.config import ConfigError, apply_overrides
from fedsec.plan import RunPlan, plan_from_dict
from fedsec.results.run_directory import identity_changes

from .sweep import local_ray_head

log = logging.getLogger(__name__)


class StudyInterrupted(Exception):
    """A cell was interrupted (Ctrl-C, SIGTERM): the study stops there; the same command goes on with it."""

    def __init__(self, cell: str, rounds_completed: int) -> None:
        super().__init__(f"{cell} interrupted after round {rounds_completed}")
        self.cell, self.rounds_completed = cell, rounds_completed

def study_columns() -> list[str]:
    """study.csv's columns: the budget and seed, epsilon spent, accuracy, every attack's declared metrics and its
    success, the membership check, the noise, and how the cell ended."""
    from fedsec.clients.attacks import ATTACKS

    attack = list(dict.fromkeys(m.name for _, cls in ATTACKS.items() for m in cls.metrics))
    return ["epsilon_budget", "seed", "epsilon", "accuracy", *attack, "attack_success", "mia_advantage", "mia_bound",
            "noise_multiplier", "rounds_completed", "stopped_reason"]


#: study.csv's columns with the kinds registered at import (:func:`study_columns` reads them at call time)
STUDY_COLUMNS = study_columns()


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


def parse_seeds(text: str | None) -> list[int] | None:
    """"0,1,2" -> [0, 1, 2]; None or "" -> None (the config's seed)."""
    if not text:
        return None
    try:
        seeds = [int(part.strip()) for part in text.split(",")]
    except ValueError as e:
        raise ConfigError(f"--seeds: {text!r} must be comma-separated integers, e.g. 0,1,2") from e
    if len(set(seeds)) != len(seeds) or any(not 0 <= s <= 2**32 - 1 for s in seeds):
        raise ConfigError(f"--seeds: {text!r} must be distinct integers in [0, 2^32 - 1]")
    return seeds


def study_experiments(base: RunPlan, epsilons: list[float], seeds: list[int] | None = None, *, address: str = ""
                      ) -> list[tuple[float, RunPlan]]:
    """One validated run plan per budget (inf: privacy.mode = none) and seed (None: the config's seed only);
    ``address``: the Ray cluster every run joins (``backend.address``; "" keeps the config's)."""
    if base.facts is None or base.facts.privacy.mode == "none":
        raise ConfigError("privacy.mode='none': a privacy study needs privacy.mode = 'local' or 'central'")
    raw = base.resolved
    out = []
    for eps in epsilons:
        for seed in seeds if seeds is not None else [None]:
            sets = ["privacy.mode=none"] if math.isinf(eps) else [f"privacy.epsilon={eps}"]
            name = f"{base.name}-eps-{eps:g}"
            if seed is not None:
                sets.append(f"seed={seed}")
                name += f"-seed-{seed}"
            sets.append(f"name={name}")
            if address:
                sets.append(f"backend.address={json.dumps(address)}")
            out.append((eps, plan_from_dict(apply_overrides(raw, sets), source=f"epsilon {eps:g}")))
    return out


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per budget: mean and standard deviation (ddof 1; 0 for one seed) of accuracy, attack metrics, epsilon
    spent and membership advantage over the seeds."""
    import pandas as pd

    columns = study_columns()
    frame = pd.DataFrame(rows, columns=columns)
    numeric = [c for c in columns if c not in ("epsilon_budget", "seed", "rounds_completed", "stopped_reason")]
    metrics = [m for m in numeric if frame[m].notna().any()]
    out = []
    for eps, group in frame.groupby("epsilon_budget", sort=True):
        row: dict[str, Any] = {"epsilon_budget": eps, "seeds": len(group)}
        for m in metrics:
            values = group[m].astype(float)
            if values.isin([math.inf]).all():  # epsilon spent without DP
                row[f"{m}_mean"], row[f"{m}_std"] = math.inf, math.nan
                continue
            row[f"{m}_mean"] = float(values.mean())
            row[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(row)
    return out


def run_study(
    base: RunPlan, epsilons: list[float], out_dir: Path, *, on_cell: Callable[[float, dict], None] | None = None,
    seeds: list[int] | None = None, stop: Any = None,
) -> list[dict[str, Any]]:
    """Run every budget (and seed), write study.csv, study_summary.csv and the plot; returns the rows.

    ``stop``: a ``threading.Event`` passed to every run (Ctrl-C, SIGTERM); a cell that ends interrupted raises
    :class:`StudyInterrupted` after its summary is written, so no later cell starts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = study_experiments(base, epsilons, seeds)
    by_seed = seeds is not None
    finished = [finished_summary(out_dir / cell_name(eps, plan, by_seed), plan) for eps, plan in cells]
    with ExitStack() as stack:
        if None in finished and not (base.backend.address or os.environ.get("RAY_ADDRESS")):
            # one local Ray for the whole study, each cell joins it (a local Ray costs ~5 s to start here)
            address = stack.enter_context(local_ray_head(os.cpu_count() or 1, log_path=out_dir / "ray-head.log"))
            cells = study_experiments(base, epsilons, seeds, address=address)
        if None in finished:  # the cells share this process's Ray connection and client actors (stopped first)
            from fedsec.runtime.runner import one_ray_for_many_runs

            stack.enter_context(one_ray_for_many_runs())
        rows = _run_cells(cells, finished, out_dir, on_cell, stop, by_seed=by_seed)
    plot_study(rows, out_dir / "plots" / "privacy_study.png", title=base.name)
    return rows


def cell_name(eps: float, plan: RunPlan, by_seed: bool) -> str:
    """A study cell's directory name: ``eps-<budget>`` (or ``eps-<budget>-seed-<seed>`` with ``--seeds``)."""
    return f"eps-{eps:g}-seed-{plan.seed}" if by_seed else f"eps-{eps:g}"


def _run_cells(cells: list[tuple[float, RunPlan]], finished: list[dict[str, Any] | None], out_dir: Path,
               on_cell: Callable[[float, dict], None] | None, stop: Any, *, by_seed: bool) -> list[dict[str, Any]]:
    """Run each cell in turn, or read back the summary ``finished`` holds for it (a cell finished before with the
    same config: :func:`finished_summary`); write study.csv and study_summary.csv after each; the rows."""
    import pandas as pd

    from fedsec.runtime.runner import run_experiment

    rows = []
    for (eps, plan), summary in zip(cells, finished, strict=True):
        cell = cell_name(eps, plan, by_seed)
        if summary is None:
            resume = (out_dir / cell / "checkpoints" / "latest.pt").is_file()
            if resume:
                log.info("%s: resuming from its last checkpoint", cell)
            summary = run_experiment(plan, out_dir / cell, resume=resume, stop=stop).summary
        else:
            log.info("%s: finished before with the same config; read back", cell)
        if summary.get("stopped_reason") == "interrupted":
            raise StudyInterrupted(cell, int(summary.get("rounds_completed") or 0))
        privacy = summary.get("privacy", {})
        row = {"epsilon_budget": eps, "seed": plan.seed, "epsilon": privacy.get("epsilon", math.inf),
               "noise_multiplier": privacy.get("noise_multiplier", math.nan)}
        row.update({k: summary.get(k, math.nan) for k in study_columns() if k not in row})
        rows.append(row)
        pd.DataFrame(rows, columns=study_columns()).to_csv(out_dir / "study.csv", index=False)
        pd.DataFrame(summarize(rows)).to_csv(out_dir / "study_summary.csv", index=False)
        if on_cell is not None:
            on_cell(eps, row)
    return rows


def finished_summary(cell_dir: Path, plan: RunPlan) -> dict[str, Any] | None:
    """The summary of a cell that already finished with ``plan``'s config (None: not run, killed, interrupted,
    or run with another config, which then fails with the run directory's own message)."""
    try:
        summary = json.loads((cell_dir / "summary.json").read_text())
        stored = tomllib.loads((cell_dir / "config.toml").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("stopped_reason") == "interrupted":
        return None
    if identity_changes(stored, tomllib.loads(plan.to_toml())):
        return None
    return summary


def plot_study(rows: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Accuracy (and attack success, membership advantage) against the budget; 'no DP' at the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    multi_seed = len({r.get("seed") for r in rows}) > 1
    rows = [{"epsilon_budget": r["epsilon_budget"], **{k[:-5]: v for k, v in r.items() if k.endswith("_mean")},
             **{k: v for k, v in r.items() if k.endswith("_std")}} for r in summarize(rows)] if multi_seed else rows
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
        errors = [rows[i].get(f"{key}_std", 0.0) for i in order] if multi_seed else None
        ax.errorbar([xs[i] for i in order], [rows[i].get(key, math.nan) for i in order], yerr=errors, fmt=style,
                    capsize=3, label=label + (" (mean ± std over seeds)" if multi_seed else ""))
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
