"""Reading experiment TOML files: size and depth limits, strict overrides, validation, one-line error messages.

The boundary every config crosses before anything else sees it :

- a file over :data:`MAX_CONFIG_BYTES` (1 MB) or nested deeper than :data:`MAX_DEPTH` (32 tables/arrays) is refused
  *before* it is parsed, with one line naming the file (``tomllib`` recurses once per level: a file of 10,000 ``[``
  raised ``RecursionError``);
- nothing here recurses: copies, merges and depth checks are iterative;
- ``--set key.path=value``: the key is a dotted path of identifiers (at most :data:`MAX_KEY_SEGMENTS`), the value a
  TOML value, else a plain string; an override over :data:`MAX_OVERRIDE_CHARS` characters or holding a control
  character (NUL, newline, ...) is refused;
- a table given to ``--set`` (``--set data={num_clients=5}``, or a sweep axis of tables) is **merged** key by key into
  the section, never a replacement: ``--set data={}`` changes nothing (and logs a warning) instead of silently
  resetting ``[data]`` to its defaults;
- every error message is one line (control characters escaped, values elided past :data:`MAX_MESSAGE_CHARS`).

Kind-specific keys and cross-cutting plans are checked by :func:`fedsec.plan.load_plan`, which calls this."""

from __future__ import annotations

import logging
import re
import reprlib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedsec.errors import ConfigError

from .experiment import Experiment

logger = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1_000_000
"""Largest config or sweep file read (bytes); real configs are under 5 kB."""
MAX_DEPTH = 32
"""Deepest nesting of tables and arrays accepted (the schema itself is 3 deep: ``audit.evasion.attacks``)."""
MAX_OVERRIDE_CHARS = 8192
"""Longest ``--set key=value`` accepted (``data.root`` may be 4096 characters)."""
MAX_KEY_SEGMENTS = 8
"""Most segments in a ``--set`` key path (``audit.evasion.epsilon`` has 3)."""
MAX_MESSAGE_CHARS = 2000
"""Longest error message: the parts past it are elided, so a 10 MB value never ends up in a terminal."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every C0 control but tab, and DEL
# Tokens that change the TOML scanner's state: multi-line and single-line string quotes, escapes in basic strings,
# comments, newlines and the brackets whose nesting tomllib parses recursively.
_REPR = reprlib.Repr()  # bounded repr of user values in messages
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 6, 6, 70, 70, 40
_TOKEN = re.compile(r'"""|\'\'\'|\\[\s\S]|["\'#\[\]{}\n]')


