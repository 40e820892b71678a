"""``attack.kind`` -> attack object, built from the validated attack config."""

from __future__ import annotations

from fedsec.config import AttackConfig

from .backdoor import poison_examples, trigger_mask
from .base import Attack, AttackContext
from .label_flip import flip_labels
from .model_poisoning import gaussian_update, scale_update, sign_flip


class LabelFlip(Attack):
    kind = "label_flip"

    def __init__(self, source: int | None, target: int | None) -> None:
        self.source, self.target = source, target

    def poison_data(self, x, y, ctx):
        return x, flip_labels(y, num_classes=ctx.num_classes, source=self.source, target=self.target,
                              generator=ctx.generator)


class Backdoor(Attack):
    kind = "backdoor"

    def __init__(self, target: int, poison_ratio: float, boost: float, trigger: str) -> None:
        self.target, self.poison_ratio, self.boost, self.trigger = target, poison_ratio, boost, trigger

    def poison_data(self, x, y, ctx):
        part = ctx.attacker_rank if self.trigger == "dba" else None
        mask = trigger_mask(tuple(x.shape[1:]), trigger=self.trigger, part=part)
        return poison_examples(x, y, mask=mask, value=ctx.data_max, target=self.target, ratio=self.poison_ratio,
                               generator=ctx.generator)

    def poison_update(self, update, ctx):
        return scale_update(update, self.boost) if self.boost != 1.0 else update


class SignFlip(Attack):
    kind = "sign_flip"

    def poison_update(self, update, ctx):
        return sign_flip(update)


class Scaling(Attack):
    kind = "scaling"

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def poison_update(self, update, ctx):
        return scale_update(update, self.scale)


class Gaussian(Attack):
    kind = "gaussian"

    def __init__(self, std: float) -> None:
        self.std = std

    def poison_update(self, update, ctx):
        return gaussian_update(update, self.std, ctx.generator)


def build_attack(config: AttackConfig) -> Attack:
    """The attack object for ``config.kind`` (the honest :class:`Attack` for "none")."""
    match config.kind:
        case "none":
            return Attack()
        case "label_flip":
            return LabelFlip(config.source, config.target)
        case "backdoor":
            return Backdoor(config.backdoor_target, config.poison_ratio, config.boost, config.trigger)
        case "sign_flip":
            return SignFlip()
        case "scaling":
            return Scaling(config.scale)
        case "gaussian":
            return Gaussian(config.std)
        case "alie" | "ipm" | "minmax" | "minsum":
            return Attack()  # crafted from benign updates: see fedsec.clients.malicious / fedsec.omniscient
    raise ValueError(f"attack.kind={config.kind!r}: no implementation")


__all__ = ["Attack", "AttackContext", "build_attack", "LabelFlip", "Backdoor", "SignFlip", "Scaling", "Gaussian"]
