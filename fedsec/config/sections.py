"""The sections of an experiment config (one pydantic model each) and the names they accept.

Keys follow the config contract in ``shared/README.md`` (extend, never rename); ``extra="forbid"`` everywhere so
that a typo is an error. Rules that span sections live in :mod:`fedsec.config.experiment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    "num_malicious": {"krum", "multikrum", "bulyan", "dnc"},
    "num_selected": {"multikrum"},
    "trim_ratio": {"trimmed_mean"},
    "clip_norm": {"norm_clipping", "centered_clipping"},
    "noise_std": {"norm_clipping"},
    "iterations": {"geomed", "centered_clipping", "dnc"},
    "root_size": {"fltrust"},
    "noise_lambda": {"flame"},
    "kappa": {"foolsgold"},
    "subsample_dim": {"dnc"},
    "filter_frac": {"dnc"},
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
    iterations: int | None = Field(
        None, ge=1, description="geomed (3) / centered_clipping (1) / dnc (5): iterations."
    )
    root_size: int = Field(100, ge=1, description="fltrust: examples in the server's root dataset.")
    noise_lambda: float = Field(0.001, ge=0, description="flame: noise std as a share of the median norm.")
    kappa: float = Field(1.0, gt=0, description="foolsgold: confidence of the logit rescaling.")
    subsample_dim: int = Field(10_000, ge=1, description="dnc: coordinates sampled per iteration.")
    filter_frac: float = Field(1.0, gt=0, description="dnc: c, removes c x num_malicious updates per iteration.")

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
