"""Reading experiment TOML files: size and depth limits, strict overrides, validation, one-line error messages.

The boundary every config crosses before anything else sees it :

- a file over :data:`MAX_CONFIG_BYTES` (1 MB) or nested deeper than :data:`MAX_DEPTH` (32 tables/arrays) is refused
  *before* it is parsed, with one line naming the file (``tomllib`` recurses once per level: a file of 10,000 ``[``
  raised ``RecursionError``); so is, in a file or a ``--set`` value, a dotted key of more than :data:`MAX_DEPTH`
  parts (``tomllib``'s time and memory grow with the square of a dotted key's length: 3,000 parts took 0.45 s,
  20,000 took 26 s and 2 GB) and a number literal over :data:`MAX_NUMBER_CHARS` characters (``tomllib`` raises
  ``ValueError`` on an integer of more than 4,300 digits and reads a 5,000-digit float as inf); each check is one
  linear scan of the text (:func:`text_limits`);
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
from fedsec.registry import loc_key

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
MAX_NUMBER_CHARS = 100
"""Longest number literal (digits, sign, ``_``, ``.``, exponent) read from a config file or a ``--set`` value; any value
a key accepts (seeds below 2**32, bounds up to 1e9, a float's shortest repr) takes at most 25."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # every C0 control but tab, and DEL
_REPR = reprlib.Repr()  # bounded repr of user values in messages
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 6, 6, 70, 70, 40
# The scanner of TOML text (:func:`_scan`): what opens a string or a comment, the brackets whose nesting tomllib
# parses recursively, and each kind of string's body.
_OPENER = re.compile(r'"""|\'\'\'|["\'#]')  # what starts a string or a comment
_BRACKET = re.compile(r"[\[\]{}]")
_STRING_BODY = {  # a string's body, up to (not including) what ends it; escapes exist only in basic strings
    '"': re.compile(r'(?:[^"\\\n]|\\[\s\S])*+'),
    "'": re.compile(r"[^'\n]*+"),
    '"""': re.compile(r'(?:[^"\\]|\\[\s\S]|"(?!""))*+'),
    "'''": re.compile(r"(?:[^']|'(?!''))*+"),
}
# In the skeleton of a TOML text (strings replaced by S, comments dropped): a dotted key (its parts bare or quoted, so
# S), and a bare token that starts like a number. Possessive quantifiers and the look-behind keep both linear.
_DOTTED = re.compile(r"[A-Za-z0-9_\-]++(?:[ \t]*+\.[ \t]*+[A-Za-z0-9_\-]++)*+")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_\-+.:])[+\-]?[0-9][0-9A-Za-z_+\-.:]*+")


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


def _head(text: str) -> str:
    """The first characters of a long literal, for a message."""
    return one_line(text if len(text) <= 24 else f"{text[:20]}...", limit=40)


def _show_key(part: Any) -> str:
    text = str(part)
    return text if len(text) <= 60 and (_IDENTIFIER.match(text) or text.isdigit()) else _show(text, limit=60)


MAX_PROBLEMS = 50
"""Most problems listed for one config (the rest are counted)."""


class ConfigProblems(ConfigError):
    """A config with several problems (the section errors pydantic collects in one pass).

    ``str()`` is one line, the problems joined by ``"; "`` (what callers that expect one message read);
    :attr:`problems` holds each problem as a line of its own (``fedsec validate`` prints one line each)."""

    def __init__(self, problems: list[str]) -> None:
        shown = [one_line(p, limit=600) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - MAX_PROBLEMS} more problems")
        self.problems: tuple[str, ...] = tuple(shown)
        super().__init__(one_line("; ".join(shown)))


def _validation_problems(error: ValidationError) -> list[str]:
    """One message per bad key pydantic found, naming the key, the rule and the value received (the errors of the
    branches of a union, ``float | list[int]``, joined with "or")."""
    parts: dict[str, list[str]] = {}
    for item in error.errors():
        message = one_line(item["msg"].removeprefix("Value error, "), limit=400)
        if item["type"] == "extra_forbidden":  # the key is the user's: shown as given (bounded)
            key = ".".join(_show_key(p) for p in item["loc"])
            parts.setdefault(f"{key}: unknown key (check the spelling; `fedsec list` shows what exists)", [])
            continue
        key = loc_key(item["loc"])  # schema keys only: without the tags of union branches
        if item["type"] == "missing":
            parts.setdefault(f"{key}: required key is missing", [])
        elif key and message.startswith(f"{item['loc'][0]}."):  # a section's own rule names its keys itself
            parts.setdefault(message, [])
        elif key:
            head = f"{key}: (got {_show(item.get('input'))})"
            if message not in parts.setdefault(head, []):
                parts[head].append(message)
        else:  # cross-section rule: the message names its keys itself
            parts.setdefault(message, [])
    return [head.replace(": (got ", f": {' or '.join(msgs)} (got ", 1) if msgs else head
            for head, msgs in parts.items()]


