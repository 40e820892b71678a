"""The source surveys' metrics (fedsec.metrics.filtering) and metric sheet (fedsec.metrics.seed_sheet)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedsec.metrics.filtering import (
    FilteringMetricError,
    FilterQuality,
    anomaly_detection_rate,
    dq_filtered_eq2,
    dq_filtered_table1,
    filter_quality,
    total_filter_quality,
)
from fedsec.metrics.seed_sheet import (
    HOW_TO_MEASURE,
    METRICS,
    NOT_MEASURED,
    SeedSheetError,
    seed_metrics,
    seed_sheet_markdown,
    sweep_seed_metrics,
    sweep_sheet_markdown,
)


def _masks(datapoints: int, poisoned: int, poisoned_dropped: int, clean_dropped: int):
    """keep/poisoned masks: the first ``poisoned`` points are poisoned; drop the first ``poisoned_dropped`` of them
    and the first ``clean_dropped`` clean points."""
    is_poisoned = np.arange(datapoints) < poisoned
    keep = np.ones(datapoints, bool)
    keep[:poisoned_dropped] = False
    keep[poisoned : poisoned + clean_dropped] = False
    return keep, is_poisoned


def test_table1_worked_examples():
    """Al-Karaki et al. 2024, Table 1: 87 noisy points remain of 2,000 -> DQ_filtered 95.65%; 35 anomalies in
    10,000 -> A 0.35%."""
    assert round(100 * dq_filtered_table1(87, 2000), 2) == 95.65
    assert round(100 * anomaly_detection_rate(35, 10_000), 2) == 0.35
    # the same counts through a filter decision: 300 poisoned, 213 of them dropped (87 remain), 10 clean dropped
    q = filter_quality(*_masks(2000, 300, 213, 10))
    assert q.poisoned_remaining == 87 and round(100 * q.dq_filtered, 2) == 95.65
    assert q.dq_filtered_eq2 == pytest.approx(223 / 2000)  # eq. 2 as written: share dropped, a different number
    q = filter_quality(*_masks(10_000, 50, 30, 5))
    assert q.dropped == 35 and round(100 * q.anomaly_rate, 2) == 0.35


def test_filter_quality_counts_and_rates():
    keep = np.array([1, 0, 0, 1, 1, 0, 1, 1], bool)
    poisoned = np.array([0, 1, 0, 1, 0, 1, 0, 0], bool)
    q = filter_quality(keep, poisoned)
    # dropped {1, 2, 5}; poisoned {1, 3, 5}: true drops {1, 5}, false drop {2}, poisoned left {3}
    assert (q.datapoints, q.poisoned, q.kept, q.dropped, q.true_drops, q.false_drops) == (8, 3, 5, 3, 2, 1)
    assert q.precision == 2 / 3 and q.recall == 2 / 3 and q.false_drop_rate == 1 / 5
    assert q.dq_filtered == 1 - 1 / 8 and q.anomaly_rate == 3 / 8 and q.dq_filtered_eq2 == 1 - 5 / 8
    record = q.as_record()
    assert record["dq_filtered_formula"].startswith("1 - poisoned points remaining")
    assert "N_after / N_before" in record["dq_filtered_eq2_formula"]
    assert q.sanitization_summary() == {
        "datapoints": 8,
        "poisoned": 3,
        "dropped": 3,
        "poisoned_dropped": 2,
        "anomalies_detected": 3,
    }


def test_undefined_rates_are_nan_in_the_dataclass_and_none_in_records():
    q = filter_quality(np.ones(4, bool))  # no poison, nothing dropped
    assert math.isnan(q.precision) and math.isnan(q.recall) and q.false_drop_rate == 0.0
    record = q.as_record()
    assert record["precision"] is None and record["recall"] is None
    json.dumps(record, allow_nan=False)  # valid JSON


def test_totals_add_counts_then_take_ratios():
    a = filter_quality(*_masks(100, 10, 10, 0))  # recall 1
    b = filter_quality(*_masks(900, 90, 0, 90))  # recall 0
    total = total_filter_quality([a, b])
    assert (total.datapoints, total.poisoned, total.true_drops, total.false_drops) == (1000, 100, 10, 90)
    assert total.recall == 0.1  # micro-average, not the mean of 1 and 0
    assert total.dq_filtered == 1 - 90 / 1000


def test_inconsistent_counts_are_refused():
    with pytest.raises(FilteringMetricError, match="kept \\+ dropped = datapoints"):
        FilterQuality(datapoints=10, poisoned=2, kept=5, dropped=4, true_drops=2, false_drops=2)
    with pytest.raises(FilteringMetricError, match="same length"):
        filter_quality(np.ones(3, bool), np.ones(4, bool))
    assert dq_filtered_eq2(1913, 2000) == pytest.approx(0.0435)


FULL_SUMMARY = {
    "evasion": {"fgsm": {"correct": 95, "total": 120}, "pgd": {"correct": 87, "total": 120}},
    "sanitization": {
        "datapoints": 2000,
        "poisoned": 300,
        "dropped": 223,
        "poisoned_dropped": 213,
        "anomalies_detected": 223,
    },
    "privacy": {"epsilon": 2.84, "epsilon_budget": 8.0},
    "serving": {
        "unauthorized_attempts": 50,
        "unauthorized_blocked": 48,
        "access_attempts": 200,
        "queries": 1000,
        "anomalous_detected": 12,
    },
}


def test_sheet_lists_every_measured_metric_with_formula_inputs_and_value():
    sheet = seed_metrics(FULL_SUMMARY, {"privacy": {"mode": "local", "epsilon": 8.0}})
    assert list(sheet) == list(METRICS)
    r = sheet["R"]  # strongest attack: PGD 87/120 (FGSM's 95/120 is weaker) -> Table 1's 72.50%
    assert r["value"] == 87 / 120 and r["percent"] == "72.50%" and r["inputs"] == "87 / 120" and r["attack"] == "pgd"
    dq = sheet["DQ_filtered"]
    assert dq["inputs"] == "1 - 87 / 2000" and dq["percent"] == "95.65%" and "Table 1" in dq["formula"]
    assert dq["equation_2"]["inputs"] == "1 - 1777 / 2000" and dq["equation_2"]["value"] == pytest.approx(0.1115)
    assert sheet["A"]["inputs"] == "223 / 2000" and sheet["A"]["value"] == 223 / 2000
    assert sheet["A/C"]["inputs"] == "48 / 50" and sheet["A/C"]["value"] == 0.96
    assert sheet["A/C"]["equation_4_literal"]["value"] == 48 / 200
    assert sheet["P <= epsilon"]["value"] == "holds" and sheet["P <= epsilon"]["inputs"] == "2.84 <= 8"
    assert sheet["Q"]["inputs"] == "12 / 1000" and sheet["Q"]["percent"] == "1.20%"
    for record in sheet.values():
        assert record["formula"] and "how" not in record
    json.dumps(sheet, allow_nan=False)


def test_unmeasured_metrics_say_which_key_would_measure_them():
    sheet = seed_metrics({"sanitization": FULL_SUMMARY["sanitization"]}, {"privacy": {"mode": "none"}})
    assert sheet["DQ_filtered"]["value"] == 0.9565 and sheet["A"]["value"] == 223 / 2000
    for metric in ("R", "A/C", "P <= epsilon", "Q"):
        assert sheet[metric]["value"] == NOT_MEASURED
        assert sheet[metric]["how"] == HOW_TO_MEASURE[metric]
    assert sheet["R"]["how"] == "[audit.evasion]" and sheet["P <= epsilon"]["how"].startswith("[privacy] mode")
    empty = seed_metrics({}, {"defense": {"sanitize": {"method": "threshold"}}})
    assert empty["DQ_filtered"]["how"].startswith("[defense.sanitize]") and "configured" in empty["A"]["note"]


def test_privacy_violation_and_budget_from_config():
    sheet = seed_metrics({"privacy": {"epsilon": 9.5}}, {"privacy": {"mode": "central", "epsilon": 8.0}})
    assert sheet["P <= epsilon"]["value"] == "violated" and sheet["P <= epsilon"]["epsilon_budget"] == 8.0


@pytest.mark.parametrize(
    "summary,needle",
    [
        ({"evasion": {"pgd": {"correct": 130, "total": 120}}}, '"correct"=130 exceeds "total"=120'),
        ({"evasion": {"pgd": {"correct": -1, "total": 120}}}, 'summary["evasion"]["pgd"]["correct"]=-1'),
        ({"sanitization": {**FULL_SUMMARY["sanitization"], "poisoned_dropped": 250}}, '"poisoned_dropped"=250'),
        ({"serving": {"queries": 10, "anomalous_detected": 11}}, '"anomalous_detected"=11 exceeds "queries"=10'),
        ({"privacy": {"epsilon": "high", "epsilon_budget": 8.0}}, 'summary["privacy"]["epsilon"]=\'high\''),
    ],
)
def test_bad_summary_blocks_name_the_key(summary, needle):
    with pytest.raises(SeedSheetError) as err:
        seed_metrics(summary, {})
    assert needle in str(err.value)


def test_sweep_aggregates_over_cells_and_markdown_tables():
    cells = [
        {"seed_metrics": seed_metrics(FULL_SUMMARY, {"privacy": {"mode": "local"}})},
        {
            "seed_metrics": seed_metrics(
                {"evasion": {"pgd": {"correct": 60, "total": 120}}, "privacy": {"epsilon": 9.0, "epsilon_budget": 8.0}},
                {},
            )
        },
    ]
    rows = {row["metric"]: row for row in sweep_seed_metrics(cells)}
    assert rows["R"]["mean"] == pytest.approx((87 / 120 + 0.5) / 2) and rows["R"]["measured"] == 2
    assert rows["R"]["min"] == 0.5 and rows["R"]["max"] == 87 / 120
    assert rows["DQ_filtered"]["measured"] == 1 and rows["DQ_filtered"]["cells"] == 2
    assert rows["P <= epsilon"]["value"] == "holds in 1 of 2 cells"
    table = sweep_sheet_markdown(list(rows.values()))
    assert "| R |" in table and "| 2 of 2 |" in table
    one = seed_sheet_markdown(seed_metrics({"evasion": FULL_SUMMARY["evasion"]}, {}))
    lines = one.strip().splitlines()
    assert len(lines) == 2 + len(METRICS)
    assert "| R | correctly classified" in lines[2] and "87 / 120 (pgd)" in lines[2] and "72.50%" in lines[2]
    assert "not measured (set [defense.sanitize]" in lines[3]
    assert "A/C" in lines[5] and "not measured" in lines[5]
    with pytest.raises(SeedSheetError, match="seed_metrics"):
        sweep_seed_metrics([{"accuracy": 0.9}])
