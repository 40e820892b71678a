"""The config boundary holds: every config, override or TOML text is either valid or refused with one
line (a :class:`ConfigError`) within seconds and a few hundred MB; never a traceback, never another exception.

- a regression corpus (``tests/data/config_corpus.json``): the cases that once broke the boundary and a few hundred
  more, each with the outcome the rules demand (refused, naming the key; or valid, with the values it must give);
- property-based fuzzing (hypothesis) of :func:`fedsec.plan.plan_from_dict`, of ``--set`` through
  :func:`fedsec.plan.load_plan`, and of TOML text through :func:`fedsec.config.read_toml`;
- ``fedsec validate`` through typer's CliRunner on a sample: exit 0 or 2, and one line per problem when it refuses;
- generated configs (:func:`test_fuzz_generated_configs_refuse_every_value_outside_its_documented_range`): values in
  and out of each numeric key's documented range (``tests/config_schema.py`` reads the ranges from the models),
  through ``plan_from_dict``, a TOML file or ``fedsec validate``; a value outside its range that is accepted fails;
- the worst inputs in a subprocess, whose own peak memory and time are measured.

``FEDSEC_FUZZ_EXAMPLES`` sets how many examples each property draws (default: 60, and 200 for the generated
configs; ``scripts/fuzz_configs.sh`` runs 2,200); the draws are derandomized so a failure reproduces. With
``FEDSEC_FUZZ_TALLY=FILE`` every example's verdict (accepted, refused, traceback, hang, memory, bad_message,
wrongly_accepted) is appended to FILE as a JSON line and a bad verdict is counted instead of failing the test.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import resource
import signal
import subprocess
import sys
import time
import tomllib
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from config_schema import NumericKey, acceptable, get, location, numeric_keys, place
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from fedsec.cli import app
from fedsec.clients.attacks import ATTACKS
from fedsec.config import ConfigError, Experiment, apply_overrides, read_toml
from fedsec.config.loading import MAX_DEPTH, text_depth, value_depth
from fedsec.plan import load_plan, plan_from_dict
from fedsec.strategies import STRATEGIES

CORPUS = json.loads((Path(__file__).parent / "data" / "config_corpus.json").read_text())
BASE: dict[str, Any] = {"name": "corpus", "rounds": 2, "data": {"dataset": "digits", "num_clients": 10},
                        "model": {"name": "logreg"}, "train": {"clients_per_round": 5}, "attack": {"fraction": 0.2}}
SECONDS = 10.0  # a refusal or a plan within this much CPU time, or the test fails naming the config
WALL_SECONDS = 60.0  # a hard stop in wall-clock time (the CPU budget is the bound: this machine is shared)
MEGABYTES = 500  # peak resident memory may grow at most this much per config
EXAMPLES = int(os.environ.get("FEDSEC_FUZZ_EXAMPLES") or 0)
TALLY = os.environ.get("FEDSEC_FUZZ_TALLY")
_SETTINGS: dict[str, Any] = {"deadline": None, "derandomize": True, "database": None,
                             "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                                       HealthCheck.function_scoped_fixture]}
FUZZ = settings(max_examples=EXAMPLES or 60, **_SETTINGS)
FUZZ_CONFIGS = settings(max_examples=EXAMPLES or 200, **_SETTINGS)
GOOD = ("accepted", "refused")

# Corpus cases refused only once a layer this file does not test directly is fixed: id -> where (strict xfail:
# the day the fix lands, the case passes and the xfail fails, so the entry is removed here).
KNOWN_ISSUES: dict[str, str] = {
}


def corpus_params(entries: list[dict[str, Any]]) -> list[Any]:
    return [pytest.param(e, id=e["id"], marks=[pytest.mark.xfail(strict=True, reason=KNOWN_ISSUES[e["id"]])]
                         if e["id"] in KNOWN_ISSUES else []) for e in entries]


class Hung(BaseException):  # a BaseException: no `except Exception` in the code under test swallows it
    pass


class TooMuchMemory(BaseException):
    pass


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def bounded(what: str) -> Iterator[None]:
    """Raise :class:`Hung` if the block uses more than SECONDS of CPU time (or runs WALL_SECONDS: it is stopped
    then), :class:`TooMuchMemory` if it grows the process's peak resident memory by more than MEGABYTES (whether
    it returns or raises)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hung(f"{what}: still running after {WALL_SECONDS} s")

    before, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _cpu_seconds()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, WALL_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        if grown >= MEGABYTES:
            raise TooMuchMemory(f"{what}: peak memory grew by {grown:.0f} MB")
        if (spent := _cpu_seconds() - cpu) > SECONDS:
            raise Hung(f"{what}: {spent:.1f} s of CPU time")


