"""Experiment configuration: TOML files validated by pydantic.

The keys follow the config contract in ``shared/README.md`` (extend, never rename). One pydantic model per
section, ``extra="forbid"`` everywhere so a typo is an error, and cross-section rules in
:meth:`Experiment._check_plan`. Every problem surfaces as a :class:`ConfigError` whose message names the key,
the rule, the value received and, where there is one, the fix.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# Input shape per dataset, known without loading the data (used to check model/dataset fit).
DATASET_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "fashion-mnist": (1, 28, 28),
    "digits": (1, 8, 8),
    "synthetic": (60,),
}
DATASET_NUM_CLASSES: dict[str, int] = {"fashion-mnist": 10, "digits": 10, "synthetic": 10}
DATASET_TRAIN_SIZES: dict[str, int] = {"fashion-mnist": 60_000, "digits": 1_347}
DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


class ConfigError(ValueError):
    """An invalid experiment configuration; the message names the key and the reason."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    dataset: Literal["fashion-mnist", "digits", "synthetic"] = Field(
        "fashion-mnist", description="Dataset name (see `fedsec list`)."
    )
    partition: Literal["iid", "dirichlet", "shards", "natural"] = Field(
        "dirichlet",
        description="How training data is split across clients; 'natural' only for naturally federated data.",
    )
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration (smaller = more skewed).")
    num_clients: int = Field(20, ge=2, le=100_000, description="Number of logical clients (partitions).")
    shards_per_client: int = Field(2, ge=1, description="Label shards per client for partition = 'shards'.")
    root: str = Field("", description="Directory of the dataset files ('' = the dataset's default location).")
    synthetic_alpha: float = Field(1.0, ge=0, description="FedProx Synthetic(alpha, beta): model heterogeneity.")
    synthetic_beta: float = Field(1.0, ge=0, description="FedProx Synthetic(alpha, beta): data heterogeneity.")


class ModelConfig(_Section):
    name: str = Field("cnn", description="Model name (see `fedsec list`).")

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from fedsec.models import MODELS

        if value not in MODELS:
            raise ValueError(f"unknown model {value!r}; use one of {sorted(MODELS)}")
        return value


