"""Pre-aggregators: steps that transform the stacked updates before any robust rule aggregates them.

``defense.pre`` lists them in the order they run; each entry is a name or an inline table with the step's own keys::

    [defense]
    strategy = "median"
    pre = ["nnm"]                                      # NNM, then the median
    # pre = [{ name = "bucketing", bucket_size = 3 }, "nnm"]

Each step is one file here (kernel on top, class below) and one ``PRE_AGGREGATORS.register`` line in
:mod:`fedsec.strategies`. :func:`plan_pre_aggregators` validates the list for the run plan;
:class:`~fedsec.strategies.RobustStrategy` runs the steps on the stacked updates before ``aggregate_updates`` and
maps the rule's weights back to the clients (:mod:`fedsec.strategies.pre.base` says how).
"""

from __future__ import annotations

from typing import Any

from fedsec.errors import ConfigError
from fedsec.registry import parse_params

from .arc import ARC, adaptive_robust_clip, arc_clipped_count
from .base import PreAggregator, PreOutput, PreParams, apply_pre_aggregators, client_weights, required_inputs
from .bucketing import Bucketing, bucket_means, bucket_permutation
from .nnm import NNM, nearest_neighbor_mixing


def _entries(defense: Any) -> list[tuple[str, dict[str, Any]]]:
    """``defense.pre`` as (name, keys) pairs; a :class:`ConfigError` naming the entry when one is malformed."""
    out = []
    for i, entry in enumerate(getattr(defense, "pre", None) or []):
        if isinstance(entry, str):
            out.append((entry, {}))
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            out.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
        else:
            raise ConfigError(f"defense.pre[{i}]={entry!r}: an entry is a name (\"nnm\") or a table with a name "
                              "({ name = \"bucketing\", bucket_size = 2 })")
    return out


def plan_pre_aggregators(
    defense: Any, n: int, f: int, *, seed: int = 0, privacy_mode: str = "none", encryption: str = "none"
) -> list[PreAggregator]:
    """The validated, built steps of ``defense.pre`` (a :class:`ConfigError` naming the key otherwise).

    Parameters
    ----------
    defense : DefenseConfig
        The ``[defense]`` section: ``pre`` and, when the rule has it, ``num_malicious`` (already validated by the
        rule's ``Params``).
    n : int
        Updates per round (``train.clients_per_round``): each step's assumption is checked at the rows it gets.
    f : int
        The f a step assumes when neither its entry nor ``defense.num_malicious`` sets one (the plan's expected
        attackers per round, as for the rules).
    seed : int
        The run's seed (Bucketing's permutations).
    privacy_mode, encryption : str
        ``privacy.mode`` and ``encryption.scheme``: central DP and CKKS run their own aggregation (DP-FedAvg,
        encrypted FedAvg), which a pre-aggregator would bypass; both refuse a non-empty ``pre``.
    """
    from .. import PRE_AGGREGATORS  # the registry lives with the strategies' (one line per kind)

    entries = _entries(defense)
    if not entries:
        return []
    names = [name for name, _ in entries]
    if privacy_mode == "central":
        raise ConfigError(f"defense.pre={names}: privacy.mode='central' aggregates with DP-FedAvg, whose "
                          "sensitivity analysis holds for the clipped raw updates only; use defense.pre = []")
    if encryption != "none":
        raise ConfigError(f"defense.pre={names}: encryption.scheme={encryption!r}: the server sees only "
                          "ciphertexts, and pre-aggregators need each client's plaintext update; use defense.pre = []")
    rule_f = defense.kind_keys.get("num_malicious") if hasattr(defense, "kind_keys") else None
    if isinstance(rule_f, int) and not isinstance(rule_f, bool):
        f = rule_f
    steps: list[PreAggregator] = []
    rows = n
    for i, (name, keys) in enumerate(entries):
        cls = PRE_AGGREGATORS.get(name)
        params = parse_params(cls.Params, keys, section=f"defense.pre[{i}]", kind=f"defense.pre[{i}]={name!r}")
        try:
            step = cls.from_params(params, num_malicious=f, seed=seed, stream=i)
        except ValueError as err:
            raise ConfigError(f"defense.pre[{i}].{err}") from err
        why = step.problem(rows)
        if why is not None:
            where = "train.clients_per_round" if rows == n else f"{rows} rows after the steps before"
            raise ConfigError(f"defense.pre[{i}].{why} ({where})")
        rows = step.num_outputs(rows)
        steps.append(step)
    return steps


def resolved_pre(defense: Any) -> dict[str, list[Any]]:
    """``{"pre": [...]}`` with every entry's keys filled in (for the resolved config.toml), or ``{}`` when the run
    has no pre-aggregator; the entries validate again as they are."""
    from .. import PRE_AGGREGATORS

    out = []
    for i, (name, keys) in enumerate(_entries(defense)):
        cls = PRE_AGGREGATORS.get(name)
        params = parse_params(cls.Params, keys, section=f"defense.pre[{i}]", kind=f"defense.pre[{i}]={name!r}")
        dumped = params.model_dump(exclude_none=True)
        out.append({"name": name, **dumped} if dumped else name)
    return {"pre": out} if out else {}


__all__ = ["ARC", "NNM", "Bucketing", "PreAggregator", "PreOutput", "PreParams", "adaptive_robust_clip",
           "apply_pre_aggregators", "arc_clipped_count", "bucket_means", "bucket_permutation", "client_weights",
           "nearest_neighbor_mixing", "plan_pre_aggregators", "required_inputs", "resolved_pre"]
