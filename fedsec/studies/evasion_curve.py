"""``fedsec audit evasion RUN_DIR --epsilons 0.05,0.1,0.2,0.3``: a finished run's final model re-evaluated under
evasion at several budgets, without retraining (FGSM and PGD; :mod:`fedsec.audits.evasion`).

Writes ``RUN_DIR/evasion/curve.csv`` (epsilon, attack, correct, total, robust_accuracy) and
``RUN_DIR/evasion/robustness_curve.png``. With ``cw_max_iter`` it also runs C&W L2 (Carlini and Wagner 2017, through
ART; no budget, so once, not per epsilon) on the same subset and writes ``RUN_DIR/evasion/cw.json`` (success rate on
correctly classified inputs, median L2 of the successful perturbations in pixel units, the counts behind them): the
per-round audit keeps C&W cheap (``audit.evasion.cw_max_iter`` defaults to 10), this is where a user spends more.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import torch

from fedsec.audits import evasion as ev
from fedsec.audits.evasion_plots import plot_robustness_curve
from fedsec.config import ConfigError, read_toml
from fedsec.data import DATASETS, load_dataset
from fedsec.results.model_file import load_final_model

logger = logging.getLogger(__name__)


def parse_budgets(text: str) -> list[float]:
    """"0.05,0.1" -> [0.05, 0.1]; every value in (0, 1]."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"--epsilons: {part.strip()!r} is not a number (use e.g. 0.05,0.1,0.2,0.3)") from None
        if not 0 < value <= 1:
            raise ConfigError(f"--epsilons: {value} must be in (0, 1] (pixels in [0, 1])")
        values.append(value)
    return values


def evasion_curve(run_dir: Path, epsilons: list[float], *, attacks: tuple[str, ...] = ("fgsm", "pgd"),
                  steps: int = 10, examples: int = 1000, cw_max_iter: int = 0,
                  cw_binary_search_steps: int = 5, cw_learning_rate: float = 0.01,
                  cw_initial_const: float = 1.0) -> Path:
    """Evaluate the run's final model at each budget (and under C&W when ``cw_max_iter`` > 0); return the CSV's
    path."""
    served = load_final_model(run_dir)
    config = read_toml(run_dir / "config.toml", what="run config")
    spec = DATASETS.get(served.dataset)
    if len(spec.input_shape) != 3:
        raise ConfigError(f"{run_dir}: evasion budgets are on image pixels; {served.dataset!r} gives vectors")
    data = config.get("data", {})
    dataset = load_dataset(served.dataset, root=data.get("root") or None, seed=int(config.get("seed", 0)))
    x = torch.from_numpy(np.array(dataset.x_test))
    y = torch.from_numpy(np.array(dataset.y_test, dtype=np.int64))
    space = ev.InputSpace.from_normalisation(*spec.normalisation) if spec.normalisation else ev.InputSpace.unit()
    results = ev.evaluate_at_epsilons(served.module, x, y, epsilons, space=space, attacks=attacks, steps=steps,
                                      examples=min(examples, y.numel()), seed=int(config.get("seed", 0)))
    out = run_dir / "evasion"
    out.mkdir(exist_ok=True)
    path = out / "curve.csv"
    curves: dict[str, list[float]] = {a: [] for a in attacks}
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epsilon", "attack", "correct", "total", "robust_accuracy"])
        for eps in epsilons:
            for name, rec in results[eps].records.items():
                writer.writerow([eps, name, rec.correct, rec.total, rec.robust_accuracy])
                curves[name].append(rec.robust_accuracy)
    first = results[epsilons[0]]
    plot_robustness_curve(epsilons, curves, out / "robustness_curve.png",
                          clean_accuracy=first.clean_correct / first.total)
    if cw_max_iter > 0:
        audit = ev.EvasionAudit(served.module, space=space, attacks=("cw",), examples=min(examples, y.numel()),
                                seed=int(config.get("seed", 0)), cw_max_iter=cw_max_iter,
                                cw_binary_search_steps=cw_binary_search_steps, cw_learning_rate=cw_learning_rate,
                                cw_initial_const=cw_initial_const)
        result = audit.evaluate(x, y)
        record = result.records["cw"]
        block = {"clean": f"{result.clean_correct} / {result.total}", "robust_accuracy": record.robust_accuracy,
                 "counts": f"{record.correct} / {record.total}", "success_rate": record.success_rate,
                 "median_l2": record.median_l2, "max_iter": cw_max_iter,
                 "binary_search_steps": cw_binary_search_steps, "learning_rate": cw_learning_rate,
                 "initial_const": cw_initial_const}
        (out / "cw.json").write_text(json.dumps(block, indent=2) + "\n")
        logger.info("C&W L2: success %.3f, median L2 %.3f", record.success_rate or 0.0, record.median_l2 or 0.0)
    return path
