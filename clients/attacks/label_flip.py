"""Label flipping (data poisoning): malicious clients train on relabelled data.

Tolpegin et al., "Data Poisoning Attacks Against Federated Learning Systems", ESORICS 2020
(https://arxiv.org/abs/2007.08432): targeted flipping of a source class to a target class (their Fashion-MNIST
setting flips 6 "shirt" -> 0 "T-shirt/top"). Variants by the config keys present:

- ``source`` and ``target``: every example of ``source`` is relabelled ``target`` (targeted, the paper's attack);
- ``target`` only: every example is relabelled ``target`` (all-to-one);
- neither: every example gets a uniformly random *other* label (all-to-random; Fang et al., USENIX Security 2020).

Defaults: none; the kernel is pure and device-agnostic. Test metrics (targeted flipping): ``source_recall`` and
``flip_rate`` (share of source-class test inputs classified as the target).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

from fedsec.registry import Params
from fedsec.results.contract import AttackSuccess, Metric

from .base import Attack, AttackContext, Predict


def flip_labels(
    y: torch.Tensor,
    *,
    num_classes: int,
    source: int | None = None,
    target: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The poisoned labels (a new tensor; ``y`` is not modified)."""
    if source is not None and target is None:
        raise ValueError("label_flip: a source class needs a target class")
    if source is not None:
        return torch.where(y == source, torch.full_like(y, target), y)
    if target is not None:
        return torch.full_like(y, target)
    if generator is None:
        raise ValueError("label_flip: all-to-random flipping needs a seeded generator")
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes


class LabelFlipParams(Params):
    """``[attack]`` keys of ``kind = "label_flip"``."""

    source: int | None = Field(None, ge=0, le=100_000, description="class whose examples are relabelled.")
    target: int | None = Field(None, ge=0, le=100_000, description="the label attackers aim for.")

    @model_validator(mode="after")
    def _check_pair(self) -> LabelFlipParams:
        if self.source is not None:
            if self.target is None:
                raise ValueError(f"attack.source={self.source}: targeted label flipping needs attack.target too")
            if self.source == self.target:
                raise ValueError(f"attack.target={self.target}: must differ from attack.source={self.source}")
        return self


class LabelFlip(Attack):
    """Label flipping: source -> target, all-to-one (target) or all-to-random (neither)."""

    kind = "label_flip"
    description = "data poisoning: source->target (keys source, target), all-to-one (target) or all-to-random"
    Params = LabelFlipParams
    metrics = (Metric("source_recall", "label flip: recall of the source class", better="higher"),
               Metric("flip_rate", "label flip: source-class test inputs classified as the target class",
                      better="lower"))
    success = AttackSuccess("source_recall", invert=True)

    @property
    def source(self) -> int | None:
        return self.params.source

    @property
    def target(self) -> int | None:
        return self.params.target

    def poison_data(self, x, y, ctx: AttackContext):
        return x, flip_labels(y, num_classes=ctx.num_classes, source=self.source, target=self.target,
                              generator=ctx.generator)

    def test_metrics(self, state: Any, predict: Predict, x: torch.Tensor, y: torch.Tensor,
                     recall: list[float]) -> dict[str, float]:
        if self.source is None:
            return {}
        source = y == self.source
        return {"source_recall": recall[self.source],
                "flip_rate": float((predict(x[source]) == self.target).double().mean())}
