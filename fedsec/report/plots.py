"""The PNG plots of ``fedsec report``: one function per figure, plain numbers in, one PNG out.

Each function takes lists and dicts already read from a run or sweep directory (``None`` or NaN where a value is
missing), writes one PNG at ``path`` (dpi 110, titled, labelled, with a legend or colorbar) and returns ``path``.
:mod:`fedsec.report` decides which figures apply and assembles the documents around them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 110
Row = Mapping[str, float | None]

# rates in [0, 1] drawn next to accuracy, with the words a reader sees
ATTACK_LABELS = {
    "attack_success_rate": "attack success rate (backdoor)",
    "source_recall": "source-class recall",
    "flip_rate": "flip rate (source -> target)",
}


def _val(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _series(rows: Sequence[Row], key: str) -> tuple[list[int], list[float]]:
    """Rounds and values of ``key`` where the value is present."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if value is not None and math.isfinite(value):
            xs.append(int(_val(row["round"])))
            ys.append(float(value))
    return xs, ys


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _legend(ax: plt.Axes, entries: int, title: str) -> None:
    """Inside the axes for a few entries, outside on the right for more."""
    if entries <= 6:
        ax.legend(title=title, fontsize=8, title_fontsize=8, loc="best")
    else:
        ax.legend(title=title, fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _round_axis(ax: plt.Axes, rows: Sequence[Row]) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def plot_run_rounds(
    rows: Sequence[Row], path: Path, *, title: str, attack_window: tuple[int, int] | None = None
) -> Path:
    """Left: test accuracy and the attack's metrics per round (the rounds the attack acts in shaded).
    Right: test loss and mean local training loss per round."""
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    xs, ys = _series(rows, "accuracy")
    ax.plot(xs, ys, marker="o", color="tab:blue", label="test accuracy")
    for key, color in zip(ATTACK_LABELS, ("tab:red", "tab:purple", "tab:orange"), strict=True):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="s", linestyle="--", color=color, label=ATTACK_LABELS[key])
    if attack_window is not None:
        ax.axvspan(attack_window[0] - 0.5, attack_window[1] + 0.5, color="tab:red", alpha=0.07, label="attack active")
    ax.set(xlabel="round", ylabel="rate", ylim=(-0.02, 1.02), title=f"{title}: accuracy and attack per round")
    _round_axis(ax, rows)
    ax.legend(loc="best", fontsize=8)
    for key, color, label in (("loss", "tab:red", "test loss"), ("train_loss", "tab:gray", "train loss (mean)")):
        xs, ys = _series(rows, key)
        if xs:
            ax_loss.plot(xs, ys, marker="o", color=color, label=label)
    ax_loss.set(xlabel="round", ylabel="cross-entropy", title=f"{title}: loss per round")
    _round_axis(ax_loss, rows)
    ax_loss.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_robust_accuracy(rows: Sequence[Row], path: Path, *, title: str, attacks: Sequence[str]) -> Path:
    """Clean test accuracy and the robust accuracy (``robust_accuracy_<attack>`` columns: accuracy on the audit's
    adversarial test examples, the source surveys' R) per round, one line per evasion attack."""
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    xs, ys = _series(rows, "accuracy")
    ax.plot(xs, ys, marker="o", color="tab:blue", label="test accuracy (clean)")
    colors = plt.get_cmap("tab10")
    for k, attack in enumerate(attacks):
        xs, ys = _series(rows, f"robust_accuracy_{attack}")
        ax.plot(xs, ys, marker="s", linestyle="--", color=colors((k + 1) % colors.N),
                label=f"robust accuracy ({attack})")
    ax.set(xlabel="round", ylabel="accuracy", ylim=(-0.02, 1.02), title=f"{title}: clean and robust accuracy")
    _round_axis(ax, rows)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_run_epsilon(rows: Sequence[Row], path: Path, *, title: str, budget: float | None = None) -> Path:
    """Privacy spent (epsilon) per round, with the budget as a dashed line."""
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    xs, ys = _series(rows, "epsilon")
    ax.plot(xs, ys, marker="o", color="tab:green", label="epsilon spent")
    if budget is not None and math.isfinite(budget):
        ax.axhline(budget, color="black", linestyle="--", linewidth=1, label=f"budget {budget:g}")
    ax.set(xlabel="round", ylabel="epsilon", title=f"{title}: privacy spent per round")
    ax.set_ylim(bottom=0)
    _round_axis(ax, rows)
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_run_detection(rows: Sequence[Row], path: Path, *, title: str) -> Path:
    """Detection precision and recall per round (a missing point: nobody was flagged, or no attacker sampled)."""
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for key, color, marker in (("detection_precision", "tab:blue", "o"), ("detection_recall", "tab:orange", "s")):
        xs, ys = _series(rows, key)
        none = " (no value: nobody flagged)" if not xs and key == "detection_precision" else ""
        ax.plot(xs, ys, marker=marker, color=color, label=key.replace("_", " ") + none)
    ax.set(xlabel="round", ylabel="rate", ylim=(-0.02, 1.02), title=f"{title}: detection of malicious clients")
    _round_axis(ax, rows)
    ax.legend(loc="best")
    return _save(fig, path)


