"""Filter quality from the ground truth, and the source surveys' DQ_filtered and A, per client and in total.

Source of DQ_filtered and A: Al-Karaki, Khan, Mohamad, Chowdhury, "Deep Learning Under Siege: Identifying Security
Vulnerabilities and Risk Mitigation Strategies", 2024, sec. 3.2 (equations 2 and 3) and Table 1.

- **A** (data autoclaving, eq. 3): ``A = n_A / m``, n_A = anomalies detected (points the filter flagged, i.e.
  dropped), m = datapoints. Table 1: 35 anomalies in 10,000 examples give A = 0.35%.
- **DQ_filtered** (noise filtering) reads differently in the two places, so both are reported, each under its own
  name, side by side:
  - ``dq_filtered_eq2``, equation 2 as written: ``DQ_filtered = 1 - N_after / N_before`` with N_after the
    datapoints that remain after filtering; it equals the share of points dropped (it rewards dropping, poisoned or
    not).
  - ``dq_filtered_table1``, the Table 1 variant: ``1 - poisoned points remaining after filtering / datapoints
    before filtering``; 87 noisy points left of 2,000 give 95.65%. Only a simulator, which knows the poisoned
    points, can compute it.
  ``dq_filtered`` (the name earlier results used) stays the Table 1 value.

Beyond the surveys, from the ground truth: true drops (poisoned points dropped), false drops (clean points dropped),
precision = true drops / drops, recall = true drops / poisoned, false-drop rate = false drops / clean points.
A ratio with a zero denominator is NaN in :class:`FilterQuality` and ``None`` in :meth:`FilterQuality.as_record`
(JSON has no NaN). Totals over clients (:func:`total_filter_quality`) add the counts, then take the ratios
(micro-averaging, so a large client weighs more), which is what ``rounds.csv`` and ``summary.json`` report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

DQ_TABLE1_FORMULA = ("1 - poisoned points remaining after filtering / datapoints before filtering "
                     "(Al-Karaki et al. 2024, Table 1)")
DQ_EQ2_FORMULA = ("1 - N_after / N_before, N_after = datapoints remaining after filtering "
                  "(Al-Karaki et al. 2024, eq. 2 as written)")
A_FORMULA = "n_A / m = anomalies detected / datapoints (Al-Karaki et al. 2024, eq. 3)"


class FilteringMetricError(ValueError):
    """Inconsistent counts or masks; the message names the input and the rule."""


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def dq_filtered_table1(poisoned_remaining: int, datapoints: int) -> float:
    """Al-Karaki et al.'s Table 1 reading: ``1 - poisoned_remaining / datapoints`` (NaN for 0 datapoints)."""
    return 1.0 - _ratio(poisoned_remaining, datapoints)


def dq_filtered_eq2(after: int, before: int) -> float:
    """Al-Karaki et al.'s equation 2 as written: ``1 - N_after / N_before`` (NaN for N_before = 0)."""
    return 1.0 - _ratio(after, before)


def anomaly_detection_rate(anomalies: int, datapoints: int) -> float:
    """Al-Karaki et al.'s equation 3: ``A = n_A / m`` (NaN for m = 0)."""
    return _ratio(anomalies, datapoints)


