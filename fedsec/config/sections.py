"""The sections of an experiment config (one pydantic model each): the keys every kind shares.

Keys follow the config contract (docs/runs.md) (extend, never rename); ``extra="forbid"`` everywhere so
that a typo is an error, except in ``[attack]`` and ``[defense]``, whose kind-specific keys (``attack.scale``,
``defense.trim_ratio``, ...) are declared by the kinds themselves (their ``Params`` in the registries) and validated
when the run plan is built (:mod:`fedsec.plan`). This layer imports no implementation: names of kinds are plain
strings here and are checked against the registries by the plan. Rules that span sections live in
:mod:`fedsec.config.experiment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedsec.errors import ConfigError
from fedsec.registry import Registry

__all__ = [
    "AdversarialTrainingConfig", "AttackConfig", "AuditConfig", "BackendConfig", "ConfigError", "DataConfig",
    "ClientsConfig", "DefenseConfig", "EncryptionConfig", "ModelConfig", "PoisonConfig", "PrivacyConfig",
    "SanitizeConfig", "ServerConfig", "TRAIN_ALGORITHMS", "TrackingConfig", "TrainConfig",
]


_STRICT = {"strict": True, "allow_inf_nan": False}  # no "3" for 3, no true for 1, every number finite
MAX_CLIENTS = 1_000_000
"""The most logical clients a run has (``data.num_clients``): the bound of every partition id in a config."""
NAME_MAX = 255
"""Longest file-name component of a path, in bytes (Linux's NAME_MAX)."""
PATH_MAX = 4095
"""Longest path, in bytes (Linux's PATH_MAX, 4096, less the terminating NUL)."""

PartitionId = Annotated[int, Field(ge=0, le=MAX_CLIENTS - 1)]


def path_problem(value: str) -> str | None:
    """Why ``value`` cannot be a path on Linux (a control character, a component over :data:`NAME_MAX` bytes, the
    whole over :data:`PATH_MAX` bytes), or None: refused at validation rather than with an OSError at start."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character (NUL, newline, ...)"
    encoded = value.encode("utf-8", "surrogatepass")
    if len(encoded) > PATH_MAX:
        return f"{len(encoded)} bytes long, over the {PATH_MAX} a path may have"
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > NAME_MAX:
        return f"has a component of {longest} bytes, over the {NAME_MAX} a file name may have"
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, **_STRICT)


class _KindSection(BaseModel):
    """A section whose kind declares further keys: they are kept (``kind_keys``) for the plan to validate."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, **_STRICT)

    @property
    def kind_keys(self) -> dict[str, Any]:
        """The keys of this section that belong to the configured kind (validated by the plan)."""
        return dict(self.model_extra or {})


class PoisonConfig(_Section):
    """``[data.poison]``: corrupted training data at honest clients (ground truth recorded;
    :mod:`fedsec.data.poison`)."""

    kind: Literal["none", "label_noise", "targeted_flip", "outliers", "trigger"] = Field(
        "none", description="How the poisoned points are corrupted.")
    clients: Annotated[float, Field(ge=0, le=1)] | Annotated[list[PartitionId], Field(max_length=MAX_CLIENTS)] = Field(
        0.0, description="Share of clients (0..1) or their partition ids (each 0..99,999).")
    rate: float = Field(0.2, ge=0, le=1, description="Share of each poisoned client's examples.")
    source: int | None = Field(None, ge=0, le=100_000, description="targeted_flip: the class relabelled.")
    target: int | None = Field(None, ge=0, le=100_000, description="targeted_flip / trigger: the label given.")
    magnitude: float = Field(10.0, gt=0, le=1e6, description="outliers: how far the planted points lie.")

    @model_validator(mode="after")
    def _check(self) -> PoisonConfig:
        if isinstance(self.clients, float) and not 0 <= self.clients <= 1:
            raise ValueError(f"data.poison.clients={self.clients}: a share must be in [0, 1], or give a list of ids")
        if isinstance(self.clients, list) and len(set(self.clients)) != len(self.clients):
            raise ValueError(f"data.poison.clients={self.clients}: ids must be distinct")
        return self


class DataConfig(_KindSection):
    """``[data]``: the keys every dataset shares; a dataset's own settings (``synthetic_alpha``, ...) are declared by
    its ``Params`` (``fedsec list``) and validated by the run plan."""

    dataset: str = Field("fashion-mnist", description="Dataset name (see `fedsec list`).")
    partition: Literal["iid", "dirichlet", "shards", "natural", "sampled", "pathological", "size", "linear", "square",
                       "exponential"] = Field(
        "dirichlet",
        description="How training data is split across clients (`fedsec list`); 'natural' only for naturally "
        "federated data (synthetic, femnist); "
        "'sampled': samples_per_client random examples per client, drawn independently (more clients than data).",
    )
    alpha: float = Field(0.5, gt=0, le=1e6, description="Dirichlet concentration (smaller = more skewed).")
    num_clients: int = Field(20, ge=2, le=MAX_CLIENTS, description="Number of logical clients (partitions).")
    samples_per_client: int = Field(10, ge=1, le=1_000_000,
                                    description="Examples per client for partition = 'sampled'.")
    shards_per_client: int = Field(2, ge=1, le=1000, description="Label shards per client for partition = 'shards'.")
    classes_per_client: int = Field(2, ge=1, le=100_000,
                                    description="Classes per client for partition = 'pathological'.")
    class_assignment: Literal["first-deterministic", "random", "deterministic"] = Field(
        "first-deterministic", description="partition = 'pathological': client i gets class i mod C, then random "
        "ones (Li et al. 2022's code) | all random | classes i .. i+k-1 mod C.")
    partition_sizes: list[Annotated[int, Field(ge=1, le=1_000_000_000)]] | None = Field(
        None, max_length=MAX_CLIENTS, description="Examples per client for partition = 'size': one entry per client.")
    root: str = Field("", max_length=PATH_MAX,
                      description="Directory of the dataset files ('' = the dataset's default location); at most "
                      "4,095 bytes, each component at most 255.")
    poison: PoisonConfig = Field(default_factory=PoisonConfig,
                                 description="Poisoned data at honest clients ([data.poison]).")

    @model_validator(mode="after")
    def _check_partition_sizes(self) -> DataConfig:
        sizes, n = self.partition_sizes, self.num_clients
        if self.partition == "size" and (sizes is None or len(sizes) != n):
            got = "none" if sizes is None else f"{len(sizes)}"
            raise ValueError(f"data.partition_sizes: partition = 'size' needs one size per client, data.num_clients = "
                             f"{n}, got {got}; give {n} sizes")
        return self

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        problem = path_problem(value)
        if problem:
            raise ValueError(f"not a usable path: {problem}")
        return value


class ModelConfig(_Section):
    name: str = Field("cnn", max_length=100, description="Model name (see `fedsec list`).")


class AdversarialTrainingConfig(_Section):
    """``[train.adversarial]``: federated adversarial training of the honest clients (:mod:`fedsec.audits.evasion`)."""

    attack: Literal["none", "pgd", "fgsm"] = Field(
        "none", description="pgd: PGD-AT (Madry et al. 2018); fgsm: FGSM with random start (Wong et al. 2020).")
    epsilon: float = Field(0.1, gt=0, le=1, description="L-inf budget on inputs scaled to [0, 1].")
    steps: int = Field(3, ge=1, le=100, description="pgd: attack steps per batch.")
    ratio: float = Field(1.0, gt=0, le=1, description="Share of each batch replaced by adversarial examples.")


class TrainConfig(_Section):
    clients_per_round: int = Field(10, ge=1, le=100_000, description="Clients sampled (seeded) per round.")
    local_epochs: int = Field(1, ge=1, le=1000, description="Local epochs per round.")
    batch_size: int = Field(32, ge=1, le=1_000_000, description="Local mini-batch size.")
    lr: float = Field(0.01, gt=0, le=100, description="Local SGD learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Local SGD momentum.")
    weight_decay: float = Field(0.0, ge=0, le=100, description="Local SGD weight decay.")
    vectorize: bool = Field(False, description="Cohort messages: the honest clients of a cohort that run plain "
                            "local SGD or fedsec's local DP-SGD train together, parameters stacked (torch.func.vmap; "
                            "equal to one after another within 1e-5); others, and models with BatchNorm or Dropout, "
                            "fall back.")
    sampling: Literal["auto", "fixed", "poisson"] = Field(
        "auto", description="How each round's clients are drawn: fixed = exactly clients_per_round (without "
        "replacement); poisson = each client with probability clients_per_round / num_clients; auto = poisson under "
        "central DP (what its accountant analyses), fixed otherwise.")
    adversarial: AdversarialTrainingConfig = Field(default_factory=AdversarialTrainingConfig,
                                                   description="Federated adversarial training.")
    deadline: float | None = Field(
        None, gt=0, le=1e9, description="Simulated seconds the server waits for replies ([clients] speed): a later "
        "reply is dropped, recorded as late (none: every reply is waited for).")
    algorithm: str = Field("fedavg", max_length=100,
                           description="The clients' local algorithm: fedavg | fedprox | fedsgd (`fedsec list`).")
    proximal_mu: float | None = Field(
        None, ge=0, le=1e4, description="fedprox (and only fedprox, which needs it): mu of the proximal term "
        "(mu/2)||w - w_global||^2 added to the local loss, 0 <= mu <= 1e4 (0: FedAvg exactly).")

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, algorithm: str) -> str:
        TRAIN_ALGORITHMS.get(algorithm)  # a ConfigError naming train.algorithm and the known ones
        return algorithm

    @model_validator(mode="after")
    def _check_algorithm(self) -> TrainConfig:
        if self.algorithm == "fedprox" and self.proximal_mu is None:
            raise ValueError("train.proximal_mu: train.algorithm='fedprox' needs it (>= 0; Li et al. 2020 pick it "
                             "from {0.001, 0.01, 0.1, 1}; 0 is FedAvg exactly)")
        if self.algorithm != "fedprox" and self.proximal_mu is not None:
            raise ValueError(f"train.proximal_mu={self.proximal_mu:g}: only train.algorithm='fedprox' reads it, got "
                             f"{self.algorithm!r}; set algorithm = 'fedprox' or drop the key")
        if self.algorithm == "fedsgd" and self.local_epochs != 1:
            raise ValueError(f"train.local_epochs={self.local_epochs}: train.algorithm='fedsgd' takes one full-batch "
                             "gradient step per round (McMahan et al. 2017: B = all, E = 1); use local_epochs = 1 "
                             "or algorithm = 'fedavg'")
        return self


