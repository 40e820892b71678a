"""The run directory (results contract in ``shared/README.md``).

``config.toml`` (resolved config), ``rounds.csv`` (one row per round, round 0 = initial model), ``clients.csv``
(one row per (round, client)), ``summary.json`` (final metrics, how the run stopped, versions, seed) and
``plots/``. Rows are appended and flushed as rounds finish, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from fedsec.config import Experiment

ROUND_COLUMNS = ["round", "accuracy", "loss", "seconds"]
CLIENT_COLUMNS = ["round", "client", "malicious", "num_examples", "update_norm", "accepted", "node", "status"]
_VERSIONED = ["fedsec", "flwr", "ray", "torch", "opacus", "tenseal", "numpy"]


def versions() -> dict[str, str]:
    """Versions of Python and the packages that decide a run's numbers."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _CsvAppender:
    """A CSV file written as rows arrive: appended and flushed, rewritten whole only when a row brings a new
    column (so a column that first appears in round 1, such as ``train_loss``, is never dropped)."""

    def __init__(self, path: Path, leading: list[str]) -> None:
        self.path = path
        self.leading = leading
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.rows.extend(rows)
        new = {k for row in rows for k in row} - set(self.columns)
        if new:
            rest = sorted((set(self.columns) | new) - set(self.leading))
            self.columns = [c for c in self.leading] + rest
            to_write, mode = self.rows, "w"
        else:
            to_write, mode = rows, "a"
        with self.path.open(mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if mode == "w":
                writer.writeheader()
            writer.writerows(to_write)


class RunDirectory:
    """Writes one run's results as they come in."""

    def __init__(self, path: str | Path, experiment: Experiment, *, config_toml: str | None = None) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "plots").mkdir(exist_ok=True)
        self.experiment = experiment
        self.rounds: list[dict[str, Any]] = []
        self._rounds_csv = _CsvAppender(self.path / "rounds.csv", ROUND_COLUMNS)
        self._clients_csv = _CsvAppender(self.path / "clients.csv", CLIENT_COLUMNS)
        (self.path / "config.toml").write_text(config_toml if config_toml is not None else experiment.to_toml())

    def add_round(self, row: dict[str, Any]) -> None:
        """Append one row of ``rounds.csv``."""
        self.rounds.append(row)
        self._rounds_csv.write([row])

    def add_clients(self, rows: list[dict[str, Any]]) -> None:
        """Append the rows of one round to ``clients.csv``."""
        self._clients_csv.write(rows)

    def finish(self, *, stopped_reason: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``summary.json`` and the plots; return the summary."""
        last = self.rounds[-1] if self.rounds else {}
        summary: dict[str, Any] = {
            "name": self.experiment.name,
            "seed": self.experiment.seed,
            "rounds_planned": self.experiment.rounds,
            "rounds_completed": max((int(r["round"]) for r in self.rounds), default=0),
            "stopped_reason": stopped_reason,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions(),
        }
        for key, value in last.items():
            if key not in ("round", "seconds") and not key.startswith("recall_"):
                summary[key] = _clean(value)
        summary.update(extra or {})
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
        if self.rounds:
            from fedsec.results.plots import plot_rounds

            plot_rounds(self.rounds, self.path / "plots", title=self.experiment.name)
        return summary
