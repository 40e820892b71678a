"""Plan-time checks of the sections that add threats and defenses beside the attack and the rule: poisoned data at
honest clients, client-side sanitization, adversarial training and the server's audits. Each refusal names its key."""

from __future__ import annotations

from fedsec.config import ConfigError, Experiment
from fedsec.data import DatasetSpec
from fedsec.data.poison import PoisonError, poisoned_clients
from fedsec.sanitize import build_sanitizer
from fedsec.sanitize.base import SanitizeError
from fedsec.schedule import Schedule


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


def check_audits(e: Experiment, dataset: DatasetSpec, schedule: Schedule) -> None:
    """Check ``[audit.*]`` against the dataset and the schedule."""
    audit, images = e.audit, len(dataset.input_shape) == 3
    if audit.evasion is not None:
        if not images:
            raise ConfigError(f"audit.evasion: evasion budgets are on image pixels in [0, 1]; {e.data.dataset!r} "
                              "gives vectors")
        if dataset.test_size is not None and audit.evasion.examples > dataset.test_size:
            raise ConfigError(f"audit.evasion.examples={audit.evasion.examples}: larger than the test set of "
                              f"{e.data.dataset} ({dataset.test_size}); use at most {dataset.test_size}")
    if audit.inversion is not None:
        inv = audit.inversion
        if not images:
            raise ConfigError(f"audit.inversion: reconstructions are scored as images; {e.data.dataset!r} gives "
                              "vectors")
        bad_rounds = [r for r in inv.rounds if not 1 <= r <= e.rounds]
        if bad_rounds:
            raise ConfigError(f"audit.inversion.rounds={inv.rounds}: rounds {bad_rounds} do not exist (1..{e.rounds})")
        bad = [c for c in inv.clients if not 0 <= c < e.data.num_clients]
        if bad:
            raise ConfigError(f"audit.inversion.clients={inv.clients}: ids {bad} are not clients "
                              f"(0..{e.data.num_clients - 1})")
        for r in inv.rounds:
            missing = [c for c in inv.clients if c not in schedule.sampled(r)]
            if missing:
                raise ConfigError(f"audit.inversion.clients={inv.clients}: clients {missing} do not train in round {r} "
                                  f"(sampled: {schedule.sampled(r)}); pick sampled clients or other rounds")
    if audit.membership is not None and audit.membership.target == "client":
        c = audit.membership.client
        if not 0 <= c < e.data.num_clients:
            raise ConfigError(f"audit.membership.client={c}: not a client (0..{e.data.num_clients - 1})")
        if not any(c in schedule.sampled(r) for r in range(1, e.rounds + 1)):
            raise ConfigError(f"audit.membership.client={c}: never trains in the planned rounds; pick another")
    if audit.model_inversion is not None and audit.model_inversion.enabled and not images:
        raise ConfigError(f"audit.model_inversion: class representatives are images; {e.data.dataset!r} gives vectors")
