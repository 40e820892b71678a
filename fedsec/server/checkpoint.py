"""Checkpoints: everything a run needs to go on after a kill, written atomically after every round.

``RUN_DIR/checkpoints/latest.pt`` (``torch.save`` of plain containers, read back with ``weights_only=True``) holds
the round counter, the global model, every piece of strategy state (FoolsGold histories, centered-clipping
momentum, the noise generators of DP-FedAvg, norm clipping, FLAME, DnC, CKKS-DP; found generically: tensors,
generators and dicts of tensors among the strategy's attributes), the server optimizer's moments
(``server.optimizer``: FedAvgM's momentum buffer, FedAdam's / FedYogi's / FedAdagrad's m and v), every round hook's
state (``RoundHook.state``:
the privacy ledger and each client's DP-SGD accountant history, the audits' results so far, ...), and what the
summary needs (skipped rounds, client calls per node; :class:`fedsec.server.books.RoundBooks`). A resumed run
restores them, so it produces the rows of an uninterrupted run and never resets the privacy spent.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fedsec.errors import FedsecInputError

logger = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "latest.pt"
FORMAT_VERSION = 2  # 2: hook states under "hooks"
#: strategy attributes that are buffers or per-round views, not state
_SKIP = {"_stack_storage", "_global_arrays", "last_report", "current_clients", "node_sampler", "device"}


class CheckpointError(FedsecInputError):
    """A checkpoint that cannot be read or does not belong to this run."""


def strategy_state(strategy: Any) -> dict[str, Any]:
    """The strategy's mutable state: its tensors, generators and dicts of tensors (CPU copies)."""
    state: dict[str, Any] = {}
    for name, value in vars(strategy).items():
        if name in _SKIP:
            continue
        if isinstance(value, torch.Generator):
            state[name] = {"generator": value.get_state()}
        elif isinstance(value, torch.Tensor):
            state[name] = {"tensor": value.detach().cpu().clone()}
        elif isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            state[name] = {"tensors": [(repr(k), k if isinstance(k, int | str) else list(k), v.detach().cpu().clone())
                                       for k, v in value.items()]}
    return state


def restore_strategy(strategy: Any, state: dict[str, Any]) -> None:
    """Put :func:`strategy_state`'s values back (on the strategy's device)."""
    device = getattr(strategy, "device", torch.device("cpu"))
    for name, entry in state.items():
        if "generator" in entry:
            getattr(strategy, name).set_state(entry["generator"])
        elif "tensor" in entry:
            setattr(strategy, name, entry["tensor"].to(device))
        elif "tensors" in entry:
            setattr(strategy, name, {(tuple(key) if isinstance(key, list) else key): value.to(device)
                                     for _, key, value in entry["tensors"]})


def state_to_arrays(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v.numpy())) for k, v in state.items()})


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (a temporary file, fsync, rename): a kill leaves the old or the new checkpoint."""
    path = run_dir / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        torch.save({"format": FORMAT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The run's last checkpoint, or None when it has none (a run killed before its first round ended)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise CheckpointError(f"{path}: unreadable checkpoint ({e}); rerun with --overwrite to start again") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a fedsec checkpoint of format {FORMAT_VERSION}; rerun with --overwrite")
    return state
