"""Shared pieces of the client-side sanitizers: the result record, the error type and the base class.

A sanitizer runs on one client's local data before local training (``[defense.sanitize]``). It checks its
parameters once, in ``_check_params``, and exposes one verb, :meth:`Sanitizer.filter`, which returns a
:class:`FilterResult`: which points to keep, a suspicion score per point (higher = more suspicious) and the method.
Input checks (matching lengths, finite values, integer labels) live here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from fedsec.registry import NoParams


class SanitizeError(ValueError):
    """Bad ``[defense.sanitize]`` settings or input; the message names the key, the rule, the value and the fix."""


@dataclass(frozen=True)
class FilterResult:
    """What a sanitizer decided on one client's data."""

    keep: np.ndarray  # bool (N,): True for points kept for training
    scores: np.ndarray  # float (N,): suspicion score, higher = more suspicious (method-specific scale)
    method: str
    threshold: float | None = None  # the score above which points were dropped, where the method has one

    @property
    def dropped(self) -> np.ndarray:
        """Indices of the dropped points, ascending."""
        return np.flatnonzero(~self.keep)


def as_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """A NumPy view/copy of a NumPy array or a (possibly GPU) tensor."""
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


class Sanitizer:
    """Base class: subclasses set ``method``, validate in ``_check_params`` and implement ``_filter``."""

    method: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: the ``[defense.sanitize]`` keys the filter reads (its constructor may take more, for the Python API)
    Params: ClassVar[type[BaseModel]] = NoParams

    @classmethod
    def per_round(cls, keys: dict[str, Any]) -> bool:
        """Whether the filter's decision can change from round to round with these keys (it reads the global
        model or draws with the round's seed); False: a client's decision is computed once and reused."""
        return False

    def __init__(self) -> None:
        self._check_params()

    def _check_params(self) -> None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The settings, for logs and the run directory."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def filter(
        self,
        x: np.ndarray | torch.Tensor,
        y: np.ndarray | torch.Tensor,
        *,
        model: nn.Module | None = None,
        seed: int = 0,
    ) -> FilterResult:
        """Decide which of the client's points ``(x (N, ...), y (N,))`` to keep; ``model``: the current global
        model, for the methods that use it (it is never modified); ``seed``: for the methods that draw."""
        x_np, y_np = as_numpy(x), as_numpy(y)
        if x_np.shape[0] != y_np.shape[0]:
            raise SanitizeError(f"x has {x_np.shape[0]} examples but y has {y_np.shape[0]}; pass matching arrays")
        if y_np.ndim != 1 or (y_np.size and not np.issubdtype(y_np.dtype, np.integer)):
            raise SanitizeError(f"y must be a 1-d array of integer labels, got shape {y_np.shape} {y_np.dtype}")
        if x_np.size and not np.isfinite(x_np).all():
            raise SanitizeError("x holds NaN or inf values; sanitizers need finite inputs")
        if x_np.shape[0] == 0:
            empty = np.zeros(0)
            return FilterResult(keep=empty.astype(bool), scores=empty, method=self.method)
        return self._filter(x_np, y_np, x_raw=x, model=model, seed=seed)

    def _filter(
        self, x: np.ndarray, y: np.ndarray, *, x_raw: np.ndarray | torch.Tensor, model: nn.Module | None, seed: int
    ) -> FilterResult:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SanitizeError(f"defense.sanitize.{key}={value!r}: unknown value; use one of {list(choices)}")


def check_number(
    key: str,
    value: Any,
    *,
    low: float,
    high: float = float("inf"),
    integer: bool = False,
    low_open: bool = False,
    example: str = "",
) -> None:
    """Raise unless ``value`` is a number in [low, high] (``(low, high]`` with ``low_open``)."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = not isinstance(value, bool) and isinstance(value, kinds)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        kind = "an integer" if integer else "a number"
        hint = f" (e.g. {example})" if example else ""
        raise SanitizeError(f"defense.sanitize.{key}={value!r}: must be {kind} in {bracket}{low}, {high}]{hint}")
