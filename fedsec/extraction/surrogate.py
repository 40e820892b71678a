"""Training and scoring a surrogate (stolen) model from the answers an endpoint gave; shared by the attacks."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsec.models import build_model
from fedsec.training import train_local


def answers_to_targets(labels: np.ndarray, probabilities: np.ndarray | None) -> torch.Tensor:
    """Soft targets (n, K) float32 when probabilities were answered, else hard labels (n,) int64."""
    if probabilities is not None:
        return torch.from_numpy(np.asarray(probabilities, dtype=np.float32))
    return torch.from_numpy(np.asarray(labels, dtype=np.int64))


def train_surrogate(
    x: np.ndarray,
    targets: torch.Tensor,
    *,
    model_name: str,
    num_classes: int,
    epochs: int,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
    min_steps: int = 150,
) -> nn.Module:
    """A fresh ``model_name`` trained with SGD on ``(x, targets)`` (cross-entropy; soft targets allowed).

    Small answer sets get more epochs, so that training takes at least ``min_steps`` SGD steps."""
    model = build_model(model_name, tuple(x.shape[1:]), num_classes, seed=seed)
    steps_per_epoch = -(-len(x) // batch_size)
    epochs = max(epochs, -(-min_steps // steps_per_epoch))
    train_local(
        model, torch.from_numpy(np.asarray(x, dtype=np.float32)), targets, epochs=epochs, batch_size=batch_size,
        lr=lr, momentum=momentum, generator=torch.Generator().manual_seed(seed),
    )
    return model.eval()


@torch.no_grad()
def predict_labels(model: nn.Module, x: np.ndarray, *, batch_size: int = 2048) -> np.ndarray:
    model.eval()
    xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return torch.cat([model(xt[i : i + batch_size]).argmax(1) for i in range(0, len(xt), batch_size)]).numpy()


def score_surrogate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, target_labels: np.ndarray | None
) -> tuple[float, float | None]:
    """(accuracy on ``y``, agreement with ``target_labels`` or None)."""
    pred = predict_labels(model, x)
    acc = float((pred == y).mean())
    agree = None if target_labels is None else float((pred == target_labels).mean())
    return acc, agree
