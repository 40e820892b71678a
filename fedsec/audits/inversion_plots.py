"""Pictures for the privacy audits: originals next to reconstructions, class representatives, membership ROC.

The ROC is drawn on log-log axes, as Carlini et al. (IEEE S&P 2022, https://arxiv.org/abs/2112.03570) recommend,
so the low-FPR region that matters for privacy is visible. Images are shown on pixel scale [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ._figures import save_figure  # noqa: E402
from .input_space import UNIT, InputSpace  # noqa: E402
from .lira import MembershipResult  # noqa: E402

DPI = 120


def _image(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) pixels -> (H, W) or (H, W, C) for imshow."""
    x = x.detach().cpu().double()
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _save_grid(fig: plt.Figure, axes: np.ndarray, path: str | Path, title: str | None) -> Path:
    """An image grid without axes, under an optional title."""
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=DPI)


def plot_reconstructions(
    originals: torch.Tensor,
    reconstructions: torch.Tensor,
    path: str | Path,
    *,
    psnr: Sequence[float] | torch.Tensor | None = None,
    input_space: InputSpace = UNIT,
    labels: Sequence[int] | None = None,
    recovered_labels: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Two rows: originals (top) and their matched reconstructions (bottom, PSNR in the titles); model units in."""
    n = originals.shape[0]
    a, b = input_space.to_pixels(originals), input_space.to_pixels(reconstructions)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n + 0.4, 3.6), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(_image(a[i]), cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title("original" + (f" y={int(labels[i])}" if labels is not None else ""), fontsize=8)
        axes[1, i].imshow(_image(b[i]), cmap="gray", vmin=0, vmax=1)
        parts = []
        if psnr is not None:
            parts.append(f"{float(psnr[i]):.1f} dB")
        if recovered_labels is not None:
            parts.append(f"y={int(recovered_labels[i])}")
        axes[1, i].set_title(" ".join(parts) or "reconstruction", fontsize=8)
    return _save_grid(fig, axes, path, title)


def plot_class_representatives(
    representatives: torch.Tensor,
    path: str | Path,
    *,
    classes: Sequence[int],
    class_means: torch.Tensor | None = None,
    scores: Sequence[float] | None = None,
    input_space: InputSpace = UNIT,
    title: str | None = None,
) -> Path:
    """Representatives per class (top row) above the true class means (bottom row, pixels in [0, 1]) if given."""
    k = representatives.shape[0]
    rows = 2 if class_means is not None else 1
    fig, axes = plt.subplots(rows, k, figsize=(1.5 * k + 0.4, 1.8 * rows), squeeze=False)
    reps = input_space.to_pixels(representatives)
    for i in range(k):
        label = f"class {classes[i]}" + (f"\n{float(scores[i]):.2f}" if scores is not None else "")
        axes[0, i].imshow(_image(reps[i]), cmap="gray", vmin=0, vmax=1)
        axes[0, i].set_title(label, fontsize=8)
        if class_means is not None:
            axes[1, i].imshow(_image(class_means[classes[i]]), cmap="gray", vmin=0, vmax=1)
            axes[1, i].set_title("class mean", fontsize=8)
    return _save_grid(fig, axes, path, title)


def plot_roc(results: MembershipResult | Sequence[MembershipResult], path: str | Path, *, title: str | None = None):
    """Log-log ROC curves of one or more membership attacks, with the chance diagonal."""
    results = [results] if isinstance(results, MembershipResult) else list(results)
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    floor = 1e-4
    for r in results:
        ax.plot(np.maximum(r.fpr, floor), np.maximum(r.tpr, floor), label=f"{r.attack} AUC={r.auc:.3f}")
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlabel="false positive rate", ylabel="true positive rate")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, dpi=DPI)