class AttackConfig(_KindSection):
    """``[attack]``: the keys every attack kind takes; kind-specific keys (``source``, ``scale``, ...) are declared
    by each attack's ``Params`` (``fedsec list``)."""

    kind: str = Field("none", max_length=100, description="Attack kind (see `fedsec list`).")
    fraction: float = Field(0.0, ge=0, le=1, description="Fraction of clients that are malicious.")
    client_ids: list[PartitionId] | None = Field(None, max_length=MAX_CLIENTS,
                                                 description="Explicit malicious partition ids (instead of fraction).")
    start_round: int = Field(1, ge=1, le=1_000_000, description="First round in which attackers act.")
    end_round: int | None = Field(None, ge=1, le=1_000_000,
                                  description="Last round in which attackers act (None = last round).")
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


class SanitizeConfig(_KindSection):
    """``[defense.sanitize]``: client-side data sanitization before local training (:mod:`fedsec.sanitize`); each
    filter declares its own keys (``k``, ``contamination``, ``n_folds``, ...: its ``Params``, ``fedsec list``)."""

    method: str = Field("none", max_length=100, description="The filter honest clients run on their data before "
                        "training ('none' or a filter of `fedsec list`).")


class DefenseConfig(_KindSection):
    """``[defense]``: the server strategy; its keys (``num_malicious``, ``trim_ratio``, ...) are declared by each
    strategy's ``Params`` (``fedsec list``)."""

    strategy: str = Field("fedavg", max_length=100, description="Server strategy (see `fedsec list`).")
    weighting: Literal["reported", "capped", "uniform"] = Field(
        "capped", description="How weighted rules use each client's claimed num-examples: as reported, capped at "
        "weight_cap x the round's median claim, or ignored (uniform).")
    weight_cap: float = Field(4.0, ge=1, le=1e6, description="capped: the largest claim counted, x the median.")
    sanitize: SanitizeConfig = Field(default_factory=SanitizeConfig, description="Client-side data sanitization.")
    pre: list[str | dict[str, Any]] = Field(
        [], max_length=4, description="Pre-aggregators run in order before the rule: names (\"nnm\", \"bucketing\", "
        "\"arc\") or tables with their keys ({ name = \"bucketing\", bucket_size = 2 }); see `fedsec list`.")