def plot_run_clients(clients: Sequence[Row], path: Path, *, title: str) -> Path:
    """Per round, malicious vs honest replies: share accepted (weight > 0), mean weight, mean update norm."""
    rounds = sorted({int(_val(c["round"])) for c in clients})
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    panels = (("accepted", "share accepted (weight > 0)"), ("weight", "mean aggregation weight"),
              ("update_norm", "mean update L2 norm"))
    for malicious, color, label in ((0.0, "tab:blue", "honest"), (1.0, "tab:red", "malicious")):
        group = [c for c in clients if _val(c.get("malicious")) == malicious]
        if not group:
            continue
        for ax, (what, ylabel) in zip(axes, panels, strict=True):
            ys = []
            for r in rounds:
                in_round = [c for c in group if int(_val(c["round"])) == r]
                if what == "accepted":
                    values = [float(_val(c.get("accepted")) > 0) for c in in_round]
                else:
                    values = [_val(c.get("accepted" if what == "weight" else what)) for c in in_round]
                values = [v for v in values if math.isfinite(v)]
                ys.append(float(np.mean(values)) if values else math.nan)
            ax.plot(rounds, ys, marker="o", color=color, label=label)
            ax.set(xlabel="round", ylabel=ylabel, title=ylabel)
    axes[0].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(f"{title}: how the server treated malicious and honest clients")
    return _save(fig, path)


@dataclass
class Heatmap:
    """One panel: ``values[i][j]`` for ``row_labels[i]`` x ``col_labels[j]`` (NaN = no finished cell)."""

    row_axis: str
    col_axis: str
    row_labels: list[str]
    col_labels: list[str]
    values: list[list[float]]
    subtitle: str = ""
    marked: list[tuple[int, int]] = field(default_factory=list)  # (row, column) cells outlined, e.g. the worst case


def plot_heatmaps(
    panels: Sequence[Heatmap], path: Path, *, title: str, cbar_label: str, cmap: str = "viridis",
    vmin: float = 0.0, vmax: float = 1.0,
) -> Path:
    """Annotated heatmaps on one color scale, one panel each (at most 3 per line), one colorbar."""
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = max(len(p.col_labels) for p in panels) * 1.3 + 2.5
    height = max(len(p.row_labels) for p in panels) * 0.6 + 1.8
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols + 1, height * nrows + 0.6),
                             constrained_layout=True, squeeze=False)
    colormap = plt.get_cmap(cmap).with_extremes(bad="#dddddd")
    image = None
    for ax, panel in zip(axes.flat, panels, strict=False):
        data = np.ma.masked_invalid(np.array(panel.values, dtype=float))
        image = ax.imshow(data, cmap=colormap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(panel.col_labels)), panel.col_labels, rotation=20 if len(panel.col_labels) > 3 else 0)
        ax.set_yticks(range(len(panel.row_labels)), panel.row_labels)
        ax.set(xlabel=panel.col_axis, ylabel=panel.row_axis, title=panel.subtitle)
        for i, row in enumerate(panel.values):
            for j, value in enumerate(row):
                if not math.isfinite(value):
                    ax.text(j, i, "n/a", ha="center", va="center", color="#555555", fontsize=9)
                    continue
                r, g, b, _ = colormap((value - vmin) / (vmax - vmin) if vmax > vmin else 0.5)
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=10,
                        color="white" if dark else "black")
        for i, j in panel.marked:
            ax.add_patch(plt.Rectangle((j - 0.47, i - 0.47), 0.94, 0.94, fill=False, edgecolor="black", linewidth=2.5))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, label=cbar_label, shrink=0.9)
    fig.suptitle(title)
    return _save(fig, path)


