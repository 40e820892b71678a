"""The "Collateral damage" section of a run report: what the defense cost honest clients whose data is unusual.

From the run directory only: ``clients.csv`` (each reply's weight), ``config.toml`` (its ``[data]`` section and
``seed`` rebuild the same seeded partition, :func:`fedsec.data.federated.build_federated_data`, hence every client's
label histogram) and ``rounds.csv`` (``recall_<class>`` per round). The metrics are
:mod:`fedsec.metrics.collateral`'s: per honest client the share of its rounds in which it was rejected or
down-weighted (below half its FedAvg share), binned by the total-variation distance of its label distribution from
the population's; and the final test recall on the minority classes (held by at most one client) against the
others. The "honest clients excluded" plot is drawn when some honest client was excluded at least once.
"""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsec.config import ConfigError, DataConfig
from fedsec.data.federated import build_federated_data
from fedsec.metrics.collateral import (
    CollateralError,
    exclusion_by_unusualness,
    honest_exclusion,
    label_distance,
    minority_accuracy_table,
    minority_class_accuracy,
    minority_classes,
    plot_honest_exclusion,
)
from fedsec.report.document import Document

logger = logging.getLogger(__name__)


def label_histograms(config: dict[str, Any]) -> pd.DataFrame:
    """Label counts (clients x classes) of the run's partition, rebuilt from its ``[data]`` section and ``seed``.

    Raises :class:`ConfigError` when the section does not validate or the data cannot be loaded."""
    try:
        data = DataConfig.model_validate(config.get("data", {}))
        federated = build_federated_data(data, int(config.get("seed", 0)))
    except (ValueError, OSError) as e:  # pydantic's ValidationError and fedsec's input errors are ValueErrors
        raise ConfigError(f"config.toml [data]: cannot rebuild the partition ({str(e).splitlines()[0]})") from None
    counts = [np.bincount(np.asarray(federated.y_train)[idx], minlength=federated.num_classes)
              for idx in federated.partitions]
    return pd.DataFrame(np.stack(counts), index=range(len(counts)), columns=range(federated.num_classes))


def _f(value: float) -> str:
    return "" if value is None or not np.isfinite(value) else f"{value:.4f}"