@dataclass(frozen=True)
class SectionKind:
    """A kind chosen by a key of a section whose other keys it shares (``privacy.mode``, ``encryption.scheme``):
    what it does and which of the section's keys it reads (``fedsec list`` shows them with their defaults)."""

    description: str
    keys: tuple[str, ...] = ()


#: train.algorithm -> what the clients do locally and the [train] keys it reads; one line per algorithm
TRAIN_ALGORITHMS: Registry[SectionKind] = Registry("train.algorithm", "client algorithm")
TRAIN_ALGORITHMS.register("fedavg", SectionKind(
    "FedAvg's client (McMahan et al. 2017): local_epochs shuffled passes of SGD mini-batches of batch_size",
    ("local_epochs", "batch_size", "lr", "momentum", "weight_decay", "vectorize")))
TRAIN_ALGORITHMS.register("fedprox", SectionKind(
    "FedProx's client (Li et al., MLSys 2020): FedAvg's, with (proximal_mu/2)||w - w_global||^2 added to the local "
    "loss", ("proximal_mu", "local_epochs", "batch_size", "lr", "momentum", "weight_decay")))
TRAIN_ALGORITHMS.register("fedsgd", SectionKind(
    "FedSGD's client (McMahan et al. 2017): one SGD step on the gradient of the mean loss over all local examples "
    "(accumulated in chunks of batch_size); local_epochs must be 1", ("lr", "weight_decay", "batch_size")))

