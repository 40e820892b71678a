"""Shared helpers for the serving/extraction tests: a tiny digits model written as a run directory, the roles most
tests grant and fresh API keys with their policy entries."""

from __future__ import annotations

from pathlib import Path

import torch

from fedsec.data import load_digits
from fedsec.models import build_model
from fedsec.results.model_file import save_final_model
from fedsec.serving import make_key
from fedsec.training import train_local

#: an analyst who sees probabilities, an app that sees labels only
ROLES = {
    "analyst": {"permissions": ["predict", "predict_probabilities"], "output": "probabilities"},
    "app": {"permissions": ["predict"], "output": "label"},
}


def write_digits_run(run_dir: Path, *, model: str = "cnn", epochs: int = 4, seed: int = 0) -> Path:
    ds = load_digits()
    net = build_model(model, ds.input_shape, 10, seed=seed)
    train_local(net, torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train), epochs=epochs, batch_size=32,
                lr=0.05, momentum=0.9, generator=torch.Generator().manual_seed(seed))
    save_final_model(run_dir, net, model_name=model, dataset="digits", input_shape=ds.input_shape, num_classes=10,
                     server_round=epochs, normalisation=None)
    return run_dir


def make_keys(specs: dict[str, dict]) -> tuple[dict[str, str], list[dict]]:
    """A fresh API key for each key id of ``specs`` and the access policy's key entries (``id``, ``hash`` and the
    id's spec: its ``role``, ``quota``, ...)."""
    keys, entries = {}, []
    for key_id, spec in specs.items():
        keys[key_id], hashed = make_key(key_id)
        entries.append({"id": key_id, "hash": hashed, **spec})
    return keys, entries
