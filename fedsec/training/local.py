"""The local-training loop every fedsec client runs (plain SGD, DP-SGD with Opacus, adversarial training).

:func:`local_sgd` is the one loop: for each epoch it asks a batch source for that epoch's mini-batches, lets an
optional hook rewrite each batch (adversarial training replaces part of it by adversarial examples), takes one
optimizer step per batch and feeds the loss to a :class:`LossMeter`. What differs between clients is only where
batches come from (:func:`shuffled_batches`: a seeded permutation, sliced; DP-SGD: Opacus' Poisson-sampling
loader), which optimizer steps (plain SGD or Opacus' DP optimizer), the loss reduction, and how the loss is
reported. Mini-batches are drawn from a seeded ``torch.Generator`` so the same (seed, round, client) trains
identically; tensors stay on the given device and batches are sliced from them directly (no DataLoader: the data
already sits in memory, and slicing avoids a per-batch collate cost that dominates for small models).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

Batch = tuple[torch.Tensor, torch.Tensor]
BatchSource = Callable[[int], Iterable[Batch]]  # epoch -> that epoch's mini-batches
BatchHook = Callable[[nn.Module, torch.Tensor, torch.Tensor], Batch]  # (model, x, y) -> the batch to train on
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    """What a local training run reports."""

    loss: float  # see LossMeter: mean loss over the last epoch (plain) or over all epochs (DP-SGD)
    num_examples: int
    num_steps: int


class LossMeter:
    """The training loss a client reports: the example-weighted mean over the last epoch, accumulated on the
    batches' device (``over="last_epoch"``), or over every epoch in Python floats (``over="all"``, as DP-SGD's
    variable-size Poisson batches are counted)."""

    def __init__(self, *, over: str = "last_epoch", num_examples: int = 0) -> None:
        if over not in ("last_epoch", "all"):
            raise ValueError(f"LossMeter: over={over!r}; use 'last_epoch' or 'all'")
        self.over, self.n = over, num_examples
        self._epoch: torch.Tensor | None = None
        self._total, self._seen, self.value = 0.0, 0, 0.0

    def start_epoch(self, device: torch.device) -> None:
        if self.over == "last_epoch":
            self._epoch = torch.zeros((), device=device)

    def add(self, loss: torch.Tensor, count: int) -> None:
        if self.over == "last_epoch":
            self._epoch += loss.detach() * count
        else:
            self._total, self._seen = self._total + float(loss) * count, self._seen + count

    def end_epoch(self) -> None:
        if self.over == "last_epoch":
            self.value = float(self._epoch) / self.n
        else:
            self.value = self._total / max(self._seen, 1)


def shuffled_batches(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, generator: torch.Generator) -> BatchSource:
    """Each epoch: a fresh seeded permutation of the examples, cut into mini-batches of ``batch_size``."""
    n = x.shape[0]

    def epoch_batches(_: int) -> Iterable[Batch]:
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

    return epoch_batches


def local_sgd(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: BatchSource,
    *,
    epochs: int,
    meter: LossMeter,
    device: torch.device,
    loss_fn: LossFn = F.cross_entropy,
    hook: BatchHook | None = None,
    num_examples: int,
) -> TrainResult:
    """Train ``model`` in place: ``epochs`` passes over ``batches(epoch)``, one ``optimizer`` step per batch."""
    model.train()
    steps = 0
    for epoch in range(epochs):
        meter.start_epoch(device)
        for xb, yb in batches(epoch):
            if hook is not None:
                xb, yb = hook(model, xb, yb)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            optimizer.step()
            meter.add(loss, len(yb))
            steps += 1
        meter.end_epoch()
    return TrainResult(loss=meter.value, num_examples=num_examples, num_steps=steps)


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
    hook: BatchHook | None = None,
) -> TrainResult:
    """Train ``model`` in place with SGD (momentum) on ``(x, y)`` for ``epochs`` shuffled passes."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = x.shape[0]
    return local_sgd(model, optimizer, shuffled_batches(x, y, batch_size=batch_size, generator=generator),
                     epochs=epochs, meter=LossMeter(over="last_epoch", num_examples=n), device=x.device, hook=hook,
                     num_examples=n)
