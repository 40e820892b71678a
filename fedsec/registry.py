"""Registries: config names -> implementations, each kind declaring its own config keys.

A registry maps the names a config uses (``defense.strategy = "krum"``, ``attack.kind = "alie"``,
``data.dataset``, ``model.name``, audits) to the class or spec that implements them. Every registered kind carries
``description`` (one line for ``fedsec list``) and ``Params``: a pydantic model of the kind-specific keys it reads
from its config section (extra keys forbidden, every key with a default and a description). Validation of those
keys is generic (:func:`parse_params`): there is no per-kind branch anywhere. Adding a kind is one new file and one
``REGISTRY.register(...)`` line.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fedsec.errors import ConfigError


class NoParams(BaseModel):
    """The params of a kind that reads no kind-specific keys."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Params(BaseModel):
    """Base of a kind's params: unknown keys refused, strict types (no "3" for 3, no true for 1), finite numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Registered(Protocol):
    description: ClassVar[str]
    Params: ClassVar[type[BaseModel]]


T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> kinds for one config key (e.g. ``"defense.strategy"``)."""

    def __init__(self, key: str, noun: str = "kind", *, ordered: bool = False) -> None:
        self.key, self.noun = key, noun
        self.ordered = ordered  # iterate in registration order (hooks: the order the round loop calls them)
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` (the name a config uses); returns the entry."""
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.key}: {name!r} is already registered ({self._entries[name]!r})")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry for ``name``; a :class:`ConfigError` naming the key and the known names otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(self.names())
            raise ConfigError(f"{self.key}={name!r}: unknown {self.noun} {name!r}; use one of {known} "
                              "(`fedsec list` describes them)") from None

    def names(self) -> list[str]:
        return list(self._entries) if self.ordered else sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._entries.items()) if self.ordered else sorted(self._entries.items()))

    def descriptions(self) -> dict[str, str]:
        return {name: str(getattr(entry, "description", "")) for name, entry in self.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def params_keys(params: type[BaseModel]) -> set[str]:
    """The config keys a params model reads."""
    return set(params.model_fields)


_REPR = reprlib.Repr()  # bounded repr of user values in messages (an int of 5,000 digits cannot be printed)
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 6, 6, 70, 70, 40
_LOC_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def show_value(value: Any) -> str:
    """A short one-line ``repr`` of a user's value, for an error message (bounded work on any input)."""
    try:
        text = _REPR.repr(value)
    except (RecursionError, ValueError):  # ValueError: an int too long to print
        text = f"<{type(value).__name__}>"
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:200])
    return text if len(text) <= 120 else text[:100] + "..."


def loc_key(loc: tuple[Any, ...]) -> str:
    """The dotted config key of a pydantic error location: field names and list indexes, without the tags pydantic
    adds for the branch of a union (``constrained-float``, ``literal['auto']``, ``list[int]``)."""
    parts = [str(p) for p in loc if isinstance(p, int) or (isinstance(p, str) and _LOC_PART.match(p)
                                                            and p not in ("int", "float", "str", "bool", "list"))]
    return ".".join(parts)


def parse_params(params: type[BaseModel], raw: dict[str, Any], *, section: str, kind: str) -> BaseModel:
    """Validate a kind's keys from its config section; one line naming each bad key, the rule and the value (the
    errors of one key, e.g. of each branch of ``float | "auto"``, joined with "or")."""
    try:
        return params.model_validate(raw)
    except ValidationError as e:
        problems: dict[str, list[str]] = {}
        for item in e.errors():
            key = loc_key(item["loc"])
            if item["type"] == "extra_forbidden":
                known = ", ".join(sorted(params.model_fields)) or "no kind-specific keys"
                problems.setdefault(f"{section}.{key}: unknown key for {kind}, not used by it (it takes {known})", [])
            elif not key:  # a rule over several keys: its message names them
                problems.setdefault(item["msg"].removeprefix("Value error, "), [])
            else:
                message = item["msg"].removeprefix("Value error, ")
                head = f"{section}.{key}={show_value(item.get('input'))}"
                if message not in problems.setdefault(head, []):
                    problems[head].append(message)
        lines = [f"{head}: {' or '.join(messages)}" if messages else head for head, messages in problems.items()]
        raise ConfigError("; ".join(lines)) from None


__all__ = ["NoParams", "Params", "Registered", "Registry", "loc_key", "params_keys", "parse_params", "show_value"]
