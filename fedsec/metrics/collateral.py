"""Collateral damage of defenses: honest clients excluded, by how unusual their data is, and minority-class accuracy.

A robust rule rejects what looks unlike the majority; honest clients whose data is unusual (non-IID) look unlike it
too. Robustness papers report this cost only in passing (e.g. Fang et al., USENIX Security 2020, and Shejwalkar and
Houmansadr, NDSS 2021, report accuracy drops of Krum-type rules without attack on non-IID data); fedsec measures it
per run. From a run's ``clients.csv`` (round, client, malicious, num_examples, accepted[, status]) and
each client's label histogram:

- :func:`honest_exclusion`: per honest client, how often it was rejected (weight 0) or down-weighted (weight below
  ``downweight_factor`` = 0.5 times its FedAvg share, its share of the round's examples; the same rule as fedsec's
  ``detection_precision`` / ``detection_recall``);
- :func:`label_distance`: how unusual each client's data is: the total-variation distance (default) or the
  Jensen-Shannon distance (base 2, in [0, 1]; ``scipy.spatial.distance.jensenshannon``) between its label
  distribution and the population's (all clients' labels pooled);
- :func:`exclusion_by_unusualness`: the exclusion rate per quantile bin of that distance;
- :func:`minority_classes` / :func:`minority_class_accuracy`: the classes held by at most ``max_holders`` clients and
  the test recall on them (``recall_<class>`` columns of ``rounds.csv``) per run, e.g. with and without the defense;
- :func:`plot_honest_exclusion`: the "honest clients excluded" plot.

Defaults: ``downweight_factor = 0.5``, ``metric = "tv"``, ``bins = 3`` quantile bins, ``max_holders = 1``,
``min_count = 1`` example for a client to hold a class.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial.distance import jensenshannon

DISTANCES = ("tv", "js")
VALID_STATUS = ("accepted", "rejected")
_CLIENT_KEYS = ("round", "client", "malicious", "num_examples", "accepted")


class CollateralError(ValueError):
    """Bad input to a collateral-damage metric (missing column, bad histogram, unknown distance)."""


def _histograms(histograms: pd.DataFrame | np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame(histograms) if not isinstance(histograms, pd.DataFrame) else histograms
    values = table.to_numpy(dtype=float)
    if values.ndim != 2 or values.shape[1] == 0 or not np.isfinite(values).all() or (values < 0).any():
        raise CollateralError("histograms: need a (clients, classes) table of finite counts >= 0")
    if (values.sum(axis=1) <= 0).any():
        empty = list(table.index[values.sum(axis=1) <= 0])
        raise CollateralError(f"histograms: clients {empty} hold no examples; drop them or give their counts")
    return table


def label_distance(histograms: pd.DataFrame | np.ndarray, *, metric: str = "tv") -> pd.Series:
    """Distance of each client's label distribution from the population's, indexed by client.

    histograms: (clients, classes) label counts, one row per client (index = client id; columns = classes).
    metric: "tv" (total variation, 0.5 * L1, in [0, 1]) or "js" (Jensen-Shannon distance, base 2, in [0, 1]).
    """
    table = _histograms(histograms)
    counts = table.to_numpy(dtype=float)
    p = counts / counts.sum(axis=1, keepdims=True)
    population = counts.sum(axis=0) / counts.sum()
    if metric == "tv":
        values = 0.5 * np.abs(p - population).sum(axis=1)
    elif metric == "js":
        values = np.array([jensenshannon(row, population, base=2) for row in p])
    else:
        raise CollateralError(f"metric={metric!r}: unknown label distance; use one of {DISTANCES}")
    return pd.Series(values, index=table.index, name=f"label_distance_{metric}")


def honest_exclusion(clients: pd.DataFrame, *, downweight_factor: float = 0.5) -> pd.DataFrame:
    """Per honest client: rounds taken part in, rejected, down-weighted, excluded (either) and the exclusion rate.

    clients: ``clients.csv`` rows. A row is valid when its ``status`` (if present) is "accepted" or "rejected";
    failed, invalid and skipped rows count neither as participation nor in the round's example total. Returns one
    row per honest client (columns ``client, rounds, rejected, downweighted, excluded, exclusion_rate,
    mean_weight_ratio``; the last is the mean of weight / FedAvg share), sorted by client.
    """
    missing = [key for key in _CLIENT_KEYS if key not in clients.columns]
    if missing:
        raise CollateralError(f"clients.csv lacks column(s) {missing}; need {list(_CLIENT_KEYS)}")
    if not 0 <= downweight_factor <= 1:
        raise CollateralError(f"downweight_factor={downweight_factor!r}: needs 0 <= downweight_factor <= 1")
    rows = clients if "status" not in clients.columns else clients[clients["status"].isin(VALID_STATUS)]
    rows = rows.assign(weight=rows["accepted"].astype(float), examples=rows["num_examples"].astype(float))
    total = rows.groupby("round")["examples"].transform("sum")
    share = rows["examples"] / total.where(total > 0)
    rows = rows.assign(
        rejected=rows["weight"] <= 0,
        downweighted=(rows["weight"] > 0) & (rows["weight"] < downweight_factor * share),
        ratio=rows["weight"] / share,
    )
    honest = rows[~rows["malicious"].astype(bool)]
    out = honest.groupby("client").agg(
        rounds=("round", "size"),
        rejected=("rejected", "sum"),
        downweighted=("downweighted", "sum"),
        mean_weight_ratio=("ratio", "mean"),
    )
    out["excluded"] = out["rejected"] + out["downweighted"]
    out["exclusion_rate"] = out["excluded"] / out["rounds"]
    columns = ["rounds", "rejected", "downweighted", "excluded", "exclusion_rate", "mean_weight_ratio"]
    return out[columns].astype({"rejected": int, "downweighted": int, "excluded": int}).reset_index()


def exclusion_by_unusualness(exclusion: pd.DataFrame, distance: pd.Series, *, bins: int = 3) -> pd.DataFrame:
    """Exclusion of honest clients per quantile bin of their label distance (bin 0: the most usual data).

    exclusion: :func:`honest_exclusion`'s table; distance: :func:`label_distance` (indexed by client). Bins are
    ``pandas.qcut`` quantiles of the *distinct* distances (clients with equal distances share a bin, and a lone
    unusual client is not merged into a bin of many usual ones; fewer bins when there are fewer distinct
    values). Returns one row per bin: ``bin, distance_low,
    distance_high, clients, rounds, excluded, exclusion_rate`` (excluded / rounds, pooled over the bin's clients),
    ``mean_client_rate``.
    """
    if bins < 1:
        raise CollateralError(f"bins={bins!r}: needs at least one bin")
    table = exclusion.merge(distance.rename("distance"), left_on="client", right_index=True, how="inner")
    if table.empty:
        raise CollateralError("exclusion and distance share no client ids; give histograms indexed by client id")
    distinct = np.unique(table["distance"].to_numpy(dtype=float))
    if len(distinct) > 1 and bins > 1:  # quantiles of the distinct values: tied clients share a bin
        codes = pd.qcut(distinct, q=min(bins, len(distinct)), labels=False)
        table["bin"] = table["distance"].map(dict(zip(distinct, codes, strict=True))).astype(int)
    else:
        table["bin"] = 0
    out = table.groupby("bin").agg(
        distance_low=("distance", "min"),
        distance_high=("distance", "max"),
        clients=("client", "size"),
        rounds=("rounds", "sum"),
        excluded=("excluded", "sum"),
        mean_client_rate=("exclusion_rate", "mean"),
    )
    out["exclusion_rate"] = out["excluded"] / out["rounds"]
    columns = ["distance_low", "distance_high", "clients", "rounds", "excluded", "exclusion_rate", "mean_client_rate"]
    return out[columns].reset_index()


def minority_classes(
    histograms: pd.DataFrame | np.ndarray, *, max_holders: int = 1, min_count: int = 1
) -> pd.DataFrame:
    """Per class: how many clients hold it (>= ``min_count`` examples) and whether that is at most ``max_holders``.

    Returns ``class, holders, examples, minority``, one row per column of ``histograms``.
    """
    if max_holders < 1 or min_count < 1:
        raise CollateralError(f"max_holders={max_holders!r}, min_count={min_count!r}: both must be >= 1")
    table = _histograms(histograms)
    counts = table.to_numpy(dtype=float)
    holders = (counts >= min_count).sum(axis=0)
    return pd.DataFrame({
        "class": list(table.columns),
        "holders": holders.astype(int),
        "examples": counts.sum(axis=0).astype(int),
        "minority": holders <= max_holders,
    })


def minority_class_accuracy(
    runs: Mapping[str, Mapping[str, float] | pd.Series],
    classes: pd.DataFrame,
    *,
    prefix: str = "recall_",
) -> pd.DataFrame:
    """Test recall per class and run, tidy: ``run, class, holders, minority, recall``.

    runs: run label -> final metrics (a ``rounds.csv`` row or ``summary.json``) with ``<prefix><class>`` keys, e.g.
    {"krum": ..., "fedavg": ...} for with and without the defense; classes: :func:`minority_classes`.
    """
    rows = []
    for label, metrics in runs.items():
        for cls, holders, minority in zip(classes["class"], classes["holders"], classes["minority"], strict=True):
            key = f"{prefix}{cls}"
            if key not in metrics:
                raise CollateralError(f"run {label!r} has no {key!r}; per-class recall columns are {prefix}<class>")
            rows.append({"run": label, "class": cls, "holders": int(holders), "minority": bool(minority),
                         "recall": float(metrics[key])})
    return pd.DataFrame(rows, columns=["run", "class", "holders", "minority", "recall"])


def minority_accuracy_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean recall on minority and on the other classes per run: ``run, minority_recall, other_recall, gap``."""
    means = tidy.groupby(["run", "minority"])["recall"].mean().unstack("minority")
    out = pd.DataFrame({
        "minority_recall": means.get(True, pd.Series(np.nan, index=means.index)),
        "other_recall": means.get(False, pd.Series(np.nan, index=means.index)),
    })
    out["gap"] = out["other_recall"] - out["minority_recall"]
    return out.reset_index()


def plot_honest_exclusion(table: pd.DataFrame, path: str | Path) -> Path:
    """Scatter of each honest client's exclusion rate against its label distance; returns the PNG's path.

    table: :func:`honest_exclusion` merged with a ``distance`` column (or with a ``label_distance_*`` column).
    Drawn with matplotlib's Agg canvas (no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    column = "distance" if "distance" in table.columns else next(
        (c for c in table.columns if str(c).startswith("label_distance")), None
    )
    if column is None or "exclusion_rate" not in table.columns:
        raise CollateralError("plot_honest_exclusion: needs exclusion_rate and distance (or label_distance_*) columns")
    fig = Figure(figsize=(5.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    sizes = 20 + 8 * table["rounds"].to_numpy(dtype=float) if "rounds" in table.columns else 30
    ax.scatter(table[column], table["exclusion_rate"], s=sizes, alpha=0.7)
    if "client" in table.columns:
        for x, y, c in zip(table[column], table["exclusion_rate"], table["client"], strict=True):
            ax.annotate(str(c), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"label distance from the population ({column})")
    ax.set_ylabel("share of rounds rejected or down-weighted")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Honest clients excluded by the defense")
    ax.grid(alpha=0.3)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out
