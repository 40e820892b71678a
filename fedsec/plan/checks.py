"""Plan-time checks of the sections that add threats and defenses beside the attack and the rule: poisoned data at
honest clients, client-side sanitization and adversarial training (the server's audits check themselves: each
hook's ``check``). Each refusal names its key."""

from __future__ import annotations

from pydantic import BaseModel

from fedsec.config import ConfigError, Experiment, SanitizeConfig
from fedsec.data import DatasetSpec
from fedsec.data.poison import PoisonError, poisoned_clients
from fedsec.registry import parse_params
from fedsec.sanitize import SANITIZERS, build_sanitizer
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
    if sanitize.method == "none" and sanitize.kind_keys:
        raise ConfigError(f"defense.sanitize.{sorted(sanitize.kind_keys)[0]}: a filter's key, but "
                          "defense.sanitize.method='none' runs no filter; set method or drop the key")
    if sanitize.method != "none":
        params = sanitize_params(sanitize)
        try:
            build_sanitizer(sanitize.method, **params.model_dump())
        except SanitizeError as err:
            raise ConfigError(str(err)) from None
    if e.train.adversarial.attack != "none" and not images:
        raise ConfigError(f"train.adversarial.attack={e.train.adversarial.attack!r}: evasion budgets are on image "
                          f"pixels in [0, 1]; {e.data.dataset!r} gives vectors")
    return poisoned



def sanitize_params(sanitize: SanitizeConfig) -> BaseModel:
    """The chosen filter's validated ``[defense.sanitize]`` keys (its ``Params``)."""
    cls = SANITIZERS.get(sanitize.method)
    return parse_params(cls.Params, sanitize.kind_keys, section="defense.sanitize",
                        kind=f"defense.sanitize.method={sanitize.method!r}")


