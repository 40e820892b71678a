"""The local-training loop every fedsec client runs (plain SGD, DP-SGD with Opacus, adversarial training).

:func:`local_sgd` is the one loop: for each epoch it asks a batch source for that epoch's mini-batches, lets an
optional hook rewrite each batch (adversarial training replaces part of it by adversarial examples), takes one
optimizer step per batch and feeds the loss to a :class:`LossMeter`. What differs between clients is only where
batches come from (:func:`shuffled_batches`: a seeded permutation, sliced; DP-SGD: Opacus' Poisson-sampling
loader), which optimizer steps (plain SGD or Opacus' DP optimizer), the loss reduction, and how the loss is
reported. Mini-batches are drawn from a seeded ``torch.Generator`` so the same (seed, round, client) trains
identically; tensors stay on the given device and batches are sliced from them directly (no DataLoader: the data
already sits in memory, and slicing avoids a per-batch collate cost that dominates for small models).

The client's algorithm (``train.algorithm``, :func:`train_local`): FedAvg's client is that loop (McMahan et al.,
AISTATS 2017); FedProx's (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
https://arxiv.org/abs/1812.06127) is the same loop with the gradient of (mu/2)||w - w_global||^2 added after each
backward pass (:func:`proximal_gradient`; mu = 0 adds exactly zero, so it trains exactly as FedAvg); FedSGD's
(McMahan et al. 2017, B = all, E = 1) is one step on the full-batch gradient (:func:`full_batch_step`). An
attacker's own objective (constrain-and-scale's anomaly term, ``clients/attacks/constrain_and_scale.py``) enters the
same way (:func:`objective_gradient`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F

from .sgd import LocalSGD

Batch = tuple[torch.Tensor, torch.Tensor]
BatchSource = Callable[[int], Iterable[Batch]]  # epoch -> that epoch's mini-batches
BatchHook = Callable[[nn.Module, torch.Tensor, torch.Tensor], Batch]  # (model, x, y) -> the batch to train on
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GradHook = Callable[[], None]  # called after each backward pass, before the optimizer step


class Stepper(Protocol):
    """What the loop asks of an optimizer: :class:`~.sgd.LocalSGD`, or a ``torch.optim.Optimizer`` (Opacus')."""

    def zero_grad(self, set_to_none: bool = ...) -> None: ...

    def step(self) -> Any: ...


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
    optimizer: Stepper,
    batches: BatchSource,
    *,
    epochs: int,
    meter: LossMeter,
    device: torch.device,
    loss_fn: LossFn = F.cross_entropy,
    hook: BatchHook | None = None,
    num_examples: int,
    after_backward: GradHook | None = None,
) -> TrainResult:
    """Train ``model`` in place: ``epochs`` passes over ``batches(epoch)``, one ``optimizer`` step per batch
    (``after_backward``: called between each backward pass and its step, e.g. FedProx's proximal gradient)."""
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
            if after_backward is not None:
                after_backward()
            optimizer.step()
            meter.add(loss, len(yb))
            steps += 1
        meter.end_epoch()
    return TrainResult(loss=meter.value, num_examples=num_examples, num_steps=steps)


def proximal_gradient(model: nn.Module, mu: float) -> GradHook:
    """FedProx's proximal term (Li et al. 2020): a function that adds mu (w - w_0), the gradient of
    (mu/2)||w - w_0||^2, to each parameter's gradient, w_0 being the parameters as they are now (the global model
    the client received). The reported loss stays the data loss."""
    anchors = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def add() -> None:
        for p, anchor in anchors:
            if p.grad is not None:
                p.grad.add_(p.detach() - anchor, alpha=mu)
            elif mu:  # a parameter the loss did not reach still has the proximal term's gradient
                p.grad = mu * (p.detach() - anchor)

    return add


#: an extra term of the local objective: (weight of the data loss, penalty(delta) with delta = w - w_global flat)
Objective = tuple[float, Callable[[torch.Tensor], torch.Tensor]]