class TrainConfig(_Section):
    clients_per_round: int = Field(10, ge=1, description="Clients sampled (seeded) per round.")
    local_epochs: int = Field(1, ge=1, description="Local epochs per round.")
    batch_size: int = Field(32, ge=1, description="Local mini-batch size.")
    lr: float = Field(0.01, gt=0, description="Local SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Local SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, description="Local SGD weight decay.")


ATTACKS: dict[str, str] = {
    "none": "no attack: every client is honest",
    "label_flip": "data poisoning: source->target (keys source, target), all-to-one (target) or all-to-random",
    "backdoor": "BadNets trigger + relabel (target, poison_ratio, trigger=square|dba), model replacement (boost)",
    "sign_flip": "model poisoning: send the negated update",
    "scaling": "model poisoning: send scale x the update (scale)",
    "gaussian": "model poisoning: add N(0, std^2) noise to the update (std)",
    "alie": "A Little Is Enough (Baruch et al. 2019): mean - z*std of benign updates (z: default from n, f)",
    "ipm": "inner-product manipulation (Xie et al. 2019): -epsilon x mean of benign updates (epsilon)",
    "minmax": "min-max (Shejwalkar & Houmansadr 2021): max distance to benign <= max benign distance",
    "minsum": "min-sum (Shejwalkar & Houmansadr 2021): sum of distances to benign <= max benign sum",
}
#: attacks that craft their update from benign updates (what they know depends on attack.knowledge)
COLLUDING_ATTACKS = frozenset({"alie", "ipm", "minmax", "minsum"})
# keys that only some attack kinds use
_ATTACK_KEYS: dict[str, set[str]] = {
    "source": {"label_flip"},
    "target": {"label_flip", "backdoor"},
    "poison_ratio": {"backdoor"},
    "boost": {"backdoor"},
    "trigger": {"backdoor"},
    "scale": {"scaling"},
    "std": {"gaussian"},
    "z": {"alie"},
    "epsilon": {"ipm"},
    "perturbation": {"minmax", "minsum"},
}


class AttackConfig(_Section):
    kind: Literal[
        "none", "label_flip", "backdoor", "sign_flip", "scaling", "gaussian", "alie", "ipm", "minmax", "minsum"
    ] = Field(
        "none", description="Attack kind (see `fedsec list`)."
    )
    fraction: float = Field(0.0, ge=0, le=1, description="Fraction of clients that are malicious.")
    client_ids: list[int] | None = Field(None, description="Explicit malicious partition ids (instead of fraction).")
    start_round: int = Field(1, ge=1, description="First round in which attackers act.")
    end_round: int | None = Field(None, ge=1, description="Last round in which attackers act (None = last round).")
    knowledge: Literal["colluding", "omniscient"] = Field(
        "colluding",
        description="alie/ipm/minmax/minsum: 'colluding' = the attackers' own honest updates; 'omniscient' = all"
        " honest updates of the round (realised on the server before aggregation).",
    )
    source: int | None = Field(None, ge=0, description="label_flip: class whose examples are relabelled.")
    target: int | None = Field(None, ge=0, description="label_flip / backdoor: the label attackers aim for.")
    poison_ratio: float = Field(0.5, gt=0, le=1, description="backdoor: share of local examples poisoned.")
    boost: float = Field(1.0, gt=0, description="backdoor: model-replacement scale of the update (1 = none).")
    trigger: Literal["square", "dba"] = Field("square", description="backdoor: trigger pattern.")
    scale: float = Field(10.0, description="scaling: factor applied to the update.")
    std: float = Field(1.0, gt=0, description="gaussian: noise standard deviation added to the update.")
    z: float | None = Field(None, description="alie: z (default: the paper's z_max from n and f).")
    epsilon: float = Field(0.5, gt=0, description="ipm: scale of the negated benign mean.")
    perturbation: Literal["unit_vec", "std", "sign"] = Field(
        "unit_vec", description="minmax / minsum: perturbation direction."
    )

    @model_validator(mode="after")
    def _check_kind_keys(self) -> AttackConfig:
        for key, kinds in _ATTACK_KEYS.items():
            if key in self.model_fields_set and self.kind not in kinds:
                raise ValueError(
                    f"attack.{key}: not used by attack.kind={self.kind!r} (only by {', '.join(sorted(kinds))})"
                )
        if self.kind == "label_flip" and self.source is not None:
            if self.target is None:
                raise ValueError(f"attack.source={self.source}: targeted label flipping needs attack.target too")
            if self.source == self.target:
                raise ValueError(f"attack.target={self.target}: must differ from attack.source={self.source}")
        if self.client_ids is not None and "fraction" in self.model_fields_set:
            raise ValueError("attack.client_ids: give either attack.fraction or attack.client_ids, not both")
        return self

    @property
    def backdoor_target(self) -> int:
        return 0 if self.target is None else self.target


# keys that only some strategies use
_DEFENSE_KEYS: dict[str, set[str]] = {
    "num_malicious": {"krum", "multikrum", "bulyan"},
    "num_selected": {"multikrum"},
    "trim_ratio": {"trimmed_mean"},
    "clip_norm": {"norm_clipping", "centered_clipping"},
    "noise_std": {"norm_clipping"},
    "iterations": {"geomed", "centered_clipping"},
}


class DefenseConfig(_Section):
    strategy: str = Field("fedavg", description="Server strategy (see `fedsec list`).")
    num_malicious: int | None = Field(
        None, ge=0, description="f the rule assumes (default: the attack's expected attackers per round, else 0)."
    )
    num_selected: int | None = Field(None, ge=1, description="multikrum: m updates kept (default: n - f).")
    trim_ratio: float = Field(0.2, ge=0, lt=0.5, description="trimmed_mean: share cut from each end.")
    clip_norm: float = Field(1.0, gt=0, description="norm_clipping / centered_clipping: L2 clipping bound.")
    noise_std: float = Field(0.0, ge=0, description="norm_clipping: std of Gaussian noise on the aggregate.")
    iterations: int | None = Field(None, ge=1, description="geomed (3) / centered_clipping (1): iterations.")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from fedsec.strategies import STRATEGIES

        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; use one of {sorted(STRATEGIES)}")
        return value

    @model_validator(mode="after")
    def _check_strategy_keys(self) -> DefenseConfig:
        for key, strategies in _DEFENSE_KEYS.items():
            if key in self.model_fields_set and self.strategy not in strategies:
                raise ValueError(
                    f"defense.{key}: not used by defense.strategy={self.strategy!r} "
                    f"(only by {', '.join(sorted(strategies))})"
                )
        return self


PRIVACY_MODES: dict[str, str] = {
    "none": "no differential privacy",
    "local": "sample-level DP-SGD on every client with Opacus (max_grad_norm, noise_multiplier or calibrated);"
    " per-client accountants; no client spends more than epsilon",
    "central": "user-level DP-FedAvg (McMahan et al. 2018): server clips updates to clip_norm, adds Gaussian noise;"
    " RDP/PRV accounting; the run never spends more than epsilon",
}


class PrivacyConfig(_Section):
    mode: Literal["none", "local", "central"] = Field("none", description="Differential privacy mode.")
    epsilon: float = Field(8.0, gt=0, description="Privacy budget; a run never spends more.")
    delta: float = Field(1e-5, gt=0, lt=1, description="Privacy delta (must be below 1 / data.num_clients).")
    clip_norm: float = Field(1.0, gt=0, description="central: L2 bound of each client's update.")
    noise_multiplier: float | None = Field(
        None, ge=0, description="central: noise std / clip_norm (default: calibrated to spend epsilon in the rounds)."
    )
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus accountant.")
    max_grad_norm: float = Field(1.0, gt=0, description="local: per-sample gradient clipping bound (DP-SGD).")
    grad_sample_mode: Literal["hooks", "ew", "functorch"] = Field(
        "hooks", description="local: Opacus' per-sample-gradient engine."
    )


@dataclass(frozen=True)
class PrivacyPlan:
    """What a central-DP run will spend: noise, sampling rate, epsilon after the planned rounds."""

    noise_multiplier: float
    sample_rate: float
    planned_epsilon: float
    rounds_within_budget: int


ENCRYPTION_SCHEMES: dict[str, str] = {
    "none": "plaintext aggregation",
    "ckks": "CKKS (TenSEAL): clients encrypt weighted updates, the server adds ciphertexts it cannot decrypt",
}


class EncryptionConfig(_Section):
    scheme: Literal["none", "ckks"] = Field("none", description="Encrypted aggregation scheme.")
    poly_modulus_degree: int = Field(4096, description="ckks: ring dimension N (slots = N/2).")
    coeff_mod_bit_sizes: list[int] = Field([60, 40], description="ckks: coefficient-modulus prime sizes (bits).")
    global_scale_bits: int = Field(40, description="ckks: log2 of the encoding scale.")

    @model_validator(mode="after")
    def _check_ckks(self) -> EncryptionConfig:
        if self.scheme == "ckks":
            from fedsec.crypto import CryptoError

            try:
                self.params().validate()
            except CryptoError as e:
                raise ValueError(str(e)) from e
        return self

    def params(self):
        from fedsec.crypto import CkksParams

        return CkksParams(poly_modulus_degree=self.poly_modulus_degree,
                          coeff_mod_bit_sizes=tuple(self.coeff_mod_bit_sizes),
                          global_scale_bits=self.global_scale_bits)


class BackendConfig(_Section):
    address: str = Field("", description="'' starts a local Ray; 'auto' or host:port joins an existing cluster.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per client actor (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per client actor (fractions allowed).")
    round_timeout: float = Field(
        600.0, gt=0, description="Seconds the server waits for a round's replies (and for nodes at start-up)."
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
        return kwargs

    def _check_defense(self) -> None:
        from fedsec.strategies import STRATEGIES

        cls, _ = STRATEGIES[self.defense.strategy]
        try:
            strategy = cls(device="cpu", **self.strategy_kwargs())
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


def _format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key (check the spelling; `fedsec list` shows what exists)")
        elif item["type"] == "missing":
            parts.append(f"{key}: required key is missing")
        elif key and message.startswith(f"{item['loc'][0]}."):  # a section's own rule names its keys itself
            parts.append(message)
        elif key:
            parts.append(f"{key}: {message} (got {item.get('input')!r})")
        else:  # cross-section rule: the message names its keys itself
            parts.append(message)
    return "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``--set key.path=value``; the value is read as a TOML value, else as a plain string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. attack.fraction=0.3")
    key, raw = text.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {text!r}: empty key segment")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` set."""
    merged: dict[str, Any] = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def experiment_from_dict(raw: dict[str, Any], *, source: str = "config") -> Experiment:
    """Validate a raw mapping into an :class:`Experiment`, raising :class:`ConfigError`."""
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format_validation_error(e)}") from e
    if experiment.data.dataset == "fashion-mnist":
        root = Path(experiment.data_root)
        if not root.is_dir():
            raise ConfigError(
                f"{source}: data.root: directory {str(root)!r} not found; install Debian's package "
                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set data.root"
            )
    return experiment


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override and validate an experiment TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file: {e}") from e
    return experiment_from_dict(apply_overrides(raw, overrides or []), source=str(path))