def check_partition(e: Experiment, dataset: DatasetSpec) -> None:
    """Refuse a split of the training set that the partitioner cannot make at start (every client must get data),
    from the dataset's declared size and classes, without loading it; nothing to check when the size is not known
    (synthetic data, natural partitions).

    Exact for ``sampled`` (``samples_per_client`` <= the training set), ``iid`` and the other splits (at most one
    client per example), ``shards`` (a shard per example at most), ``size`` (the sizes sum to at most the training
    set) and ``linear``/``square``/``exponential`` (flwr-datasets' sizes, recomputed: the smallest must not round
    down to 0). ``dirichlet`` is random: each client must get ``min(10, N // num_clients)`` examples (what
    :func:`fedsec.data.federated.build_federated_data` asks) and the partitioner gives up after
    :data:`fedsec.data.partition.DIRICHLET_MAX_TRIES` draws; a client's count of each class is Beta-binomial
    (share ~ Beta(alpha, (n - 1) alpha) of N / C examples, classes taken as balanced), so the chance q that one
    client falls short is exact under that model, 1 - (1 - q)^n that a draw fails, and the config is refused
    when all the draws fail with an estimated probability above 1/2. Measured on digits against the partitioner
    (24 settings x 3 seeds): every refused setting failed for every seed; accepted ones near the boundary can
    still fail for some seeds (estimate 0.29: 1 of 3 seeds failed), and the run then stops at start naming the
    partition.
    """
    import math

    import numpy as np

    from fedsec.data.federated import MIN_CLIENT_EXAMPLES
    from fedsec.data.partition import DIRICHLET_MAX_TRIES

    data, total = e.data, dataset.train_size
    if total is None or data.partition == "natural":
        return
    n, name = data.num_clients, f"the {total:,} training examples of {data.dataset}"
    if data.partition == "sampled":
        if data.samples_per_client > total:
            raise ConfigError(f"data.samples_per_client={data.samples_per_client}: more than {name}; each client "
                              f"draws distinct examples: use at most {total}")
        return
    if n > total:
        raise ConfigError(f"data.num_clients={n}: more clients than {name}, so partition={data.partition!r} leaves "
                          f"clients without data; use at most {total} clients or partition='sampled'")
    if data.partition == "shards" and n * data.shards_per_client > total:
        raise ConfigError(f"data.shards_per_client={data.shards_per_client}: {n} clients x {data.shards_per_client} "
                          f"shards need at least {n * data.shards_per_client} examples, more than {name}; lower it")
    if data.partition == "size" and data.partition_sizes is not None and sum(data.partition_sizes) > total:
        raise ConfigError(f"data.partition_sizes: they sum to {sum(data.partition_sizes):,}, more than {name}")
    if data.partition in ("linear", "square", "exponential"):
        with np.errstate(all="ignore"):
            units = {"linear": lambda x: x, "square": np.square, "exponential": np.exp}[data.partition](
                np.linspace(1, n, n))
            sizes = np.nan_to_num(units / units.sum() * total, nan=0.0)
        if not sizes.min() >= 1:  # flwr-datasets rounds each size down (the remainder to the last client)
            raise ConfigError(f"data.num_clients={n}: partition={data.partition!r} gives the smallest client "
                              f"{sizes.min():.3g} of {name}, rounded down to none; use fewer clients")
    if data.partition == "dirichlet":
        need = max(1, min(MIN_CLIENT_EXAMPLES, total // n))
        per_class, a = total // dataset.num_classes, data.alpha
        b = (n - 1) * a
        log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)  # n >= 2 (data.num_clients), so b > 0
        pmf = [0.0] * need  # P(one client gets j examples of one class), j < need: Beta-binomial(per_class, a, b)
        for j in range(min(need, per_class + 1)):
            pmf[j] = math.exp(math.lgamma(per_class + 1) - math.lgamma(j + 1) - math.lgamma(per_class - j + 1)
                              + math.lgamma(j + a) + math.lgamma(per_class - j + b) - math.lgamma(per_class + a + b)
                              - log_beta)
        short = [1.0] + [0.0] * (need - 1)  # P(a client has j examples so far), j < need, over the classes
        for _ in range(dataset.num_classes):
            short = [sum(short[i] * pmf[j - i] for i in range(j + 1)) for j in range(need)]
        q = min(1.0, sum(short))
        draw_fails = 1.0 if q >= 1 else -math.expm1(n * math.log1p(-q))
        if draw_fails ** DIRICHLET_MAX_TRIES > 0.5:
            raise ConfigError(
                f"data.alpha={a:g}: partition='dirichlet' over {n} clients and {name} ({dataset.num_classes} "
                f"classes) leaves some client with fewer than {need} examples in a draw with probability "
                f"~{draw_fails:.3g} (estimated), so the partitioner's {DIRICHLET_MAX_TRIES} draws would very likely "
                "all fail at start; raise data.alpha, use fewer clients, or partition='iid'")


def used_weighting(e: Experiment) -> str:
    """``defense.weighting`` as the run applies it, so ``config.toml`` says what ran. Central DP weights every
    client 1 (a count would raise one client's sensitivity above clip_norm); CKKS weights by the reported counts
    or not at all: the server cannot cap a count inside a ciphertext, so "capped" runs as "uniform". A weighting
    set explicitly that the run cannot apply is refused; the default is written as used."""
    asked = e.defense.weighting
    if e.privacy.mode == "central":
        used, why = "uniform", "central DP weights every client 1 (user-level DP)"
    elif e.encryption.scheme in ("ckks", "secagg+") and asked == "capped":
        used, why = "uniform", (f"under encryption.scheme={e.encryption.scheme!r} the server cannot cap a count it "
                                "never sees next to the update; it supports 'reported' (clients weigh their update by "
                                "their count) or 'uniform'")
    else:
        return asked
    if asked != used and "weighting" in e.defense.model_fields_set:
        raise ConfigError(f"defense.weighting={asked!r}: {why}; use defense.weighting = {used!r}")
    return used
