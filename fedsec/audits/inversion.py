"""Gradient inversion by an honest-but-curious server, from the model update a client sent it.

Methods (``method``):

- ``"dlg"``: Zhu, Liu, Han, "Deep Leakage from Gradients", NeurIPS 2019, https://arxiv.org/abs/1906.08935.
  L-BFGS on dummy data and dummy soft labels (softmax of free logits), squared L2 distance between gradients.
- ``"idlg"``: Zhao, Mopuri, Bilen, "iDLG: Improved Deep Leakage from Gradients", arXiv 2020,
  https://arxiv.org/abs/2001.02610. The label is read off the sign of the last layer's gradient, then DLG runs on
  the data alone.
- ``"ig"``: Geiping, Bauermeister, Droege, Moeller, "Inverting Gradients - How easy is it to break privacy in
  federated learning?", NeurIPS 2020, https://arxiv.org/abs/2003.14053. Cosine distance over all parameters plus
  total variation, Adam on the *signed* gradient, step decay x0.1 at 3/8, 5/8, 7/8 of the iterations, projection
  onto the input box after each step, restarts (the lowest final loss wins). Labels as in iDLG.

What the server knows: the architecture, the global parameters it sent, the update (client - global), and the
client's ``local_steps``, ``lr``, ``batch_size`` (and ``momentum``). With one local step on the whole batch the
update is ``-lr * gradient``, so the target gradient is ``-update / lr``. With several steps (Geiping et al. sec. 5,
"fedavg" setting) the attack unrolls the same SGD steps on the dummy data, differentiably, and matches the
resulting pseudo-gradient ``(global - client) / lr`` (the sum of the step directions).

Defaults: ``method="ig"``, ``iterations=2000``, ``restarts=1``, ``lr_attack`` 1.0 for L-BFGS (dlg, idlg) and 0.1 for
Adam (ig), ``tv_weight=1e-4``, ``seed=0``, ``input_space`` = pixels in [0, 1].

Differences from the papers:
- Dummy data starts uniform in the input box (the papers draw a standard normal). DLG/iDLG use L-BFGS with a
  strong-Wolfe line search (the reference code has none and often diverges) and project onto the box only at the
  end; a restart whose loss turns NaN is dropped.
- Labels of a batch > 1 (idlg, ig): the ``num_examples`` most negative entries of the last bias' gradient (Yin et
  al., CVPR 2021; exact when the labels are distinct). With ``true_labels`` given the attacker knows the labels
  (Geiping's setting) and nothing is recovered.
- Multi-step: batches are the dummy data's consecutive slices, cycled; the client's real shuffling between epochs is
  unknown to the server, so beyond one epoch the simulation only approximates it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from .image_metrics import psnr, ssim
from .input_space import UNIT, InputSpace

log = logging.getLogger(__name__)

METHODS = ("dlg", "idlg", "ig")
Params = Sequence[torch.Tensor | np.ndarray] | Mapping[str, torch.Tensor | np.ndarray] | torch.Tensor | np.ndarray


# ----------------------------------------------------------------------------------------------------- kernels


def l2_distance(grads: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """DLG's objective: sum over tensors of ``||g - t||^2`` (scalar)."""
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, target, strict=True))


