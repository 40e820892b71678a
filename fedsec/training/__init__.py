"""Local training and evaluation in plain PyTorch (no Flower types): one local-SGD loop that honest, DP-SGD and
adversarial-training clients share (:func:`local_sgd`), and the evaluation of a model on a labelled set."""

from .evaluation import EvalResult, evaluate
from .local import BatchHook, LossMeter, TrainResult, local_sgd, shuffled_batches, train_local

__all__ = ["BatchHook", "EvalResult", "LossMeter", "TrainResult", "evaluate", "local_sgd", "shuffled_batches",
           "train_local"]
