"""The peers' side of ``benchmarks/bench_peers.py``: the workload the driver wrote, and the same models as fedsec's.

Pure PyTorch and NumPy, imported by ``flower_plain.py`` and ``pfl_run.py`` in ``.venv-peers`` (and, on Ray's
workers, by the plain Flower ClientApp); nothing here imports fedsec. The architectures repeat fedsec's model
registry (``fedsec/models/zoo.py``) layer for layer, in the same ``nn.Sequential`` order, so a peer's
``state_dict`` has fedsec's keys and shapes: :func:`build_model` loads the driver's initial weights (fedsec's seeded
initial model) with ``strict=True`` and checks the parameter count the driver passed, so a different architecture
fails loudly instead of being timed.

- ``logreg``: flatten + linear.
- ``cnn``: fedsec's quickstart CNN: 5x5 convolutions of 16 and 32 channels (same padding), each with ReLU and 2x2
  max pooling, adaptive average pooling to 4x4, a 64-unit ReLU layer and the output layer (47k parameters on
  1x28x28 inputs with 10 classes).

The workload (:class:`Workload`): a JSON recipe (learning rate, momentum, batch size, epochs, rounds, clients per
round, seed, model) and an ``.npz`` holding the training and test arrays, each client's index array (fedsec's
partition: ``part_index`` sliced by ``part_offsets``), the clients fedsec's schedule samples in each round
(``sampled``, rounds x clients per round) and the initial weights (``init_0``, ``init_1``, ... in ``state_dict``
order, names in the recipe).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: flatten + linear (fedsec's ``logreg``)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """fedsec's ``cnn``: two 5x5 conv + ReLU + 2x2 max-pool blocks (16, 32 channels), 4x4 adaptive average
    pooling, FC 512 -> 64, ReLU, FC 64 -> classes."""
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


MODELS = {"logreg": logreg, "cnn": cnn}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@dataclass
class Workload:
    """One row's workload as the driver wrote it (arrays in memory, shared by all clients of this process)."""

    recipe: dict[str, Any]
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    part_index: np.ndarray
    part_offsets: np.ndarray
    sampled: np.ndarray  # (rounds, clients per round): fedsec's schedule
    initial: dict[str, np.ndarray]

    @property
    def eval_batch_size(self) -> int:
        """fedsec's evaluation batch size, which the peers evaluate in too (2,048 in recipes written before it)."""
        return int(self.recipe.get("eval_batch_size", 2048))

    @property
    def num_clients(self) -> int:
        return len(self.part_offsets) - 1

    def client_indices(self, client: int) -> np.ndarray:
        """The training-set indices of client ``client`` (fedsec's partition)."""
        return self.part_index[self.part_offsets[client] : self.part_offsets[client + 1]]


_CACHE: dict[str, Workload] = {}


def load_workload(recipe_path: str | Path) -> Workload:
    """The workload of ``recipe_path`` (JSON; its ``npz`` key names the arrays), read once per process."""
    key = str(recipe_path)
    if key not in _CACHE:
        recipe = json.loads(Path(recipe_path).read_text())
        with np.load(recipe["npz"]) as z:
            arrays = {name: z[name] for name in z.files}
        initial = {name: arrays[f"init_{i}"] for i, name in enumerate(recipe["state_keys"])}
        _CACHE.clear()
        _CACHE[key] = Workload(recipe, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                               arrays["part_index"], arrays["part_offsets"], arrays["sampled"], initial)
    return _CACHE[key]


def build_model(workload: Workload) -> nn.Module:
    """The recipe's model with fedsec's initial weights; raises if the architecture differs from fedsec's."""
    recipe = workload.recipe
    model = MODELS[recipe["model"]](tuple(recipe["input_shape"]), int(recipe["num_classes"]))
    if count_parameters(model) != recipe["num_parameters"]:
        raise ValueError(f"peer model {recipe['model']!r} has {count_parameters(model)} parameters, fedsec's has "
                         f"{recipe['num_parameters']}")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in workload.initial.items()}, strict=True)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 2048) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in batches of ``batch_size`` (pass the workload's
    ``eval_batch_size``, fedsec's)."""
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = model(torch.from_numpy(x[start : start + batch_size]))
        correct += int((logits.argmax(dim=1) == torch.from_numpy(y[start : start + batch_size])).sum())
    return correct / len(y)


def local_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: dict[str, Any],
              generator: torch.Generator) -> float:
    """Plain local training: ``local_epochs`` passes over a fresh seeded permutation cut into mini-batches of
    ``batch_size``, SGD with the recipe's lr, momentum and weight decay, a new optimizer (zero momentum) per call.
    Returns the mean training loss of the last epoch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                                weight_decay=recipe["weight_decay"])
    model.train()
    n, batch = x.shape[0], int(recipe["batch_size"])
    loss_sum = 0.0
    for _ in range(int(recipe["local_epochs"])):
        loss_sum = 0.0
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            loss_sum += float(loss) * len(idx)
    return loss_sum / max(n, 1)


def run_result(framework: str, setting: str, *, t0: float, marks: list[float], t_end: float,
               accuracy: dict[int, float], rounds: int, **extra: Any) -> dict[str, Any]:
    """One peer run's JSON line: start-up (to the first round mark), each round's seconds, accuracies by round."""
    return {
        "framework": framework,
        "setting": setting,
        "startup_s": marks[0] - t0,
        "round_s": [b - a for a, b in zip(marks, marks[1:], strict=False)],
        "accuracy": {str(k): v for k, v in sorted(accuracy.items())},
        "final_accuracy": accuracy[rounds],
        "wall_s": t_end - t0,
        **extra,
    }
