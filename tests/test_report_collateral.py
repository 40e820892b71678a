"""The run report's collateral-damage section (one honest client holds a class nobody else has and is always
rejected), the minority-class accuracy table, the source surveys' metric sheet and the robust-accuracy plot, on a run
directory written by hand (no Ray)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.image

from fedsec.metrics.seed_sheet import seed_metrics
from fedsec.report import write_report
from fedsec.report.collateral import label_histograms

# digits, 10 clients, one shard each (seed 0): client 7 is the only holder of class 0, client 8 of class 8
DATA = {"dataset": "digits", "partition": "shards", "num_clients": 10, "shards_per_client": 1}
RECALL = {0: 0.2, 8: 0.4}  # the minority classes' final recall; every other class 0.9


def _csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        writer.writeheader()
        writer.writerows(rows)


def make_run(path: Path, *, summary_extra: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.toml").write_text(
        'name = "collateral"\nseed = 0\nrounds = 3\n[data]\ndataset = "digits"\npartition = "shards"\n'
        'num_clients = 10\nshards_per_client = 1\n[model]\nname = "logreg"\n[attack]\nkind = "sign_flip"\n'
        'client_ids = [0]\n[defense]\nstrategy = "krum"\n')
    rounds, clients = [], []
    for r in range(4):
        row = {"round": r, "accuracy": 0.5 + 0.1 * r, "loss": 1.0, "seconds": 0.1,
               "robust_accuracy_pgd": 0.1 * r, "robust_accuracy_fgsm": 0.15 * r}
        row.update({f"recall_{c}": RECALL.get(c, 0.9) if r else 0.1 for c in range(10)})
        rounds.append(row)
        for c in range(10) if r else []:
            weight = 0.0 if c in (0, 7) else 0.125  # 8 accepted clients share the round equally
            if c == 8 and r == 1:
                weight = 0.01  # below half its FedAvg share (0.5 * 0.1): down-weighted once
            clients.append({"round": r, "client": c, "malicious": int(c == 0), "num_examples": 135,
                            "update_norm": 1.0, "accepted": weight, "node": "n",
                            "status": "accepted" if weight > 0 else "rejected"})
    _csv(path / "rounds.csv", rounds)
    _csv(path / "clients.csv", clients)
    summary = {"name": "collateral", "seed": 0, "rounds_completed": 3, "stopped_reason": "completed",
               "accuracy": 0.8, **(summary_extra or {})}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_label_histograms_rebuild_the_partition():
    hist = label_histograms({"seed": 0, "data": DATA})
    assert hist.shape == (10, 10) and int(hist.to_numpy().sum()) == 1347  # digits' training split
    assert (hist[0] > 0).sum() == 1 and hist.loc[7, 0] == 133  # only client 7 holds class 0
    assert (hist[8] > 0).sum() == 1 and hist.loc[8, 8] == 131


def test_collateral_section_seed_sheet_and_robust_plot(tmp_path):
    sheet = seed_metrics({"evasion": {"pgd": {"correct": 30, "total": 100}, "fgsm": {"correct": 55, "total": 100}}},
                         {"privacy": {"mode": "none"}})
    run = make_run(tmp_path / "run", summary_extra={"seed_metrics": sheet})
    md = write_report(run).read_text()
    # clients 7 (always rejected) and 8 (down-weighted in 1 of 3 rounds) of the 9 honest ones: mean (1 + 1/3) / 9
    assert "2 of 9 honest clients were rejected or down-weighted" in md
    assert f"mean exclusion rate {(1 + 1 / 3) / 9:.4f} of their rounds" in md
    assert "(plots/report_honest_excluded.png)" in md
    # minority classes 0 and 8: mean recall (0.2 + 0.4) / 2 = 0.3 against 0.9, gap 0.6
    assert "mean final recall 0.3000 against 0.9000 on the other classes (gap 0.6000)" in md
    assert "| 0 | 1 | 133 | yes | 0.2000 |" in md and "| 1 | 2 | 136 | no | 0.9000 |" in md
    # the source surveys' metric sheet, through seed_sheet_markdown: R from the strongest attack (pgd, 30 / 100)
    assert "## Seed metric sheet" in md and "| R | correctly classified adversarial examples" in md
    assert "| 30 / 100 (pgd) | 30.00% |" in md and "not measured (set [defense.sanitize])" in md
    assert (run / "report.html").read_text().count("<h2>Seed metric sheet</h2>") == 1
    assert "(plots/report_robust_accuracy.png)" in md and "evasion audit's adversarial test examples: pgd, fgsm" in md
    for name in ("report_honest_excluded.png", "report_robust_accuracy.png"):
        image = matplotlib.image.imread(run / "plots" / name)
        assert image.std() > 0.01, name


def test_no_exclusion_no_plot_and_no_sheet_without_seed_metrics(tmp_path):
    run = make_run(tmp_path / "run")
    rows = list(csv.DictReader((run / "clients.csv").open()))
    for row in rows:  # nobody honest excluded: every honest client gets its share
        row["accepted"] = "0.0" if row["client"] == "0" else str(1 / 9)
    _csv(run / "clients.csv", rows)
    md = write_report(run).read_text()
    assert "0 of 9 honest clients were rejected or down-weighted" in md
    assert "report_honest_excluded.png" not in md and "Seed metric sheet" not in md


def test_unreadable_data_section_is_reported_not_raised(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "config.toml").write_text('name = "x"\nseed = 0\n[data]\ndataset = "no-such-data"\n')
    md = write_report(run).read_text()
    assert "Label histograms not available" in md and "no-such-data" in md
    assert "Minority-class accuracy" not in md


def test_collateral_by_defense_reads_a_sweeps_no_attack_cells(tmp_path):
    """Krum's no-attack cell excludes honest client 7 in 3 rounds and client 8 in 1, of 9 honest clients x 3 rounds
    (4 / 27); FedAvg's excludes nobody; an attacked cell is not counted; the sweep report gets the table."""
    from fedsec.report.collateral import collateral_by_defense

    root = tmp_path / "sweep"
    make_run(root / "cells" / "krum")
    fedavg = make_run(root / "cells" / "fedavg")
    rows = list(csv.DictReader((fedavg / "clients.csv").open()))
    for row in rows:
        row["accepted"], row["status"] = ("0.0", "rejected") if row["client"] == "0" else (str(1 / 9), "accepted")
    _csv(fedavg / "clients.csv", rows)
    attacked = make_run(root / "cells" / "krum_attacked")
    _csv(root / "sweep.csv", [
        {"cell": "krum", "defense.strategy": "krum", "attack.kind": "none", "seed": 0, "status": "done",
         "run_dir": "cells/krum", "accuracy": 0.8},
        {"cell": "fedavg", "defense.strategy": "fedavg", "attack.kind": "none", "seed": 0, "status": "done",
         "run_dir": "cells/fedavg", "accuracy": 0.8},
        {"cell": "krum_attacked", "defense.strategy": "krum", "attack.kind": "sign_flip", "seed": 0,
         "status": "done", "run_dir": attacked.relative_to(root).as_posix(), "accuracy": 0.8},
    ])
    (root / "sweep.toml").write_text('base = "x.toml"\n[grid]\n"defense.strategy" = ["krum", "fedavg"]\n'
                                     '"attack.kind" = ["none", "sign_flip"]\n')
    table = collateral_by_defense(root).set_index("defense")
    assert table.loc["krum", "runs"] == 1 and table.loc["krum", "honest_exclusion_rate"] == 4 / 27
    assert table.loc["fedavg", "honest_exclusion_rate"] == 0.0
    assert table.loc["krum", "worst_class_recall"] == 0.2 and table.loc["krum", "worst_class"] == "0"
    md = write_report(root).read_text()
    assert "## Collateral damage per defense (no attack)" in md and (root / "collateral_by_defense.csv").is_file()
    assert f"| `krum` | 1 | {4 / 27:.4f} |" in md