@dataclass(frozen=True)
class FilterQuality:
    """Counts and rates of one filter decision (one client, or totals over clients)."""

    datapoints: int
    poisoned: int
    kept: int
    dropped: int
    true_drops: int  # poisoned points dropped
    false_drops: int  # clean points dropped

    def __post_init__(self) -> None:
        counts = (self.datapoints, self.poisoned, self.kept, self.dropped, self.true_drops, self.false_drops)
        if min(counts) < 0 or self.kept + self.dropped != self.datapoints:
            raise FilteringMetricError(f"counts must be >= 0 and kept + dropped = datapoints, got {self}")
        if self.true_drops + self.false_drops != self.dropped or self.true_drops > self.poisoned:
            raise FilteringMetricError(f"need true_drops + false_drops = dropped, true_drops <= poisoned: {self}")
        if self.false_drops > self.datapoints - self.poisoned:
            raise FilteringMetricError(f"false_drops exceeds the clean points: {self}")

    @property
    def clean(self) -> int:
        return self.datapoints - self.poisoned

    @property
    def poisoned_remaining(self) -> int:
        return self.poisoned - self.true_drops

    @property
    def precision(self) -> float:
        return _ratio(self.true_drops, self.dropped)

    @property
    def recall(self) -> float:
        return _ratio(self.true_drops, self.poisoned)

    @property
    def false_drop_rate(self) -> float:
        return _ratio(self.false_drops, self.clean)

    @property
    def anomaly_rate(self) -> float:
        """Al-Karaki et al.'s eq. 3, A = points flagged (dropped) / datapoints."""
        return anomaly_detection_rate(self.dropped, self.datapoints)

    @property
    def dq_filtered(self) -> float:
        """Al-Karaki et al.'s Table 1, 1 - poisoned remaining / datapoints before filtering."""
        return dq_filtered_table1(self.poisoned_remaining, self.datapoints)

    @property
    def dq_filtered_table1(self) -> float:
        """Al-Karaki et al.'s Table 1, 1 - poisoned remaining / datapoints before filtering (= :attr:`dq_filtered`)."""
        return self.dq_filtered

    @property
    def dq_filtered_eq2(self) -> float:
        """Al-Karaki et al.'s eq. 2 as written, 1 - kept / datapoints."""
        return dq_filtered_eq2(self.kept, self.datapoints)

    def as_record(self) -> dict[str, float | int | str | None]:
        """Flat record for ``clients.csv`` / ``rounds.csv`` / JSON: counts, rates (NaN -> None) and formulas."""
        record: dict[str, float | int | str | None] = dict(asdict(self))
        for name in ("poisoned_remaining", "clean"):
            record[name] = getattr(self, name)
        for name in ("precision", "recall", "false_drop_rate", "anomaly_rate", "dq_filtered", "dq_filtered_eq2",
                     "dq_filtered_table1"):
            value = getattr(self, name)
            record[name] = None if math.isnan(value) else value
        record["dq_filtered_formula"] = DQ_TABLE1_FORMULA
        record["dq_filtered_eq2_formula"] = DQ_EQ2_FORMULA
        record["dq_filtered_table1_formula"] = DQ_TABLE1_FORMULA
        record["anomaly_rate_formula"] = A_FORMULA
        return record

    def sanitization_summary(self) -> dict[str, int]:
        """The counts :func:`fedsec.metrics.seed_sheet.seed_metrics` reads from ``summary["sanitization"]``."""
        return {
            "datapoints": self.datapoints,
            "poisoned": self.poisoned,
            "dropped": self.dropped,
            "poisoned_dropped": self.true_drops,
            "anomalies_detected": self.dropped,
        }


def filter_quality(keep: np.ndarray, poisoned: np.ndarray | None = None) -> FilterQuality:
    """Quality of a keep mask (N,) against the poisoned ground truth (N,); ``None`` = no point poisoned."""
    keep = np.asarray(keep, dtype=bool)
    poisoned = np.zeros_like(keep) if poisoned is None else np.asarray(poisoned, dtype=bool)
    if keep.shape != poisoned.shape or keep.ndim != 1:
        raise FilteringMetricError(f"keep {keep.shape} and poisoned {poisoned.shape} must be 1-d of the same length")
    dropped = ~keep
    return FilterQuality(
        datapoints=int(keep.size),
        poisoned=int(poisoned.sum()),
        kept=int(keep.sum()),
        dropped=int(dropped.sum()),
        true_drops=int((dropped & poisoned).sum()),
        false_drops=int((dropped & ~poisoned).sum()),
    )


def total_filter_quality(qualities: Iterable[FilterQuality]) -> FilterQuality:
    """Totals over clients (counts added; the rates follow from them)."""
    items = list(qualities)
    return FilterQuality(
        datapoints=sum(q.datapoints for q in items),
        poisoned=sum(q.poisoned for q in items),
        kept=sum(q.kept for q in items),
        dropped=sum(q.dropped for q in items),
        true_drops=sum(q.true_drops for q in items),
        false_drops=sum(q.false_drops for q in items),
    )
