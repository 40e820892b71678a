"""The deployed model's file: ``RUN_DIR/final_model.pt`` written at the end of a run and read by ``fedsec serve``.

The file is a ``torch.save`` of a plain dict (format version, model name, dataset, input shape, number of classes,
server round, input normalisation, state dict) and is read back with ``weights_only=True``, so loading a run
directory never unpickles arbitrary objects.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fedsec.errors import FedsecInputError
from fedsec.models import build_model

log = logging.getLogger(__name__)


class ModelFileError(FedsecInputError):
    """The run directory's ``final_model.pt`` is missing, unreadable or inconsistent."""

    status = 400  # what the serving app answers with
    decision = "model_file"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

MODEL_FILE = "final_model.pt"
FORMAT_VERSION = 1


@dataclass
class ServedModel:
    """A model ready to serve, with what a server needs to check and preprocess inputs.

    ``normalisation`` is ``(mean, std)`` applied to raw inputs before the model (callers send raw values, e.g.
    pixels in [0, 1]); ``None`` means the model takes inputs as sent.
    """

    module: nn.Module
    model_name: str
    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    server_round: int
    normalisation: tuple[float, float] | None = None

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax outputs (float64) for raw inputs ``x`` of shape (n, *input_shape)."""
        if self.normalisation is not None:
            mean, std = self.normalisation
            x = (x - mean) / std
        self.module.eval()
        return torch.softmax(self.module(x).double(), dim=1)


def save_final_model(
    run_dir: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    dataset: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    server_round: int,
    normalisation: tuple[float, float] | None,
) -> Path:
    """Write ``run_dir/final_model.pt`` (state dict + metadata) and return its path."""
    if normalisation is not None and (len(normalisation) != 2 or not normalisation[1] > 0):
        raise ModelFileError(f"normalisation must be (mean, std) with std > 0, got {normalisation!r}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / MODEL_FILE
    payload = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "dataset": dataset,
        "input_shape": [int(s) for s in input_shape],
        "num_classes": int(num_classes),
        "server_round": int(server_round),
        "normalisation": None if normalisation is None else [float(v) for v in normalisation],
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    log.info("wrote %s (%s on %s, round %d)", path, model_name, dataset, server_round)
    return path


def load_final_model(run_dir: str | Path) -> ServedModel:
    """Rebuild the model saved by :func:`save_final_model`; :class:`ModelFileError` names the file on any problem."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise ModelFileError(
            f"{path}: no model file; run `fedsec run` to completion first (it writes {MODEL_FILE} in the run directory)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt files
        raise ModelFileError(f"{path}: unreadable or corrupt model file ({type(e).__name__}: {e})") from e
    required = ("model_name", "dataset", "input_shape", "num_classes", "server_round", "state_dict")
    if not isinstance(payload, dict) or any(k not in payload for k in required):
        raise ModelFileError(f"{path}: not a fedsec model file; it must be a dict with keys {list(required)}")
    if payload.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format_version {payload.get('format_version')} unsupported; expected 1")
    input_shape = tuple(int(s) for s in payload["input_shape"])
    num_classes = int(payload["num_classes"])
    try:
        module = build_model(payload["model_name"], input_shape, num_classes)
        module.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError) as e:
        raise ModelFileError(f"{path}: state dict does not fit model {payload['model_name']!r}: {e}") from e
    module.eval()
    norm = payload.get("normalisation")
    if norm is not None and (len(norm) != 2 or not math.isfinite(norm[1]) or norm[1] <= 0):
        raise ModelFileError(f"{path}: normalisation must be [mean, std > 0], got {norm}")
    return ServedModel(
        module=module,
        model_name=str(payload["model_name"]),
        dataset=str(payload["dataset"]),
        input_shape=input_shape,
        num_classes=num_classes,
        server_round=int(payload["server_round"]),
        normalisation=None if norm is None else (float(norm[0]), float(norm[1])),
    )
