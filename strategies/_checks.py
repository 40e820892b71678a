"""Shared checks for robust rules: the n-vs-f assumption of each rule and the ranges of constructor parameters.

One helper per kind of check, so that every rule words its errors the same way (STYLE.md, point 5):
key, rule, value received, then what to use instead.
"""

from __future__ import annotations

import math

from fedsec.errors import FedsecInputError


class StrategyConfigError(FedsecInputError):
    """A strategy parameter is out of range; the message names the parameter and the rule."""


def require_clients(rule: str, n: int, needed: int, inequality: str, *, fix: str = "") -> None:
    """Raise :class:`StrategyConfigError` unless ``n >= needed``.

    ``inequality`` is the rule's assumption written with ``n`` and ``f`` (``"n >= 4f+3"``); the message reads
    "Bulyan needs n >= 4f+3 = 15 valid updates, got 10" followed by ``fix`` when given.
    """
    if n < needed:
        message = f"{rule} needs {inequality} = {needed} valid updates, got {n}"
        raise StrategyConfigError(f"{message}; {fix}" if fix else message)


def check_int(rule: str, name: str, value: object, *, low: int) -> int:
    """``value`` as an int ``>= low`` (bools refused), else :class:`StrategyConfigError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise StrategyConfigError(f"{name}={value!r}: {rule} needs an integer {name} >= {low}")
    if value < low:
        raise StrategyConfigError(f"{name}={value!r}: {rule} needs {name} >= {low}")
    return value


def check_float(
    rule: str,
    name: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = True,
) -> float:
    """``value`` as a float in the interval from ``low`` to ``high`` (open or closed ends as given).

    NaN, bools and non-numbers are refused with a :class:`StrategyConfigError` naming ``name`` and the range.
    """
    left = f"{low} < " if low_open else f"{low} <= "
    right = "" if high == math.inf else (f" < {high}" if high_open else f" <= {high}")
    wanted = f"{left}{name}{right}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StrategyConfigError(f"{name}={value!r}: {rule} needs a number with {wanted}")
    x = float(value)
    below = x <= low if low_open else x < low
    above = x >= high if high_open else x > high
    if math.isnan(x) or below or above:
        raise StrategyConfigError(f"{name}={value!r}: {rule} needs {wanted}")
    return x