# ---------------------------------------------------------------------------------------------- depth and copies
def _scan(text: str, *, stop_above: int | None = None) -> tuple[int, str]:
    """(the deepest nesting of ``[`` / ``{`` outside strings and comments, the skeleton of ``text``: each string
    literal replaced by ``S``, each comment dropped, its newline kept), in one pass linear in ``len(text)``: strings
    and comments are skipped by one regular-expression match each, brackets counted one by one. With
    ``stop_above``, it returns as soon as the nesting exceeds it (the skeleton is then partial)."""
    parts: list[str] = []
    depth = deepest = pos = 0
    end = len(text)
    while pos < end:
        opener = _OPENER.search(text, pos)
        stop = end if opener is None else opener.start()
        for bracket in _BRACKET.finditer(text, pos, stop):
            if bracket.group() in "[{":
                depth += 1
                if depth > deepest:
                    deepest = depth
                    if stop_above is not None and deepest > stop_above:
                        return deepest, ""
            else:
                depth = max(depth - 1, 0)
        parts.append(text[pos:stop])
        if opener is None:
            break
        token = opener.group()
        if token == "#":  # a comment runs to the newline, which is kept
            newline = text.find("\n", opener.end())
            pos = end if newline < 0 else newline
            continue
        parts.append("S")
        close = _STRING_BODY[token].match(text, opener.end()).end()
        if close >= end:
            pos = end  # unterminated: the rest is inside the string
        elif len(token) == 3:
            pos = close + 3 if text.startswith(token, close) else end  # else a lone backslash at the very end
        elif text[close] == token:
            pos = close + 1
        elif text[close] == "\n":  # a newline ends (invalidly) a single-line string; it is kept
            pos = close
        else:  # a lone backslash at the very end
            pos = end
    return deepest, "".join(parts)


def text_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in TOML ``text``, outside strings and comments, without parsing it.

    A table header ``[[a]]`` counts 2. Where ``text`` is not valid TOML the count may be off, but never below what
    ``tomllib`` would reach before it stops at the error (its strings and comments end where these do)."""
    return _scan(text)[0]


def text_limits(text: str, *, where: str) -> None:
    """Refuse TOML ``text`` (a file's or a ``--set`` value's) whose parsing would cost more than any config needs,
    with a one-line :class:`ConfigError` starting with ``where``: tables/arrays nested deeper than :data:`MAX_DEPTH`,
    a dotted key of more than :data:`MAX_DEPTH` parts, or a number literal longer than :data:`MAX_NUMBER_CHARS`
    characters. One linear scan and two regular expressions; nothing is parsed."""
    deepest, skeleton = _scan(text, stop_above=MAX_DEPTH)
    if deepest > MAX_DEPTH:
        raise ConfigError(f"{where}: arrays/tables nested deeper than {MAX_DEPTH}; a config is at most 3 deep: "
                          "flatten it")
    for match in _DOTTED.finditer(skeleton):
        parts = match.group().count(".") + 1
        if parts > MAX_DEPTH:
            raise ConfigError(f"{where}: a dotted key of {parts} parts ({_head(match.group())}), nested "
                              f"deeper than {MAX_DEPTH} tables; a config is at most 3 deep: flatten it")
    for match in _NUMBER.finditer(skeleton):
        if len(match.group()) > MAX_NUMBER_CHARS:
            raise ConfigError(f"{where}: a number of {len(match.group())} characters "
                              f"({_head(match.group())}); numbers longer than {MAX_NUMBER_CHARS} "
                              "characters are refused (no config key takes one)")


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
    text_limits(raw, where=f"--set {_show(text)}")  # depth, dotted keys, number literals: before parsing
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return path, raw
    except RecursionError:  # text_depth is exact on valid TOML; this only guards the unforeseen
        raise ConfigError(f"--set {_show(text)}: value nested too deeply") from None
    except ValueError as e:  # int() past 4,300 digits; text_limits refuses those first: only the unforeseen
        raise ConfigError(f"--set {_show(text)}: {one_line(str(e), limit=200)}") from None
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
    except ValidationError as e:  # every section error at once, each a line of its own
        raise ConfigProblems([f"{source}: {problem}" for problem in _validation_problems(e)]) from e
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
    text_limits(text, where=f"{what} {name}")  # depth, dotted keys, number literals: before parsing
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {name}: invalid TOML: {one_line(str(e), limit=300)}") from e
    except RecursionError:  # text_depth is exact on valid TOML; this only guards the unforeseen
        raise ConfigError(f"{what} {name}: nested too deeply to parse") from None
    except ValueError as e:  # int() past 4,300 digits; text_limits refuses those first: only the unforeseen
        raise ConfigError(f"{what} {name}: {one_line(str(e), limit=200)}") from None
    check_depth(raw, source=f"{what} {name}")  # dotted keys (a.b.c...) nest without brackets
    return raw
