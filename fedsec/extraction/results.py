"""The record an extraction attack returns and the result directory it writes (result.json, curve.csv, curve.png)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class CurvePoint:
    queries: int
    accuracy: float  # surrogate accuracy on held-out labelled data
    agreement: float | None  # share of held-out inputs where surrogate and target predict the same label


@dataclass
class ExtractionResult:
    method: str
    budget: int
    queries_spent: int = 0
    refused_requests: int = 0
    refused_queries: int = 0
    stopped_early: bool = False
    stop_decision: str = ""
    status: str = "ok"  # ok | stopped | failed
    reason: str = ""
    curve: list[CurvePoint] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def final_accuracy(self) -> float | None:
        return self.curve[-1].accuracy if self.curve else None

    @property
    def final_agreement(self) -> float | None:
        return self.curve[-1].agreement if self.curve else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["final_accuracy"] = self.final_accuracy
        d["final_agreement"] = self.final_agreement
        return d

    def record_stats(self, stats: Any) -> None:
        """Copy a :class:`~fedsec.extraction.client.QueryStats` in."""
        self.queries_spent = stats.queries_spent
        self.refused_requests = stats.refused_requests
        self.refused_queries = stats.refused_queries
        self.stopped_early = stats.stopped
        self.stop_decision = stats.stop_decision
        if stats.stopped and self.status == "ok":
            self.status = "stopped"
            self.reason = f"server refused further queries ({stats.stop_status} {stats.stop_decision})"


def write_result_dir(result: ExtractionResult, out: str | Path) -> Path:
    """Write result.json, curve.csv and curve.png under ``out``; returns ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2, default=float))
    with open(out / "curve.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["queries", "accuracy", "agreement"])
        for p in result.curve:
            w.writerow([p.queries, f"{p.accuracy:.6f}", "" if p.agreement is None else f"{p.agreement:.6f}"])
    if result.curve:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        q = [p.queries for p in result.curve]
        ax.plot(q, [p.accuracy for p in result.curve], marker="o", label="surrogate accuracy")
        if all(p.agreement is not None for p in result.curve):
            ax.plot(q, [p.agreement for p in result.curve], marker="s", label="agreement with target")
        ax.set_xlabel("queries answered")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{result.method} extraction ({result.status})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "curve.png", dpi=110)
        plt.close(fig)
    return out
