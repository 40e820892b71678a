"""The run plan: an experiment's config turned, once, into the typed pieces a run needs.

``Experiment`` (the validated config) -> :func:`build_plan` -> :class:`RunPlan`: the seeded schedule (who trains
in which round, malicious ids, attack window), the dataset and model specs, the built attack, the strategy's class
and validated keys, the central-DP plan and the CKKS parameters. Every rule that needs a kind's own declaration is
checked here, from the registries, with no per-kind branch: a kind's keys against its ``Params``, an attack's keys
against the dataset, a rule's n-vs-f against ``train.clients_per_round``, a model against the dataset's inputs,
what combines with what. The server and the clients receive the pieces they need, never the whole experiment.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fedsec.clients.attacks import ATTACKS, Attack
from fedsec.clients.attacks.base import DefenseView
from fedsec.config import (
    BackendConfig,
    ConfigError,
    ConfigProblems,
    DataConfig,
    Experiment,
    SanitizeConfig,
    apply_overrides,
    experiment_from_dict,
    read_toml,
)
from fedsec.config.loading import one_line
from fedsec.crypto import CkksParams, CryptoError
from fedsec.crypto.secaggplus import SecAggPlusParams
from fedsec.data import DATASETS, DatasetSpec
from fedsec.hooks import HOOKS, RoundHook, RunFacts, ServerContext
from fedsec.models import MODELS, ModelSpec
from fedsec.privacy import PrivacyError, PrivacyPlan
from fedsec.privacy.one_run_audit import SEED_OFFSET, CanarySpec, ExampleCanarySpec
from fedsec.registry import parse_params
from fedsec.sanitize import SANITIZERS
from fedsec.schedule import Schedule, draw_malicious
from fedsec.strategies import (
    SERVER_OPTIMIZERS,
    STRATEGIES,
    RobustStrategy,
    ServerOptimizer,
    StrategyContext,
    plan_pre_aggregators,
)
from fedsec.strategies.pre import resolved_pre

from .checks import check_data_defenses, check_partition, sanitize_params, used_weighting
from .federation import build_buffer, build_federation
from .privacy import central_privacy_plan
from .secagg import check_secagg

__all__ = ["HookPlan", "PrivacyPlan", "RunPlan", "ServerPlan", "build_plan", "drop_unused_kind_keys", "load_plan",
           "plan_from_dict"]


@dataclass(frozen=True)
class HookPlan:
    """One round hook of a run: its class and its validated keys."""

    cls: type[RoundHook]
    params: BaseModel

    def build(self, ctx: ServerContext) -> RoundHook:
        return self.cls(self.params, ctx)


@dataclass(frozen=True)
class ServerPlan:
    """What the server needs of a run, and nothing more: the facts its hooks read, the hooks, how to build the
    strategy, and how long to wait for replies. The server never sees the experiment config."""

    facts: RunFacts
    hooks: tuple[HookPlan, ...]
    make_strategy: Callable[..., RobustStrategy]  # (key_authority=, server_update_fn=, completed_rounds=)
    round_timeout: float
    needs_server_update: bool = False  # FLTrust: the rule trusts an update the server computes on root data
    root_size: int = 0
    make_optimizer: Callable[[], ServerOptimizer] = ServerOptimizer  # server.optimizer, applied to the aggregate
    secagg: SecAggPlusParams | None = None  # encryption.scheme = "secagg+": rounds go through Flower's SecAgg+

_COMMON_ATTACK_KEYS = {"kind", "fraction", "client_ids", "start_round", "end_round", "knowledge"}


@dataclass(frozen=True)
class StrategyRecipe:
    """The configured aggregation rule and what building it takes: its class and keys, the ``[defense]`` section
    (for ``defense.pre``), clients per round, the f a rule assumes by default, the seed, and the privacy mode and
    encryption scheme ``defense.pre`` is checked against. An attacker that knows the defense gets this (inside the
    ClientApp every client unpickles), not the run plan with the whole experiment."""

    strategy_cls: type[RobustStrategy]
    params: BaseModel
    defense: Any  # DefenseConfig
    clients_per_round: int
    expected_malicious: int
    seed: int
    privacy_mode: str
    encryption: str

    def context(self, *, server_update_fn: Any = None) -> StrategyContext:
        """A fresh context (its pre-aggregators are built anew each time, as the server's are)."""
        return StrategyContext(expected_malicious=self.expected_malicious, clients_per_round=self.clients_per_round,
                               seed=self.seed, server_update_fn=server_update_fn,
                               pre=plan_pre_aggregators(self.defense, self.clients_per_round, self.expected_malicious,
                                                        seed=self.seed, privacy_mode=self.privacy_mode,
                                                        encryption=self.encryption))

    def build(self, *, server_update_fn: Any = None, **kwargs: Any) -> RobustStrategy:
        """The rule; ``kwargs``: Flower's sampling settings, ``device``."""
        return self.strategy_cls.from_config(self.params, self.context(server_update_fn=server_update_fn), **kwargs)


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs, built and checked once from an :class:`Experiment`."""

    experiment: Experiment
    schedule: Schedule
    dataset: DatasetSpec
    model: ModelSpec
    attack: Attack
    strategy_cls: type[RobustStrategy]
    strategy_params: BaseModel
    privacy: PrivacyPlan | None = None  # central DP
    crypto: CkksParams | None = None  # CKKS
    resolved: dict[str, Any] = field(default_factory=dict)
    poisoned: tuple[int, ...] = ()  # honest clients whose data is poisoned ([data.poison])
    facts: RunFacts | None = None
    hooks: tuple[HookPlan, ...] = ()
    optimizer_params: BaseModel | None = None  # server.optimizer's validated keys
    secagg: SecAggPlusParams | None = None  # Flower's SecAgg+

    @property
    def strategy_name(self) -> str:
        return self.experiment.defense.strategy

    @property
    def name(self) -> str:
        return self.experiment.name

    @property
    def seed(self) -> int:
        return self.experiment.seed

    @property
    def rounds(self) -> int:
        return self.experiment.rounds

    @property
    def backend(self) -> BackendConfig:
        return self.experiment.backend

    @property
    def data_config(self) -> DataConfig:
        return self.experiment.data

    def server_plan(self) -> ServerPlan:
        """The server's share of the plan."""
        assert self.facts is not None, "a RunPlan from build_plan"
        root_size = getattr(self.strategy_params, "root_size", 0) or 0
        return ServerPlan(self.facts, self.hooks, self.server_strategy, self.backend.round_timeout,
                          needs_server_update=self.strategy_cls.needs_server_update, root_size=int(root_size),
                          make_optimizer=self.server_optimizer, secagg=self.secagg)

    def server_optimizer(self) -> ServerOptimizer:
        """The run's ``server.optimizer``, fresh (its state starts empty; a resumed run restores it)."""
        cls = SERVER_OPTIMIZERS.get(self.experiment.server.optimizer)
        return cls.from_params(self.optimizer_params if self.optimizer_params is not None else cls.Params())

    def server_strategy(self, *, key_authority: Any = None, server_update_fn: Any = None) -> RobustStrategy:
        """The run's strategy: DP-FedAvg under central DP, EncryptedFedAvg under CKKS, else the configured rule,
        with Flower's sampling minimums set. Under encryption the strategy gets the key authority's public context
        and its decrypt function, never the secret key."""
        e = self.experiment
        sampling: dict[str, Any] = {"min_train_nodes": e.train.clients_per_round,
                                    "min_available_nodes": e.data.num_clients,
                                    # what the server believes of a reply (fedsec.strategies._trust)
                                    "weighting": used_weighting(e), "weight_cap": e.defense.weight_cap,
                                    "num_partitions": e.data.num_clients,
                                    "aggregate_timeout": e.backend.aggregate_timeout}
        canary = next((h.params for h in self.hooks if h.cls.name == "canary"), None)
        if canary is not None and canary.level == "client":
            sampling["canaries"] = CanarySpec(
                canaries=canary.canaries, guesses=canary.guesses, confidence=canary.confidence, norm=canary.norm,
                sample_rate=e.train.clients_per_round / e.data.num_clients, expected_clients=e.train.clients_per_round,
                delta=e.privacy.delta, seed=e.seed + SEED_OFFSET)
        dp: dict[str, Any] = {} if self.privacy is None else {"expected_clients": e.train.clients_per_round,
                                                               "seed": e.seed}
        if self.secagg is not None:
            from fedsec.strategies.secaggplus_fedavg import SecAggPlusFedAvg

            return SecAggPlusFedAvg(**sampling)
        if self.crypto is not None:
            from fedsec.strategies.encrypted_fedavg import EncryptedFedAvg

            if key_authority is None:
                raise ConfigError("encryption.scheme='ckks' needs a key authority")
            if self.privacy is not None:
                dp["dp_noise_std"] = self.privacy.noise_std
            return EncryptedFedAvg(authority=key_authority.server_view(), **dp, **sampling)
        if self.privacy is not None:
            from fedsec.strategies.dp_fedavg import AdaptiveClipping, DPFedAvg

            adaptive = None
            if self.privacy.clipping == "adaptive":
                adaptive = AdaptiveClipping(target_quantile=self.privacy.target_quantile, lr=self.privacy.clip_lr,
                                            count_std=self.privacy.clip_count_std)
            return DPFedAvg(clip_norm=self.privacy.clip_norm, noise_multiplier=self.privacy.update_noise_multiplier,
                            adaptive=adaptive, **dp, **sampling)
        return self.build_strategy(server_update_fn=server_update_fn, **sampling)

    def strategy_recipe(self) -> StrategyRecipe:
        """The configured rule and the few settings building it takes (what a defense-aware attacker is handed)."""
        e = self.experiment
        return StrategyRecipe(self.strategy_cls, self.strategy_params, e.defense, e.train.clients_per_round,
                              e.expected_attackers_per_round(), e.seed, e.privacy.mode, e.encryption.scheme)

    def strategy_context(self, *, server_update_fn: Any = None) -> StrategyContext:
        return self.strategy_recipe().context(server_update_fn=server_update_fn)

    def build_strategy(self, *, server_update_fn: Any = None, **kwargs: Any) -> RobustStrategy:
        """The configured rule (not the DP or CKKS wrappers: the server picks those from :attr:`privacy` and
        :attr:`crypto`); ``kwargs``: Flower's sampling settings, ``device``."""
        return self.strategy_recipe().build(server_update_fn=server_update_fn, **kwargs)

    def client_spec_args(self) -> dict[str, Any]:
        """The clients' share of the plan (:class:`fedsec.clients.spec.ClientSpec`'s fields)."""
        e = self.experiment
        clip = self.privacy.clip_norm if (self.crypto is not None and self.privacy is not None) else None
        weighted = self.crypto is not None and self.privacy is None and e.defense.weighting == "reported"
        sanitize = SanitizeConfig(**_sanitize_table(e)) if e.defense.sanitize.method != "none" else None
        # each member's share of the CKKS headroom: the sum of the largest cohort fits (fixed sampling: k clients;
        # Poisson cohorts are unbounded, so every client's share)
        cohort = e.train.clients_per_round if self.schedule.sampling == "fixed" else e.data.num_clients
        share = self.ckks_headroom() / cohort if self.crypto is not None else None
        return {"model_name": e.model.name, "data": e.data, "train": e.train, "privacy": e.privacy,
                "schedule": self.schedule, "attack": self.attack, "central_clip_norm": clip,
                "ckks_weighted": weighted, "ckks_member_bound": share, "normalisation": self.dataset.normalisation,
                "secagg_weighted": self.secagg.weighted if self.secagg is not None else None,
                "poisoned": self.poisoned, "sanitize": sanitize, "example_canaries": self.example_canaries()}

    def example_canaries(self) -> ExampleCanarySpec | None:
        """``[audit.canary]`` with ``level = "example"``: the audited client and the seed of its canaries."""
        canary = next((h.params for h in self.hooks if h.cls.name == "canary"), None)
        if canary is None or canary.level != "example":
            return None
        return ExampleCanarySpec(client=canary.client, canaries=canary.canaries,
                                 seed=self.experiment.seed + SEED_OFFSET)

    def ckks_headroom(self) -> float:
        """The largest |value| a CKKS sum may hold under this run's trust model (smaller under threshold CKKS)."""
        if self.crypto is None:
            raise ConfigError("ckks_headroom: encryption.scheme is not 'ckks'")
        if self.experiment.encryption.trust == "threshold":
            from fedsec.crypto.threshold import threshold_max_abs

            return threshold_max_abs(self.crypto)
        return self.crypto.max_abs

    def start_keys(self) -> Any:
        """Set up this run's CKKS keys for its trust model: a key authority in a Ray actor of its own
        (``trust = "authority"``, :class:`fedsec.crypto.KeyAuthorityHandle`; needs ``ray.init`` first) or keys
        provisioned to the clients (``"clients"``, :class:`fedsec.crypto.client_keys.ClientHeldKeys`). The handle's
        ``server_view()`` goes to the strategy, ``client_ref()`` to the clients, ``stop()`` ends it."""
        if self.crypto is None:
            raise ConfigError("start_keys: encryption.scheme is not 'ckks'")
        if self.experiment.encryption.trust == "clients":
            from fedsec.crypto.client_keys import ClientHeldKeys

            return ClientHeldKeys.start(self.crypto, **self.key_authority_args())
        if self.experiment.encryption.trust == "threshold":
            from fedsec.crypto.threshold_setup import ThresholdHeldKeys

            enc = self.experiment.encryption
            return ThresholdHeldKeys.start(self.crypto, committee=enc.committee, threshold=threshold_of(enc),
                                           **self.key_authority_args())
        from fedsec.crypto import KeyAuthorityHandle

        return KeyAuthorityHandle.start(self.crypto, backend="ray", **self.key_authority_args())

    def key_authority_args(self) -> dict[str, Any]:
        """How the CKKS key authority is set up for this run (``fedsec.crypto.KeyAuthorityHandle.start``)."""
        e = self.experiment
        return {"num_clients": e.data.num_clients, "min_clients": _authority_min_clients(e),
                "client_norm_bound": self.privacy.clip_norm if self.privacy is not None else None,
                "seed": e.seed, "dp_noise_std": (self.privacy.noise_std if self.privacy is not None
                                                 and self.privacy.noise_multiplier > 0 else None)}

    def to_toml(self) -> str:
        """The resolved config (defaults filled in, kind keys included) as TOML: it validates again as it is."""
        return self.experiment.to_toml(self.resolved)


def _kind_problems(e: Experiment) -> list[str]:
    """Every problem of the kinds' names and their own keys, section by section (each checked on its own, so a
    config with a typo in [attack] and another in [defense] hears of both at once)."""
    checks = (
        lambda: parse_params(DATASETS.get(e.data.dataset).Params, e.data.kind_keys, section="data",
                             kind=f"data.dataset={e.data.dataset!r}"),
        lambda: MODELS.get(e.model.name),
        lambda: parse_params(ATTACKS.get(e.attack.kind).Params, e.attack.kind_keys, section="attack",
                             kind=f"attack.kind={e.attack.kind!r}"),
        lambda: parse_params(STRATEGIES.get(e.defense.strategy).Params, e.defense.kind_keys, section="defense",
                             kind=f"defense.strategy={e.defense.strategy!r}"),
        lambda: parse_params(SERVER_OPTIMIZERS.get(e.server.optimizer).Params, e.server.kind_keys, section="server",
                             kind=f"server.optimizer={e.server.optimizer!r}"),
    )
    problems: list[str] = []
    for check in checks:
        try:
            check()
        except ConfigProblems as err:
            problems += err.problems
        except ConfigError as err:
            problems.append(str(err))
    return problems


def build_plan(experiment: Experiment) -> RunPlan:
    """Check every kind-specific rule of ``experiment`` and build its plan (:class:`ConfigError` otherwise)."""
    e = experiment
    if len(problems := _kind_problems(e)) > 1:
        raise ConfigProblems(problems)
    dataset = DATASETS.get(e.data.dataset)
    dataset_params = parse_params(dataset.Params, e.data.kind_keys, section="data",
                                  kind=f"data.dataset={e.data.dataset!r}")
    dataset = dataset.resolve(dataset_params)  # what its keys decide: EMNIST's split fixes classes and sizes
    problem = dataset.check_root(e.data.root, dataset_params)
    if problem:
        raise ConfigError(f"data.root: {problem}")
    if e.data.partition == "natural" and not dataset.natural:
        natural = ", ".join(repr(name) for name, spec in DATASETS.items() if spec.natural)
        raise ConfigError(f"data.partition='natural': only {natural} are naturally federated, got dataset "
                          f"{e.data.dataset!r}; use iid, dirichlet or shards")
    model = MODELS.get(e.model.name)
    problem = model.fits(dataset.input_shape)
    if problem:
        raise ConfigError(f"model.name={e.model.name!r}: {problem}")

    attack_cls = ATTACKS.get(e.attack.kind)
    attack_params = parse_params(attack_cls.Params, e.attack.kind_keys, section="attack",
                                 kind=f"attack.kind={e.attack.kind!r}")
    attack_cls.check_data(attack_params, input_shape=dataset.input_shape, num_classes=dataset.num_classes)
    attack = attack_cls(attack_params, knowledge=e.attack.knowledge)

    strategy_cls = STRATEGIES.get(e.defense.strategy)
    strategy_params = parse_params(strategy_cls.Params, e.defense.kind_keys, section="defense",
                                   kind=f"defense.strategy={e.defense.strategy!r}")
    plan_stub = RunPlan(e, _schedule(e), dataset, model, attack, strategy_cls, strategy_params)
    try:
        strategy = plan_stub.build_strategy(device="cpu")
    except ValueError as err:
        raise ConfigError(f"defense.strategy={e.defense.strategy!r}: {err}") from err
    k = e.train.clients_per_round
    if strategy.min_valid_updates > k:
        f = getattr(strategy, "num_malicious", None)
        raise ConfigError(
            f"defense.num_malicious={f}: {strategy.describe()} needs at least {strategy.min_valid_updates} "
            f"updates per round, train.clients_per_round={k}; lower num_malicious or raise clients_per_round"
        )

    attack.bind_defense(DefenseView(e.defense.strategy,
                                    functools.partial(plan_stub.strategy_recipe().build, device="cpu"),
                                    family=strategy_cls.family))
    privacy = _check_privacy(e, dataset)
    crypto = _check_encryption(e, attack)
    secagg = check_secagg(e, attack)
    # a server optimizer only post-processes what the server already holds: DP-FedAvg's noisy aggregate (central DP
    # is kept: post-processing) or the CKKS sum the key authority released (no per-client value is revealed)
    if e.defense.strategy == "crfl" and e.server.optimizer != "none":
        raise ConfigError(f"server.optimizer={e.server.optimizer!r} with defense.strategy='crfl': CRFL clips and "
                          "perturbs the global model itself, and an optimizer step after it would release a model "
                          "outside the clip bound its certificate assumes; use server.optimizer='none'")
    optimizer_cls = SERVER_OPTIMIZERS.get(e.server.optimizer)
    optimizer_params = parse_params(optimizer_cls.Params, e.server.kind_keys, section="server",
                                    kind=f"server.optimizer={e.server.optimizer!r}")
    poisoned = check_data_defenses(e, dataset)
    check_partition(e, dataset)
    facts = RunFacts(name=e.name, seed=e.seed, rounds=e.rounds, num_clients=e.data.num_clients,
                     dataset_name=e.data.dataset, dataset=dataset, model_name=e.model.name,
                     schedule=plan_stub.schedule, attack=attack, train=e.train, privacy=e.privacy,
                     privacy_plan=privacy, poison=e.data.poison, encrypted=crypto is not None or secagg is not None,
                     federation=build_federation(e, plan_stub.schedule.malicious),
                     buffer=build_buffer(e, strategy.required_updates()), eval_every=e.eval.every,
                     eval_examples=e.eval.examples,
                     smoothing=getattr(strategy, "schedule", None) if e.defense.strategy == "crfl" else None,
                     authority_min_clients=_authority_min_clients(e) if crypto is not None else 0,
                     trust=e.encryption.trust if crypto is not None else "")
    hooks = _plan_hooks(e, facts)
    canary = next((h.params for h in hooks if h.cls.name == "canary"), None)
    if canary is not None and canary.level == "client" and (e.defense.strategy != "fedavg" or e.defense.pre):
        raise ConfigError(f"audit.canary with defense.strategy={e.defense.strategy!r}"
                          f"{' and defense.pre' if e.defense.pre else ''}: the canaries enter FedAvg's mean (or "
                          "DP-FedAvg's clipped sum) as clients with weight 1/k; a robust rule would see them as "
                          "rows, which the audit does not model; use defense.strategy='fedavg' (or "
                          "audit.canary.level='example')")
    if canary is not None and canary.level == "example":
        _check_example_canaries(e, dataset, canary)
    elif canary is not None:
        from fedsec.models.zoo import build_model

        size = sum(p.numel() for p in build_model(e.model.name, dataset.input_shape, dataset.num_classes).parameters())
        if canary.canaries > size:
            raise ConfigError(f"audit.canary.canaries={canary.canaries}: each canary needs a coordinate of its own "
                              f"and model {e.model.name!r} has {size} parameters; use at most {size}")
    resolved = _resolved(e, attack_params, strategy_params, dataset_params, hooks)
    resolved["server"] = {**e.server.model_dump(exclude_none=True, exclude=set(e.server.kind_keys)),
                          **optimizer_params.model_dump()}
    plan = RunPlan(e, plan_stub.schedule, dataset, model, attack, strategy_cls, strategy_params, privacy, crypto,
                   resolved, tuple(poisoned), facts, hooks, optimizer_params, secagg)
    if e.attack.kind == "collude_with_server":  # the experimenter's ground truth for what the curious server recovers
        from fedsec.clients.malicious import honest_update
        from fedsec.clients.spec import ClientSpec

        truth = _with_client_threads(functools.partial(honest_update, ClientSpec.from_plan(plan)),
                                     max(1, int(e.backend.num_cpus)))
        plan = dataclasses.replace(plan, facts=dataclasses.replace(facts, victim_update=truth))
    return plan


def _with_client_threads(fn: Callable[..., Any], threads: int) -> Callable[..., Any]:
    """``fn`` run with as many torch threads as a client has (Ray sets a client's OMP_NUM_THREADS from
    backend.num_cpus): a float sum taken in another order trains a visibly different update (0.4% after one epoch of
    the quickstart CNN with 1 vs 2 threads)."""
    import torch

    def call(*args: Any) -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(before)

    return call


def _authority_min_clients(e: Experiment) -> int:
    """The fewest signed members of a sum the CKKS key authority releases: 2 (1 would reveal a single update), or the
    cohort when it is smaller."""
    return min(2, e.train.clients_per_round)


def _check_example_canaries(e: Experiment, dataset: DatasetSpec, canary: Any) -> None:
    """Refuse example canaries the audited client cannot hold, where its partition's size is known before the data
    are loaded (iid, sampled, size); the canary hook checks the loaded partition again at start."""
    sizes = {"iid": dataset.train_size // e.data.num_clients if dataset.train_size else None,
             "sampled": e.data.samples_per_client,
             "size": (e.data.partition_sizes[canary.client]
                      if e.data.partition_sizes and canary.client < len(e.data.partition_sizes) else None)}
    size = sizes.get(e.data.partition)
    if size is not None and canary.canaries > size:
        raise ConfigError(f"audit.canary.canaries={canary.canaries}: the canaries are examples of client "
                          f"{canary.client}, which holds about {size} with data.partition={e.data.partition!r}; "
                          f"use at most {size} canaries or fewer clients")


def _plan_hooks(e: Experiment, facts: RunFacts) -> tuple[HookPlan, ...]:
    """The run's round hooks in calling order: built-in ones the run needs, and every configured ``[audit.*]``
    table validated against its hook's ``Params`` and checked against the run."""
    tables = e.audit.tables
    audits = [name for name, cls in HOOKS.items() if cls.section == "audit"]
    for name in tables:
        if name not in audits:
            raise ConfigError(f"audit.{name}: unknown audit {name!r}; use one of {', '.join(audits)} "
                              "(`fedsec list` describes them)")
    hooks = []
    for name, cls in HOOKS.items():
        if cls.section:
            if name not in tables:
                continue
            params = parse_params(cls.Params, tables[name], section=f"{cls.section}.{name}",
                                  kind=f"[{cls.section}.{name}]")
            if not cls.enabled(params):
                continue
        elif cls.applies(facts):
            params = cls.Params()
        else:
            continue
        cls.check(params, facts)
        hooks.append(HookPlan(cls, params))
    return tuple(hooks)


def _schedule(e: Experiment) -> Schedule:
    malicious: list[int] = []
    if e.attack.kind != "none":
        malicious = draw_malicious(e.seed, e.data.num_clients, fraction=e.attack.fraction,
                                   client_ids=e.attack.client_ids)
    return Schedule(seed=e.seed, rounds=e.rounds, num_clients=e.data.num_clients,
                    clients_per_round=e.train.clients_per_round, malicious=tuple(malicious),
                    attack_start=e.attack.start_round, attack_end=e.attack.end_round, sampling=e.client_sampling())


def _check_privacy(e: Experiment, dataset: DatasetSpec) -> PrivacyPlan | None:
    privacy = e.privacy
    if privacy.mode == "local":
        size = dataset.train_size
        if size is not None and privacy.delta >= e.data.num_clients / size:
            raise ConfigError(
                f"privacy.delta={privacy.delta:g}: local DP needs delta below 1 / (examples per client) ~ "
                f"{e.data.num_clients / size:.3g} for {e.data.dataset} over {e.data.num_clients} clients"
            )
        return None
    if privacy.mode != "central":
        return None
    if privacy.clipping == "adaptive" and e.encryption.scheme != "none":
        raise ConfigError(
            f"privacy.clipping='adaptive' with encryption.scheme={e.encryption.scheme!r}: adaptive clipping counts the "
            "updates within the clip bound, and under encryption the server sees no update norm (clients clip to a "
            "fixed privacy.clip_norm); use privacy.clipping='fixed'")
    if e.defense.strategy != "fedavg":
        raise ConfigError(
            f"privacy.mode='central' with defense.strategy={e.defense.strategy!r}: DP-FedAvg's guarantee "
            "needs the clipped sum of updates (sensitivity clip_norm); a robust rule changes the sensitivity. "
            "Use defense.strategy='fedavg'"
        )
    try:
        plan = central_privacy_plan(e)
    except PrivacyError as err:  # its message names the key (privacy.*, train.sampling, rounds)
        raise ConfigError(str(err)) from err
    if plan is not None and plan.rounds_within_budget == 0:
        raise ConfigError(
            f"privacy.noise_multiplier={privacy.noise_multiplier}: one round already spends more than "
            f"privacy.epsilon={privacy.epsilon}; raise the noise or the budget, or omit noise_multiplier"
        )
    return plan


def _check_encryption(e: Experiment, attack: Attack) -> CkksParams | None:
    enc = e.encryption
    if enc.scheme != "ckks":
        return None
    params = CkksParams(poly_modulus_degree=enc.poly_modulus_degree, coeff_mod_bit_sizes=tuple(enc.coeff_mod_bit_sizes),
                        global_scale_bits=enc.global_scale_bits)
    try:
        params.validate()
    except CryptoError as err:
        raise ConfigError(str(err)) from err
    if e.defense.strategy != "fedavg":
        raise ConfigError(
            f"encryption.scheme='ckks' with defense.strategy={e.defense.strategy!r}: the server only sees "
            "ciphertexts, and robust rules need per-client plaintext distances or values; use 'fedavg'"
        )
    if attack.omniscient:
        raise ConfigError(
            "attack.knowledge='omniscient' with encryption.scheme='ckks': the omniscient attack is realised on "
            "the server, which cannot read encrypted updates; use knowledge='colluding'"
        )
    if enc.trust == "threshold":
        _check_threshold(e)
    return params


def threshold_of(enc: Any) -> int:
    """encryption.threshold, or its default: a majority of the committee."""
    return enc.threshold if enc.threshold is not None else enc.committee // 2 + 1


def _check_threshold(e: Experiment) -> None:
    """What threshold CKKS (fedsec.crypto.threshold) cannot do, refused before anything starts."""
    from fedsec.crypto.openfhe_side import missing_reason

    enc = e.encryption
    if enc.committee > e.data.num_clients:
        raise ConfigError(f"encryption.committee={enc.committee}: the committee is drawn from the run's clients; "
                          f"use at most data.num_clients={e.data.num_clients}")
    t = threshold_of(enc)
    if not enc.committee / 2 < t <= enc.committee:
        raise ConfigError(f"encryption.threshold={t}: must be in (committee / 2, committee] = ({enc.committee / 2:g}, "
                          f"{enc.committee}] (OpenFHE's Shamir sharing of the members' keys needs a majority)")
    if e.privacy.mode == "central":
        raise ConfigError("privacy.mode='central' with encryption.trust='threshold': the DP noise is added to the "
                          "released sum by the one party that decrypts it, and under threshold CKKS no party "
                          "decrypts alone; use trust='clients' or 'authority', or privacy.mode='local'")
    if e.encryption.coeff_mod_bit_sizes[0] - 10 < 20:
        raise ConfigError(f"encryption.coeff_mod_bit_sizes={list(enc.coeff_mod_bit_sizes)}: threshold CKKS scales "
                          "by 2^(first prime - 10) and needs a first prime of at least 30 bits (default 60)")
    why = missing_reason()
    if why:
        raise ConfigError(f"encryption.trust='threshold': {why}")


def _resolved(e: Experiment, attack_params: BaseModel, strategy_params: BaseModel, dataset_params: BaseModel,
              hooks: tuple[HookPlan, ...]) -> dict[str, Any]:
    """The config with defaults filled in, each kind's keys from its params (so it validates again as it is)."""
    raw = e.raw()
    raw["data"] = {k: v for k, v in raw["data"].items() if k in DataConfig.model_fields}
    raw["data"].update(dataset_params.model_dump(exclude_none=True))
    configured = {h.cls.name: h.params for h in hooks if h.cls.section == "audit"}
    raw["audit"] = {name: (configured[name] if name in configured else  # a table that switches its hook off
                           HOOKS.get(name).Params.model_validate(table)).model_dump(exclude_none=True)
                    for name, table in e.audit.tables.items()}
    raw["attack"] = {k: v for k, v in raw["attack"].items() if k in _COMMON_ATTACK_KEYS
                     and not (k == "fraction" and e.attack.client_ids is not None)}  # one of the two, as given
    raw["attack"].update(attack_params.model_dump(exclude_none=True))
    # the strategy's own keys from its params; the keys every rule shares (weighting, weight_cap, the sanitize
    # sub-table) as configured: a sweep cell, a resumed run and a study's read-back all run from this TOML
    raw["defense"] = {"strategy": e.defense.strategy, "weighting": used_weighting(e),
                      "weight_cap": e.defense.weight_cap, "sanitize": _sanitize_table(e), **resolved_pre(e.defense),
                      **strategy_params.model_dump(exclude_none=True)}
    raw["train"]["sampling"] = e.client_sampling()
    if e.encryption.scheme == "none":
        raw["encryption"] = {"scheme": "none"}
    return raw


def _sanitize_table(e: Experiment) -> dict[str, Any]:
    """``[defense.sanitize]`` resolved: the method and its filter's keys with their defaults."""
    if e.defense.sanitize.method == "none":
        return {"method": "none"}
    return {"method": e.defense.sanitize.method, **sanitize_params(e.defense.sanitize).model_dump(exclude_none=True)}


def plan_from_dict(raw: dict[str, Any], *, source: str = "config") -> RunPlan:
    """Validate a raw mapping and build its plan; every problem a :class:`ConfigError` prefixed by ``source``."""
    experiment = experiment_from_dict(raw, source=source)
    try:
        return build_plan(experiment)
    except ConfigProblems as err:
        raise ConfigProblems([f"{source}: {problem}" for problem in err.problems]) from None
    except ConfigError as err:
        raise ConfigError(one_line(f"{source}: {err}")) from None


def load_plan(path: str | Path, overrides: list[str] | None = None) -> RunPlan:
    """Read, override, validate and plan an experiment TOML file."""
    path = Path(path)
    return plan_from_dict(apply_overrides(read_toml(path), overrides or []), source=str(path))


def drop_unused_kind_keys(raw: dict[str, Any], *, keep: set[str] = frozenset()) -> None:
    """Drop (in place) kind-specific keys that another kind declares but the chosen kind does not use
    (``defense.num_malicious`` in a FedAvg cell of a grid over strategies, ``defense.sanitize.n_folds`` in a
    threshold cell), except the dotted keys in ``keep``; keys no kind declares stay, so a typo is still an error."""
    for section, selector, registry, default in (("attack", "kind", ATTACKS, "none"),
                                                 ("defense", "strategy", STRATEGIES, "fedavg"),
                                                 ("defense.sanitize", "method", SANITIZERS, "none"),
                                                 ("server", "optimizer", SERVER_OPTIMIZERS, "none"),
                                                 ("data", "dataset", DATASETS, "fashion-mnist")):
        table: Any = raw
        for part in section.split("."):
            table = table.get(part) if isinstance(table, dict) else None
        if not isinstance(table, dict):
            continue
        chosen = table.get(selector, default)
        used = set(registry.get(chosen).Params.model_fields) if chosen in registry else set()
        declared = {key for _, cls in registry.items() for key in cls.Params.model_fields}
        for key in list(table):
            if key in declared and key not in used and f"{section}.{key}" not in keep:
                del table[key]
