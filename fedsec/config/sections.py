"""The sections of an experiment config (one pydantic model each): the keys every kind shares.

Keys follow the config contract in ``shared/README.md`` (extend, never rename); ``extra="forbid"`` everywhere so
that a typo is an error, except in ``[attack]`` and ``[defense]``, whose kind-specific keys (``attack.scale``,
``defense.trim_ratio``, ...) are declared by the kinds themselves (their ``Params`` in the registries) and validated
when the run plan is built (:mod:`fedsec.plan`). This layer imports no implementation: names of kinds are plain
strings here and are checked against the registries by the plan. Rules that span sections live in
:mod:`fedsec.config.experiment`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedsec.errors import ConfigError

__all__ = [
    "AttackConfig", "BackendConfig", "ConfigError", "DataConfig", "DefenseConfig", "EncryptionConfig",
    "ModelConfig", "PrivacyConfig", "TrainConfig",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _KindSection(BaseModel):
    """A section whose kind declares further keys: they are kept (``kind_keys``) for the plan to validate."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    @property
    def kind_keys(self) -> dict[str, Any]:
        """The keys of this section that belong to the configured kind (validated by the plan)."""
        return dict(self.model_extra or {})


class DataConfig(_Section):
    dataset: str = Field("fashion-mnist", description="Dataset name (see `fedsec list`).")
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


class TrainConfig(_Section):
    clients_per_round: int = Field(10, ge=1, description="Clients sampled (seeded) per round.")
    local_epochs: int = Field(1, ge=1, description="Local epochs per round.")
    batch_size: int = Field(32, ge=1, description="Local mini-batch size.")
    lr: float = Field(0.01, gt=0, description="Local SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Local SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, description="Local SGD weight decay.")


class AttackConfig(_KindSection):
    """``[attack]``: the keys every attack kind takes; kind-specific keys (``source``, ``scale``, ...) are declared
    by each attack's ``Params`` (``fedsec list``)."""

    kind: str = Field("none", description="Attack kind (see `fedsec list`).")
    fraction: float = Field(0.0, ge=0, le=1, description="Fraction of clients that are malicious.")
    client_ids: list[int] | None = Field(None, description="Explicit malicious partition ids (instead of fraction).")
    start_round: int = Field(1, ge=1, description="First round in which attackers act.")
    end_round: int | None = Field(None, ge=1, description="Last round in which attackers act (None = last round).")
    knowledge: Literal["colluding", "omniscient"] = Field(
        "colluding",
        description="attacks that craft from benign updates: 'colluding' = the attackers' own honest updates; "
        "'omniscient' = all honest updates of the round (realised on the server before aggregation).",
    )

    @model_validator(mode="after")
    def _check_common(self) -> AttackConfig:
        if self.client_ids is not None and "fraction" in self.model_fields_set:
            raise ValueError("attack.client_ids: give either attack.fraction or attack.client_ids, not both")
        return self


class DefenseConfig(_KindSection):
    """``[defense]``: the server strategy; its keys (``num_malicious``, ``trim_ratio``, ...) are declared by each
    strategy's ``Params`` (``fedsec list``)."""

    strategy: str = Field("fedavg", description="Server strategy (see `fedsec list`).")


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


ENCRYPTION_SCHEMES: dict[str, str] = {
    "none": "plaintext aggregation",
    "ckks": "CKKS (TenSEAL): clients encrypt weighted updates, the server adds ciphertexts it cannot decrypt",
}


class EncryptionConfig(_Section):
    scheme: Literal["none", "ckks"] = Field("none", description="Encrypted aggregation scheme.")
    poly_modulus_degree: int = Field(4096, description="ckks: ring dimension N (slots = N/2).")
    coeff_mod_bit_sizes: list[int] = Field([60, 40], description="ckks: coefficient-modulus prime sizes (bits).")
    global_scale_bits: int = Field(40, description="ckks: log2 of the encoding scale.")


class BackendConfig(_Section):
    address: str = Field("", description="'' starts a local Ray; 'auto' or host:port joins an existing cluster.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per client actor (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per client actor (fractions allowed).")
    round_timeout: float = Field(
        600.0, gt=0, description="Seconds the server waits for a round's replies (and for nodes at start-up)."
    )
