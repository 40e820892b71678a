"""Several clients' local DP-SGD in one pass: the stacked loop of :mod:`.vectorized` with per-sample clipping and
each client's own noise inside it.

DP-SGD: Abadi et al., "Deep Learning with Differential Privacy", CCS 2016 (https://arxiv.org/abs/1607.00133), with
Opacus' semantics exactly as :mod:`fedsec.privacy.dp_sgd` runs them for one client (its module docstring): an
epoch is ceil(n / batch_size) steps (:func:`fedsec.privacy.dp_sgd.epoch_sampling`), each on a Poisson batch (every
example with rate q = 1 / steps), per-sample gradients clipped to C with factor min(1, C / (norm + 1e-6)), summed,
N(0, (z C)^2) noise per coordinate drawn from the client's generator in parameter order, divided by the expected
batch size int(n q), then ``torch.optim.SGD``'s step. An empty batch takes its noise-only step.

Stacked: every client's parameters stacked to (clients, ...); each step, each client draws its own Poisson batch
from its own generator (the same draws, in the same order, as the per-client path: the batch, then the step's
noise), the batches are padded to the longest and masked; one ``torch.func.vmap`` over clients of a ``vmap`` over
examples of ``grad_and_value`` gives every client's per-sample gradients at once; the clipping and the masked sums
are batched; the noise is drawn client by client (each from its generator, so the draws match the per-client path).
A client past its steps keeps its parameters and momentum. Results equal the per-client path's up to
floating-point summation order (``tests/test_vectorized_dp.py``: within 1e-5 per parameter).

Why written here: as for :mod:`.vectorized`, Opacus and functorch vmap one model over examples; this nests that in
a vmap over clients with per-client Poisson batches, noise streams and optimiser state. Cost: the per-sample
gradients of a step are materialised for all clients at once, (clients x longest batch x parameters) floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedsec.privacy.dp_sgd import add_noise, epoch_sampling

from .vectorized import StackedResult, checked_sizes, stack_params, stacked_sgd_step

__all__ = ["StackedDPResult", "dp_train_stacked"]


@dataclass
class StackedDPResult(StackedResult):
    """:class:`.vectorized.StackedResult` (losses: summed loss / examples seen over all epochs, as the per-client
    DP path reports) and each client's accountant entries, one ``(noise multiplier, q, steps)`` per epoch."""

    entries: list[list[tuple[float, float, int]]]


def dp_train_stacked(
    model: nn.Module,
    xs: list[torch.Tensor],
    ys: list[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    max_grad_norm: float,
    noise_multipliers: list[float],
    generators: list[torch.Generator],
) -> StackedDPResult:
    """DP-SGD for one copy of ``model``'s parameters per client on ``(xs[i], ys[i])`` with noise multiplier
    ``noise_multipliers[i]``, all at once (``model`` is not changed). Every client needs at least one example."""
    from torch.func import functional_call, grad_and_value, vmap

    sizes = checked_sizes("dp_train_stacked", model, xs, [ys, noise_multipliers, generators],
                          "x, y, noise multiplier, generator")
    clients, device = len(xs), xs[0].device
    sampling = [epoch_sampling(n, batch_size) for n in sizes]  # (q, steps) per client, what the accountant gets
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params, data, labels = stack_params(model, xs, ys)

    def example_loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_example = vmap(vmap(grad_and_value(example_loss), in_dims=(None, 0, 0)))
    rows = torch.arange(clients, device=device)[:, None]
    loss_sums = [0.0] * clients
    seen = [0] * clients
    momenta: dict[str, torch.Tensor] | None = None
    was_training = model.training
    model.train()
    try:
        for _ in range(epochs):
            for step in range(max(steps for _, steps in sampling)):
                active = [step < steps for _, steps in sampling]
                batches = [torch.nonzero(torch.rand(n, generator=g) < q).flatten() if on else None
                           for n, (q, _), g, on in zip(sizes, sampling, generators, active, strict=True)]
                summed = _clipped_sums(per_example, params, data, labels, rows, batches, max_grad_norm,
                                       loss_sums, seen)
                grads = _noisy_means(summed, names, sizes, sampling, active, generators, noise_multipliers,
                                     max_grad_norm)
                momenta = stacked_sgd_step(params, grads, momenta, torch.tensor(active, device=device), lr=lr,
                                           momentum=momentum, weight_decay=weight_decay)
    finally:
        model.train(was_training)
    losses = [s / k if k else float("nan") for s, k in zip(loss_sums, seen, strict=True)]
    entries = [[(float(z), q, steps)] * epochs for z, (q, steps) in zip(noise_multipliers, sampling, strict=True)]
    return StackedDPResult(params={k: v.detach() for k, v in params.items()}, losses=losses,
                           num_steps=[steps * epochs for _, steps in sampling], entries=entries)


def _clipped_sums(per_example, params: dict[str, torch.Tensor], data: torch.Tensor, labels: torch.Tensor,
                  rows: torch.Tensor, batches: list[torch.Tensor | None], max_grad_norm: float,
                  loss_sums: list[float], seen: list[int]) -> dict[str, torch.Tensor]:
    """sum_i min(1, C / (||g_i|| + 1e-6)) g_i over each client's batch, per parameter (clients, ...); adds each
    client's summed loss and batch size to ``loss_sums`` / ``seen``. Inactive clients and empty batches give 0."""
    lengths = [0 if b is None else int(b.numel()) for b in batches]
    width = max(lengths)
    if width == 0:
        return {name: torch.zeros_like(p) for name, p in params.items()}
    index = torch.zeros((len(batches), width), dtype=torch.long, device=data.device)
    for i, b in enumerate(batches):
        if lengths[i]:
            index[i, : lengths[i]] = b.to(data.device)
    real = (torch.arange(width, device=data.device)[None, :]
            < torch.tensor(lengths, device=data.device)[:, None]).to(data.dtype)
    grads, losses = per_example(params, data[rows, index], labels[rows, index])  # (clients, width, ...), (c, w)
    norms = torch.stack([g.flatten(2).norm(2, dim=2) for g in grads.values()], dim=2).norm(2, dim=2)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * real
    for i, total in enumerate((losses.detach() * real).sum(1).tolist()):
        loss_sums[i] += total
        seen[i] += lengths[i]
    return {name: torch.einsum("cw,cw...->c...", factor, g) for name, g in grads.items()}


def _noisy_means(summed: dict[str, torch.Tensor], names: list[str], sizes: list[int],
                 sampling: list[tuple[float, int]], active: list[bool], generators: list[torch.Generator],
                 noise_multipliers: list[float], max_grad_norm: float) -> dict[str, torch.Tensor]:
    """Each active client's (sum + N(0, (z_i C)^2)) / int(n_i q_i), its noise drawn from its own generator in
    parameter order (:func:`fedsec.privacy.dp_sgd.add_noise`, as its per-client step does)."""
    out = {name: torch.zeros_like(summed[name]) for name in names}
    for i, on in enumerate(active):
        if not on:
            continue
        noisy = add_noise([summed[name][i] for name in names], max_grad_norm=max_grad_norm,
                          noise_multiplier=noise_multipliers[i],
                          expected_batch_size=int(sizes[i] * sampling[i][0]), generator=generators[i])
        for name, value in zip(names, noisy, strict=True):
            out[name][i] = value
    return out
