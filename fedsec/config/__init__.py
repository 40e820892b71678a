"""Experiment configuration: TOML files validated by pydantic.

The keys follow the config contract (docs/runs.md) (extend, never rename): one pydantic model per section
(:mod:`.sections`), the experiment with the rules that span sections (:mod:`.experiment`), and loading with
overrides (:mod:`.loading`). This layer imports no implementation; kind-specific keys are validated by the run
plan (:mod:`fedsec.plan`). Every problem surfaces as a :class:`ConfigError` whose message names the key, the rule,
the value received and, where there is one, the fix.
"""

from fedsec.errors import ConfigError

from .experiment import Experiment, shared_defaults
from .loading import (
    ConfigProblems,
    apply_overrides,
    copy_config,
    experiment_from_dict,
    load_experiment,
    parse_override,
    read_toml,
)
from .sections import (
    ENCRYPTION_SCHEMES,
    PRIVACY_MODES,
    TRAIN_ALGORITHMS,
    AdversarialTrainingConfig,
    AttackConfig,
    AuditConfig,
    BackendConfig,
    ClientsConfig,
    DataConfig,
    DefenseConfig,
    EncryptionConfig,
    EvalConfig,
    ModelConfig,
    PoisonConfig,
    PrivacyConfig,
    SanitizeConfig,
    ServerConfig,
    TrainConfig,
)

__all__ = [
    "AdversarialTrainingConfig",
    "AuditConfig",
    "PoisonConfig",
    "SanitizeConfig",
    "ENCRYPTION_SCHEMES",
    "PRIVACY_MODES",
    "TRAIN_ALGORITHMS",
    "AttackConfig",
    "BackendConfig",
    "ConfigError",
    "ConfigProblems",
    "DataConfig",
    "DefenseConfig",
    "EncryptionConfig",
    "EvalConfig",
    "Experiment",
    "ModelConfig",
    "PrivacyConfig",
    "ServerConfig",
    "ClientsConfig",
    "TrainConfig",
    "apply_overrides",
    "copy_config",
    "experiment_from_dict",
    "load_experiment",
    "parse_override",
    "read_toml",
    "shared_defaults",
]