@pytest.fixture(scope="module", autouse=True)
def _warm_imports():
    """Import what validation imports lazily (Opacus' accountants, ...) before any example is timed."""
    for privacy in ({"mode": "central"}, {"mode": "local"}):
        plan_from_dict({**BASE, "privacy": privacy})


def verdict_of(call: Any, what: str) -> tuple[str, Any, str | None]:
    """(verdict, result, message): "accepted" (the result), "refused" (a one-line ConfigError: its message),
    or what went wrong: "bad_message" (a ConfigError of several lines or over 2,100 characters), "hang",
    "memory", "traceback" (any other exception)."""
    try:
        with bounded(what):
            return "accepted", call(), None
    except ConfigError as e:
        message = str(e)
        if any(c in message for c in "\n\r\x00") or not 0 < len(message) <= 2100:
            return "bad_message", None, f"{what}: {message[:300]!r} ({len(message)} characters)"
        return "refused", None, message
    except Hung as e:
        return "hang", None, str(e)
    except TooMuchMemory as e:
        return "memory", None, str(e)
    except Exception as e:  # noqa: BLE001 - the point of the test: nothing but ConfigError gets out
        return "traceback", None, f"{what}: {type(e).__name__} escaped instead of a ConfigError: {str(e)[:300]}"


def tally(test: str, verdict: str, message: str | None = None) -> None:
    """Record one example's verdict (``FEDSEC_FUZZ_TALLY``); otherwise fail on a bad one."""
    if TALLY:
        with open(TALLY, "a") as f:
            f.write(json.dumps({"test": test, "verdict": verdict,
                                "message": None if verdict in GOOD else (message or "")[:500]}) + "\n")
    elif verdict not in GOOD:
        pytest.fail(f"{verdict}: {message}")


def outcome(call: Any, what: str, *, test: str = "") -> tuple[Any, str | None]:
    """``(result, None)`` or ``(None, message)`` for a ConfigError; anything else fails the test (is counted)."""
    verdict, result, message = verdict_of(call, what)
    tally(test or what.split("(")[0], verdict, message)
    return result, message


# ------------------------------------------------------------------------------------------------- the corpus
_REPEAT = re.compile(r"\{\{REPEAT:(.+?):(\d+)\}\}")


