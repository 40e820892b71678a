"""Poisoned training data at *honest* clients (a compromised data source), with the ground truth recorded.

The source survey "Deep Learning Under Siege" (Al-Karaki, Khan, Mohamad, Chowdhury, 2024, sec. 3.2) answers
corrupted raw data with noise filtering (DQ_filtered) and data autoclaving (A); "Security Issues and Defensive
Approaches in Deep Learning Frameworks" cites data cleansing (Steinhardt, Koh, Liang, "Certified Defenses for Data
Poisoning Attacks", NeurIPS 2017, https://arxiv.org/abs/1706.03691). Unlike fedsec's malicious clients, the clients
poisoned here train honestly on data they do not know is corrupted; :class:`PoisonedData` keeps which points were
changed so a filter's precision and recall can be measured (:mod:`fedsec.metrics.filtering`).

Kinds (``data.poison.kind``) and their keys; ``rate`` is the share of the client's examples, chosen uniformly
without replacement, ``k = round(rate * n)``:

- ``label_noise``: each chosen label becomes a uniformly random *other* label (symmetric noise, as in Natarajan et
  al., "Learning with Noisy Labels", NeurIPS 2013); never the true label, so every poisoned point is mislabelled.
- ``targeted_flip``: keys ``source``, ``target`` (both required, distinct): chosen source-class labels become
  ``target`` (Biggio et al.'s label flipping; Tolpegin et al., ESORICS 2020, https://arxiv.org/abs/2007.08432).
  Departure: here ``rate`` is the share of the client's *source-class* examples (``rate = 1`` flips all of them,
  as the label-flip attack does), since a share of all examples could exceed the source class.
- ``outliers``: key ``magnitude`` (default 10.0): chosen inputs are replaced by far-away points
  ``mean + magnitude * std * z``, ``z ~ N(0, I)``, where ``mean`` is the client's per-feature mean input and
  ``std`` the standard deviation of all its input values; labels are kept.
- ``trigger``: keys ``target`` (default 0), ``trigger_size`` (default 3), ``trigger_value`` (default: the
  client's largest input value, a "white" pixel after normalisation). BadNets (Gu et al., 2017,
  https://arxiv.org/abs/1708.06733): a square of ``trigger_size`` pixels stamped in the bottom-right corner with a
  1-pixel margin (the geometry of fedsec's backdoor attack, so its attack-success metric applies) and the label
  set to ``target``. As in BadNets, the chosen points are drawn from all examples (a target-class point is stamped
  too and counts as poisoned). Image inputs (N, C, H, W) only. Pass ``trigger_value`` = the dataset's largest
  value (what the server's backdoor evaluation stamps) when a client might lack a white pixel.

Determinism: everything is drawn from ``np.random.default_rng(seed)`` (or the given Generator), so the same seed
and inputs give the same poisoned points. :func:`poisoned_clients` draws from its own stream,
``default_rng([seed, POISON_CLIENTS_STREAM])``, independent of the malicious-client and partition draws.

The kernels are NumPy, not torch: datasets are held as NumPy arrays (:class:`fedsec.data.ArrayDataset`) and
poisoning happens once per client when its partition is built, before any tensor exists.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

POISON_KINDS: dict[str, str] = {
    "label_noise": "a share of labels replaced by a uniformly random other label",
    "targeted_flip": "a share of the source class relabelled as the target class (keys source, target)",
    "outliers": "a share of inputs replaced by far-away points mean + magnitude * std * N(0, I) (key magnitude)",
    "trigger": "BadNets square trigger stamped and relabelled to target (keys target, trigger_size; images only)",
}
_KIND_KEYS: dict[str, frozenset[str]] = {
    "label_noise": frozenset(),
    "targeted_flip": frozenset({"source", "target"}),
    "outliers": frozenset({"magnitude"}),
    "trigger": frozenset({"target", "trigger_size", "trigger_value"}),
}
POISON_CLIENTS_STREAM = 0x5EED_D0C5  # second entropy word of the seed sequence for poisoned_clients
DEFAULT_MAGNITUDE = 10.0
DEFAULT_TRIGGER_SIZE = 3


class PoisonError(ValueError):
    """Bad ``[data.poison]`` settings; the message names the key, the rule, the value and the fix."""


@dataclass(frozen=True)
class PoisonedData:
    """A client's poisoned copy of its data and the ground truth of which points were changed."""

    x: np.ndarray
    y: np.ndarray
    poisoned: np.ndarray  # bool (N,), True where the point was poisoned
    kind: str
    rate: float

    @property
    def num_poisoned(self) -> int:
        return int(self.poisoned.sum())

    @property
    def indices(self) -> np.ndarray:
        """Indices of the poisoned points, ascending."""
        return np.flatnonzero(self.poisoned)