def one_line(text: str, *, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` with control characters escaped (a newline becomes ``\\n``) and elided past ``limit`` characters."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    if len(text) > limit:
        text = f"{text[: limit - 40]} ... ({len(text) - limit + 40} characters elided)"
    return text


def _show(value: Any, *, limit: int = 80) -> str:
    """A short, one-line ``repr`` of a user's value for an error message (bounded work on any input)."""
    try:
        shown = _REPR.repr(value)
    except (RecursionError, ValueError):  # ValueError: an int too long to print
        shown = f"<{type(value).__name__}>"
    return one_line(shown, limit=limit)


def _show_key(part: Any) -> str:
    text = str(part)
    return text if len(text) <= 60 and (_IDENTIFIER.match(text) or text.isdigit()) else _show(text, limit=60)


def _format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(_show_key(p) for p in item["loc"])
        message = one_line(item["msg"].removeprefix("Value error, "), limit=400)
        if item["type"] == "extra_forbidden":
            parts.append(f"{key}: unknown key (check the spelling; `fedsec list` shows what exists)")
        elif item["type"] == "missing":
            parts.append(f"{key}: required key is missing")
        elif key and message.startswith(f"{item['loc'][0]}."):  # a section's own rule names its keys itself
            parts.append(message)
        elif key:
            parts.append(f"{key}: {message} (got {_show(item.get('input'))})")
        else:  # cross-section rule: the message names its keys itself
            parts.append(message)
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- depth and copies
def text_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in TOML ``text``, outside strings and comments, without parsing it.

    A table header ``[[a]]`` counts 2. Where ``text`` is not valid TOML the count may be off, but never below what
    ``tomllib`` would reach before it stops at the error (its strings and comments end where these do)."""
    depth = deepest = pos = 0
    state = ""  # "", '"', "'", '"""', "'''", "#"
    while (match := _TOKEN.search(text, pos)) is not None:
        token, pos = match.group(), match.end()
        if token[0] == "\\" and state not in ('"', '"""'):  # escapes exist only in basic strings
            pos = match.start() + 1
            continue
        if state == "":
            if token in ("[", "{"):
                depth += 1
                deepest = max(deepest, depth)
            elif token in ("]", "}"):
                depth = max(depth - 1, 0)
            elif token in ('"""', "'''", '"', "'", "#"):
                state = token
        elif state == "#":
            if token == "\n":
                state = ""
        elif state in ('"', "'"):
            if token[0] == state or token == "\n":  # a newline ends (invalidly) a single-line string
                state = ""
                pos = match.start() + 1  # a '"' closes; what follows the quote is scanned again
        elif token == state:  # the end of a multi-line string
            state = ""
    return deepest


def value_depth(value: Any) -> int:
    """How deeply dicts and lists nest in ``value`` (a scalar is 0, ``{}`` and ``[]`` are 1); iterative."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH + 1:  # deep enough to refuse: stop walking
            return depth
        stack.extend((child, depth) for child in children)
    return deepest


def check_depth(raw: Any, *, source: str) -> None:
    """Refuse a config whose tables and arrays nest more than :data:`MAX_DEPTH` levels below its top-level table
    (as :func:`text_depth` counts them in a file), with a :class:`ConfigError` naming ``source``."""
    if value_depth(raw) - 1 > MAX_DEPTH:
        raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} tables/arrays; a config is at most 3 deep "
                          "(audit.evasion.attacks): flatten it")


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    """Copy the dicts of ``raw`` (not the leaves or lists), iteratively."""
    root: dict[str, Any] = {}
    stack = [(raw, root)]
    while stack:
        source, target = stack.pop()
        for key, value in source.items():
            if isinstance(value, dict):
                target[key] = {}
                stack.append((value, target[key]))
            else:
                target[key] = value
    return root


def copy_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw config whose sections can be changed without touching ``raw``."""
    return _deep_copy(raw)


# ------------------------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``--set key.path=value``: the key a dotted path of identifiers, the value a TOML value, else the
    plain string (so ``name=run-1`` needs no quotes); a :class:`ConfigError` for anything else."""
    if len(text) > MAX_OVERRIDE_CHARS:
        raise ConfigError(f"--set {_show(text, limit=60)}: {len(text)} characters, over the limit of "
                          f"{MAX_OVERRIDE_CHARS}; put long values in the config file")
    if _CONTROL.search(text):
        raise ConfigError(f"--set {_show(text)}: contains a control character (NUL, newline, ...); remove it")
    if "=" not in text:
        raise ConfigError(f"--set {_show(text)}: expected key=value, e.g. attack.fraction=0.3")
    key, raw = text.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    if len(path) > MAX_KEY_SEGMENTS or not all(_IDENTIFIER.match(p) for p in path):
        raise ConfigError(f"--set {_show(text)}: the key must be a dotted path of at most {MAX_KEY_SEGMENTS} "
                          f"identifiers (letters, digits, _), e.g. attack.fraction, got {_show(key.strip())}")
    raw = raw.strip()
    if text_depth(raw) > MAX_DEPTH:
        raise ConfigError(f"--set {_show(text)}: value nested deeper than {MAX_DEPTH} arrays/tables")
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return path, raw
    except RecursionError:  # text_depth is exact on valid TOML; this only guards the unforeseen
        raise ConfigError(f"--set {_show(text)}: value nested too deeply") from None
    if set(parsed) != {"v"}:  # unreachable without a newline; kept so a value can never set another key
        raise ConfigError(f"--set {_show(text)}: the value must be a single TOML value")
    return path, parsed["v"]


def set_key(raw: dict[str, Any], path: list[str], value: Any, *, source: str) -> None:
    """Set ``raw[path[0]][path[1]]... = value`` in place, creating sections; ``source`` names it in errors.

    A table ``value`` is merged key by key into the table at ``path`` (iteratively; never a replacement, so
    ``data={}`` changes nothing); a scalar or an array over a section is refused."""
    node = raw
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(path[: i + 1])} is a value, not a section")
        node = child
    last = path[-1]
    current = node.get(last)
    if isinstance(current, dict) and not isinstance(value, dict):
        raise ConfigError(f"{source}: {'.'.join(path)} is a section; set its keys (e.g. {'.'.join(path)}.<key>=...), "
                          f"not the whole section to {_show(value)}")
    if not isinstance(value, dict):
        node[last] = value
        return
    if not isinstance(current, dict):
        if last in node:
            raise ConfigError(f"{source}: {'.'.join(path)} is a value, not a section; got the table {_show(value)}")
        current = node[last] = {}
    if not value and current:
        logger.warning("%s: an empty table merges nothing into [%s] (it does not reset it)", source, ".".join(path))
    stack = [(value, current, ".".join(path))]
    while stack:
        src, dst, where = stack.pop()
        for key, item in src.items():
            if isinstance(item, dict):
                if key in dst and not isinstance(dst[key], dict):
                    raise ConfigError(f"{source}: {where}.{_show_key(key)} is a value, not a section")
                stack.append((item, dst.setdefault(key, {}), f"{where}.{_show_key(key)}"))
            elif isinstance(dst.get(key), dict):
                raise ConfigError(f"{source}: {where}.{_show_key(key)} is a section; set its keys, not "
                                  f"{_show(item)}")
            else:
                dst[key] = item


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key.path=value`` set (tables merged, see :func:`set_key`)."""
    merged: dict[str, Any] = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        set_key(merged, path, value, source=f"--set {_show(text)}")
    return merged


# ------------------------------------------------------------------------------------------------ validation
def experiment_from_dict(raw: dict[str, Any], *, source: str = "config") -> Experiment:
    """Validate a raw mapping into an :class:`Experiment`, raising a one-line :class:`ConfigError`."""
    source = one_line(source, limit=300)
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config is a table of sections, got {_show(raw)}")
    check_depth(raw, source=source)
    try:
        experiment = Experiment.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(one_line(f"{source}: {_format_validation_error(e)}")) from e
    return experiment


def load_experiment(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Read, override and validate an experiment TOML file."""
    path = Path(path)
    return experiment_from_dict(apply_overrides(read_toml(path), overrides or []), source=str(path))


def read_toml(path: Path, *, what: str = "config file") -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable, oversized (> :data:`MAX_CONFIG_BYTES`), too deeply nested
    (> :data:`MAX_DEPTH`) or invalid file is a one-line :class:`ConfigError` naming it."""
    name = one_line(repr(str(path)), limit=300)
    try:
        if not path.is_file():
            raise ConfigError(f"{what} {name} not found")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{what} {name}: {size} bytes, over the limit of {MAX_CONFIG_BYTES}; "
                              "a config is a few kB: is this the right file?")
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # the file may grow between stat and read
    except OSError as e:  # unreadable, a name too long, ...
        raise ConfigError(f"{what} {name}: cannot read it: {one_line(e.strerror or str(e))}") from e
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {name}: over the limit of {MAX_CONFIG_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {name}: not a UTF-8 text file ({e.reason} at byte {e.start})") from e
    if text_depth(text) > MAX_DEPTH:
        raise ConfigError(f"{what} {name}: arrays/tables nested deeper than {MAX_DEPTH}; a config is at most 3 "
                          "deep: flatten it")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {name}: invalid TOML: {one_line(str(e), limit=300)}") from e
    except RecursionError:  # text_depth is exact on valid TOML; this only guards the unforeseen
        raise ConfigError(f"{what} {name}: nested too deeply to parse") from None
    check_depth(raw, source=f"{what} {name}")  # dotted keys (a.b.c...) nest without brackets
    return raw
