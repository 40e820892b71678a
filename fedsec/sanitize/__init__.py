"""Client-side data sanitization before local training (``[defense.sanitize]``): a registry of filters.

Each filter checks its settings when built and has one verb, ``filter(x, y, *, model=None, seed) -> FilterResult``.
Methods: ``threshold`` (Al-Karaki et al.'s k-times-the-mean rule, and a robust z-score variant), ``isolation_forest``
(scikit-learn, on inputs or global-model embeddings), ``label_issues`` (cleanlab on cross-validated probabilities).
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import FilterResult, SanitizeError, Sanitizer
from .isolation_forest import IsolationForestFilter
from .label_issues import LabelIssuesFilter
from .threshold import ThresholdFilter

SANITIZERS: dict[str, type[Sanitizer]] = {
    ThresholdFilter.method: ThresholdFilter,
    IsolationForestFilter.method: IsolationForestFilter,
    LabelIssuesFilter.method: LabelIssuesFilter,
}


def build_sanitizer(method: str, **keys: Any) -> Sanitizer:
    """Build sanitizer ``method`` with its keys; unknown methods or keys raise :class:`SanitizeError`."""
    if method not in SANITIZERS:
        raise SanitizeError(f"defense.sanitize.method={method!r}: unknown method; use one of {sorted(SANITIZERS)}")
    allowed = sorted(inspect.signature(SANITIZERS[method].__init__).parameters.keys() - {"self"})
    unknown = sorted(set(keys) - set(allowed))
    if unknown:
        raise SanitizeError(
            f"defense.sanitize: key(s) {unknown} do not apply to method={method!r}; its keys are {allowed}"
        )
    return SANITIZERS[method](**keys)


__all__ = [
    "SANITIZERS",
    "FilterResult",
    "IsolationForestFilter",
    "LabelIssuesFilter",
    "SanitizeError",
    "Sanitizer",
    "ThresholdFilter",
    "build_sanitizer",
]
