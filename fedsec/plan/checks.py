"""Plan-time checks of the sections that add threats and defenses beside the attack and the rule: poisoned data at
honest clients, client-side sanitization and adversarial training (the server's audits check themselves: each
hook's ``check``). Each refusal names its key."""

from __future__ import annotations

from fedsec.config import ConfigError, Experiment
from fedsec.data import DatasetSpec
from fedsec.data.poison import PoisonError, poisoned_clients
from fedsec.sanitize import build_sanitizer
from fedsec.sanitize.base import SanitizeError


def check_data_defenses(e: Experiment, dataset: DatasetSpec) -> list[int]:
    """Check ``[data.poison]``, ``[defense.sanitize]`` and ``[train.adversarial]``; return the poisoned clients."""
    poison, images = e.data.poison, len(dataset.input_shape) == 3
    poisoned: list[int] = []
    if poison.kind != "none":
        if poison.kind == "targeted_flip" and (poison.source is None or poison.target is None):
            raise ConfigError("data.poison.kind='targeted_flip': needs data.poison.source and data.poison.target")
        if poison.kind == "trigger" and not images:
            raise ConfigError(f"data.poison.kind='trigger': needs image data, {e.data.dataset!r} gives vectors")
        for key in ("source", "target"):
            value = getattr(poison, key)
            if value is not None and value >= dataset.num_classes:
                raise ConfigError(f"data.poison.{key}={value}: outside the label set (0..{dataset.num_classes - 1})")
        try:
            poisoned = poisoned_clients(e.data.num_clients, clients=poison.clients, seed=e.seed)
        except PoisonError as err:
            raise ConfigError(str(err)) from None
        if not poisoned:
            raise ConfigError(f"data.poison.clients={poison.clients}: poisons no client (fraction x data.num_clients "
                              f"= {e.data.num_clients} rounds to 0); raise it or give ids")
    sanitize = e.defense.sanitize
    if sanitize.method != "none":
        keys = {"threshold": {"k": sanitize.k, "variant": sanitize.variant},
                "isolation_forest": {"contamination": sanitize.contamination, "features": sanitize.features},
                "label_issues": {"n_folds": sanitize.n_folds}}[sanitize.method]
        try:
            build_sanitizer(sanitize.method, **keys)
        except SanitizeError as err:
            raise ConfigError(str(err)) from None
    if e.train.adversarial.attack != "none" and not images:
        raise ConfigError(f"train.adversarial.attack={e.train.adversarial.attack!r}: evasion budgets are on image "
                          f"pixels in [0, 1]; {e.data.dataset!r} gives vectors")
    return poisoned

