"""What an honest client trains on: its partition (with the one-run audit's example canaries at the audited client,
``[audit.canary] level = "example"``), poisoned where ``[data.poison]`` says so (the ground truth kept), then filtered
by ``[defense.sanitize]``, with the filter's counts against that ground truth.

Poisoning is a property of the client's data source, not of the client: it is applied once per worker and client
(seeded by (seed, partition id), so every worker that holds the client poisons the same points) and the client
stays honest in every other way. Sanitization runs before each local training; filters whose decision does not
depend on the current global model (``threshold``, ``isolation_forest`` on inputs) are computed once per client.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsec.data.poison import poison_client_data
from fedsec.metrics.filtering import filter_quality
from fedsec.privacy.one_run_audit import draw_example_canaries, with_example_canaries
from fedsec.sanitize import SANITIZERS, build_sanitizer

from .spec import ClientSpec

POISON_STREAM = 0xDA7A


@dataclass(frozen=True)
class ClientData:
    """A client's training tensors and, where it applies, the truth about them and what its filter did."""

    x: torch.Tensor
    y: torch.Tensor
    poisoned: np.ndarray | None = None  # bool (n,) ground truth of the points before filtering
    metrics: dict[str, float] | None = None  # sanitization counts for clients.csv


_POISONED: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, np.ndarray]] = {}
_FILTERS: dict[tuple[str, int], np.ndarray] = {}


def _poisoned_copy(spec: ClientSpec, partition_id: int, x: torch.Tensor, y: torch.Tensor, num_classes: int):
    key = (f"{spec.seed}:{spec.data.model_dump_json()}:{spec.example_canaries}", partition_id)  # canaries change x, y
    if key not in _POISONED:
        poison = spec.data.poison
        keys = {k: getattr(poison, k) for k in ("source", "target") if getattr(poison, k) is not None}
        if poison.kind == "outliers":
            keys["magnitude"] = poison.magnitude
        if poison.kind == "trigger":
            keys["trigger_value"] = float(x.max())
        result = poison_client_data(x.cpu().numpy(), y.cpu().numpy(), kind=poison.kind, rate=poison.rate,
                                    num_classes=num_classes, seed=np.random.default_rng([spec.seed, POISON_STREAM,
                                                                                           partition_id]), **keys)
        _POISONED.clear() if len(_POISONED) > 256 else None
        _POISONED[key] = (torch.from_numpy(result.x).to(x.device), torch.from_numpy(result.y).to(y.device),
                          result.poisoned)
    return _POISONED[key]


def honest_client_data(spec: ClientSpec, partition_id: int, x: torch.Tensor, y: torch.Tensor, *,
                       num_classes: int, model: nn.Module, server_round: int) -> ClientData:
    """The client's data with its example canaries (if it is the audited client), after poisoning (if it is a
    poisoned client) and sanitization (if configured)."""
    audit = spec.example_canaries
    if audit is not None and partition_id == audit.client:
        canaries = draw_example_canaries(y, canaries=audit.canaries, num_classes=num_classes, seed=audit.seed)
        x, y = with_example_canaries(x, y, canaries)
    truth = None
    if partition_id in spec.poisoned:
        x, y, truth = _poisoned_copy(spec, partition_id, x, y, num_classes)
    if spec.sanitize is None:
        return ClientData(x, y, truth)
    keep = _filter(spec, partition_id, x, y, model=model, server_round=server_round)
    if truth is None:
        truth = np.zeros(x.shape[0], dtype=bool)
    quality = filter_quality(keep, truth)
    metrics = {"sanitize_kept": float(quality.kept), "sanitize_dropped": float(quality.dropped),
               "poisoned_points": float(truth.sum()), "poisoned_dropped": float(quality.true_drops)}
    idx = torch.from_numpy(np.flatnonzero(keep)).to(x.device)
    return ClientData(x.index_select(0, idx), y.index_select(0, idx), truth, metrics)


def _filter(spec: ClientSpec, partition_id: int, x: torch.Tensor, y: torch.Tensor, *, model: nn.Module,
            server_round: int) -> np.ndarray:
    config = spec.sanitize  # the plan's resolved table: the method and its filter's keys
    keys = config.kind_keys
    static = not SANITIZERS.get(config.method).per_round(keys)
    key = (f"{spec.seed}:{spec.data.model_dump_json()}:{spec.example_canaries}:{config.model_dump_json()}",
           partition_id)
    if static and key in _FILTERS:
        return _FILTERS[key]
    sanitizer = build_sanitizer(config.method, **keys)
    seed = spec.schedule.client_seed(server_round, partition_id) % (2**31)
    keep = np.asarray(sanitizer.filter(x, y, model=model, seed=seed).keep, dtype=bool)
    if static:
        _FILTERS[key] = keep
    return keep
