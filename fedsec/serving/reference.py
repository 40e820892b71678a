"""A quickly trained, centrally trained reference model written as a run directory (for scenarios, benchmarks and
tests when no federated run is at hand). Fashion-MNIST models are trained on fedsec's normalised data and saved
with that normalisation, so the server takes raw pixels in [0, 1] like any deployed image model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fedsec.data import load_dataset, load_digits
from fedsec.models import build_model
from fedsec.results.model_file import save_final_model
from fedsec.training import evaluate, train_local

log = logging.getLogger(__name__)
FMNIST_NORMALISATION = (0.2860, 0.3530)


def raw_dataset(dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[float, float] | None]:
    """(x_train, y_train, x_test, y_test) as raw inputs in [0, 1], and the normalisation the model applies."""
    if dataset == "digits":
        ds = load_digits()
        return ds.x_train, ds.y_train, ds.x_test, ds.y_test, None
    if dataset == "fashion-mnist":
        ds = load_dataset("fashion-mnist")
        mean, std = FMNIST_NORMALISATION
        raw = [np.clip(a * std + mean, 0, 1).astype(np.float32) for a in (ds.x_train, ds.x_test)]
        return raw[0], ds.y_train, raw[1], ds.y_test, FMNIST_NORMALISATION
    raise ValueError(f"target.dataset={dataset!r}: use 'digits' or 'fashion-mnist'")


def train_reference_model(
    run_dir: str | Path, *, model: str = "cnn", dataset: str = "digits", epochs: int = 3, lr: float = 0.05,
    max_train: int | None = None, seed: int = 0,
) -> float:
    """Train ``model`` on ``dataset`` centrally, write ``run_dir/final_model.pt``; returns test accuracy."""
    x_train, y_train, x_test, y_test, norm = raw_dataset(dataset)
    if max_train:
        x_train, y_train = x_train[:max_train], y_train[:max_train]

    def prep(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t if norm is None else (t - norm[0]) / norm[1]

    net = build_model(model, tuple(x_train.shape[1:]), 10, seed=seed)
    train_local(net, prep(x_train), torch.from_numpy(y_train), epochs=epochs, batch_size=64, lr=lr, momentum=0.9,
                generator=torch.Generator().manual_seed(seed))
    acc = evaluate(net, prep(x_test), torch.from_numpy(y_test), num_classes=10).accuracy
    save_final_model(run_dir, net, model_name=model, dataset=dataset, input_shape=tuple(x_train.shape[1:]),
                     num_classes=10, server_round=epochs, normalisation=norm)
    log.info("reference %s on %s: %d epochs, test accuracy %.4f", model, dataset, epochs, acc)
    return acc