#: privacy.mode -> what it does and the [privacy] keys it reads; one line per mode
PRIVACY_MODES: Registry[SectionKind] = Registry("privacy.mode", "privacy mode")
PRIVACY_MODES.register("none", SectionKind("no differential privacy"))
PRIVACY_MODES.register("local", SectionKind(
    "sample-level DP-SGD on every client with Opacus (max_grad_norm, noise_multiplier or calibrated); per-client "
    "accountants; no client spends more than epsilon",
    ("epsilon", "delta", "max_grad_norm", "noise_multiplier", "accountant", "grad_sample_mode")))
PRIVACY_MODES.register("central", SectionKind(
    "user-level DP-FedAvg (McMahan et al. 2018): server clips updates to clip_norm, adds Gaussian noise; RDP/PRV "
    "accounting; the run never spends more than epsilon",
    ("epsilon", "delta", "clip_norm", "noise_multiplier", "accountant", "clipping", "target_quantile", "clip_lr",
     "clip_count_std")))


class PrivacyConfig(_Section):
    @field_validator("mode")
    @classmethod
    def _known_mode(cls, mode: str) -> str:
        PRIVACY_MODES.get(mode)  # a ConfigError naming privacy.mode and the known modes
        return mode

    mode: str = Field("none", max_length=100, description="Differential privacy mode (`fedsec list`).")
    epsilon: float = Field(8.0, gt=0, le=100, description="Privacy budget; a run never spends more.")
    delta: float = Field(1e-5, gt=0, lt=1, description="Privacy delta (must be below 1 / data.num_clients).")
    clip_norm: float = Field(1.0, gt=0, le=1e6, description="central: L2 bound of each client's update.")
    noise_multiplier: float | None = Field(
        None, ge=0.01, le=1e4,
        description="noise std / clip bound (default: calibrated to spend epsilon in the rounds)."
    )
    accountant: Literal["rdp", "prv"] = Field("rdp", description="Opacus accountant.")
    clipping: Literal["fixed", "adaptive"] = Field(
        "fixed", description="central: 'fixed' clips every update to clip_norm; 'adaptive' (Andrew et al. 2021) "
        "starts at clip_norm and moves it each round towards the target_quantile of the update norms, from a "
        "noised count that the accountant includes."
    )
    target_quantile: float = Field(0.5, gt=0, lt=1, description="central, adaptive: the share of updates the clip "
                                   "bound should leave unclipped.")
    clip_lr: float = Field(0.2, gt=0, le=10, description="central, adaptive: the geometric learning rate of the clip "
                           "bound (C <- C exp(-clip_lr (unclipped share - target_quantile))).")
    clip_count_std: float | None = Field(
        None, gt=0, le=1e6, description="central, adaptive: std of the noise on the count of unclipped updates "
        "(default: clients_per_round / 20, the paper's); must exceed noise_multiplier / 2."
    )
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="local: per-sample gradient clipping bound (DP-SGD).")
    grad_sample_mode: Literal["fedsec", "hooks", "ew", "functorch"] = Field(
        "fedsec", description="local: the per-sample-gradient engine of DP-SGD: fedsec's own kernels (ghost norms "
        "for Linear layers, torch.func vmap for CNNs; fedsec.privacy.dp_sgd) or Opacus' (hooks, ew, functorch); "
        "the same accounting either way."
    )


