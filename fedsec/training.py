"""Local training and evaluation loops in plain PyTorch (no Flower types).

Mini-batches are drawn from a seeded ``torch.Generator`` so the same (seed, round, client) trains identically;
tensors stay on the given device and batches are sliced from them directly (no DataLoader: the data already sits
in memory, and slicing avoids a per-batch collate cost that dominates for small models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TrainResult:
    """What a local training run reports."""

    loss: float  # mean training loss over the last epoch
    num_examples: int
    num_steps: int


@dataclass(frozen=True)
class EvalResult:
    """Accuracy, loss and per-class recall of a model on a labelled set."""

    accuracy: float
    loss: float
    per_class_recall: list[float]  # NaN for a class without examples
    num_examples: int


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    generator: torch.Generator,
) -> TrainResult:
    """Train ``model`` in place with SGD (momentum) on ``(x, y)`` for ``epochs`` shuffled passes."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = x.shape[0]
    steps = 0
    last_epoch_loss = 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        total = torch.zeros((), device=x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.detach() * idx.numel()
            steps += 1
        last_epoch_loss = float(total) / n
    return TrainResult(loss=last_epoch_loss, num_examples=n, num_steps=steps)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, num_classes: int, batch_size: int = 2048
) -> EvalResult:
    """Accuracy, mean cross-entropy and per-class recall of ``model`` on ``(x, y)``."""
    model.eval()
    n = x.shape[0]
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    predictions = []
    for start in range(0, n, batch_size):
        logits = model(x[start : start + batch_size])
        loss_sum += F.cross_entropy(logits, y[start : start + batch_size], reduction="sum").double()
        predictions.append(logits.argmax(dim=1))
    pred = torch.cat(predictions)
    correct = pred == y
    per_class_total = torch.bincount(y, minlength=num_classes).double()
    per_class_correct = torch.bincount(y[correct], minlength=num_classes).double()
    recall = torch.where(per_class_total > 0, per_class_correct / per_class_total, torch.nan)
    return EvalResult(
        accuracy=float(correct.double().mean()),
        loss=float(loss_sum) / n,
        per_class_recall=[float(r) for r in recall.cpu()],
        num_examples=n,
    )
