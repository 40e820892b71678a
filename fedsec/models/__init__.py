"""Model registry: small PyTorch classifiers for federated experiments (see :mod:`.zoo`)."""

from .layout import channels_last_on_cpu
from .registry import MODELS
from .zoo import ModelFactory, ModelSpec, build_model, count_parameters

__all__ = ["MODELS", "ModelFactory", "ModelSpec", "build_model", "channels_last_on_cpu", "count_parameters"]