#: encryption.scheme -> what it does and the [encryption] keys it reads; one line per scheme
ENCRYPTION_SCHEMES: Registry[SectionKind] = Registry("encryption.scheme", "encryption scheme")
ENCRYPTION_SCHEMES.register("none", SectionKind("plaintext aggregation"))
ENCRYPTION_SCHEMES.register("ckks", SectionKind(
    "CKKS (TenSEAL): clients encrypt weighted updates, the server adds ciphertexts it cannot decrypt",
    ("poly_modulus_degree", "coeff_mod_bit_sizes", "global_scale_bits")))
ENCRYPTION_SCHEMES.register("secagg+", SectionKind(
    "Flower's SecAgg+ (Bell et al., CCS 2020): clients mask quantized weighted models, the server sums the masks "
    "away and learns only the aggregate, surviving dropouts through Shamir shares",
    ("num_shares", "reconstruction_threshold", "clipping_range", "quantization_range")))


class EncryptionConfig(_Section):
    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, scheme: str) -> str:
        ENCRYPTION_SCHEMES.get(scheme)
        return scheme

    @field_validator("trust")
    @classmethod
    def _known_trust(cls, trust: str) -> str:
        if trust in ("authority", "clients", "threshold"):
            return trust
        raise ValueError(f"{trust!r}: unknown trust model; the models are 'clients', 'threshold' and 'authority' "
                         "(docs/encryption.md, who can decrypt what)")

    scheme: str = Field("none", max_length=100, description="Encrypted aggregation scheme (`fedsec list`).")
    trust: str = Field("clients", max_length=100, description="ckks: who holds the secret key: clients (the "
                       "round's decryptor client releases sums of >= 2 signed members, once per round; the server "
                       "holds the public context only), threshold (no party holds it: a committee of clients "
                       "makes a joint key with OpenFHE and decrypts each round's sum together) or authority (a "
                       "trusted key authority does; docs/encryption.md).")
    committee: int = Field(3, ge=2, le=MAX_CLIENTS, description="ckks, trust = threshold: n, the clients (drawn "
                           "from the seed) that make the joint key and decrypt each round's sum together; at most "
                           "data.num_clients.")
    threshold: int | None = Field(None, ge=2, le=MAX_CLIENTS, description="ckks, trust = threshold: t, the members "
                                  "that must answer for a round to decrypt (the others' partial decryptions are "
                                  "rebuilt from Shamir shares); committee/2 < t <= committee (default: a majority, "
                                  "committee // 2 + 1; t = committee: no shares, every member must answer).")
    poly_modulus_degree: int = Field(4096, ge=1024, le=32768, description="ckks: ring dimension N (slots = N/2).")
    coeff_mod_bit_sizes: list[Annotated[int, Field(ge=1, le=60)]] = Field(
        [60, 40], min_length=1, max_length=30, description="ckks: coefficient-modulus prime sizes (bits, 1..60 each).")
    global_scale_bits: int = Field(40, ge=1, le=60, description="ckks: log2 of the encoding scale.")
    num_shares: float = Field(1.0, gt=0, le=1, description="secagg+: the share of the round's clients each client "
                              "exchanges masks and key shares with (1: all of them, as in SecAgg).")
    reconstruction_threshold: float = Field(0.5, gt=0, le=1, description="secagg+: the share of a client's "
                                            "neighbours needed to rebuild its masks if it drops (at least 2).")
    clipping_range: float = Field(8.0, gt=0, le=1e4, description="secagg+: each weighted model coordinate is "
                                  "clipped to +-this before quantization (Flower's default 8).")
    quantization_range: int = Field(2**22, ge=2, le=2**26, description="secagg+: quantization levels over "
                                    "[-clipping_range, clipping_range] (Flower's default 2^22; the sum is taken "
                                    "modulo 2^32).")