def add_collateral(doc: Document, root: Path, config: dict[str, Any], last: dict[str, float | None]) -> None:
    """Append the collateral-damage section (nothing without ``clients.csv`` or without honest replies)."""
    path = root / "clients.csv"
    if not path.is_file():
        return
    try:
        exclusion = honest_exclusion(pd.read_csv(path))
    except (CollateralError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        logger.info("collateral damage not computed: %s", e)
        return
    if exclusion.empty:
        return
    doc.heading("Collateral damage: honest clients excluded")
    excluded = exclusion[exclusion["excluded"] > 0]
    doc.paragraph(f"{len(excluded)} of {len(exclusion)} honest clients were rejected or down-weighted (weight below "
                  "half their share of the round's examples) at least once; mean exclusion rate "
                  f"{exclusion['exclusion_rate'].mean():.4f} of their rounds.")
    try:
        histograms = label_histograms(config)
    except ConfigError as e:
        doc.paragraph(f"Label histograms not available, so no split by how unusual the data is: {e}.")
        histograms = None
    if histograms is not None:
        distance = label_distance(histograms)
        bins = exclusion_by_unusualness(exclusion, distance)
        doc.paragraph("Exclusion by how unusual a client's labels are (total-variation distance of its label "
                      "distribution from the population's, in quantile bins; bin 0 the most usual):")
        doc.table(["bin", "distance", "clients", "rounds", "excluded", "exclusion rate", "mean client rate"],
                  [[str(int(b.bin)), f"{b.distance_low:.3f}-{b.distance_high:.3f}", str(int(b.clients)),
                    str(int(b.rounds)), str(int(b.excluded)), _f(b.exclusion_rate), _f(b.mean_client_rate)]
                   for b in bins.itertuples()])
        if not excluded.empty:
            table = exclusion.merge(distance.rename("distance"), left_on="client", right_index=True)
            plot_honest_exclusion(table, root / "plots" / "report_honest_excluded.png")
            doc.figure("plots/report_honest_excluded.png", "Honest clients excluded: each honest client's share of "
                       "rounds rejected or down-weighted against its label distance from the population (marker "
                       "size: rounds taken part in).")
        _minority(doc, histograms, last)


def _minority(doc: Document, histograms: pd.DataFrame, last: dict[str, float | None]) -> None:
    classes = minority_classes(histograms)
    recall = {f"recall_{c}": last.get(f"recall_{c}") for c in classes["class"]}
    if any(v is None for v in recall.values()):
        return
    doc.heading("Minority-class accuracy")
    tidy = minority_class_accuracy({"final": recall}, classes)
    summary = minority_accuracy_table(tidy).iloc[0]
    if classes["minority"].any():
        doc.paragraph(f"Classes held by at most one client: mean final recall {_f(summary.minority_recall)} against "
                      f"{_f(summary.other_recall)} on the other classes (gap {_f(summary.gap)}). Compare with the "
                      "same run under `defense.strategy = \"fedavg\"` to see what the defense costs them.")
    else:
        doc.paragraph("Every class is held by more than one client: no minority class in this partition.")
    doc.table(["class", "clients holding it", "training examples", "minority", "final recall"],
              [[str(r["class"]), str(r["holders"]), str(r["examples"]), "yes" if r["minority"] else "no",
                _f(recall[f"recall_{r['class']}"])] for _, r in classes.iterrows()])


BY_DEFENSE_FILE = "collateral_by_defense.csv"
BY_DEFENSE_COLUMNS = ["defense", "runs", "honest_exclusion_rate", "usual_exclusion_rate", "unusual_exclusion_rate",
                      "worst_class_recall", "worst_class", "accuracy"]


def collateral_by_defense(root: Path, *, defense_axis: str = "defense.strategy", attack_axis: str = "attack.kind",
                          bins: int = 3) -> pd.DataFrame:
    """What each defense costs honest clients without an attack, from a sweep directory's finished cells.

    For every finished cell of ``root/sweep.csv`` whose ``attack.kind`` is "none" (every cell when the sweep has no
    such axis): the honest exclusion rate (rejected or down-weighted, pooled over clients and rounds), the same in
    the most usual and the most unusual of ``bins`` quantile bins of label distance, and the lowest final per-class
    recall (the class the global model serves worst) with its class; means over the cells (seeds) of a defense.
    Under FedAvg nobody is excluded, so the FedAvg row is the baseline the other rows are read against. Cells whose
    files cannot be read are left out (logged)."""
    sweep = pd.read_csv(root / "sweep.csv")
    if not {"status", "run_dir"} <= set(sweep.columns):
        return pd.DataFrame(columns=BY_DEFENSE_COLUMNS)
    done = sweep[sweep["status"].astype(str) == "done"]
    if attack_axis in done.columns:
        done = done[done[attack_axis].astype(str) == "none"]
    histograms_of: dict[str, pd.DataFrame] = {}
    rows = []
    for _, cell in done.iterrows():
        run = root / str(cell["run_dir"])
        try:
            config = tomllib.loads((run / "config.toml").read_text())
            exclusion = honest_exclusion(pd.read_csv(run / "clients.csv"))
            key = repr((config.get("data"), config.get("seed")))
            if key not in histograms_of:
                histograms_of[key] = label_histograms(config)
            bins_table = exclusion_by_unusualness(exclusion, label_distance(histograms_of[key]), bins=bins)
            last = pd.read_csv(run / "rounds.csv").iloc[-1]
        except (OSError, ValueError, KeyError, CollateralError, ConfigError, pd.errors.ParserError) as e:
            logger.info("collateral by defense: cell %s left out: %s", cell.get("cell"), e)
            continue
        recalls = {int(c.split("_", 1)[1]): float(last[c]) for c in last.index
                   if c.startswith("recall_") and c.split("_", 1)[1].isdigit()}
        worst = min(recalls, key=recalls.get) if recalls else None
        rows.append({
            "defense": str(cell[defense_axis]) if defense_axis in cell else "all",
            "honest_exclusion_rate": exclusion["excluded"].sum() / exclusion["rounds"].sum(),
            "usual_exclusion_rate": float(bins_table.iloc[0]["exclusion_rate"]),
            "unusual_exclusion_rate": float(bins_table.iloc[-1]["exclusion_rate"]),
            "worst_class_recall": recalls[worst] if worst is not None else np.nan,
            "worst_class": worst, "accuracy": float(last["accuracy"]),
        })
    if not rows:
        return pd.DataFrame(columns=BY_DEFENSE_COLUMNS)
    table = pd.DataFrame(rows)
    out = table.groupby("defense", sort=False).agg(
        runs=("accuracy", "size"), honest_exclusion_rate=("honest_exclusion_rate", "mean"),
        usual_exclusion_rate=("usual_exclusion_rate", "mean"),
        unusual_exclusion_rate=("unusual_exclusion_rate", "mean"),
        worst_class_recall=("worst_class_recall", "mean"),
        worst_class=("worst_class", lambda s: ",".join(str(int(v)) for v in sorted(set(s.dropna())))),
        accuracy=("accuracy", "mean"),
    ).reset_index()
    return out[BY_DEFENSE_COLUMNS]


def add_collateral_by_defense(doc: Document, root: Path) -> bool:
    """Append the across-defense collateral table of a sweep with no-attack cells; writes its CSV."""
    if not (root / "sweep.csv").is_file():
        return False
    try:
        table = collateral_by_defense(root)
    except (OSError, ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        logger.info("collateral by defense not computed: %s", e)
        return False
    if table.empty or len(table) < 2:
        return False
    table.to_csv(root / BY_DEFENSE_FILE, index=False)
    doc.heading("Collateral damage per defense (no attack)")
    doc.paragraph("What each defense costs honest clients when nobody attacks: the share of honest replies it "
                  "rejected or down-weighted (below half their FedAvg share), the same among the clients with the "
                  "most usual and the most unusual label distributions (first and last of 3 quantile bins of "
                  "total-variation distance from the population), and the final recall of the class the model "
                  f"serves worst. Means over seeds; FedAvg excludes nobody. Table: `{BY_DEFENSE_FILE}`.")
    doc.table(["defense", "runs", "honest excluded", "usual clients", "unusual clients", "worst class recall",
               "worst class", "accuracy"],
              [[f"`{r.defense}`", str(int(r.runs)), _f(r.honest_exclusion_rate), _f(r.usual_exclusion_rate),
                _f(r.unusual_exclusion_rate), _f(r.worst_class_recall), str(r.worst_class), _f(r.accuracy)]
               for r in table.itertuples()])
    return True
