"""Local training and evaluation in plain PyTorch (no Flower types): one local-SGD loop that honest, DP-SGD and
adversarial-training clients share (:func:`local_sgd`), and the evaluation of a model on a labelled set."""

from .evaluation import EVAL_BATCH_SIZE, EvalResult, evaluate, predict
from .local import (
    BatchHook,
    LossMeter,
    TrainResult,
    full_batch_step,
    local_sgd,
    proximal_gradient,
    shuffled_batches,
    train_local,
)

__all__ = ["EVAL_BATCH_SIZE", "BatchHook", "EvalResult", "LossMeter", "TrainResult", "evaluate", "full_batch_step",
           "local_sgd", "predict",
           "proximal_gradient", "shuffled_batches", "train_local"]
