"""PNG plots of a run: what a person looks at first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_rounds(rounds: list[dict[str, Any]], out_dir: Path, *, title: str) -> list[Path]:
    """Accuracy and test loss per round (``plots/accuracy.png``)."""
    from .contract import number

    rounds = [r for r in rounds if number(r.get("accuracy")) is not None]  # [eval] every: the evaluated rounds
    xs = [int(r["round"]) for r in rounds]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    ax_acc.plot(xs, [float(r["accuracy"]) for r in rounds], marker="o", label="test accuracy")
    ax_acc.set(xlabel="round", ylabel="accuracy", ylim=(0, 1), title=f"{title}: accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    ax_loss.plot(xs, [float(r["loss"]) for r in rounds], marker="o", color="tab:red", label="test loss")
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title=f"{title}: test loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="upper right")
    path = out_dir / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
