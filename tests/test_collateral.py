"""Collateral damage of defenses on a hand-made run: one honest client holds a class nobody else has and is always
rejected; another is down-weighted once; one reply failed."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

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

# Clients 0-2 and 4 hold classes 0 and 1 (5 + 5 examples); client 3 holds only class 2 (10); client 4 is malicious.
HISTOGRAMS = pd.DataFrame(
    [[5, 5, 0], [5, 5, 0], [5, 5, 0], [0, 0, 10], [5, 5, 0]], index=[0, 1, 2, 3, 4], columns=[0, 1, 2]
)


def clients_table() -> pd.DataFrame:
    """Three rounds, every client with 10 examples (FedAvg share 0.2; 0.25 in round 3, where client 1 failed)."""
    rows = []
    weights = {
        1: {0: 0.05, 1: 0.3, 2: 0.3, 3: 0.0, 4: 0.35},  # client 0 at 0.05 < 0.5 * 0.2: down-weighted
        2: {0: 0.3, 1: 0.3, 2: 0.2, 3: 0.0, 4: 0.2},  # client 2 at 0.2 >= 0.1: fine
        3: {0: 0.4, 1: 0.0, 2: 0.3, 3: 0.0, 4: 0.3},  # client 1 failed: not counted
    }
    for rnd, by_client in weights.items():
        for client, weight in by_client.items():
            status = "failed: timeout" if (rnd, client) == (3, 1) else ("accepted" if weight > 0 else "rejected")
            rows.append({"round": rnd, "client": client, "malicious": int(client == 4), "num_examples": 10,
                         "update_norm": 1.0, "accepted": weight, "node": "n0", "status": status})
    return pd.DataFrame(rows)


def test_honest_exclusion_counts_rejections_and_downweighting():
    table = honest_exclusion(clients_table())
    assert table["client"].tolist() == [0, 1, 2, 3]  # the malicious client 4 is not listed
    by = table.set_index("client")
    assert by.loc[3, ["rounds", "rejected", "downweighted", "excluded"]].tolist() == [3, 3, 0, 3]
    assert by.loc[3, "exclusion_rate"] == 1.0
    assert by.loc[0, ["rounds", "rejected", "downweighted", "excluded"]].tolist() == [3, 0, 1, 1]
    assert by.loc[0, "exclusion_rate"] == pytest.approx(1 / 3)
    assert by.loc[1, "rounds"] == 2 and by.loc[1, "excluded"] == 0  # its failed reply is neither counted nor blamed
    assert by.loc[2, "excluded"] == 0
    # Weight / FedAvg share for client 0: (0.05/0.2 + 0.3/0.2 + 0.4/0.25) / 3 = (0.25 + 1.5 + 1.6) / 3.
    assert by.loc[0, "mean_weight_ratio"] == pytest.approx((0.25 + 1.5 + 1.6) / 3)


def test_honest_exclusion_without_status_and_bad_input():
    table = clients_table().drop(columns="status")
    by = honest_exclusion(table).set_index("client")
    assert by.loc[1, "rounds"] == 3 and by.loc[1, "rejected"] == 1  # without status the failed row counts as rejected
    with pytest.raises(CollateralError, match=r"lacks column\(s\) \['accepted'\]"):
        honest_exclusion(clients_table().drop(columns="accepted"))
    with pytest.raises(CollateralError, match=r"downweight_factor=2"):
        honest_exclusion(clients_table(), downweight_factor=2)


def test_label_distance_by_hand():
    # Population: (20, 20, 10) / 50 = (0.4, 0.4, 0.2). TV of (0.5, 0.5, 0) is 0.5 * (0.1 + 0.1 + 0.2) = 0.2; of
    # (0, 0, 1) it is 0.5 * (0.4 + 0.4 + 0.8) = 0.8.
    tv = label_distance(HISTOGRAMS)
    assert tv.round(12).tolist() == [0.2, 0.2, 0.2, 0.8, 0.2]
    # JS (base 2) for client 3: M = (0.2, 0.2, 0.6); KL(p||M) = log2(1/0.6) = 0.73697; KL(q||M) = 0.8 * log2(2)
    # + 0.2 * log2(1/3) = 0.48301; distance sqrt((0.73697 + 0.48301) / 2) = 0.78102.
    js = label_distance(HISTOGRAMS, metric="js")
    assert js[3] == pytest.approx(math.sqrt((math.log2(1 / 0.6) + 0.8 + 0.2 * math.log2(1 / 3)) / 2), rel=1e-9)
    assert js[3] == pytest.approx(0.78102, abs=1e-5) and js[0] < js[3]
    with pytest.raises(CollateralError, match=r"metric='kl'"):
        label_distance(HISTOGRAMS, metric="kl")
    with pytest.raises(CollateralError, match=r"clients \[1\] hold no examples"):
        label_distance(pd.DataFrame([[1, 0], [0, 0]]))


def test_exclusion_by_unusualness_separates_the_unique_class_holder():
    exclusion = honest_exclusion(clients_table())
    bins = exclusion_by_unusualness(exclusion, label_distance(HISTOGRAMS), bins=3)
    # Two distinct distances (0.2 for clients 0-2, 0.8 for client 3): two bins.
    assert bins["bin"].tolist() == [0, 1]
    assert bins["clients"].tolist() == [3, 1]
    # Bin 0: excluded 1 (client 0, round 1) of 3 + 2 + 3 = 8 participations; bin 1: 3 of 3.
    assert bins["exclusion_rate"].tolist() == pytest.approx([1 / 8, 1.0])
    assert bins["distance_low"].tolist() == pytest.approx([0.2, 0.8])
    with pytest.raises(CollateralError, match=r"share no client ids"):
        exclusion_by_unusualness(exclusion, pd.Series([0.1], index=[99]))


def test_minority_class_accuracy_with_and_without_defense():
    classes = minority_classes(HISTOGRAMS, max_holders=1)
    assert classes["holders"].tolist() == [4, 4, 1] and classes["minority"].tolist() == [False, False, True]
    runs = {
        "krum": pd.Series({"accuracy": 0.6, "recall_0": 0.9, "recall_1": 0.8, "recall_2": 0.0}),
        "fedavg": {"recall_0": 0.85, "recall_1": 0.75, "recall_2": 0.6},
    }
    tidy = minority_class_accuracy(runs, classes)
    assert len(tidy) == 6 and set(tidy.columns) == {"run", "class", "holders", "minority", "recall"}
    table = minority_accuracy_table(tidy).set_index("run")
    assert table.loc["krum", "minority_recall"] == 0.0
    assert table.loc["krum", "other_recall"] == pytest.approx(0.85)
    assert table.loc["fedavg", "minority_recall"] == pytest.approx(0.6)
    assert table.loc["krum", "gap"] > table.loc["fedavg", "gap"]
    with pytest.raises(CollateralError, match=r"run 'x' has no 'recall_2'"):
        minority_class_accuracy({"x": {"recall_0": 1, "recall_1": 1}}, classes)
    with pytest.raises(CollateralError, match=r"max_holders=0"):
        minority_classes(HISTOGRAMS, max_holders=0)


def test_minority_classes_accepts_arrays_and_min_count():
    counts = np.array([[5, 1], [5, 0], [5, 0]])
    assert minority_classes(counts, max_holders=1, min_count=2)["holders"].tolist() == [3, 0]


def test_plot_honest_exclusion_writes_a_png(tmp_path):
    exclusion = honest_exclusion(clients_table())
    table = exclusion.merge(label_distance(HISTOGRAMS).rename("distance"), left_on="client", right_index=True)
    path = plot_honest_exclusion(table, tmp_path / "plots" / "honest_excluded.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    with pytest.raises(CollateralError, match=r"exclusion_rate and distance"):
        plot_honest_exclusion(exclusion, tmp_path / "x.png")
