"""The numeric keys of the config schema, read from the models themselves (for the bounds test and the fuzzer).

Every key comes from a pydantic model: the sections of :class:`fedsec.config.Experiment` (nested ones too) and the
``Params`` of every kind in every registry (strategies, pre-aggregators, attacks, audits, datasets, sanitizers,
...). A number may sit in a union (``int | None``, ``float | "auto"``) or in a list (``list[int]``, each item then
bounded by its own ``Annotated`` constraints)."""

from __future__ import annotations

import importlib
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from fedsec.config import Experiment
from fedsec.registry import Registry

REGISTRY_MODULES = ["fedsec.strategies", "fedsec.clients.attacks", "fedsec.hooks", "fedsec.data", "fedsec.sanitize",
                    "fedsec.models", "fedsec.config.sections"]
# registry key -> (the table its kinds' keys go in, the key naming the kind in that table); None: see `table_of`
TABLES: dict[str, tuple[tuple[str, ...], str] | None] = {
    "defense.strategy": (("defense",), "strategy"),
    "attack.kind": (("attack",), "kind"),
    "data.dataset": (("data",), "dataset"),
    "defense.sanitize.method": (("defense", "sanitize"), "method"),
    "server.optimizer": (("server",), "optimizer"),
    "audit": None,  # [audit.<name>]: the table's name is the kind
    "defense.pre": None,  # defense.pre = [{ name = <kind>, <key> = ... }]
}


@dataclass(frozen=True)
class NumericKey:
    """One number a config may hold, with its documented range."""

    label: str  # "rounds", "defense.strategy='geomed': iterations"
    registry: str | None  # the registry whose kind declares it (None: a section's key)
    kind_name: str | None
    path: tuple[str, ...]  # the key's place in a config (within its kind's table)
    number: type  # int or float
    item: bool  # an item of a list
    constraints: tuple[Any, ...]
    description: str

    def bound(self, cls: type, attr: str) -> float | None:
        values = [getattr(c, attr) for c in self.constraints if isinstance(c, cls)]
        return float(values[0]) if values else None

    @property
    def low(self) -> tuple[float, bool]:
        """(the lower bound, open?); -inf when there is none."""
        ge, gt = self.bound(annotated_types.Ge, "ge"), self.bound(annotated_types.Gt, "gt")
        return (gt, True) if gt is not None else (ge if ge is not None else -math.inf, False)

    @property
    def high(self) -> tuple[float, bool]:
        le, lt = self.bound(annotated_types.Le, "le"), self.bound(annotated_types.Lt, "lt")
        return (lt, True) if lt is not None else (le if le is not None else math.inf, False)

    def inside(self, value: float) -> bool:
        (low, low_open), (high, high_open) = self.low, self.high
        return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


def registries() -> dict[str, Registry]:
    found: dict[str, Registry] = {}
    for name in REGISTRY_MODULES:
        for value in vars(importlib.import_module(name)).values():
            if isinstance(value, Registry):
                found[value.key] = value
    return found


def _models() -> Iterator[tuple[str | None, str | None, tuple[str, ...], type[BaseModel]]]:
    """(registry, kind, path of the model's table, model), sections first, then every kind's Params."""
    stack: list[tuple[tuple[str, ...], type[BaseModel]]] = [((), Experiment)]
    while stack:
        path, model = stack.pop()
        yield None, None, path, model
        for name, field in model.model_fields.items():
            for candidate in _flatten(field.annotation):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    stack.append(((*path, name), candidate))
    for key, registry in registries().items():
        for name, entry in registry.items():
            params = getattr(entry, "Params", None)
            if isinstance(params, type) and issubclass(params, BaseModel) and params.model_fields:
                yield key, name, (), params


def _flatten(annotation: Any) -> Iterator[Any]:
    yield annotation
    for arg in typing.get_args(annotation):
        yield from _flatten(arg)


def numeric_leaves(annotation: Any, metadata: list[Any], *, item: bool = False) -> Iterator[tuple[type, bool, list]]:
    """(int | float, in a list?, the constraints on it) for each number a value of ``annotation`` may hold."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extra = typing.get_args(annotation)
        own = [m for e in extra for m in (e.metadata if isinstance(e, FieldInfo) else [e])]
        yield from numeric_leaves(base, [*metadata, *own], item=item)
    elif origin in (Union, types.UnionType):  # the field's constraints apply to each branch
        for arg in typing.get_args(annotation):
            yield from numeric_leaves(arg, metadata, item=item)
    elif origin in (list, tuple, set, frozenset):  # the field's constraints are the length's; items have their own
        for arg in typing.get_args(annotation):
            if arg is not Ellipsis:
                yield from numeric_leaves(arg, [], item=True)
    elif origin is dict:
        yield from numeric_leaves(typing.get_args(annotation)[1], [], item=True)
    elif origin is Literal:
        return
    elif annotation in (int, float):
        yield annotation, item, metadata


def numeric_keys() -> list[NumericKey]:
    out = []
    for registry, kind_name, path, model in _models():
        for name, field in model.model_fields.items():
            for number, item, constraints in numeric_leaves(field.annotation, list(field.metadata)):
                label = ".".join((*path, name)) if registry is None else f"{registry}={kind_name!r}: {name}"
                out.append(NumericKey(label, registry, kind_name, (*path, name), number, item, tuple(constraints),
                                      field.description or ""))
    return out


def location(key: NumericKey) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """(where ``key``'s value goes in a config, where the name of the kind that declares it goes, or None)."""
    if key.registry is None:
        return key.path, None
    if key.registry == "audit":
        return ("audit", key.kind_name, *key.path), None
    if key.registry == "defense.pre":
        return ("defense", "pre", 0, *key.path), ("defense", "pre", 0, "name")
    table, selector = TABLES[key.registry]  # a registry missing from TABLES: add where its kinds' keys go
    return (*table, *key.path), (*table, selector)


def place(raw: dict[str, Any], key: NumericKey, value: Any, *, select: bool = True) -> Any:
    """Put ``value`` at ``key``'s place in ``raw`` (in a list when the key is a list's item) and return what was
    put; with ``select``, also name the kind that declares the key (``defense.strategy = "geomed"`` for geomed's
    ``iterations``)."""
    value = [value] if key.item else value
    path, selector = location(key)
    if key.registry == "defense.pre":
        raw.setdefault("defense", {})["pre"] = [{"name": key.kind_name, key.path[-1]: value}]
        return value
    _set(raw, path, value)
    if select and selector is not None:
        _set(raw, selector, key.kind_name)
    return value


def get(raw: Any, path: tuple[Any, ...], default: Any = None) -> Any:
    for part in path:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return default
    return raw


def acceptable(value: Any, keys: list[NumericKey]) -> bool:
    """Whether ``value`` (as placed: a one-item list for a list's key) is of the type and in the range of one of
    ``keys`` (the branches of one key: ``float | list[int]``)."""
    for key in keys:
        item = value
        if key.item:
            if not (isinstance(item, list) and len(item) == 1):
                continue
            item = item[0]
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue
        if key.number is int and not isinstance(item, int):
            continue
        if key.inside(item):
            return True
    return False


def _set(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value
