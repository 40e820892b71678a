"""Pictures for the evasion audit: a grid of clean inputs, perturbations and adversarial inputs with the model's
labels, and robust accuracy R against the L-inf budget epsilon (matplotlib, Agg backend; nothing is shown).

Goodfellow et al. (ICLR 2015, https://arxiv.org/abs/1412.6572), figure 1, shows the same clean / perturbation /
adversarial triple; the perturbation row here is amplified to the full grey range (0.5 = unchanged) so an
epsilon of 0.1 stays visible, and its amplification factor is printed in the row title.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ._figures import save_figure
from .evasion import EvasionConfigError
from .input_space import InputSpace


def _images(x: torch.Tensor | np.ndarray, space: InputSpace, name: str) -> np.ndarray:
    """(n, C, H, W) or (n, H, W) model-unit inputs -> (n, H, W) or (n, H, W, 3) pixels in [0, 1]."""
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise EvasionConfigError(
            f"{name}: shape {arr.shape} is not a batch of 1- or 3-channel images; the picture grid needs image data "
            "(fashion-mnist, digits), not vectors"
        )
    pixels = space.to_pixels(torch.from_numpy(arr)).numpy()
    return pixels[:, 0] if pixels.shape[1] == 1 else pixels.transpose(0, 2, 3, 1)


def plot_adversarial_grid(
    clean: torch.Tensor | np.ndarray,
    adversarial: torch.Tensor | np.ndarray,
    labels_clean: Sequence[int],
    labels_adv: Sequence[int],
    path: str | Path,
    *,
    space: InputSpace,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Save a 3-row grid (clean, amplified perturbation, adversarial), one column per example; returns ``path``.

    ``clean``/``adversarial``: (n, C, H, W) in model units; ``labels_*``: the model's predicted labels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean_px, adv_px = _images(clean, space, "clean"), _images(adversarial, space, "adversarial")
    if clean_px.shape != adv_px.shape or len(labels_clean) != len(clean_px) or len(labels_adv) != len(adv_px):
        raise EvasionConfigError(
            f"plot_adversarial_grid: clean {clean_px.shape}, adversarial {adv_px.shape}, {len(labels_clean)} and "
            f"{len(labels_adv)} labels must describe the same examples"
        )
    delta = adv_px - clean_px
    peak = float(np.abs(delta).max()) or 1.0
    shown = 0.5 + delta / (2 * peak)

    def name(label: int) -> str:
        return class_names[int(label)] if class_names is not None else str(int(label))

    n = len(clean_px)
    fig, axes = plt.subplots(3, n, figsize=(1.4 * n, 4.6), squeeze=False)
    rows = (
        ("clean", clean_px, labels_clean),
        (f"perturbation x{0.5 / peak:.1f}", shown, None),
        ("adversarial", adv_px, labels_adv),
    )
    for r, (title, images, labels) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(images[c], cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if labels is not None:
                ax.set_title(name(labels[c]), fontsize=8)
        axes[r][0].set_ylabel(title, fontsize=8)
    return save_figure(fig, path, dpi=100)


def plot_robustness_curve(
    epsilons: Sequence[float],
    accuracies_by_attack: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    clean_accuracy: float | None = None,
) -> Path:
    """Save robust accuracy R against epsilon, one line per attack (and the clean accuracy, dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for attack, values in accuracies_by_attack.items():
        if len(values) != len(epsilons):
            raise EvasionConfigError(
                f"plot_robustness_curve: {attack} has {len(values)} accuracies for {len(epsilons)} epsilons"
            )
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for attack, values in accuracies_by_attack.items():
        ax.plot(list(epsilons), list(values), marker="o", label=attack)
    if clean_accuracy is not None:
        ax.axhline(clean_accuracy, linestyle="--", color="grey", label="clean")
    ax.set_xlabel("epsilon (L-inf, pixels in [0, 1])")
    ax.set_ylabel("robust accuracy R")
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=100)
