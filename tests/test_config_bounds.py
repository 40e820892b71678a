"""Every numeric config key has a documented range: a lower and an upper bound in its ``Field`` (so the schema,
``fedsec list`` and the docs show it, and a value such as ``defense.iterations = 1e12`` or ``attack.scale = 1e308``
is refused at validation instead of hanging or overflowing a run).

The walk covers the sections of :class:`fedsec.config.Experiment` (nested sections too) and the ``Params`` of every
kind in every registry (strategies, pre-aggregators, attacks, hooks/audits, datasets, sanitizers, ...), numbers
inside lists and unions included."""

from __future__ import annotations

import pytest
from config_schema import numeric_keys

from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict

KEYS = numeric_keys()


def test_the_walk_finds_the_keys_of_every_kind():
    labels = {key.label for key in KEYS}
    for expected in ("rounds", "data.num_clients", "backend.aggregate_timeout", "attack.client_ids",
                     "defense.strategy='geomed': iterations", "defense.strategy='dnc': subsample_dim",
                     "attack.kind='scaling': scale", "attack.kind='alie_search': z_range",
                     "audit='inversion': clients", "defense.strategy='fltrust': root_size",
                     "defense.sanitize.method='isolation_forest': contamination"):
        assert expected in labels, expected
    assert len(labels) > 100


@pytest.mark.parametrize("key", KEYS, ids=[key.label for key in KEYS])
def test_every_numeric_key_has_a_lower_and_an_upper_bound_and_a_description(key):
    assert key.high[0] != float("inf"), f"{key.label} ({key.number.__name__}): no upper bound (Field le=/lt=)"
    assert key.low[0] != float("-inf"), f"{key.label} ({key.number.__name__}): no lower bound (Field ge=/gt=)"
    assert key.description, f"{key.label}: no description (the range is documented in `fedsec list` and the docs)"


BASE = {"name": "bounds", "rounds": 2, "data": {"dataset": "digits", "num_clients": 10}, "model": {"name": "logreg"},
        "train": {"clients_per_round": 5}}


@pytest.mark.parametrize(("patch", "key"), [
    ({"defense": {"strategy": "geomed", "iterations": 10**12}}, "defense.iterations"),
    ({"defense": {"strategy": "centered_clipping", "iterations": 10**12}}, "defense.iterations"),
    ({"defense": {"strategy": "dnc", "iterations": 10**12}}, "defense.iterations"),
    ({"defense": {"strategy": "dnc", "subsample_dim": 10**15}}, "defense.subsample_dim"),
    ({"defense": {"strategy": "fltrust", "root_size": 10**15}}, "defense.root_size"),
    ({"defense": {"strategy": "norm_clipping", "clip_norm": 1e308}}, "defense.clip_norm"),
    ({"defense": {"strategy": "centered_clipping", "clip_norm": 1e308}}, "defense.clip_norm"),
    ({"defense": {"strategy": "flame", "noise_lambda": 1e308}}, "defense.noise_lambda"),
    ({"defense": {"strategy": "foolsgold", "kappa": 1e308}}, "defense.kappa"),
    ({"attack": {"kind": "scaling", "fraction": 0.2, "scale": 1e308}}, "attack.scale"),
    ({"attack": {"kind": "scaling", "fraction": 0.2, "scale": -1e308}}, "attack.scale"),
    ({"attack": {"kind": "gaussian", "fraction": 0.2, "std": 1e308}}, "attack.std"),
    ({"attack": {"kind": "alie", "fraction": 0.2, "z": 1e308}}, "attack.z"),
    ({"attack": {"kind": "backdoor", "fraction": 0.2, "boost": 1e308}}, "attack.boost"),
    ({"attack": {"kind": "ipm", "fraction": 0.2, "epsilon": 1e308}}, "attack.epsilon"),
    ({"backend": {"address": "10.0.0.1:99999"}}, "backend.address"),
    ({"backend": {"address": "10.0.0.1:0"}}, "backend.address"),
    ({"backend": {"aggregate_timeout": 1e9}}, "backend.aggregate_timeout"),
    ({"attack": {"kind": "sign_flip", "client_ids": [0, 10**6]}}, "attack.client_ids"),
    ({"encryption": {"scheme": "ckks", "coeff_mod_bit_sizes": [60, 10**6]}}, "encryption.coeff_mod_bit_sizes"),
])
def test_values_the_issue_found_accepted_are_refused_naming_the_key(patch, key):
    raw = {**BASE, **patch}
    with pytest.raises(ConfigError) as info:
        plan_from_dict(raw)
    assert key in str(info.value), str(info.value)


def test_the_largest_documented_values_are_accepted():
    plan = plan_from_dict({**BASE, "defense": {"strategy": "geomed", "iterations": 1000},
                           "backend": {"address": "10.0.0.1:65535", "aggregate_timeout": 7 * 86400.0}})
    assert plan.strategy_params.iterations == 1000 and plan.backend.aggregate_timeout == 7 * 86400.0