def expand(value: Any) -> Any:
    """``{{REPEAT:token:n}}`` -> token * n, in strings and keys (the corpus stays small on disk)."""
    if isinstance(value, str):
        return _REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), value)
    if isinstance(value, dict):
        return {expand(k): expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dotted(raw: Any, key: str) -> Any:
    for part in key.split("."):
        raw = raw[part]
    return raw


def write_entry(entry: dict[str, Any], path: Path) -> list[str]:
    if "toml" in entry:
        path.write_text(expand(entry["toml"]))
    elif "toml_bytes_hex" in entry:
        path.write_bytes(bytes.fromhex(entry["toml_bytes_hex"]))
    else:
        path.write_text(tomli_w.dumps(merged(BASE, expand(entry.get("patch", {})))))
    return [expand(text) for text in entry.get("set", [])]


def test_corpus_holds_every_case_measured_in_the_issue_and_100_more():
    ids = [e["id"] for e in CORPUS]
    assert len(ids) == len(set(ids)) and len(ids) >= 100
    assert sum(i.startswith("issue-") for i in ids) >= 30
    assert {e["expect"] for e in CORPUS} == {"valid", "refused"}


@pytest.mark.parametrize("entry", corpus_params(CORPUS))
def test_corpus_config_is_refused_with_one_line_or_valid(entry, tmp_path):
    path = tmp_path / "cfg.toml"
    overrides = write_entry(entry, path)
    plan, message = outcome(lambda: load_plan(path, overrides), entry["id"], test="corpus")
    if entry["expect"] == "refused":
        assert message is not None, f"{entry['id']}: accepted, must be refused"
        assert entry["match"] in message, f"{entry['id']}: {message[:300]!r} does not name {entry['match']!r}"
    else:
        assert plan is not None, f"{entry['id']}: refused: {message}"
        raw = plan.resolved  # the config as run: defaults and kind keys filled in
        for key, value in entry.get("check", {}).items():
            assert dotted(raw, key) == value, key


CLI_SAMPLE = ["issue-rounds-string", "issue-name-nul", "issue-deep-arrays", "issue-set-data-empty", "valid-base",
              "issue-noise-1e-300", "issue-set-seed-huge", "set-value-newline-injection", "file-not-utf8",
              "issue-name-10mb", "unknown-key-newline", "valid-central-dp", "i29-name-markup",
              "i29-name-markup-bold", "i29-set-int-5000-digits", "i29-several-problems", "i29-dotted-key-200000"]


@pytest.mark.parametrize("entry_id", CLI_SAMPLE)
def test_cli_validate_exits_0_or_2_with_one_line_per_problem(entry_id, tmp_path):
    entry = next(e for e in CORPUS if e["id"] == entry_id)
    path = tmp_path / "cfg.toml"
    overrides = write_entry(entry, path)
    args = ["validate", str(path)] + [a for text in overrides for a in ("--set", text)]
    with bounded(entry_id):
        result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if entry["expect"] == "valid":
        assert result.exit_code == 0, result.output
        assert result.output.startswith("valid: corpus")
    else:
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines and all(line.startswith("config error: ") for line in lines), result.output[:500]
        assert len(lines) == entry.get("problems", 1), result.output[:500]
        assert "Traceback" not in result.output


# ------------------------------------------------------------------------------------------ schema and values
def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def schema_paths() -> list[tuple[str, ...]]:
    """Every key of the real schema: the sections' fields (nested sections too) and every kind's own keys."""
    paths: list[tuple[str, ...]] = []
    stack: list[tuple[type[BaseModel], tuple[str, ...]]] = [(Experiment, ())]
    while stack:
        model, prefix = stack.pop()
        for name, field in model.model_fields.items():
            paths.append((*prefix, name))
            sub = _model_of(field.annotation)
            if sub is not None:
                stack.append((sub, (*prefix, name)))
    for section, registry in (("attack", ATTACKS), ("defense", STRATEGIES)):
        for _, cls in registry.items():
            paths.extend((section, key) for key in cls.Params.model_fields)
    return sorted(set(paths))


PATHS = schema_paths()
KINDS = {("attack", "kind"): sorted(n for n, _ in ATTACKS.items()),
         ("defense", "strategy"): sorted(n for n, _ in STRATEGIES.items()),
         ("privacy", "mode"): ["none", "local", "central"], ("privacy", "accountant"): ["rdp", "prv"]}

NASTY_STRINGS = ["", "../../x", "/etc/passwd", "a\x00b", "a\nb", "a\rb", "x" * 5000, "digits", "logreg", "auto",
                 "C:\\x", "~/x", "${HOME}", "'", '"', "[[", "1e300", "nan", "true", "3"]
NASTY_NUMBERS = [0, 1, -1, 2, 3, 2**31, 2**63, -(2**63), 10**20, 10**400, 0.0, -0.0, 0.5, 1e-300, 5e-324, 1e300,
                 1.7976931348623157e308, math.inf, -math.inf, math.nan, 99.0, 100000, 1000000, 10**12]

scalars = st.one_of(
    st.sampled_from(NASTY_NUMBERS), st.sampled_from(NASTY_STRINGS), st.booleans(), st.none(),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
)


def deep(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


# in-range but extreme: where a config passes the schema and a later layer (the plan, the privacy maths) must cope
plausible = st.sampled_from([0, 1, 2, 3, 5, 10, 0.5, 0.1, 0.01, 0.05, 1e-300, 1e-9, 8.0, 99.0, 100.0, 1e4, 1e6,
                             100_000, 1_000_000, [0, 1], [60, 40], "digits", "synthetic", "logreg", "mlp", "iid",
                             "shards", "fgsm", "pgd", "yeom", "lira", "uniform", "ckks"])

values = st.one_of(
    scalars,
    st.lists(scalars, max_size=5),
    st.dictionaries(st.text(max_size=8), scalars, max_size=4),
    st.sampled_from([MAX_DEPTH - 2, MAX_DEPTH + 1, 200]).map(deep)  # deeper: test_deep_copy_and_depth_...,
)


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    raw = merged(BASE, {})
    raw = json.loads(json.dumps(raw))
    for _ in range(draw(st.integers(1, 3))):
        roll = draw(st.integers(0, 9))  # weights: 6 in 10 an in-range value, 3 anything, 1 an unknown key
        path = draw(st.sampled_from(PATHS) | st.sampled_from(list(KINDS))) if roll < 9 else \
            draw(st.lists(st.text(max_size=6), min_size=1, max_size=3).map(tuple))
        if path in KINDS and roll < 6:
            value = draw(st.sampled_from(KINDS[path]))
        else:
            value = draw(plausible if roll < 6 else values)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return raw


@FUZZ
@given(raw=configs())
def test_fuzz_plan_from_dict_is_valid_or_one_line_config_error(raw):
    plan, message = outcome(lambda: plan_from_dict(raw), f"plan_from_dict({_short(raw)})", test="plan_from_dict")
    event("accepted" if plan is not None else f"refused: {message.split(':', 1)[1].split(':')[0].strip()[:40]}")
    if plan is not None:  # what was accepted is finite where the schema says number
        for path in PATHS:
            try:
                value = dotted(plan.experiment.model_dump(), ".".join(path))
            except (KeyError, TypeError):
                continue
            if isinstance(value, float):
                assert math.isfinite(value), path
            assert not isinstance(value, str) or ("\x00" not in value and len(value) <= 4096), path


def _toml_value(value: Any) -> str:
    try:
        return tomli_w.dumps({"v": value})[4:].strip()
    except (TypeError, ValueError, RecursionError):
        return reprlib.repr(value)


override_texts = st.one_of(
    st.builds(lambda path, value: f"{'.'.join(path)}={_toml_value(value)}", st.sampled_from(PATHS), values),
    st.builds(lambda path, text: f"{'.'.join(path)}={text}", st.sampled_from(PATHS), st.text(max_size=40)),
    st.sampled_from(["data={}", "train={}", "data={num_clients=5}", "audit.evasion={}", "attack={kind='alie'}",
                     "rounds=" + "[" * 3000, "name=" + "x" * 9000, "a..b=1", "=1", "x", ".=.", "data.poison={}"]),
    st.text(max_size=60),
)


@FUZZ
@given(overrides=st.lists(override_texts, min_size=1, max_size=4))
def test_fuzz_set_overrides_are_valid_or_one_line_config_error(overrides, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz_base.toml"
    if not path.exists():
        path.write_text(tomli_w.dumps(BASE))
    plan, message = outcome(lambda: load_plan(path, overrides), f"--set {overrides!r:.300}", test="set")
    event("accepted" if plan is not None else "refused")
    if plan is not None:  # a table given to --set merges: the base's keys survive every accepted override
        keys = {tuple(text.split("=", 1)[0].strip().split(".")) for text in overrides}
        for section, key in (("data", "dataset"), ("model", "name")):
            if (section, key) not in keys and (section,) not in keys:
                assert dotted(plan.experiment.model_dump(), f"{section}.{key}") == BASE[section][key]


toml_texts = st.lists(
    st.sampled_from(["[", "]", "{", "}", "a", "b", " = ", "=", ",", "\n", '"', "'", '"""', "'''", "\\", "#", "1",
                     "x = ", "[t]\n", "[[t]]\n", "inf", "nan", "true", " ", "\x00", "\t"]),
    max_size=120,
).map("".join)


@FUZZ
@given(text=toml_texts)
def test_fuzz_toml_text_is_read_or_refused_and_the_depth_scan_never_undercounts(text, tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "fuzz_text.toml"
    path.write_text(text)
    raw, _ = outcome(lambda: read_toml(path), f"read_toml({text!r:.300})", test="toml_text")
    if raw is not None:  # no dotted keys in this alphabet: every level of nesting comes from a bracket
        assert value_depth(raw) <= text_depth(text) + 1, text


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 10_000])
def test_nesting_limit_is_exact_and_reached_before_parsing(depth, tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * depth + "]" * depth)
    if depth <= MAX_DEPTH:
        assert value_depth(read_toml(path)) == depth + 1
    else:
        with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}.*nested deeper than {MAX_DEPTH}"):
            read_toml(path)


def test_overrides_merge_a_table_and_never_reset_a_section():
    raw = apply_overrides(BASE, ["data={}", "data={alpha=0.1, poison={rate=0.5}}"])
    assert raw["data"] == {"dataset": "digits", "num_clients": 10, "alpha": 0.1, "poison": {"rate": 0.5}}
    assert BASE["data"] == {"dataset": "digits", "num_clients": 10}  # the input is not touched
    with pytest.raises(ConfigError, match=r"data is a section; set its keys"):
        apply_overrides(BASE, ["data=[]"])
    with pytest.raises(ConfigError, match=r"data.dataset is a value, not a section"):
        apply_overrides(BASE, ["data={dataset={x=1}}"])


def test_deep_copy_and_depth_of_a_100000_deep_mapping_do_not_recurse():
    raw: dict[str, Any] = {}
    node = raw
    for _ in range(100_000):
        node["a"] = {}
        node = node["a"]
    assert value_depth(raw) > MAX_DEPTH
    copied = apply_overrides(raw, [])
    assert copied is not raw and copied["a"] is not raw["a"]
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH}"):
        plan_from_dict(raw)


