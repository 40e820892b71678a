"""The whole experiment and the rules that span its sections without knowing any implementation.

Rules that need a kind's declaration (a strategy's n-vs-f, an attack's keys, a model that fits a dataset, a
privacy plan) are checked when the run plan is built (:mod:`fedsec.plan`), once.
"""

from __future__ import annotations

import functools
from typing import Any

import tomli_w
from pydantic import Field, model_validator

from .sections import (
    AttackConfig,
    AuditConfig,
    BackendConfig,
    ClientsConfig,
    DataConfig,
    DefenseConfig,
    EncryptionConfig,
    EvalConfig,
    ModelConfig,
    PrivacyConfig,
    ServerConfig,
    TrackingConfig,
    TrainConfig,
    _Section,
)


class Experiment(_Section):
    """A whole experiment: what `fedsec run` executes and what lands in the run directory's config.toml."""

    name: str = Field("experiment", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$",
                      description="Experiment name: a file name (letters, digits, . _ + -), the run directory prefix.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed for data partitioning, client sampling and training.")
    rounds: int = Field(5, ge=1, le=100_000, description="Federated rounds.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    attack: AttackConfig = Field(default_factory=AttackConfig)
    defense: DefenseConfig = Field(default_factory=DefenseConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    encryption: EncryptionConfig = Field(default_factory=EncryptionConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    clients: ClientsConfig = Field(default_factory=ClientsConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig | None = Field(None, description="[tracking]: MLflow / TensorBoard exports.")

    @model_validator(mode="after")
    def _check_sections(self) -> Experiment:
        data, train, attack = self.data, self.train, self.attack
        if train.clients_per_round > data.num_clients:
            raise ValueError(
                f"train.clients_per_round={train.clients_per_round}: must be <= data.num_clients="
                f"{data.num_clients}; lower clients_per_round or raise num_clients"
            )
        if attack.end_round is not None and attack.end_round < attack.start_round:
            raise ValueError(
                f"attack.end_round={attack.end_round}: must be >= attack.start_round={attack.start_round}"
            )
        if attack.kind != "none":
            if attack.client_ids is not None:
                bad = [c for c in attack.client_ids if not 0 <= c < data.num_clients]
                if bad or len(set(attack.client_ids)) != len(attack.client_ids):
                    raise ValueError(
                        f"attack.client_ids={attack.client_ids}: ids must be distinct and in [0, data.num_clients="
                        f"{data.num_clients})"
                    )
            elif round(attack.fraction * data.num_clients) == 0:
                raise ValueError(
                    f"attack.fraction={attack.fraction}: attack.kind={attack.kind!r} needs at least one malicious "
                    f"client (fraction x data.num_clients={data.num_clients} rounds to 0); raise fraction or set "
                    "client_ids"
                )
        if self.privacy.mode == "local" and train.algorithm != "fedavg":
            why = ("DP-SGD's step (fedsec.privacy.dp_sgd, Opacus) adds no proximal term, so the clients would run "
                   "FedAvg" if train.algorithm == "fedprox" else
                   "DP-SGD's accountant counts Poisson batches of rate batch_size / n over local_epochs passes, not "
                   "one full-batch step (for one DP step per round use fedavg with batch_size >= the examples of "
                   "a client)")
            raise ValueError(f"train.algorithm={train.algorithm!r} with privacy.mode='local': {why}; use "
                             "train.algorithm = 'fedavg', or privacy.mode = 'central' (which keeps its guarantee "
                             "under any client algorithm: the server clips every update)")
        if self.privacy.mode == "central" and self.privacy.delta >= 1 / data.num_clients:
            raise ValueError(
                f"privacy.delta={self.privacy.delta:g}: must be below 1 / data.num_clients = {1 / data.num_clients:g} "
                "(user-level DP over clients)"
            )
        return self

    def expected_attackers_per_round(self) -> int:
        """round(share of malicious clients x clients per round): the f a defense assumes by default."""
        attack, data = self.attack, self.data
        if attack.kind == "none":
            return 0
        share = len(attack.client_ids) / data.num_clients if attack.client_ids is not None else attack.fraction
        return int(round(share * self.train.clients_per_round))

    def client_sampling(self) -> str:
        """How each round's clients are drawn: ``train.sampling``, with "auto" resolved to "poisson" under central
        DP (what its accountants analyse) and to "fixed" otherwise."""
        if self.train.sampling != "auto":
            return self.train.sampling
        return "poisson" if self.privacy.mode == "central" else "fixed"

    def raw(self) -> dict[str, Any]:
        """The config as given (kind keys included, defaults of the shared keys filled in)."""
        return self.model_dump(exclude_none=True)

    def to_toml(self, resolved: dict[str, Any] | None = None) -> str:
        """TOML of ``resolved`` (the plan's fully resolved config) or of :meth:`raw`."""
        return tomli_w.dumps(resolved if resolved is not None else self.raw())


@functools.cache
def shared_defaults() -> dict[str, Any]:
    """The shared keys' defaults, as a run's config.toml writes them (a fresh :class:`Experiment`); a resumed run
    compares against them the keys an older fedsec did not write yet (:mod:`fedsec.results.run_directory`)."""
    return Experiment().raw()