def cosine_distance(grads: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverting Gradients' objective: ``1 - <g, t> / (|g| |t|)`` over all tensors jointly (scalar)."""
    dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
    g_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    t_norm = torch.sqrt(sum((t**2).sum() for t in target))
    return 1 - dot / (g_norm * t_norm + 1e-12)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation of a (N, C, H, W) batch: mean absolute difference of neighbouring pixels."""
    dx = (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().mean()
    dy = (x[:, :, :-1, :] - x[:, :, 1:, :]).abs().mean()
    return dx + dy


def simulate_pseudo_gradient(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    local_steps: int,
    lr: float,
    batch_size: int,
    momentum: float = 0.0,
) -> list[torch.Tensor]:
    """``(params_0 - params_K) / lr`` after ``local_steps`` SGD steps on ``x`` (N, ...) with labels ``y``.

    ``y`` is (N,) class indices or (N, num_classes) label probabilities. Step ``k`` uses the consecutive slice
    ``k mod ceil(N / batch_size)`` of ``x``; the graph stays differentiable in ``x`` and ``y``. With one step over
    the whole batch this is the mean-loss gradient itself.
    """
    names = list(params)
    current = dict(params)
    n = x.shape[0]
    num_batches = math.ceil(n / batch_size)
    buffers: list[torch.Tensor] | None = None
    total: list[torch.Tensor] | None = None
    for step in range(local_steps):
        start = (step % num_batches) * batch_size
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logits = functional_call(model, current, (xb,))
        if yb.dim() == 1:
            loss = F.cross_entropy(logits, yb)
        else:
            loss = -(yb * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        grads = torch.autograd.grad(loss, [current[k] for k in names], create_graph=True)
        buffers = list(grads) if buffers is None else [momentum * b + g for b, g in zip(buffers, grads, strict=True)]
        total = list(buffers) if total is None else [t + b for t, b in zip(total, buffers, strict=True)]
        if step + 1 < local_steps:
            current = {k: current[k] - lr * b for k, b in zip(names, buffers, strict=True)}
    assert total is not None
    return total


def recover_labels(
    last_weight_grad: torch.Tensor, last_bias_grad: torch.Tensor | None, num_examples: int
) -> torch.Tensor:
    """Labels from the last linear layer's gradient, (C, H) and (C,) -> (num_examples,) class indices.

    One example (iDLG): the true class is the row whose weight gradient sums negative (``(p_c - 1) h`` with
    ``h >= 0`` after ReLU), i.e. the row with the smallest sum. A batch: the ``num_examples`` most negative entries
    of the bias gradient (distinct labels assumed; with more examples than classes, classes repeat in that order).
    """
    score = last_bias_grad if last_bias_grad is not None else last_weight_grad.sum(dim=1)
    if num_examples == 1:
        return last_weight_grad.sum(dim=1).argmin().reshape(1)
    order = torch.argsort(score)
    return order[torch.arange(num_examples, device=order.device) % order.numel()]


# ---------------------------------------------------------------------------------------------------- records


class InversionConfigError(ValueError):
    """Bad gradient-inversion parameters; the message names the ``audit.inversion`` key and the fix."""


class InversionUnavailable(RuntimeError):
    """Raised when scoring a reconstruction that could not be made (no plaintext update)."""


@dataclass(frozen=True)
class InversionScore:
    """Fidelity of a reconstruction against the client's true examples (best matching order)."""

    psnr: torch.Tensor  # (N,) dB, pixel scale [0, 1]
    ssim: torch.Tensor  # (N,)
    assignment: torch.Tensor  # (N,) index of the reconstruction matched to each original
    label_accuracy: float | None  # multiset overlap of recovered and true labels / N

    @property
    def mean_psnr(self) -> float:
        return float(self.psnr.mean())

    @property
    def mean_ssim(self) -> float:
        return float(self.ssim.mean())


@dataclass(frozen=True)
class InversionResult:
    """What the attack produced; ``available=False`` (with ``reason``) when there was no plaintext update."""

    reconstructions: torch.Tensor | None  # (N, C, H, W) model units, inside the input box
    labels: torch.Tensor | None  # (N,) recovered (or given) labels
    loss: float  # final gradient-matching loss of the best restart (NaN when unavailable)
    method: str
    input_space: InputSpace = UNIT
    seconds: float = 0.0
    available: bool = True
    reason: str | None = None
    restart_losses: tuple[float, ...] = field(default_factory=tuple)

    @classmethod
    def unavailable(cls, reason: str, *, method: str) -> InversionResult:
        return cls(None, None, math.nan, method, available=False, reason=reason)

    def score(self, originals: torch.Tensor, labels: torch.Tensor | None = None) -> InversionScore:
        """PSNR/SSIM per original (pixel scale), under the PSNR-maximising one-to-one matching (Hungarian)."""
        if not self.available or self.reconstructions is None:
            raise InversionUnavailable(f"no reconstruction to score: {self.reason}")
        originals = torch.as_tensor(originals).to(self.reconstructions)
        if originals.shape != self.reconstructions.shape:
            raise InversionConfigError(
                f"originals.shape={tuple(originals.shape)}: must equal the reconstructions' "
                f"{tuple(self.reconstructions.shape)}; pass the client's examples in model units"
            )
        a = self.input_space.to_pixels(originals)
        b = self.input_space.to_pixels(self.reconstructions)
        n = a.shape[0]
        pairs_a = a.repeat_interleave(n, dim=0)
        pairs_b = b.repeat(n, 1, 1, 1)
        table = psnr(pairs_a, pairs_b).reshape(n, n).clamp(max=1e6)  # inf (identical) would break the solver
        _, cols = linear_sum_assignment(table.cpu().numpy(), maximize=True)
        assignment = torch.as_tensor(cols, dtype=torch.long)
        label_acc = None
        if labels is not None and self.labels is not None:
            true = torch.bincount(torch.as_tensor(labels).cpu().long(), minlength=256)
            got = torch.bincount(self.labels.cpu().long(), minlength=256)
            label_acc = float(torch.minimum(true, got).sum()) / n
        return InversionScore(
            psnr=psnr(a, b[assignment]), ssim=ssim(a, b[assignment]), assignment=assignment, label_accuracy=label_acc
        )


# ------------------------------------------------------------------------------------------------------ attack


def _plaintext_list(obj: Params | None, names: list[str], shapes: list[torch.Size], key: str) -> list[torch.Tensor]:
    """Flat vector / state dict / list of arrays -> list of tensors shaped like the model's parameters."""
    if isinstance(obj, Mapping):
        missing = [k for k in names if k not in obj]
        if missing:
            raise InversionConfigError(f"{key}: missing parameters {missing}; pass the model's full state dict")
        items = [obj[k] for k in names]
    elif isinstance(obj, torch.Tensor | np.ndarray) and (obj.ndim == 1 or len(names) == 1):
        flat = torch.as_tensor(np.asarray(obj) if isinstance(obj, np.ndarray) else obj).flatten()
        total = sum(math.prod(s) for s in shapes)
        if flat.numel() != total:
            raise InversionConfigError(f"{key}: flat vector of {flat.numel()} values, the model has {total}")
        items = list(torch.split(flat, [math.prod(s) for s in shapes]))
    else:
        items = list(obj)  # type: ignore[arg-type]
        if len(items) != len(names):
            raise InversionConfigError(f"{key}: {len(items)} arrays, the model has {len(names)} parameter tensors")
    out = []
    for name, shape, item in zip(names, shapes, items, strict=True):
        if not isinstance(item, torch.Tensor | np.ndarray):
            item = item.numpy()  # e.g. a Flower ``Array``
        t = torch.as_tensor(np.asarray(item) if isinstance(item, np.ndarray) else item).detach().float().clone()
        if t.numel() != math.prod(shape):
            raise InversionConfigError(f"{key}[{name}]: {t.numel()} values, the model needs shape {tuple(shape)}")
        out.append(t.reshape(shape))
    return out


def _is_array(obj: object) -> bool:
    """A plaintext array: tensor, ndarray, or an object with ``.numpy()`` (Flower ``Array``); not a ciphertext."""
    return isinstance(obj, torch.Tensor | np.ndarray) or callable(getattr(obj, "numpy", None))


def _is_plaintext(obj: object) -> bool:
    if isinstance(obj, torch.Tensor | np.ndarray):
        return True
    if isinstance(obj, Mapping):
        return len(obj) > 0 and all(_is_array(v) for v in obj.values())
    if isinstance(obj, Sequence) and not isinstance(obj, str | bytes):
        return len(obj) > 0 and all(_is_array(v) for v in obj)
    return False


def _last_linear(model: nn.Module, names: list[str]) -> tuple[int, int | None]:
    """Indices (in ``names``) of the last nn.Linear's weight and bias."""
    last = None
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = mod_name
    if last is None:
        raise InversionConfigError("model: label recovery (idlg, ig) needs a final nn.Linear layer; use dlg")
    prefix = f"{last}." if last else ""
    bias = names.index(prefix + "bias") if prefix + "bias" in names else None
    return names.index(prefix + "weight"), bias


class GradientInversion:
    """Reconstruct a client's training examples from its update (DLG, iDLG, Inverting Gradients).

    Parameters:
        model_factory (Callable[[], nn.Module] | nn.Module): the architecture; only its structure is used.
        method (str, default "ig"): "dlg" | "idlg" | "ig".
        iterations (int, default 2000): optimiser steps (L-BFGS outer steps of up to 20 evaluations for dlg/idlg).
        restarts (int, default 1): independent random starts; the lowest final loss wins.
        lr_attack (float | None, default None): step size; None = 1.0 (L-BFGS) or 0.1 (Adam, ig).
        tv_weight (float, default 1e-4): total-variation weight (ig only).
        seed (int, default 0): seeds the dummy data.
        input_space (InputSpace, default pixels in [0, 1]): the box constraint and the pixel mapping for scoring.
    """

    def __init__(
        self,
        model_factory: Callable[[], nn.Module] | nn.Module,
        *,
        method: str = "ig",
        iterations: int = 2000,
        restarts: int = 1,
        lr_attack: float | None = None,
        tv_weight: float = 1e-4,
        seed: int = 0,
        input_space: InputSpace = UNIT,
    ) -> None:
        self.model = model_factory if isinstance(model_factory, nn.Module) else model_factory()
        self.method = method
        self.iterations = iterations
        self.restarts = restarts
        self.lr_attack = lr_attack if lr_attack is not None else (0.1 if method == "ig" else 1.0)
        self.tv_weight = tv_weight
        self.seed = seed
        self.input_space = input_space
        self._check_params()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _check_params(self) -> None:
        key = "audit.inversion"
        if self.method not in METHODS:
            raise InversionConfigError(f"{key}.method={self.method!r}: unknown; use {' | '.join(METHODS)}")
        for name in ("iterations", "restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InversionConfigError(f"{key}.{name}={value!r}: must be an integer >= 1; use e.g. 1")
        if not (isinstance(self.lr_attack, int | float) and self.lr_attack > 0):
            raise InversionConfigError(f"{key}.lr_attack={self.lr_attack!r}: must be > 0; use 0.1 (ig) or 1 (dlg)")
        if not (isinstance(self.tv_weight, int | float) and self.tv_weight >= 0):
            raise InversionConfigError(f"{key}.tv_weight={self.tv_weight!r}: must be >= 0; use 1e-4")
        if not isinstance(self.input_space, InputSpace):
            raise InversionConfigError(f"{key}.input_space={self.input_space!r}: must be an InputSpace")
        if not any(isinstance(m, nn.Conv2d | nn.Linear) for m in self.model.modules()):
            raise InversionConfigError("model_factory: the model has no Linear/Conv2d layer to invert")

    def reconstruct(
        self,
        global_params: Params,
        update: Params | None,
        *,
        num_examples: int,
        input_shape: tuple[int, ...],
        local_steps: int = 1,
        lr: float,
        batch_size: int | None = None,
        momentum: float = 0.0,
        true_labels: torch.Tensor | None = None,
    ) -> InversionResult:
        """Reconstruct ``num_examples`` inputs of ``input_shape`` from ``update`` = client params - global params.

        ``update`` that is not plaintext (None, a ciphertext such as a TenSEAL ``CKKSVector``) gives a result with
        ``available=False`` and the reason; nothing is attacked. ``batch_size`` defaults to ``num_examples``.
        """
        if not _is_plaintext(update):
            kind = "nothing" if update is None else type(update).__name__
            if isinstance(update, Sequence) and len(update) and not isinstance(update, str | bytes):
                kind = f"a list of {type(update[0]).__name__}"
            reason = f"no plaintext update available: the server holds {kind} (encrypted aggregation hides updates)"
            log.info("gradient inversion skipped: %s", reason)
            return InversionResult.unavailable(reason, method=self.method)
        key = "audit.inversion"
        batch_size = num_examples if batch_size is None else batch_size
        checks = {"num_examples": num_examples, "local_steps": local_steps, "batch_size": batch_size}
        for name, value in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InversionConfigError(f"{key}.{name}={value!r}: must be an integer >= 1")
        if not lr > 0:
            raise InversionConfigError(f"train.lr={lr!r}: the client's learning rate must be > 0 to invert updates")
        names = [n for n, _ in self.model.named_parameters()]
        last = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
        num_classes = last[-1].out_features if last else None
        if num_classes is None and self.method == "dlg" and true_labels is None:
            raise InversionConfigError("model: dlg needs a final nn.Linear layer to size its dummy labels")
        shapes = [p.shape for _, p in self.model.named_parameters()]
        device = next(self.model.parameters()).device
        theta = [t.to(device) for t in _plaintext_list(global_params, names, shapes, "global_params")]
        delta = [t.to(device) for t in _plaintext_list(update, names, shapes, "update")]
        target = [-d / lr for d in delta]
        if true_labels is not None:
            labels = torch.as_tensor(true_labels).long().reshape(-1).to(device)
            if labels.numel() != num_examples:
                raise InversionConfigError(f"true_labels: {labels.numel()} labels for num_examples={num_examples}")
        elif self.method in ("idlg", "ig"):
            w, b = _last_linear(self.model, names)
            labels = recover_labels(target[w], None if b is None else target[b], num_examples)
        else:
            labels = None
        log.info(
            "gradient inversion: method=%s iterations=%d restarts=%d examples=%d local_steps=%d",
            self.method, self.iterations, self.restarts, num_examples, local_steps,
        )  # fmt: skip
        start = time.perf_counter()
        params = {n: t.requires_grad_(True) for n, t in zip(names, theta, strict=True)}
        gen = torch.Generator().manual_seed(self.seed)
        sim = {"local_steps": local_steps, "lr": lr, "batch_size": batch_size, "momentum": momentum}
        best: tuple[float, torch.Tensor, torch.Tensor | None] | None = None
        losses = []
        for _ in range(self.restarts):
            low, high = self.input_space.low, self.input_space.high
            x0 = (low + (high - low) * torch.rand((num_examples, *input_shape), generator=gen)).to(device)
            y0 = torch.randn((num_examples, num_classes or 1), generator=gen).to(device)
            if self.method == "ig":
                x, y, loss = self._run_ig(x0, labels, params, target, sim)
            else:
                x, y, loss = self._run_lbfgs(x0, y0 if labels is None else labels, params, target, sim)
            losses.append(loss)
            if math.isfinite(loss) and (best is None or loss < best[0]):
                best = (loss, x, y)
        seconds = time.perf_counter() - start
        if best is None:
            log.warning("gradient inversion: every restart diverged (NaN loss)")
            x = self.input_space.from_pixels(torch.full((num_examples, *input_shape), 0.5, device=device))
            best = (math.nan, x, labels)
        loss, x, y = best
        return InversionResult(
            reconstructions=x.clamp(self.input_space.low, self.input_space.high).detach(),
            labels=None if y is None else y.detach(),
            loss=loss,
            method=self.method,
            input_space=self.input_space,
            seconds=seconds,
            restart_losses=tuple(losses),
        )

    def _run_ig(self, x0, labels, params, target, sim):
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=self.lr_attack)
        n = self.iterations
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[n * 3 // 8, n * 5 // 8, n * 7 // 8], gamma=0.1)
        low, high = self.input_space.low, self.input_space.high
        loss = torch.tensor(math.nan)
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            grads = simulate_pseudo_gradient(self.model, params, x, labels, **sim)
            loss = cosine_distance(grads, target) + self.tv_weight * total_variation(x)
            (x.grad,) = torch.autograd.grad(loss, [x])
            x.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(low, high)
        if not torch.isfinite(loss):
            return x.detach(), labels, math.nan
        grads = simulate_pseudo_gradient(self.model, params, x.detach(), labels, **sim)
        final = float((cosine_distance(grads, target) + self.tv_weight * total_variation(x.detach())).detach())
        return x.detach(), labels, final

    def _run_lbfgs(self, x0, y_init, params, target, sim):
        x = x0.clone().requires_grad_(True)
        learn_labels = y_init.dtype.is_floating_point
        y_logits = y_init.clone().requires_grad_(True) if learn_labels else y_init
        variables = [x, y_logits] if learn_labels else [x]
        opt = torch.optim.LBFGS(variables, lr=self.lr_attack, line_search_fn="strong_wolfe")

        def labels_now():
            return F.softmax(y_logits, dim=1) if learn_labels else y_logits

        def closure():
            opt.zero_grad(set_to_none=True)
            grads = simulate_pseudo_gradient(self.model, params, x, labels_now(), **sim)
            loss = l2_distance(grads, target)
            loss.backward()
            return loss

        loss = math.nan
        for _ in range(self.iterations):
            loss = float(opt.step(closure).detach())
            if not math.isfinite(loss):
                return x.detach(), None, math.nan
            if loss < 1e-12:
                break
        with torch.no_grad():
            x.clamp_(self.input_space.low, self.input_space.high)
        final = float(closure().detach())
        labels = labels_now().argmax(dim=1) if learn_labels else y_logits
        return x.detach(), labels.detach(), final
