"""No silent changes: the resolved config (config.toml) says what the run applies; a request the run cannot honour
is refused with the key; the metric sheet's notes are only there when true."""

from __future__ import annotations

import tomllib

import pytest

from fedsec.config import ConfigError
from fedsec.plan import plan_from_dict


def digits(**sections) -> dict:
    raw = {"rounds": 2, "data": {"dataset": "digits", "partition": "iid", "num_clients": 4},
           "model": {"name": "logreg"}, "train": {"clients_per_round": 4}}
    raw.update(sections)
    return raw


def test_ckks_writes_the_weighting_it_applies():
    # the default "capped" cannot be applied inside ciphertexts: CKKS runs uniform, and config.toml says so
    plan = plan_from_dict(digits(encryption={"scheme": "ckks"}))
    assert plan.resolved["defense"]["weighting"] == "uniform"
    assert tomllib.loads(plan.to_toml())["defense"]["weighting"] == "uniform"
    # "reported" is what CKKS can weight by (clients encrypt count x update): kept, and the clients are told
    reported = plan_from_dict(digits(encryption={"scheme": "ckks"}, defense={"weighting": "reported"}))
    assert reported.resolved["defense"]["weighting"] == "reported" and reported.client_spec_args()["ckks_weighted"]
    # without encryption nothing changes
    assert plan_from_dict(digits()).resolved["defense"]["weighting"] == "capped"


def test_ckks_refuses_capped_weighting_asked_for():
    with pytest.raises(ConfigError) as err:
        plan_from_dict(digits(encryption={"scheme": "ckks"}, defense={"weighting": "capped"}))
    message = str(err.value)
    assert "defense.weighting='capped'" in message and "ckks" in message and "'reported'" in message
    assert "use defense.weighting = 'uniform'" in message


def test_central_dp_writes_uniform_weighting():
    raw = digits(privacy={"mode": "central", "epsilon": 8.0, "delta": 1e-3})
    plan = plan_from_dict(raw)
    assert plan.resolved["defense"]["weighting"] == "uniform"
    assert plan.server_strategy().weighting == "uniform"  # the strategy applies what config.toml says
    again = plan_from_dict(tomllib.loads(plan.to_toml()))  # config.toml plans the same run again
    assert again.resolved == plan.resolved


def test_sheet_says_sanitize_is_configured_only_when_it_is():
    from fedsec.metrics.seed_sheet import seed_metrics

    plan = plan_from_dict(digits())  # no filter: the resolved config holds [defense.sanitize] method = "none"
    assert plan.resolved["defense"]["sanitize"] == {"method": "none"}
    sheet = seed_metrics({"accuracy": 0.9}, plan.resolved)
    assert "is configured" not in str(sheet["DQ_filtered"]) and "is configured" not in str(sheet["A"])
    configured = plan_from_dict(digits(defense={"sanitize": {"method": "threshold"}}))
    sheet = seed_metrics({"accuracy": 0.9}, configured.resolved)
    assert "is configured" in str(sheet["DQ_filtered"])


def test_filter_record_names_both_dq_readings_side_by_side():
    import numpy as np

    from fedsec.metrics.filtering import filter_quality

    # 8 points, 2 poisoned; the filter drops 3: one poisoned, two clean -> 5 kept, 1 poisoned remaining
    keep = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    poisoned = np.array([0, 0, 0, 0, 1, 1, 0, 0], bool)
    record = filter_quality(keep, poisoned).as_record()
    assert record["dq_filtered_eq2"] == 1 - 5 / 8  # eq. 2: 1 - N_after / N_before
    assert record["dq_filtered_table1"] == 1 - 1 / 8 == record["dq_filtered"]  # Table 1: 1 - remaining poisoned / N
    assert "N_after / N_before" in record["dq_filtered_eq2_formula"]
    assert record["dq_filtered_table1_formula"].startswith("1 - poisoned points remaining")