class ServerConfig(_KindSection):
    """``[server]``: what the server does with the rule's aggregate; each optimizer declares its keys
    (``server_lr``, ``momentum``, ``beta_1``, ``beta_2``, ``tau``: its ``Params``, ``fedsec list``), validated by the
    run plan."""

    optimizer: str = Field("none", max_length=100, description="Server optimizer applied to (aggregate - global): "
                           "none | fedavgm | fedadam | fedyogi | fedadagrad (`fedsec list`).")
    aggregation: Literal["sync", "fedbuff"] = Field(
        "sync", description="sync: each round waits for its sampled clients; fedbuff: train.clients_per_round "
        "clients train at once and the server aggregates every buffer_size arrivals (Nguyen et al., AISTATS 2022).")
    buffer_size: int | None = Field(None, ge=1, le=MAX_CLIENTS, description="fedbuff (and only fedbuff, which needs "
                                    "it): K, the arrivals per server step, 1 <= K <= train.clients_per_round.")
    staleness_exponent: float = Field(0.5, ge=0, le=10, description="fedbuff: an update t server steps stale counts "
                                      "(1 + t)^-a (FedBuff's 1/sqrt(1 + t) at a = 0.5; 0: no discount).")

    @model_validator(mode="after")
    def _check_buffer(self) -> ServerConfig:
        if self.aggregation == "fedbuff" and self.buffer_size is None:
            raise ValueError("server.buffer_size: server.aggregation='fedbuff' needs it (K arrivals per server step; "
                             "Nguyen et al. use K = 10 of 100+ concurrent clients)")
        if self.aggregation != "fedbuff" and self.buffer_size is not None:
            raise ValueError(f"server.buffer_size={self.buffer_size}: only server.aggregation='fedbuff' reads it; "
                             "set aggregation = 'fedbuff' or drop the key")
        return self


class ClientsConfig(_Section):
    """``[clients]``: how the simulated devices behave (:mod:`fedsec.federation`): who is reachable, who fails
    mid-round, how fast each computes. The defaults are the ideal federation (everyone answers, at once)."""

    dropout: float = Field(0.0, ge=0, lt=1, description="Chance that a sampled client is unreachable at the start of "
                           "a round (drawn per round and client from the seed; 0 <= dropout < 1).")
    failure: float = Field(0.0, ge=0, lt=1, description="Chance that a client that got the round's model trains but "
                           "its reply never arrives (a mid-round failure; 0 <= failure < 1).")
    availability: str | None = Field(None, max_length=4095, description="CSV trace with columns client,round,"
                                     "available (1/0): a sampled client marked 0 for a round does not take part; "
                                     "pairs the file omits are available.")
    attackers_drop: bool = Field(False, description="Whether dropout, failures, the trace and the deadline apply to "
                                 "malicious clients too (default: an attacker keeps its devices online and fast).")
    speed: float = Field(1000.0, gt=0, le=1e9, description="Median compute speed, examples per simulated second: a "
                         "reply arrives after local_epochs x partition size / speed.")
    speed_sigma: float = Field(0.0, ge=0, le=10, description="Spread of the speeds: each client's is drawn once, "
                               "log-normal with this sigma around `speed` (0: every client at `speed`).")
    speeds: str | None = Field(None, max_length=4095, description="CSV with columns client,speed (examples per "
                               "simulated second) that sets the listed clients' speeds.")

    @field_validator("availability", "speeds")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        problem = None if value is None else path_problem(value)
        if problem:
            raise ValueError(f"not a usable path: {problem}")
        return value