# --------------------------------------------------------------------------------------------------------- kernels


def choose_points(n: int, k: int, rng: np.random.Generator, *, among: np.ndarray | None = None) -> np.ndarray:
    """Boolean (n,) mask with ``k`` points drawn uniformly without replacement (from ``among`` indices if given)."""
    pool = np.arange(n) if among is None else among
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(pool, size=k, replace=False)] = True
    return mask


def random_other_labels(y: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """For each label, a label drawn uniformly from the ``num_classes - 1`` other classes."""
    return (y + rng.integers(1, num_classes, size=y.shape[0])) % num_classes


def far_outliers(x: np.ndarray, count: int, *, magnitude: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` points ``mean + magnitude * std * z`` in the shape of ``x``'s rows (mean per feature, std scalar)."""
    mean = x.mean(axis=0)
    std = float(x.std()) or 1.0
    z = rng.standard_normal((count, *x.shape[1:]))
    return (mean + magnitude * std * z).astype(x.dtype)


def square_trigger_mask(input_shape: tuple[int, ...], *, size: int = DEFAULT_TRIGGER_SIZE) -> np.ndarray:
    """Boolean (C, H, W) mask: a ``size`` x ``size`` square in the bottom-right corner, 1 pixel from the edges."""
    _, h, w = input_shape
    mask = np.zeros(input_shape, dtype=bool)
    mask[:, h - 1 - size : h - 1, w - 1 - size : w - 1] = True
    return mask


# ------------------------------------------------------------------------------------------------------------ glue


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_label(key: str, value: Any, num_classes: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < num_classes:
        raise PoisonError(
            f"data.poison.{key}={value!r}: must be a class label in [0, {num_classes - 1}]; set it to one of them"
        )
    return int(value)


def _check_common(x: np.ndarray, y: np.ndarray, kind: str, rate: float, num_classes: int, keys: dict) -> None:
    if kind not in POISON_KINDS:
        raise PoisonError(f"data.poison.kind={kind!r}: unknown kind; use one of {sorted(POISON_KINDS)}")
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= float(rate) <= 1.0:
        raise PoisonError(f"data.poison.rate={rate!r}: must be in [0, 1] (a share of each poisoned client's examples)")
    unknown = sorted(set(keys) - _KIND_KEYS[kind])
    if unknown:
        allowed = sorted(_KIND_KEYS[kind]) or "none"
        raise PoisonError(f"data.poison: key(s) {unknown} do not apply to kind={kind!r}; its keys are {allowed}")
    if num_classes < 2:
        raise PoisonError(f"num_classes={num_classes}: poisoning labels needs at least 2 classes")
    if x.shape[0] != y.shape[0]:
        raise PoisonError(f"x has {x.shape[0]} examples but y has {y.shape[0]}; pass matching arrays")
    if y.size and (y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes):
        raise PoisonError(f"y must hold integer labels in [0, {num_classes - 1}] (num_classes={num_classes})")


def poison_client_data(
    x: np.ndarray,
    y: np.ndarray,
    *,
    kind: str,
    rate: float,
    num_classes: int,
    seed: int | np.random.Generator,
    **keys: Any,
) -> PoisonedData:
    """Poison a copy of one client's ``(x, y)``; see the module docstring for each kind and its keys.

    Args:
        x: inputs (N, ...) (image kinds need (N, C, H, W)); not modified.
        y: integer labels (N,); not modified.
        kind: one of :data:`POISON_KINDS`.
        rate: share of the client's examples to poison, in [0, 1] (for ``targeted_flip``: of its source class).
        num_classes: number of classes of the task.
        seed: an int seed or a ``np.random.Generator`` (consumed).
        **keys: kind-specific keys (``source``, ``target``, ``magnitude``, ``trigger_size``, ``trigger_value``).

    Raises:
        PoisonError: naming the ``data.poison`` key at fault.
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_common(x, y, kind, rate, num_classes, keys)
    rng = _rng(seed)
    n = x.shape[0]
    x_out, y_out = x.copy(), y.copy()
    if kind == "label_noise":
        mask = choose_points(n, int(round(rate * n)), rng)
        y_out[mask] = random_other_labels(y[mask], num_classes, rng)
    elif kind == "targeted_flip":
        if "source" not in keys or "target" not in keys:
            raise PoisonError(
                "data.poison: kind='targeted_flip' needs both source and target; "
                f"got source={keys.get('source')!r}, target={keys.get('target')!r}; e.g. source = 6, target = 0"
            )
        source = _check_label("source", keys["source"], num_classes)
        target = _check_label("target", keys["target"], num_classes)
        if source == target:
            raise PoisonError(f"data.poison.target={target}: must differ from data.poison.source={source}")
        among = np.flatnonzero(y == source)
        mask = choose_points(n, int(round(rate * among.size)), rng, among=among)
        y_out[mask] = target
    elif kind == "outliers":
        magnitude = keys.get("magnitude", DEFAULT_MAGNITUDE)
        if isinstance(magnitude, bool) or not isinstance(magnitude, numbers.Real) or not magnitude > 0:
            raise PoisonError(f"data.poison.magnitude={magnitude!r}: must be a number > 0 (e.g. 10.0)")
        mask = choose_points(n, int(round(rate * n)), rng)
        x_out[mask] = far_outliers(x, int(mask.sum()), magnitude=float(magnitude), rng=rng)
    else:  # trigger
        if x.ndim != 4:
            raise PoisonError(
                f"data.poison.kind='trigger': needs image inputs (N, C, H, W), got shape {x.shape}; "
                "use label_noise, targeted_flip or outliers for vector data"
            )
        target = _check_label("target", keys.get("target", 0), num_classes)
        size = keys.get("trigger_size", DEFAULT_TRIGGER_SIZE)
        h, w = x.shape[2:]
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or not 1 <= size <= min(h, w) - 2:
            raise PoisonError(
                f"data.poison.trigger_size={size!r}: must be an integer in [1, {min(h, w) - 2}] for {h}x{w} images "
                "(a square with a 1-pixel margin)"
            )
        value = float(keys.get("trigger_value", x.max() if n else 1.0))
        mask = choose_points(n, int(round(rate * n)), rng)
        stamp = square_trigger_mask(x.shape[1:], size=int(size))
        x_out[mask] = np.where(stamp, np.asarray(value, dtype=x.dtype), x[mask])
        y_out[mask] = target
    log.debug("poisoned %d of %d points (kind=%s, rate=%s)", int(mask.sum()), n, kind, rate)
    return PoisonedData(x=x_out, y=y_out, poisoned=mask, kind=kind, rate=float(rate))


def poisoned_clients(num_clients: int, *, clients: float | Sequence[int], seed: int) -> list[int]:
    """The honest clients whose data is poisoned, ascending: a fraction (``round(fraction * num_clients)`` drawn
    from the stream ``default_rng([seed, POISON_CLIENTS_STREAM])``) or explicit ids.

    Raises:
        PoisonError: fraction outside [0, 1], ids out of range or repeated, more ids than clients.
    """
    if isinstance(clients, bool):
        raise PoisonError(f"data.poison.clients={clients!r}: must be a fraction in [0, 1] or a list of client ids")
    if isinstance(clients, numbers.Real):
        if not 0.0 <= float(clients) <= 1.0:
            raise PoisonError(
                f"data.poison.clients={clients!r}: a fraction must be in [0, 1]; pass a list of ids to name clients"
            )
        k = int(round(float(clients) * num_clients))
        rng = np.random.default_rng([seed, POISON_CLIENTS_STREAM])
        return sorted(int(i) for i in rng.choice(num_clients, size=k, replace=False))
    ids = list(clients)
    if len(ids) > num_clients:
        raise PoisonError(
            f"data.poison.clients: {len(ids)} ids but data.num_clients={num_clients}; poison at most every client"
        )
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < num_clients]
    if bad:
        raise PoisonError(
            f"data.poison.clients: ids {bad} are not client ids; use integers in [0, {num_clients - 1}] "
            f"(data.num_clients={num_clients})"
        )
    if len(set(ids)) != len(ids):
        raise PoisonError(f"data.poison.clients={ids}: ids repeat; list each client once")
    return sorted(int(i) for i in ids)
