"""Client-side data sanitization before local training (``[defense.sanitize]``): a registry of filters.

Each filter checks its settings when built and has one verb, ``filter(x, y, *, model=None, seed) -> FilterResult``.
Methods: ``threshold`` (Al-Karaki et al.'s k-times-the-mean rule, and a robust z-score variant), ``isolation_forest``
(scikit-learn, on inputs or global-model embeddings), ``label_issues`` (cleanlab on cross-validated probabilities).
"""

from __future__ import annotations

from typing import Any

from fedsec.registry import Registry

from .base import FilterResult, SanitizeError, Sanitizer
from .isolation_forest import IsolationForestFilter
from .label_issues import LabelIssuesFilter
from .threshold import ThresholdFilter

#: defense.sanitize.method -> filter class (each declares its ``Params`` and ``description``); one line per filter
SANITIZERS: Registry[type[Sanitizer]] = Registry("defense.sanitize.method", "filter")
SANITIZERS.register("threshold", ThresholdFilter)
SANITIZERS.register("isolation_forest", IsolationForestFilter)
SANITIZERS.register("label_issues", LabelIssuesFilter)


def build_sanitizer(method: str, **keys: Any) -> Sanitizer:
    """Build sanitizer ``method`` with its keys (its config keys, ``Params``, or more of its constructor's);
    unknown methods or keys raise :class:`SanitizeError` naming them."""
    if method not in SANITIZERS:
        raise SanitizeError(f"defense.sanitize.method={method!r}: unknown method; use one of {SANITIZERS.names()}")
    cls = SANITIZERS.get(method)
    try:
        return cls(**keys)
    except TypeError as e:
        unknown = sorted(set(keys) - set(cls.Params.model_fields))
        raise SanitizeError(f"defense.sanitize: key(s) {unknown} do not apply to method={method!r}; its keys are "
                            f"{sorted(cls.Params.model_fields)}") from e


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
