"""The simulated devices (``[clients]``, ``train.deadline``): dropouts, an availability trace, mid-round failures and
stragglers against a deadline, run through fedsec's real round loop, strategies and ClientApp (in process)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import pytest

from fedsec.config import ConfigError
from fedsec.federation import Federation, dispatch, draw_speeds
from fedsec.plan import plan_from_dict
from fedsec.server.checkpoint import load_checkpoint
from tests.in_process import run_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {"name": "federation", "seed": 3, "rounds": 3,
        "data": {"dataset": "digits", "partition": "iid", "num_clients": 6}, "model": {"name": "logreg"},
        "train": {"clients_per_round": 6, "local_epochs": 1, "batch_size": 32, "lr": 0.1}}


def config(*, train: dict | None = None, **sections) -> dict:
    raw = {**BASE, **sections}
    raw["train"] = {**BASE["train"], **(train or {})}
    return raw


def clients_csv(out) -> pd.DataFrame:
    return pd.read_csv(out / "clients.csv")


def test_dropout_marks_the_dropped_clients_and_the_rule_sees_only_the_others(tmp_path, server_identity):
    rows = run_in_process(config(clients={"dropout": 0.3}), tmp_path / "drop")
    table = clients_csv(tmp_path / "drop")
    dropped = table[table["status"].str.startswith("dropped")]
    assert len(dropped) > 0 and (dropped["accepted"] == 0).all() and dropped["update_norm"].isna().all()
    for r in (1, 2, 3):  # the seeded draw, per (round, client), decides exactly who is unreachable
        draws = np.random.default_rng([3, 0xD50F, r]).random(6)
        expected = sorted(int(c) for c in np.flatnonzero(draws < 0.3))
        assert sorted(dropped.loc[dropped["round"] == r, "client"]) == expected
        this = table[table["round"] == r]
        assert len(this) == 6  # one row per sampled client
        took_part = this[this["status"].isin(["accepted", "rejected"])]
        assert sorted(took_part["client"]) == sorted(set(range(6)) - set(expected))
        row = rows.set_index("round").loc[r]
        assert row["clients_dropped"] == len(expected) and row["clients_accepted"] == 6 - len(expected)
    # the same clients marked unavailable in a trace give the very same rounds
    trace = tmp_path / "trace.csv"
    trace.write_text("client,round,available\n" + "".join(
        f"{c},{r},0\n" for r, c in zip(dropped["round"], dropped["client"], strict=True)) + "0,1,1\n")
    followed = run_in_process(config(clients={"availability": str(trace)}), tmp_path / "trace")
    pd.testing.assert_frame_equal(followed, rows, check_exact=True)
    assert clients_csv(tmp_path / "trace")["status"].str.startswith("dropped: unavailable in the trace").sum() == \
        len(dropped)


def test_a_rule_whose_f_no_longer_fits_the_answering_cohort_skips_the_round(tmp_path, caplog, server_identity):
    trace = tmp_path / "trace.csv"
    trace.write_text("client,round,available\n2,2,0\n3,2,0\n4,2,0\n")  # round 2: 3 of the 6 answer
    raw = config(defense={"strategy": "krum", "num_malicious": 1}, clients={"availability": str(trace)})
    # the strategies log through Flower's logger, which other tests may have quietened or stopped propagating
    flwr_log = logging.getLogger("flwr")
    level, disabled = flwr_log.level, flwr_log.disabled
    flwr_log.addHandler(caplog.handler)
    flwr_log.setLevel(logging.WARNING)
    flwr_log.disabled = False
    try:
        with caplog.at_level(logging.WARNING):
            rows = run_in_process(raw, tmp_path / "krum").set_index("round")
    finally:
        flwr_log.removeHandler(caplog.handler)
        flwr_log.setLevel(level)
        flwr_log.disabled = disabled
    assert list(rows.loc[[1, 2, 3], "skipped"]) == [0, 1, 0]
    assert rows.loc[2, "accuracy"] == rows.loc[1, "accuracy"]  # the global model stayed
    assert any("round 2 skipped: 3 valid updates" in r.getMessage() and "needs at least 5" in r.getMessage()
               for r in caplog.records)
    table = clients_csv(tmp_path / "krum")
    round_two = table[table["round"] == 2].set_index("client")["status"]
    assert set(round_two.loc[[2, 3, 4]]) == {"dropped: unavailable in the trace"}
    assert set(round_two.loc[[0, 1, 5]]) == {"skipped: too few valid updates"}


def test_a_deadline_drops_exactly_the_slow_clients_and_the_round_lasts_the_deadline(tmp_path, server_identity):
    speeds = tmp_path / "speeds.csv"
    speeds.write_text("client,speed\n1,1.0\n4,2.0\n")  # every other client at the default 1000 examples/s
    raw = config(clients={"speeds": str(speeds)}, train={"deadline": 5.0})
    rows = run_in_process(raw, tmp_path / "deadline").set_index("round")
    table = clients_csv(tmp_path / "deadline")
    late = table[table["status"].str.startswith("late")]
    assert sorted(set(late["client"])) == [1, 4] and len(late) == 6  # both, every round
    assert late["status"].str.contains("train.deadline=5 s").all()
    assert (rows.loc[[1, 2, 3], "clients_late"] == 2).all() and (rows.loc[[1, 2, 3], "sim_time"] == 5.0).all()
    assert rows.loc[3, "sim_clock"] == 15.0
    # without a deadline every reply is waited for: the round lasts until the slowest (client 1: ~300 examples / 1)
    waited = run_in_process(config(clients={"speeds": str(speeds)}), tmp_path / "waited").set_index("round")
    sizes = plan_sizes(config())
    assert waited.loc[1, "sim_time"] == pytest.approx(sizes[1] / 1.0)
    assert (waited.loc[[1, 2, 3], "clients_late"] == 0).all()


def plan_sizes(raw: dict) -> list[int]:
    from fedsec.data.federated import build_federated_data

    plan = plan_from_dict(raw)
    return [len(p) for p in build_federated_data(plan.data_config, plan.seed).partitions]


def test_failures_lose_replies_attackers_stay_and_a_resumed_run_gives_the_same_rows(tmp_path, server_identity):
    raw = config(rounds=4, clients={"dropout": 0.3, "failure": 0.3, "speed_sigma": 1.0},
                 attack={"kind": "sign_flip", "client_ids": [0, 5]}, defense={"strategy": "median"})
    whole = run_in_process(raw, tmp_path / "whole")
    table = clients_csv(tmp_path / "whole")
    assert table["status"].str.startswith("dropped: reply lost mid-round").sum() > 0
    assert not table[table["client"].isin([0, 5])]["status"].str.startswith(("dropped", "late")).any()
    assert (whole["sim_clock"].diff().dropna() >= 0).all()
    run_in_process(raw, tmp_path / "cut", stop_after=2)
    assert set(load_checkpoint(tmp_path / "cut")["hooks"]["federation"]) == {"clock"}
    resumed = run_in_process(raw, tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(resumed, whole, check_exact=True)
    again = run_in_process({**raw, "clients": {**raw["clients"], "attackers_drop": True}}, tmp_path / "exposed")
    assert not again.equals(whole)


def test_a_round_where_every_client_dropped_is_skipped_and_the_run_goes_on(tmp_path, server_identity):
    trace = tmp_path / "trace.csv"
    trace.write_text("client,round,available\n" + "".join(f"{c},2,0\n" for c in range(6)))
    rows = run_in_process(config(clients={"availability": str(trace)}), tmp_path / "empty").set_index("round")
    assert list(rows.loc[[1, 2, 3], "skipped"]) == [0, 1, 0] and rows.loc[2, "clients_dropped"] == 6


def test_the_ideal_federation_adds_no_hook_and_no_column(tmp_path):
    plan = plan_from_dict(config())
    assert plan.facts.federation is None and "federation" not in [h.cls.name for h in plan.hooks]


@pytest.mark.parametrize(("text", "message"), [
    ("client,round\n1,1\n", "line 1 must be the header client,round,available"),
    ("client,round,available\n6,1,0\n", "line 2: client 6 is outside 0..5"),
    ("client,round,available\n1,0,0\n", "line 2: round 0 is outside 1..3"),
    ("client,round,available\n1,1,2\n", "line 2: available 2 is outside 0..1"),
    ("client,round,available\n1,1,x\n", "line 2: available 'x' is not an integer"),
    ("client,round,available\n1,1,0\n1,1,1\n", "line 3: client 1 in round 1 is listed both"),
    ("client,round,available\n1,1\n", "line 2 has 2 fields, expected 3"),
])
def test_a_bad_trace_names_the_key_and_the_line(tmp_path, text, message):
    trace = tmp_path / "trace.csv"
    trace.write_text(text)
    with pytest.raises(ConfigError, match="clients.availability") as info:
        plan_from_dict(config(clients={"availability": str(trace)}))
    assert message in str(info.value)


@pytest.mark.parametrize(("patch", "key"), [
    ({"clients": {"dropout": 1.0}}, "clients.dropout"),
    ({"clients": {"failure": -0.1}}, "clients.failure"),
    ({"clients": {"speed": 0}}, "clients.speed"),
    ({"clients": {"speeds": "/nonexistent/speeds.csv"}}, "clients.speeds"),
    ({"clients": {"availability": "/nonexistent/trace.csv"}}, "clients.availability"),
    ({"clients": {"droput": 0.1}}, "clients.droput"),
    ({"train": {"deadline": 0}}, "train.deadline"),
])
def test_bad_federation_keys_are_refused_with_the_key(patch, key):
    raw = config(**{k: v for k, v in patch.items() if k != "train"}, train=patch.get("train"))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        plan_from_dict(raw)


def test_speeds_are_seeded_and_a_file_overrides_them():
    a = draw_speeds(7, 5, median=100.0, sigma=0.5)
    assert a == draw_speeds(7, 5, median=100.0, sigma=0.5) and len(set(a)) == 5
    assert draw_speeds(7, 5, median=100.0, sigma=0.5, given={2: 1.0})[2] == 1.0
    assert math.isclose(float(np.median(draw_speeds(0, 20001, median=100.0, sigma=1.0))), 100.0, rel_tol=0.05)
    fed = Federation(seed=0, num_clients=3, speeds=(1.0, 1.0, 1.0), deadline=2.0, protected=frozenset({0}))
    assert not fed.late(0, 10.0) and fed.late(1, 10.0) and not fed.late(1, 2.0)


def test_a_run_written_before_these_keys_existed_still_resumes():
    import tomllib

    from fedsec.results.run_directory import identity_changes

    new = tomllib.loads(plan_from_dict(config()).to_toml())
    old = {k: v for k, v in new.items() if k not in ("clients", "server")}  # an older fedsec wrote neither
    old["train"] = {k: v for k, v in new["train"].items() if k != "algorithm"}
    assert identity_changes(old, new) == set()
    # ... but not into a run that departs from the defaults it ran with
    assert identity_changes(old, tomllib.loads(plan_from_dict(config(clients={"dropout": 0.2})).to_toml())) == \
        {"clients"}
    assert identity_changes({**old, "train": {**old["train"], "lr": 0.5}}, new) == {"train.lr"}


# ---------------------------------------------------------------------------------------------- FedBuff
def fedbuff(k: int = 2, c: int = 4, rounds: int = 4, **sections) -> dict:
    server = {"aggregation": "fedbuff", "buffer_size": k, **sections.pop("server", {})}
    raw = config(rounds=rounds, train={"clients_per_round": c}, server=server, **sections)
    raw["clients"] = {"speed_sigma": 1.0, **raw.get("clients", {})}
    return raw


def test_fedbuff_aggregates_every_k_arrivals_with_their_staleness(tmp_path, server_identity):
    rows = run_in_process(fedbuff(), tmp_path / "fb").set_index("round")
    table = clients_csv(tmp_path / "fb")
    took_part = table[table["status"].isin(["accepted", "rejected"])]
    assert took_part.groupby("round").size().tolist() == [2, 2, 2, 2]  # K per server step
    assert list(rows.loc[[1, 2, 3, 4], "clients_dispatched"]) == [4, 2, 2, 2]  # C, then one per arrival
    assert (rows.loc[[1, 2, 3, 4], "in_flight"] == 2).all()
    assert (took_part["staleness"] >= 0).all() and took_part["staleness"].max() >= 1  # slow clients come in late
    assert (rows["sim_clock"].diff().dropna() >= 0).all()
    for r in (1, 2, 3, 4):
        this = took_part[took_part["round"] == r]["staleness"]
        assert rows.loc[r, "staleness_max"] == this.max()
    # the speeds decide the order: of the 4 dispatched at step 1, the 2 that finish first are aggregated at step 1
    plan = plan_from_dict(fedbuff())
    speeds, sizes = plan.facts.federation.speeds, plan_sizes(fedbuff())
    first_dispatch = dispatch(3, 1, list(range(6)), 4)
    fastest = sorted(first_dispatch, key=lambda p: (sizes[p] / speeds[p], p))[:2]
    assert sorted(took_part[took_part["round"] == 1]["client"]) == sorted(fastest)
    assert rows.loc[1, "sim_clock"] == pytest.approx(max(sizes[p] / speeds[p] for p in fastest))


def test_fedbuff_with_every_client_in_one_buffer_is_the_synchronous_run(tmp_path, server_identity):
    sync = run_in_process(config(), tmp_path / "sync")  # all 6 clients every round
    buffered = run_in_process(fedbuff(k=6, c=6, rounds=3), tmp_path / "k6")
    assert (buffered["staleness_max"].iloc[1:] == 0).all()
    pd.testing.assert_frame_equal(buffered[sync.columns], sync, check_exact=True)


def test_fedbuff_resumes_with_its_buffer_in_flight(tmp_path, server_identity):
    raw = fedbuff(rounds=4, attack={"kind": "sign_flip", "client_ids": [5]}, defense={"strategy": "median"})
    raw["server"]["buffer_size"] = 3
    whole = run_in_process(raw, tmp_path / "whole")
    run_in_process(raw, tmp_path / "cut", stop_after=2)
    state = load_checkpoint(tmp_path / "cut")
    assert len(state["hooks"]["fedbuff"]["in_flight"]) == 1
    resumed = run_in_process(raw, tmp_path / "cut", resume=True)
    pd.testing.assert_frame_equal(resumed, whole, check_exact=True)
    table = clients_csv(tmp_path / "whole")
    attacker = table[(table["client"] == 5) & table["status"].isin(["accepted", "rejected"])]
    assert (attacker["staleness"] == 0).all()  # an attacker arrives at once: the least staleness


@pytest.mark.parametrize(("patch", "message"), [
    ({"server": {"aggregation": "fedbuff"}}, "server.buffer_size: server.aggregation='fedbuff' needs it"),
    ({"server": {"buffer_size": 2}}, "server.buffer_size=2: only server.aggregation='fedbuff'"),
    ({"server": {"aggregation": "fedbuff", "buffer_size": 7}}, "server.buffer_size=7: must be <= train.clients"),
    ({"server": {"aggregation": "fedbuff", "buffer_size": 2}, "defense": {"strategy": "krum", "num_malicious": 1}},
     "server.buffer_size=2: 'krum' needs at least 5"),
    ({"server": {"aggregation": "fedbuff", "buffer_size": 2}, "encryption": {"scheme": "ckks"}},
     "encryption.scheme='ckks': not with server.aggregation='fedbuff'"),
    ({"server": {"aggregation": "fedbuff", "buffer_size": 2}, "train": {"deadline": 3.0}},
     "train.deadline=3.0: not with server.aggregation='fedbuff'"),
])
def test_fedbuff_refuses_what_it_cannot_keep(patch, message):
    raw = config(**{k: v for k, v in patch.items() if k != "train"}, train=patch.get("train"))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        plan_from_dict(raw)


def test_devices_and_fedbuff_give_the_same_rows_in_cohort_mode(tmp_path, server_identity):
    for name, raw in (("drop", config(clients={"dropout": 0.3, "failure": 0.2, "speed_sigma": 1.0},
                                      train={"deadline": 0.5})),
                      ("fedbuff", fedbuff())):
        per_client = run_in_process(raw, tmp_path / f"{name}-per-client")
        cohort = run_in_process(raw, tmp_path / f"{name}-cohort", cohort_nodes=2)
        pd.testing.assert_frame_equal(cohort, per_client, check_exact=True)
