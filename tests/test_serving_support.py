"""Shared helpers for the serving/extraction tests: a tiny digits model written as a run directory."""

from __future__ import annotations

from pathlib import Path

import torch

from fedsec.data import load_digits
from fedsec.models import build_model
from fedsec.results.model_file import save_final_model
from fedsec.training import train_local


def write_digits_run(run_dir: Path, *, model: str = "cnn", epochs: int = 4, seed: int = 0) -> Path:
    ds = load_digits()
    net = build_model(model, ds.input_shape, 10, seed=seed)
    train_local(net, torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train), epochs=epochs, batch_size=32,
                lr=0.05, momentum=0.9, generator=torch.Generator().manual_seed(seed))
    save_final_model(run_dir, net, model_name=model, dataset="digits", input_shape=ds.input_shape, num_classes=10,
                     server_round=epochs, normalisation=None)
    return run_dir