class BackendConfig(_Section):
    address: str = Field("", max_length=300, pattern=r"^(|auto|(ray://)?[A-Za-z0-9._\-]+:[0-9]{1,5}|\[[0-9A-Fa-f:.]+\]:[0-9]{1,5})$",
                         description="'' starts a local Ray; 'auto' or host:port (port 1..65535) joins an existing "
                         "cluster.")
    num_cpus: float = Field(1.0, ge=0.01, le=1024, description="CPUs per client actor (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, le=64, description="GPUs per client actor (fractions allowed).")
    round_timeout: float = Field(
        600.0, ge=1, le=7 * 86400,
        description="Seconds the server waits for a round's replies (and for nodes at start-up)."
    )
    aggregate_timeout: float = Field(
        600.0, ge=1, le=7 * 86400,
        description="Seconds a rule may spend aggregating one round (1 s .. 7 days); past it the round is skipped, "
        "the reason naming the rule, and the run goes on.",
    )
    messages: Literal["auto", "cohort", "per_client"] = Field(
        "auto",
        description="How clients get their train messages: per_client = one Flower node and one message per logical "
        "client (Flower's usual way); cohort = a few Flower nodes, each message carrying a cohort of logical "
        "clients that one actor trains in turn, unpacked into one reply per client before the strategy sees them "
        "(same results); auto = cohort when there are more clients than cohort nodes.",
    )
    cohort_nodes: int = Field(
        0, ge=0, le=MAX_CLIENTS,
        description="Flower nodes in cohort mode; client p always belongs to node p mod cohort_nodes (its state "
        "stays there); 0 = 4 per client slot of the cluster.",
    )

    @field_validator("address")
    @classmethod
    def _port(cls, value: str) -> str:
        if value not in ("", "auto"):  # the pattern allows 1-5 digits: a TCP port is 1..65535
            port = int(value.rsplit(":", 1)[1])
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is outside 1..65535")
        return value


class AuditConfig(BaseModel):
    """``[audit]``: one table per audit hook (``[audit.evasion]``, ``[audit.membership]``, ...). Each hook declares
    its keys (its ``Params``, ``fedsec list``); the run plan validates every table against them."""

    model_config = ConfigDict(extra="allow", strict=True)

    @model_validator(mode="after")
    def _tables(self) -> AuditConfig:
        for name, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                raise ValueError(f"audit.{name}={value!r}: expected a table ([audit.{name}] with its keys)")
        return self

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        """The configured audit tables by hook name."""
        return dict(self.model_extra or {})


class EvalConfig(_Section):
    """``[eval]``: how often and on how much of the test set the server evaluates the global model. Rounds between
    evaluations have no accuracy in ``rounds.csv``; round 0 and the last planned round are always evaluated on the
    whole test set, and a run that stops early is evaluated on it at the end (``summary.json``)."""

    every: int = Field(1, ge=1, le=100_000, description="Evaluate after every this many rounds (1: every round).")
    examples: int = Field(0, ge=0, le=100_000_000, description="Evaluate between-rounds on a seeded, stratified "
                          "subset of this many test examples (0: the whole test set every time).")


class TrackingConfig(_Section):
    """``[tracking]``: export the run to experiment trackers as well (:mod:`fedsec.results.exports`); the run
    directory stays the record."""

    mlflow: str | None = Field(None, min_length=1, max_length=PATH_MAX,
                               description="MLflow tracking URI, e.g. 'file:./mlruns' or 'sqlite:///mlflow.db' "
                               "(needs `pip install 'fedsec[mlflow]'`).")
    experiment: str | None = Field(None, min_length=1, max_length=200,
                                   description="MLflow experiment the runs go to (default 'fedsec').")
    tensorboard: str | None = Field(None, min_length=1, max_length=PATH_MAX,
                                    description="TensorBoard log directory; each run writes DIR/<run directory name>.")

    @field_validator("mlflow", "tensorboard")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        problem = None if value is None else path_problem(value)
        if problem:
            raise ValueError(f"{value[:60]!r}: {problem}")
        return value
