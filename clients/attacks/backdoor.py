"""Backdoor (data poisoning with a trigger), optionally with model replacement, and its distributed variant.

- BadNets: Gu et al., "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain", 2017
  (https://arxiv.org/abs/1708.06733): a pixel-pattern trigger stamped on a share of the attacker's training
  examples, relabelled to the target class. Defaults here: a 3x3 square of the data's maximum value in the
  bottom-right corner (1 pixel margin), ``poison_ratio = 0.5`` of the attacker's local examples (so of each
  local batch in expectation), ``target = 0``.
- Model replacement: Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020
  (https://arxiv.org/abs/1807.00459): the attacker scales its update by ``boost`` (their gamma = n / eta, the
  number of clients over the server learning rate) so that it survives averaging. Default ``boost = 1`` (none).
- DBA: Xie et al., "DBA: Distributed Backdoor Attacks against Federated Learning", ICLR 2020
  (https://openreview.net/forum?id=rkgyS0VFvr): the global trigger is split into 4 local triggers (here: four
  1x4 bars in the top-left corner, 1-pixel gaps), attacker i stamps local trigger i mod 4; the model is
  evaluated with the union (the global trigger). ``trigger = "dba"``.

Kernels are pure and device-agnostic; masks are boolean tensors of the input shape (C, H, W).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from fedsec.errors import ConfigError
from fedsec.registry import Params
from fedsec.results.contract import AttackSuccess, Metric

from .base import Attack, AttackContext, Predict
from .scaling import scale_update

TRIGGERS = ("square", "dba")
DBA_PARTS = 4


def trigger_mask(input_shape: tuple[int, ...], *, trigger: str = "square", part: int | None = None) -> torch.Tensor:
    """Boolean (C, H, W) mask of the trigger's pixels; for "dba", ``part`` selects one local trigger (None = all)."""
    if len(input_shape) != 3:
        raise ValueError(f"backdoor triggers need image inputs (C, H, W), got {input_shape}")
    _, h, w = input_shape
    mask = torch.zeros(input_shape, dtype=torch.bool)
    if trigger == "square":
        if h < 5 or w < 5:
            raise ValueError(f"a 3x3 trigger with a 1-pixel margin needs images of at least 5x5, got {h}x{w}")
        mask[:, h - 4 : h - 1, w - 4 : w - 1] = True
    elif trigger == "dba":
        if h < 1 + 2 * DBA_PARTS or w < 10:
            raise ValueError(f"the DBA trigger needs images of at least {1 + 2 * DBA_PARTS}x10, got {h}x{w}")
        parts = range(DBA_PARTS) if part is None else [part % DBA_PARTS]
        for p in parts:
            # bars at rows 1, 3 (left block) and columns 1..4 / 6..9: two bars per row pair, as in DBA's Fig. 2
            row = 1 + 2 * (p // 2)
            col = 1 + 5 * (p % 2)
            mask[:, row, col : col + 4] = True
    else:
        raise ValueError(f"unknown trigger {trigger!r}; use one of {TRIGGERS}")
    return mask


def stamp(x: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """Inputs (N, C, H, W) with the mask's pixels set to ``value`` (a new tensor)."""
    return torch.where(mask.to(x.device), torch.as_tensor(value, dtype=x.dtype, device=x.device), x)


def poison_examples(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mask: torch.Tensor,
    value: float,
    target: int,
    ratio: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stamp the trigger on ``round(ratio * N)`` randomly chosen examples and relabel them ``target``."""
    n = x.shape[0]
    k = int(round(ratio * n))
    chosen = torch.randperm(n, generator=generator)[:k].to(x.device)
    x_out, y_out = x.clone(), y.clone()
    x_out[chosen] = stamp(x[chosen], mask, value)
    y_out[chosen] = target
    return x_out, y_out


class BackdoorParams(Params):
    """``[attack]`` keys of ``kind = "backdoor"``."""

    target: int = Field(0, ge=0, le=100_000, description="the label triggered inputs are relabelled to.")
    poison_ratio: float = Field(0.5, gt=0, le=1, description="share of local examples poisoned.")
    boost: float = Field(1.0, gt=0, le=1e6,
                         description="model-replacement scale of the update, in (0, 1e6] (1 = none).")
    trigger: Literal["square", "dba"] = Field("square", description="trigger pattern.")


class Backdoor(Attack):
    """BadNets trigger + relabel, optional model replacement (``boost``), DBA's distributed trigger."""

    kind = "backdoor"
    description = "BadNets trigger + relabel (target, poison_ratio, trigger=square|dba), model replacement (boost)"
    Params = BackdoorParams

    @classmethod
    def check_data(cls, params: BackdoorParams, *, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().check_data(params, input_shape=input_shape, num_classes=num_classes)
        if len(input_shape) != 3:
            raise ConfigError(f"attack.kind='backdoor': needs image data, the dataset gives vectors {input_shape}")

    @property
    def target(self) -> int:
        return self.params.target

    def poison_data(self, x, y, ctx: AttackContext):
        part = ctx.attacker_rank if self.params.trigger == "dba" else None
        mask = trigger_mask(tuple(x.shape[1:]), trigger=self.params.trigger, part=part)
        return poison_examples(x, y, mask=mask, value=ctx.data_max, target=self.target,
                               ratio=self.params.poison_ratio, generator=ctx.generator)

    def poison_update(self, update, ctx: AttackContext):
        return scale_update(update, self.params.boost) if self.params.boost != 1.0 else update

    def prepare_test(self, x: torch.Tensor, y: torch.Tensor, *, data_max: float) -> Any:
        """The test inputs whose label is not the target, with the full trigger stamped (DBA: the union)."""
        keep = y != self.target
        mask = trigger_mask(tuple(x.shape[1:]), trigger=self.params.trigger)
        return stamp(x[keep], mask, data_max)

    metrics = (Metric("attack_success_rate", "backdoor: triggered non-target test inputs classified as the target",
                      better="lower"),)
    success = AttackSuccess("attack_success_rate")

    def test_metrics(self, state: Any, predict: Predict, x: torch.Tensor, y: torch.Tensor,
                     recall: list[float]) -> dict[str, float]:
        """``attack_success_rate``: share of triggered non-target test inputs classified as the target."""
        return {"attack_success_rate": float((predict(state) == self.target).double().mean())}
