"""Model registry: small PyTorch classifiers for federated experiments (see :mod:`.zoo`)."""

from .registry import MODELS
from .zoo import ModelFactory, ModelSpec, build_model, count_parameters

__all__ = ["MODELS", "ModelFactory", "ModelSpec", "build_model", "count_parameters"]
