"""Experiment configuration: TOML files validated by pydantic.

The keys follow the config contract in ``shared/README.md`` (extend, never rename): one pydantic model per section
(:mod:`.sections`), the experiment with its cross-section rules (:mod:`.experiment`), and loading with overrides
(:mod:`.loading`). Every problem surfaces as a :class:`ConfigError` whose message names the key, the rule, the
value received and, where there is one, the fix.
"""

from .experiment import Experiment
from .loading import apply_overrides, experiment_from_dict, load_experiment, parse_override
from .sections import (
    ATTACKS,
    COLLUDING_ATTACKS,
    DATASET_INPUT_SHAPES,
    DATASET_NUM_CLASSES,
    DATASET_TRAIN_SIZES,
    DEFAULT_FASHION_MNIST_ROOT,
    ENCRYPTION_SCHEMES,
    PRIVACY_MODES,
    AttackConfig,
    BackendConfig,
    ConfigError,
    DataConfig,
    DefenseConfig,
    EncryptionConfig,
    ModelConfig,
    PrivacyConfig,
    PrivacyPlan,
    TrainConfig,
)

__all__ = [
    "ATTACKS",
    "COLLUDING_ATTACKS",
    "DATASET_INPUT_SHAPES",
    "DATASET_NUM_CLASSES",
    "DATASET_TRAIN_SIZES",
    "DEFAULT_FASHION_MNIST_ROOT",
    "ENCRYPTION_SCHEMES",
    "PRIVACY_MODES",
    "AttackConfig",
    "BackendConfig",
    "ConfigError",
    "DataConfig",
    "DefenseConfig",
    "EncryptionConfig",
    "Experiment",
    "ModelConfig",
    "PrivacyConfig",
    "PrivacyPlan",
    "TrainConfig",
    "apply_overrides",
    "experiment_from_dict",
    "load_experiment",
    "parse_override",
]