def plot_group_bars(
    labels: Sequence[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, *,
    title: str, xlabel: str, ylabel: str, ylim: tuple[float, float] | None = (0.0, 1.05),
) -> Path:
    """Grouped bars: for each label, one bar per series (mean) with its std as an error bar, values on top."""
    n = max(len(series), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, len(labels) * (0.5 + 0.45 * n) + 2), 4.5), constrained_layout=True)
    xs = np.arange(len(labels))
    for k, (name, (means, stds)) in enumerate(series.items()):
        pos = xs - 0.4 + width * (k + 0.5)
        heights = np.array([_val(m) for m in means], dtype=float)
        errors = np.nan_to_num(np.array([_val(s) for s in stds], dtype=float))
        bars = ax.bar(pos, np.nan_to_num(heights), width * 0.95, yerr=errors, capsize=3, label=name)
        for bar, height in zip(bars, heights, strict=True):
            text = "n/a" if not math.isfinite(height) else f"{height:.3f}"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, 0 if not math.isfinite(height) else height),
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(xs, labels, rotation=25 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


@dataclass
class Curve:
    """Mean (and std) over seeds of one group's metric per round; ``panel`` names the subplot it goes in."""

    label: str
    rounds: list[int]
    mean: list[float]
    std: list[float] = field(default_factory=list)
    panel: str = ""


def plot_group_curves(curves: Sequence[Curve], path: Path, *, title: str, ylabel: str, legend_title: str) -> Path:
    """One line per group (band: +- std over seeds), one subplot per distinct ``panel`` (at most 3 per line)."""
    panel_names = list(dict.fromkeys(c.panel for c in curves))
    ncols = min(3, len(panel_names))
    nrows = math.ceil(len(panel_names) / ncols)
    wide = max(sum(c.panel == name for c in curves) for name in panel_names) > 6
    fig, axes = plt.subplots(nrows, ncols, figsize=((8.0 if wide else 6.2) * ncols, 4.3 * nrows),
                             constrained_layout=True, squeeze=False, sharey=True)
    colors = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for ax, name in zip(axes.flat, panel_names, strict=False):
        mine = [c for c in curves if c.panel == name]
        for k, curve in enumerate(mine):
            color = colors(k % colors.N)
            ax.plot(curve.rounds, curve.mean, marker="o", markersize=3, color=color, label=curve.label)
            if curve.std and any(s > 0 for s in curve.std if math.isfinite(s)):
                mean, std = np.array(curve.mean), np.nan_to_num(np.array(curve.std))
                ax.fill_between(curve.rounds, mean - std, mean + std, color=color, alpha=0.15)
        ax.set(xlabel="round", ylabel=ylabel, title=name or title, ylim=(-0.02, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        _legend(ax, len(mine), legend_title)
    for ax in list(axes.flat)[len(panel_names):]:
        ax.axis("off")
    if panel_names != [""]:
        fig.suptitle(title)
    return _save(fig, path)


def plot_epsilon_accuracy(
    series: Mapping[str, Sequence[tuple[float, float, float, float]]], path: Path, *, title: str, legend_title: str,
) -> Path:
    """Final accuracy against final epsilon: per series, points ``(eps, eps_std, acc, acc_std)`` joined by eps."""
    fig, ax = plt.subplots(figsize=(9 if len(series) > 6 else 7, 4.5), constrained_layout=True)
    for name, points in series.items():
        pts = sorted(p for p in points if math.isfinite(p[0]) and math.isfinite(p[2]))
        if not pts:
            continue
        eps, eps_std, acc, acc_std = (np.nan_to_num(np.array(v, dtype=float)) for v in zip(*pts, strict=True))
        ax.errorbar(eps, acc, xerr=eps_std, yerr=acc_std, marker="o", capsize=3, label=name or "all cells")
    ax.set(xlabel="epsilon spent (final)", ylabel="final test accuracy", title=title)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    _legend(ax, len(series), legend_title)
    return _save(fig, path)
