"""Several clients' local SGD in one pass: their parameters stacked, one ``torch.func`` forward and backward for all.

The per-client loop (:func:`fedsec.training.local.train_local`) runs a small model's forward and backward once per
client and mini-batch, which leaves a CPU (or GPU) mostly idle for FL-sized models. Here the clients of a cohort
that share the architecture and the local recipe train together: each parameter is stacked to (clients, ...),
``torch.func.vmap`` of :func:`torch.func.functional_call` gives every client's loss on its own mini-batch at once
and one backward pass of their sum every client's gradient, and the SGD update (momentum, weight decay: PyTorch's
``torch.optim.SGD`` semantics, dampening 0, no Nesterov) is applied to the stacks. Each client draws its own
batches exactly as the per-client path does (a ``torch.randperm`` of its examples from its own generator, every
epoch, sliced into ``batch_size``), so the two paths see the same batches in the same order; clients with fewer
examples run out of steps earlier and are masked: a padded example has weight 0, and a client without a batch at a
step keeps its parameters and momentum. The results equal the per-client path's up to floating-point summation order
(``tests/test_vectorized_training.py``: within 1e-5 per parameter).

Why written here: Opacus' and functorch's examples vmap one model over examples, not several models over clients
with their own optimiser state and batch schedules; this is that loop, small enough to read.

What it does not cover (:func:`why_not_vectorized` says why, and the caller falls back to the per-client path):
modules that keep running statistics or draw randomness in training (BatchNorm, Dropout), and recipes other than
plain local SGD (FedProx's proximal term, FedSGD, adversarial training, data filters, attacks). Local DP-SGD has
its own stacked loop on these pieces, :mod:`.stacked_dp_sgd`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence

__all__ = ["StackedResult", "checked_sizes", "stack_params", "stacked_sgd_step", "train_stacked", "why_not_vectorized"]

_STATEFUL = (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
             nn.AlphaDropout)


def why_not_vectorized(model: nn.Module) -> str:
    """'' when the model can train stacked; otherwise the reason (a module with running statistics or randomness
    in training mode, or buffers)."""
    for name, module in model.named_modules():
        if isinstance(module, _STATEFUL):
            return f"{type(module).__name__} at {name or 'the model'} (running statistics or randomness in training)"
    if any(True for _ in model.buffers()):
        return "the model has buffers"
    return ""


@dataclass
class StackedResult:
    """Each client's trained parameters (name -> (clients, ...)) and its training loss (the example-weighted mean
    over the last epoch, as :class:`fedsec.training.local.LossMeter` reports it)."""

    params: dict[str, torch.Tensor]
    losses: list[float]
    num_steps: list[int]


def train_stacked(
    model: nn.Module,
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    generators: list[torch.Generator],
) -> StackedResult:
    """Train one copy of ``model``'s current parameters per client on ``(xs[i], ys[i])``, all at once.

    ``model`` only supplies the architecture and the starting parameters (it is not changed). Every client needs
    at least one example. Returns the stacked trained parameters and each client's loss.
    """
    from torch.func import functional_call, vmap

    sizes = checked_sizes("train_stacked", model, xs, [ys, generators], "x, y, generator")
    clients, device = len(xs), xs[0].device
    params, data, labels = stack_params(model, xs, ys)
    momenta: dict[str, torch.Tensor] | None = None

    def batch_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        per_example = F.cross_entropy(functional_call(model, p, (x,)), y, reduction="none") * w
        total = per_example.sum()
        return total / w.sum().clamp_min(1.0), total

    # each client's loss depends on its own slice of the stacks only, so the gradient of their sum by the stacks
    # is every client's gradient at once: ordinary autograd through the vmapped forward (torch.func.grad under
    # vmap gives the same, but its first call imports torch._dynamo, about 1 s of a client process's first round)
    losses_of = vmap(batch_loss)

    def gradients(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        leaves = {name: value.detach().requires_grad_(True) for name, value in p.items()}
        means, totals = losses_of(leaves, x, y, w)
        found = torch.autograd.grad(means.sum(), list(leaves.values()), allow_unused=True, materialize_grads=True)
        return dict(zip(leaves, found, strict=True)), totals.detach()
    rows = torch.arange(clients, device=device)[:, None]
    steps_of = [-(-n // batch_size) for n in sizes]
    longest = max(sizes)  # every client's permutation padded to the longest; a step's columns end there too, so
    # clients smaller than a batch are not padded to it (6 columns, not 32, for clients of 6 examples at batch 32)
    real = torch.arange(longest, device=device)[None, :] < torch.tensor(sizes, device=device)[:, None]
    losses = torch.zeros(clients, dtype=torch.float64, device=device)
    was_training = model.training
    model.train()
    try:
        for _ in range(epochs):
            permutations = [torch.randperm(n, generator=g) for n, g in zip(sizes, generators, strict=True)]
            orders = pad_sequence(permutations, batch_first=True).to(device)
            losses.zero_()
            for step in range(max(steps_of)):
                columns = slice(step * batch_size, min((step + 1) * batch_size, longest))
                index, weight = orders[:, columns], real[:, columns].to(data.dtype)
                active = real[:, columns].any(dim=1)
                grads, totals = gradients(params, data[rows, index], labels[rows, index], weight)
                losses += totals.detach().double()
                with torch.no_grad():
                    momenta = stacked_sgd_step(params, grads, momenta, active, lr=lr, momentum=momentum,
                                               weight_decay=weight_decay)
    finally:
        model.train(was_training)
    per_client = (losses / torch.tensor(sizes, dtype=torch.float64, device=device)).tolist()
    return StackedResult(params={k: v.detach() for k, v in params.items()}, losses=per_client,
                         num_steps=[s * epochs for s in steps_of])


def checked_sizes(caller: str, model: nn.Module, xs: list[torch.Tensor], per_client: list[list], what: str
                  ) -> list[int]:
    """Each client's number of examples, after checking the stacked loops' inputs: one entry of ``xs`` and of each
    list in ``per_client`` per client (``what`` names them), at least one client, each with an example, and a model
    that can train stacked (:func:`why_not_vectorized`). Raises ``ValueError`` naming ``caller``."""
    if not xs or any(len(values) != len(xs) for values in per_client):
        raise ValueError(f"{caller}: one ({what}) per client, at least one client")
    if reason := why_not_vectorized(model):
        raise ValueError(f"{caller}: {reason}")
    sizes = [int(x.shape[0]) for x in xs]
    if min(sizes) < 1:
        raise ValueError(f"{caller}: every client needs at least one example")
    return sizes


def stack_params(model: nn.Module, xs: list[torch.Tensor], ys: list[torch.Tensor]
                 ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """``model``'s parameters repeated once per client (name -> (clients, ...)), and the clients' examples and
    labels zero-padded to the longest client: (clients, longest, ...) and (clients, longest)."""
    clients, sizes = len(xs), [int(x.shape[0]) for x in xs]
    params = {name: p.detach().unsqueeze(0).repeat(clients, *([1] * p.dim()))  # repeat copies
              for name, p in model.named_parameters()}
    if min(sizes) == max(sizes):  # one copy each, no padding
        return params, torch.stack(xs), torch.stack(ys)
    return params, pad_sequence(xs, batch_first=True), pad_sequence(ys, batch_first=True)


def stacked_sgd_step(params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
                     momenta: dict[str, torch.Tensor] | None, active: torch.Tensor, *, lr: float, momentum: float,
                     weight_decay: float) -> dict[str, torch.Tensor] | None:
    """``torch.optim.SGD``'s step on the stacks, for the active clients only (the others keep parameters and
    momentum): d = g + wd p; b = d on a client's first step, else momentum b + d; p -= lr b. Every client takes
    its first step at the run's first step (each has at least one batch), so one "first" flag serves all."""
    first = momenta is None
    new_momenta: dict[str, torch.Tensor] = {}
    everyone = bool(active.all())  # then torch.where(mask, new, old) is new: skip the select
    for name, p in params.items():
        mask = active.view(-1, *([1] * (p.dim() - 1)))
        d = grads[name] + weight_decay * p if weight_decay else grads[name]
        if momentum:
            if first:
                b = d
            else:
                b = momentum * momenta[name] + d
                if not everyone:
                    b = torch.where(mask, b, momenta[name])
            new_momenta[name] = b
            d = b
        params[name] = p - lr * d if everyone else torch.where(mask, p - lr * d, p)
    return new_momenta if momentum else None