def _short(raw: Any) -> str:
    try:
        return tomli_w.dumps(raw)[:300].replace("\n", "; ")
    except (TypeError, ValueError, RecursionError):
        return reprlib.repr(raw)


def test_fuzz_examples_reproduce():
    assert FUZZ.derandomize and tomllib.loads(tomli_w.dumps(BASE)) == BASE


# ---------------------------------------------------------------------- generated configs and documented ranges
# Kinds whose keys the run plan does not validate yet: their out-of-range values are accepted (a corpus case in
# KNOWN_ISSUES shows it); drawn again once the plan checks them.
PENDING = {"defense.pre": "the run plan does not call strategies.pre.plan_pre_aggregators yet"}
NUMERIC: list[NumericKey] = [key for key in numeric_keys() if key.registry not in PENDING]
_BRANCHES: dict[tuple[Any, ...], list[NumericKey]] = {}
for _key in NUMERIC:
    _BRANCHES.setdefault((_key.registry, _key.kind_name, _key.path), []).append(_key)


def _int_range(key: NumericKey) -> tuple[int, int]:
    (low, low_open), (high, high_open) = key.low, key.high
    lo = math.floor(low) + 1 if low_open else math.ceil(low)
    hi = math.ceil(high) - 1 if high_open else math.floor(high)
    return int(lo), int(hi)


