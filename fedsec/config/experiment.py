"""The whole experiment and its cross-section rules (n vs f of a strategy, DP plans, what combines with what)."""

from __future__ import annotations

from typing import Any

import tomli_w
from pydantic import Field, model_validator

from .sections import (
    _ATTACK_KEYS,
    _DEFENSE_KEYS,
    COLLUDING_ATTACKS,
    DATASET_INPUT_SHAPES,
    DATASET_NUM_CLASSES,
    DATASET_TRAIN_SIZES,
    DEFAULT_FASHION_MNIST_ROOT,
    AttackConfig,
    BackendConfig,
    DataConfig,
    DefenseConfig,
    EncryptionConfig,
    ModelConfig,
    PrivacyConfig,
    PrivacyPlan,
    TrainConfig,
    _Section,
)


class Experiment(_Section):
    """A whole experiment: what `fedsec run` executes and what lands in the run directory's config.toml."""

    name: str = Field("experiment", min_length=1, description="Experiment name (run directory prefix).")
    seed: int = Field(0, ge=0, description="Seed for data partitioning, client sampling and training.")
    rounds: int = Field(5, ge=1, description="Federated rounds.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    defense: DefenseConfig = Field(default_factory=DefenseConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)

    @model_validator(mode="after")
    def _check_plan(self) -> Experiment:
        data, train = self.data, self.train
        if train.clients_per_round > data.num_clients:
            raise ValueError(
                f"train.clients_per_round={train.clients_per_round}: must be <= data.num_clients="
                f"{data.num_clients}; lower clients_per_round or raise num_clients"
            )
        if data.partition == "natural" and data.dataset != "synthetic":
            raise ValueError(
                f"data.partition='natural': only 'synthetic' is naturally federated, got dataset "
                f"{data.dataset!r}; use iid, dirichlet or shards"
            )
        from fedsec.models import check_model_fits

        problem = check_model_fits(self.model.name, DATASET_INPUT_SHAPES[data.dataset])
        if problem:
            raise ValueError(f"model.name={self.model.name!r}: {problem}")
        self._check_attack()
        self._check_defense()
        self._check_privacy()
        self._check_encryption()
        return self

    def _check_encryption(self) -> None:
        if self.encryption.scheme == "none":
            return
        if self.defense.strategy != "fedavg":
            raise ValueError(
                f"encryption.scheme='ckks' with defense.strategy={self.defense.strategy!r}: the server only sees "
                "ciphertexts, and robust rules need per-client plaintext distances or values; use 'fedavg'"
            )
        if self.attack.kind in COLLUDING_ATTACKS and self.attack.knowledge == "omniscient":
            raise ValueError(
                "attack.knowledge='omniscient' with encryption.scheme='ckks': the omniscient attack is realised on "
                "the server, which cannot read encrypted updates; use knowledge='colluding'"
            )

    def privacy_plan(self) -> PrivacyPlan | None:
        """Noise and spending of a central-DP run (None without central DP; local DP is planned per client)."""
        privacy = self.privacy
        if privacy.mode != "central":
            return None
        from fedsec.privacy import PrivacyLedger, calibrate_noise, epsilon_after

        q = self.train.clients_per_round / self.data.num_clients
        z = privacy.noise_multiplier
        if z is None:
            z = calibrate_noise(epsilon=privacy.epsilon, delta=privacy.delta, sample_rate=q, steps=self.rounds,
                                accountant=privacy.accountant)
        spent = epsilon_after(noise_multiplier=z, sample_rate=q, steps=self.rounds, delta=privacy.delta,
                              accountant=privacy.accountant)
        ledger = PrivacyLedger(z, q, privacy.delta, privacy.epsilon, privacy.accountant)
        return PrivacyPlan(z, q, spent, ledger.rounds_within_budget(self.rounds))

    def _check_privacy(self) -> None:
        privacy, data = self.privacy, self.data
        if privacy.mode == "none":
            return
        if privacy.mode == "local":
            size = DATASET_TRAIN_SIZES.get(data.dataset)
            if size is not None and privacy.delta >= data.num_clients / size:
                raise ValueError(
                    f"privacy.delta={privacy.delta:g}: local DP needs delta below 1 / (examples per client) ~ "
                    f"{data.num_clients / size:.3g} for {data.dataset} over {data.num_clients} clients"
                )
            return
        if privacy.delta >= 1 / data.num_clients:
            raise ValueError(
                f"privacy.delta={privacy.delta:g}: must be below 1 / data.num_clients = {1 / data.num_clients:g} "
                "(user-level DP over clients)"
            )
        if self.defense.strategy != "fedavg":
            raise ValueError(
                f"privacy.mode='central' with defense.strategy={self.defense.strategy!r}: DP-FedAvg's guarantee "
                "needs the clipped sum of updates (sensitivity clip_norm); a robust rule changes the sensitivity. "
                "Use defense.strategy='fedavg'"
            )
        plan = self.privacy_plan()
        if plan is not None and plan.rounds_within_budget == 0:
            raise ValueError(
                f"privacy.noise_multiplier={privacy.noise_multiplier}: one round already spends more than "
                f"privacy.epsilon={privacy.epsilon}; raise the noise or the budget, or omit noise_multiplier"
            )

    def expected_attackers_per_round(self) -> int:
        """round(share of malicious clients x clients per round): the f a defense assumes by default."""
        attack, data = self.attack, self.data
        if attack.kind == "none":
            return 0
        share = len(attack.client_ids) / data.num_clients if attack.client_ids is not None else attack.fraction
        return int(round(share * self.train.clients_per_round))

    def strategy_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the configured strategy (fedsec.strategies), from the defense section."""
        defense, name = self.defense, self.defense.strategy
        f = defense.num_malicious if defense.num_malicious is not None else self.expected_attackers_per_round()
        kwargs: dict[str, Any] = {}
        if name in _DEFENSE_KEYS["num_malicious"]:
            kwargs["num_malicious"] = f
        if name == "multikrum":
            kwargs["num_selected"] = defense.num_selected or max(1, self.train.clients_per_round - f)
        if name == "trimmed_mean":
            kwargs["trim_ratio"] = defense.trim_ratio
        if name in _DEFENSE_KEYS["clip_norm"]:
            kwargs["clip_norm"] = defense.clip_norm
        if name == "norm_clipping":
            kwargs["noise_std"] = defense.noise_std
            kwargs["seed"] = self.seed
        if name in _DEFENSE_KEYS["iterations"] and defense.iterations is not None:
            kwargs["iterations"] = defense.iterations
        for key in ("root_size", "noise_lambda", "kappa", "subsample_dim", "filter_frac"):
            if name in _DEFENSE_KEYS[key]:
                kwargs[key] = getattr(defense, key)
        if name in ("flame", "dnc"):
            kwargs["seed"] = self.seed
        return kwargs

    def _check_defense(self) -> None:
        from fedsec.strategies import STRATEGIES

        cls, _ = STRATEGIES[self.defense.strategy]
        # FLTrust's server update needs the data; a placeholder is enough to check its parameters here
        extra = {"server_update_fn": lambda arrays: None} if self.defense.strategy == "fltrust" else {}
        try:
            strategy = cls(device="cpu", **extra, **self.strategy_kwargs())
        except ValueError as e:
            raise ValueError(f"defense.strategy={self.defense.strategy!r}: {e}") from e
        k = self.train.clients_per_round
        if strategy.min_valid_updates > k:
            f = getattr(strategy, "num_malicious", None)
            raise ValueError(
                f"defense.num_malicious={f}: {strategy.describe()} needs at least {strategy.min_valid_updates} "
                f"updates per round, train.clients_per_round={k}; lower num_malicious or raise clients_per_round"
            )

    def _check_attack(self) -> None:
        attack, data = self.attack, self.data
        if attack.end_round is not None and attack.end_round < attack.start_round:
            raise ValueError(
                f"attack.end_round={attack.end_round}: must be >= attack.start_round={attack.start_round}"
            )
        if attack.kind == "none":
            return
        if attack.client_ids is not None:
            bad = [c for c in attack.client_ids if not 0 <= c < data.num_clients]
            if bad or len(set(attack.client_ids)) != len(attack.client_ids):
                raise ValueError(
                    f"attack.client_ids={attack.client_ids}: ids must be distinct and in [0, data.num_clients="
                    f"{data.num_clients})"
                )
        elif round(attack.fraction * data.num_clients) == 0:
            raise ValueError(
                f"attack.fraction={attack.fraction}: attack.kind={attack.kind!r} needs at least one malicious client"
                f" (fraction x data.num_clients={data.num_clients} rounds to 0); raise fraction or set client_ids"
            )
        num_classes = DATASET_NUM_CLASSES[data.dataset]
        for key in ("source", "target"):
            value = getattr(attack, key)
            if value is not None and value >= num_classes:
                raise ValueError(
                    f"attack.{key}={value}: outside the label set of {data.dataset} (0..{num_classes - 1})"
                )
        if attack.kind == "backdoor" and len(DATASET_INPUT_SHAPES[data.dataset]) != 3:
            raise ValueError(f"attack.kind='backdoor': needs image data, {data.dataset!r} gives vectors")

    @property
    def data_root(self) -> str:
        """The dataset directory: `data.root` or the dataset's default location."""
        if self.data.root:
            return self.data.root
        return DEFAULT_FASHION_MNIST_ROOT if self.data.dataset == "fashion-mnist" else ""

    def to_toml(self) -> str:
        """The resolved config (defaults filled in) as TOML."""
        return tomli_w.dumps(self.resolved())

    def resolved(self) -> dict[str, Any]:
        """The config with defaults filled in, without the keys its attack, strategy and scheme do not use
        (so it validates again as it is)."""
        raw = self.model_dump(exclude_none=True)
        for key, kinds in _ATTACK_KEYS.items():  # keys the attack kind does not use would not validate
            if self.attack.kind not in kinds:
                raw["attack"].pop(key, None)
        for key, strategies in _DEFENSE_KEYS.items():
            if self.defense.strategy not in strategies:
                raw["defense"].pop(key, None)
        if self.encryption.scheme == "none":
            raw["encryption"] = {"scheme": "none"}
        return raw
