"""Reading experiment TOML files: overrides, validation of the shared keys, and one-line error messages.

Kind-specific keys and cross-cutting plans are checked by :func:`fedsec.plan.load_plan`, which calls this."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedsec.errors import ConfigError

from .experiment import Experiment


def _format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key (check the spelling; `fedsec list` shows what exists)")
        elif item["type"] == "missing":
            parts.append(f"{key}: required key is missing")
        elif key and message.startswith(f"{item['loc'][0]}."):  # a section's own rule names its keys itself
            parts.append(message)
        elif key:
            parts.append(f"{key}: {message} (got {item.get('input')!r})")
        else:  # cross-section rule: the message names its keys itself
            parts.append(message)
    return "; ".join(parts)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``--set key.path=value``; the value is read as a TOML value, else as a plain string."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. attack.fraction=0.3")
    key, raw = text.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {text!r}: empty key segment")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def set_key(raw: dict[str, Any], path: list[str], value: Any, *, source: str) -> None:
    """Set ``raw[path[0]][path[1]]... = value`` in place, creating sections; ``source`` names it in errors."""
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` set."""
    merged: dict[str, Any] = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        set_key(merged, path, value, source=f"--set {text!r}")
    return merged


def copy_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw config whose sections can be changed without touching ``raw``."""
    return _deep_copy(raw)


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


def experiment_from_dict(raw: dict[str, Any], *, source: str = "config") -> Experiment:
    """Validate a raw mapping into an :class:`Experiment`, raising :class:`ConfigError`."""
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_format_validation_error(e)}") from e
    return experiment


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override and validate an experiment TOML file."""
    path = Path(path)
    return experiment_from_dict(apply_overrides(read_toml(path), overrides or []), source=str(path))


def read_toml(path: Path, *, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable or invalid file is a :class:`ConfigError` naming it."""
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file: {e}") from e