def outside_values(key: NumericKey) -> list[Any]:
    """Values of the wrong type or outside ``key``'s documented range: a config holding one must be refused."""
    (low, low_open), (high, high_open) = key.low, key.high
    if key.number is int:
        lo, hi = _int_range(key)
        numbers: list[Any] = [hi + 1, hi * 10 + 10, 10**30, lo - 1, -(10**30)]
        wrong_type: list[Any] = [float(lo), float(hi)]  # strict: an integer key takes no float
    else:
        numbers = [high if high_open else math.nextafter(high, math.inf), high * 10 + 1, 1e308, -1e308,
                   low if low_open else math.nextafter(low, -math.inf), low - 1, math.nan, math.inf, -math.inf]
        wrong_type = []
    return [v for v in numbers if not key.inside(v)] + wrong_type + [True, "3"]


@st.composite
def value_for(draw: st.DrawFn, key: NumericKey) -> Any:
    """A value for ``key``: 6 in 10 inside its range (its ends, or any), else of the wrong type or outside it."""
    if draw(st.integers(0, 9)) >= 6:
        return draw(st.sampled_from(outside_values(key)))
    if key.number is int:
        lo, hi = _int_range(key)
        return draw(st.sampled_from([lo, hi]) | st.integers(lo, hi))
    (low, low_open), (high, high_open) = key.low, key.high
    edges = [v for v in (low, high) if key.inside(v)]
    inside = st.floats(low, high, exclude_min=low_open, exclude_max=high_open, allow_nan=False,
                       allow_infinity=False)
    return draw(st.sampled_from(edges) | inside if edges else inside)


@st.composite
def generated_configs(draw: st.DrawFn) -> tuple[dict[str, Any], list[NumericKey]]:
    """A config from BASE with 1-3 numeric keys (any section's or any kind's) set, mostly with their kind chosen."""
    raw = json.loads(json.dumps(BASE))
    keys = draw(st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=3))
    for key in keys:
        place(raw, key, draw(value_for(key)), select=draw(st.integers(0, 9)) < 8)
    return raw, keys


def must_be_refused(raw: dict[str, Any], keys: list[NumericKey]) -> list[str]:
    """The keys whose final value in ``raw`` is of the wrong type or outside the range documented for it by the
    kind finally chosen (a kind that does not declare the key refuses it as unknown)."""
    wrong = []
    for key in keys:
        path, selector = location(key)
        kind = get(raw, selector) if selector is not None else key.kind_name
        if key.registry == "defense.sanitize.method" and kind in (None, "none"):
            continue  # ignored, not refused, without a filter: i29-sanitize-none-with-k-nan in KNOWN_ISSUES
        value = get(raw, path)
        if not acceptable(value, _BRANCHES.get((key.registry, kind, key.path), [])):
            wrong.append(f"{'.'.join(map(str, path))}={value!r:.60}")
    return wrong


