"""``model.name`` -> :class:`~fedsec.models.zoo.ModelSpec`. Adding a model: its factory in a file of this package
and one line here."""

from __future__ import annotations

from fedsec.registry import Registry

from .cifar import CNN_CIFAR, RESNET20_GN
from .dp_models import CNN_TANH, CNN_TANH_GN
from .zoo import CNN, CNN_MCMAHAN, LOGREG, MLP, ModelSpec

MODELS: Registry[ModelSpec] = Registry("model.name", "model")
MODELS.register("logreg", LOGREG)
MODELS.register("mlp", MLP)
MODELS.register("cnn", CNN)
MODELS.register("cnn_mcmahan", CNN_MCMAHAN)
MODELS.register("cnn_tanh", CNN_TANH)
MODELS.register("cnn_tanh_gn", CNN_TANH_GN)
MODELS.register("cnn_cifar", CNN_CIFAR)
MODELS.register("resnet20_gn", RESNET20_GN)
