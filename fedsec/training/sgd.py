"""Plain SGD with momentum and weight decay, as ``torch.optim.SGD`` computes it, without ``torch.optim.Optimizer``.

Why written here: constructing any ``torch.optim.Optimizer`` imports ``torch._dynamo`` on first use (torch 2.13:
``Optimizer.__init__`` is wrapped in ``torch._disable_dynamo``), about 1 s of CPU in a fresh process on the 2-core
CI machine and 2 s when the two client actors of a small run start together: most of such a run's first round
(``benchmarks/bench_startup.py`` prints the first round's seconds). Every fedsec client and server-side audit
that trains with plain SGD uses :class:`LocalSGD` instead; Opacus' DP-SGD keeps ``torch.optim.SGD``, which its
``DPOptimizer`` wraps.

The update is ``torch.optim.SGD``'s single-tensor path (the one it takes on CPU) with ``dampening = 0``,
``nesterov = False``, ``maximize = False``: for each parameter p with a gradient g,
``d = g + wd p``; ``b = d`` on its first step, else ``b = momentum b + d``; ``p -= lr b`` (``b = d`` without
momentum). The same operations in the same order, so on CPU the parameters equal ``torch.optim.SGD``'s bit for bit
(``tests/test_local_sgd.py``). On CUDA ``torch.optim.SGD`` takes its ``foreach`` kernels instead: the same
arithmetic, not checked bit for bit here (no GPU on the CI machine).

>>> import torch
>>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
>>> sgd = LocalSGD([w], lr=0.5, momentum=0.9)
>>> for _ in range(2):
...     sgd.zero_grad()
...     (w ** 2).sum().backward()  # g = 2 w
...     sgd.step()
>>> w.detach()  # step 1: b = (2, -4), w = (0, 0); step 2: g = 0, b = 0.9 b = (1.8, -3.6), w = (-0.9, 1.8)
tensor([-0.9000,  1.8000])
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class LocalSGD:
    """``torch.optim.SGD(params, lr, momentum, weight_decay)``'s update for the parameters ``params``.

    Parameters: ``params`` (iterable of tensors: the model's parameters), ``lr`` (float >= 0), ``momentum``
    (float >= 0, default 0: no momentum buffer), ``weight_decay`` (float >= 0, default 0). It offers the two
    methods a training loop calls, :meth:`zero_grad` and :meth:`step`; parameters whose gradient is ``None`` at a
    step are skipped and keep their momentum, as in PyTorch.
    """

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if not value >= 0.0:  # also refuses NaN, as torch.optim.SGD does
                raise ValueError(f"LocalSGD: {name}={value!r}; it must be >= 0")
        self.params = list(params)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self._buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear every parameter's gradient (set it to ``None``, or zero it in place)."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One SGD step on the gradients the parameters hold."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            grad = p.grad
            if self.weight_decay != 0:
                grad = grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self._buffers[i]
                if buf is None:
                    buf = self._buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1.0)
                grad = buf
            p.add_(grad, alpha=-self.lr)