def _validate_cli(path: Path) -> Any:
    result = CliRunner().invoke(app, ["validate", str(path)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    if result.exit_code == 0:
        return result
    lines = [line for line in result.output.splitlines() if line.strip()]
    if result.exit_code != 2 or not lines or not all(line.startswith("config error: ") for line in lines):
        raise AssertionError(f"fedsec validate: exit {result.exit_code}, output {result.output[:300]!r}")
    raise ConfigError("; ".join(line.removeprefix("config error: ") for line in lines))


@FUZZ_CONFIGS
@given(case=generated_configs(), route=st.sampled_from(["plan_from_dict", "toml file", "fedsec validate"]))
def test_fuzz_generated_configs_refuse_every_value_outside_its_documented_range(case, route, tmp_path_factory):
    """No traceback, no hang (10 s), no memory blow-up (500 MB) and no value outside its documented range accepted,
    through the API, a TOML file and the command line."""
    raw, keys = case
    path = tmp_path_factory.getbasetemp() / "generated.toml"
    if route != "plan_from_dict":
        path.write_text(tomli_w.dumps(raw))
    call = {"plan_from_dict": lambda: plan_from_dict(raw), "toml file": lambda: load_plan(path),
            "fedsec validate": lambda: _validate_cli(path)}[route]
    verdict, _, message = verdict_of(call, f"{route}: {_short(raw)}")
    wrong = must_be_refused(raw, keys)
    if verdict == "accepted" and wrong:
        verdict, message = "wrongly_accepted", f"{route} accepted {', '.join(wrong)} in {_short(raw)}"
    event(verdict)
    tally("generated", verdict, message)


WORST_INPUTS = {  # the inputs that once cost the most, each in a fresh process: its own peak memory and time
    # name: (text, refused before parsing?)
    "dotted key, 20,000 parts": ("a." * 20_000 + "b = 1", True),
    "dotted key, 200,000 parts": ("a." * 200_000 + "b = 1", True),
    "dotted table header, 200,000 parts": ("[" + "a." * 200_000 + "b]\nc = 1", True),
    "dotted quoted key, 100,000 parts": ('"a".' * 100_000 + "b = 1", True),
    "integer of 5,000 digits": ("rounds = " + "1" * 5000, True),
    "float of 900,000 digits": ("x = " + "1" * 900_000 + ".5", True),
    "900,000 brackets": ("x = " + "[" * 900_000, True),
    "inline tables 300,000 deep": ("x = " + "{a=" * 300_000, True),
    "bare key of 900,000 characters": ("a" * 900_000 + " = 1", False),
    "60,000 keys": ("\n".join(f"k{i} = {i}" for i in range(60_000)), False),
    "200,000 strings": ("x = [" + '"a",' * 200_000 + "]", False),
    "400,000 comments": ("#\n" * 400_000, False),
}
_CHILD = """
import resource, sys
from fedsec.config import ConfigError, read_toml
from pathlib import Path
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start = cpu()
try:
    read_toml(Path(sys.argv[1]))
    verdict = "read"
except ConfigError as e:
    verdict = "refused: " + str(e)[len(sys.argv[1]) + 15:][:120]
print(verdict)
def peak_mb():
    # VmHWM: this process image's own peak; ru_maxrss would carry the forking pytest's peak across exec
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
print(cpu() - start, peak_mb())
"""


@pytest.mark.parametrize("name", sorted(WORST_INPUTS))
def test_worst_inputs_are_refused_in_bounded_time_and_memory_in_a_fresh_process(name, tmp_path):
    path = tmp_path / "worst.toml"
    text, refused = WORST_INPUTS[name]
    path.write_text(text)
    limit = 2 * 1024**3  # a hard stop (address space) should the bound below fail badly

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True,
                          timeout=WALL_SECONDS, preexec_fn=cap)
    assert done.returncode == 0, done.stderr[-2000:]
    verdict, measures = done.stdout.strip().splitlines()[-2:]
    seconds, megabytes = map(float, measures.split())
    fast = 1.0 if refused else SECONDS  # refused before parsing: the issue measured 26 s for 20,000 parts, or never
    assert seconds < fast, f"{name}: {seconds:.2f} s of CPU time to read or refuse"
    assert megabytes < MEGABYTES, f"{name}: peak {megabytes:.0f} MB"
    assert time.monotonic() - started < WALL_SECONDS
    assert verdict.startswith("refused") == refused, verdict
