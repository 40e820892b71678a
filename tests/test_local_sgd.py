"""fedsec.training.sgd.LocalSGD: torch.optim.SGD's update bit for bit on CPU, without importing torch._dynamo."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedsec.training.sgd import LocalSGD


def _trained(make_optimizer, *, steps: int = 7) -> list[torch.Tensor]:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    frozen = nn.Parameter(torch.ones(2))  # never reached by the loss: no gradient, skipped, no momentum buffer
    params = [*model.parameters(), frozen]
    optimizer = make_optimizer(params)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 5, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("weight_decay", [0.0, 5e-3])
def test_equals_torch_sgd_bit_for_bit(momentum: float, weight_decay: float) -> None:
    ours = _trained(lambda ps: LocalSGD(ps, lr=0.1, momentum=momentum, weight_decay=weight_decay))
    theirs = _trained(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=momentum, weight_decay=weight_decay))
    start = _trained(lambda ps: LocalSGD(ps, lr=0.0), steps=1)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], start[0])  # it trained
    assert torch.equal(ours[-1], torch.ones(2))  # the parameter without a gradient is untouched


def test_momentum_is_kept_per_parameter_across_steps() -> None:
    w = nn.Parameter(torch.tensor([1.0]))
    sgd = LocalSGD([w], lr=1.0, momentum=0.5)
    for _ in range(2):
        sgd.zero_grad()
        (3 * w).sum().backward()  # g = 3 every step
        sgd.step()
    # b1 = 3, w = -2; b2 = 0.5 * 3 + 3 = 4.5, w = -6.5 (without momentum it would be -5)
    assert w.item() == -6.5


def test_zero_grad_in_place() -> None:
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    (w * w).sum().backward()
    LocalSGD([w], lr=0.1).zero_grad(set_to_none=False)
    assert torch.equal(w.grad, torch.zeros(2))


@pytest.mark.parametrize("key", ["lr", "momentum", "weight_decay"])
@pytest.mark.parametrize("value", [-0.1, float("nan")])
def test_negative_or_nan_hyperparameters_are_refused(key: str, value: float) -> None:
    kwargs = {"lr": 0.1, key: value}
    with pytest.raises(ValueError, match=f"{key}="):
        LocalSGD([nn.Parameter(torch.zeros(1))], **kwargs)


def test_a_clients_local_training_does_not_import_torch_dynamo() -> None:
    """What the module is for: a fresh process that trains as an honest client never pays torch._dynamo's import
    (torch.optim.SGD would: Optimizer.__init__ imports it)."""
    code = (
        "import sys, torch\n"
        "from fedsec.training import train_local\n"
        "model = torch.nn.Linear(4, 3)\n"
        "x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))\n"
        "train_local(model, x, y, epochs=1, batch_size=4, lr=0.1, momentum=0.9, generator=torch.Generator())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