def objective_gradient(model: nn.Module, objective: Objective) -> GradHook:
    """A function that turns each step's data-loss gradient g into the gradient of ``weight * loss + penalty(delta)``:
    g <- weight * g + d penalty / d w, with delta = w - w_0 flattened in the order of the model's state dict (the
    order of the arrays a client sends) and w_0 the parameters as they are now (the global model the client
    received). Buffers are not trained and stay out of delta (their entries are zero)."""
    weight, penalty = objective
    state = model.state_dict(keep_vars=True)
    params = {id(p): p for p in model.parameters() if p.requires_grad}
    layout: list[tuple[torch.Tensor | None, torch.Tensor, int, int]] = []  # (param or None, anchor, start, size)
    offset = 0
    for value in state.values():
        size = value.numel()
        trained = params.get(id(value))
        layout.append((trained, value.detach().clone(), offset, size))
        offset += size

    def add() -> None:
        pieces = [(p.detach() - anchor).flatten() if p is not None else torch.zeros_like(anchor).flatten()
                  for p, anchor, _, _ in layout]
        delta = torch.cat(pieces).requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(penalty(delta), delta)
        for p, _, start, size in layout:
            if p is None:
                continue
            extra = grad[start:start + size].view_as(p)
            if p.grad is None:
                p.grad = extra.clone()
            else:
                p.grad.mul_(weight).add_(extra)

    return add


def full_batch_step(
    model: nn.Module,
    optimizer: Stepper,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk_size: int,
    hook: BatchHook | None = None,
) -> TrainResult:
    """FedSGD's client (McMahan et al. 2017): one ``optimizer`` step on the gradient of the mean cross-entropy over
    all n examples of ``(x, y)``, accumulated over consecutive chunks of ``chunk_size`` examples (each chunk's summed
    loss / n: the full-batch gradient, with at most ``chunk_size`` examples in memory at once; with momentum, the
    single step from a fresh optimizer is plain SGD). Reports the full-batch loss at the received weights."""
    model.train()
    n = x.shape[0]
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=x.device)
    for start in range(0, n, chunk_size):
        xb, yb = x[start : start + chunk_size], y[start : start + chunk_size]
        if hook is not None:
            xb, yb = hook(model, xb, yb)
        loss = F.cross_entropy(model(xb), yb, reduction="sum") / n
        loss.backward()
        total += loss.detach()
    optimizer.step()
    return TrainResult(loss=float(total), num_examples=n, num_steps=1)


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
    algorithm: str = "fedavg",
    proximal_mu: float = 0.0,
    objective: Objective | None = None,
) -> TrainResult:
    """Train ``model`` in place with SGD (momentum; :class:`~.sgd.LocalSGD`, ``torch.optim.SGD``'s update) on
    ``(x, y)``: ``algorithm`` "fedavg" = ``epochs`` shuffled passes of mini-batches; "fedprox" = the same with the
    proximal term of ``proximal_mu`` around the starting weights (:func:`proximal_gradient`), and ``objective`` an
    attacker's extra term (:func:`objective_gradient`); "fedsgd" = one full-batch step (:func:`full_batch_step`;
    ``epochs`` must be 1, ``batch_size`` is the chunk the gradient is accumulated over; neither extra term applies)."""
    optimizer = LocalSGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = x.shape[0]
    if algorithm == "fedsgd":
        if epochs != 1:
            raise ValueError(f"train.local_epochs={epochs}: FedSGD takes one full-batch step per round")
        return full_batch_step(model, optimizer, x, y, chunk_size=batch_size, hook=hook)
    if algorithm not in ("fedavg", "fedprox"):
        raise ValueError(f"train.algorithm={algorithm!r}: use 'fedavg', 'fedprox' or 'fedsgd'")
    hooks = [proximal_gradient(model, proximal_mu)] if algorithm == "fedprox" else []
    if objective is not None:  # after the proximal term: it weighs the whole data-side gradient
        hooks.append(objective_gradient(model, objective))

    def after_backward() -> None:
        for add in hooks:
            add()

    return local_sgd(model, optimizer, shuffled_batches(x, y, batch_size=batch_size, generator=generator),
                     epochs=epochs, meter=LossMeter(over="last_epoch", num_examples=n), device=x.device, hook=hook,
                     num_examples=n, after_backward=after_backward if hooks else None)
