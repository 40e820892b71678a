"""PRADA: the kernel on a hand-computed example, and honest vs Jacobian-augmentation streams over real HTTP."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from test_serving_support import write_digits_run

from fedsec.data import load_digits
from fedsec.extraction import QueryRefused, RemoteModel, jacobian_augment
from fedsec.extraction.surrogate import train_surrogate
from fedsec.serving import AccessPolicy, LocalServer, PradaMonitor, QueryLog, create_app, load_final_model, make_key
from fedsec.serving.monitor import prada_min_distances

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_min_distances_by_class_in_order():
    # G_0 = {(0,0)}, G_1 = {(10,0)}, T_1 = 2. Batch in order:
    # (3,4) c0: d = 5 > T_0 = 0 -> admitted, DG_0 = {5}, T_0 = 5 - 0 = 5;
    # (10,1) c1: d = 1 < T_1 = 2 -> not admitted; (3,5) c0: d = min(sqrt(34), 1) = 1 < 5 -> not admitted;
    # (0,0) c2: first of its class -> no distance, admitted.
    stored = {0: torch.tensor([[0.0, 0.0]]), 1: torch.tensor([[10.0, 0.0]])}
    d, admitted, thresholds, stats = prada_min_distances(
        stored, torch.tensor([[3.0, 4.0], [10.0, 1.0], [3.0, 5.0], [0.0, 0.0]]), torch.tensor([0, 1, 0, 2]),
        {1: 2.0}, {},
    )
    assert d[:3] == pytest.approx([5.0, 1.0, 1.0]) and d[3] is None
    assert admitted == [True, False, False, True]
    assert thresholds == {0: 5.0, 1: 2.0} and stats[0] == (1, 5.0, 25.0)


def test_batched_equals_one_by_one():
    gen = torch.Generator().manual_seed(0)
    x, c = torch.rand(150, 5, generator=gen), torch.randint(0, 3, (150,), generator=gen)
    batched, single = PradaMonitor(min_queries=20), PradaMonitor(min_queries=20)
    v1 = [batched.observe("a", x[i : i + 50], c[i : i + 50]) for i in range(0, 150, 50)][-1]
    v2 = [single.observe("a", x[i : i + 1], c[i : i + 1]) for i in range(150)][-1]
    assert v1.queries == v2.queries == 150 and v1.score == pytest.approx(v2.score, rel=1e-12)
    assert batched._clients["a"].distances == pytest.approx(single._clients["a"].distances, rel=1e-6)


def test_monitor_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"monitor.delta=1.5"):
        PradaMonitor(delta=1.5)


def test_repeated_query_stream_is_flagged():
    mon = PradaMonitor(min_queries=10)
    x = torch.ones(30, 4)
    verdict = mon.observe("c", x, torch.zeros(30, dtype=torch.long))
    assert verdict.flagged and verdict.score == 0.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prada")
    model = load_final_model(write_digits_run(tmp / "run"))
    keys, entries = {}, []
    for key_id in ("honest", "attacker"):
        keys[key_id], hashed = make_key(key_id)
        entries.append({"id": key_id, "role": "app", "hash": hashed})
    roles = {"app": {"permissions": ["predict"], "output": "label"}}
    ds = load_digits()
    return {"model": model, "keys": keys, "entries": entries, "roles": roles, "ds": ds, "tmp": tmp}


def _jacobian_stream(remote: RemoteModel, seeds: np.ndarray, rounds: int) -> None:
    """Papernot et al.'s augmentation loop against the endpoint (label answers), until refused or done."""
    xs, ys = seeds, remote.query(seeds).labels
    for _ in range(rounds):
        sub = train_surrogate(xs, torch.from_numpy(ys), model_name="cnn", num_classes=10, epochs=5)
        new = jacobian_augment(sub, torch.from_numpy(xs), torch.from_numpy(ys)).numpy()
        ys = np.concatenate([ys, remote.query(new).labels])
        xs = np.concatenate([xs, new])


@pytest.mark.parametrize("mode", ["log", "block"])
def test_prada_flags_jacobian_stream_not_honest_stream(setup, mode):
    policy = AccessPolicy.from_dict({"roles": setup["roles"], "keys": setup["entries"],
                                     "monitor": {"mode": mode, "delta": 0.9, "min_queries": 100}})
    qlog = QueryLog(setup["tmp"] / f"{mode}.jsonl")
    monitor = PradaMonitor(delta=0.9, min_queries=100)
    x_test = setup["ds"].x_test
    with LocalServer(create_app(setup["model"], policy, monitor=monitor, query_log=qlog)) as url:
        honest = RemoteModel(url, key=setup["keys"]["honest"], batch_size=20)
        honest.query(x_test[np.random.default_rng(0).permutation(len(x_test))[:400]])  # i.i.d., 400 queries
        attacker = RemoteModel(url, key=setup["keys"]["attacker"], batch_size=20)
        seeds = setup["ds"].x_train[:20]
        if mode == "block":
            with pytest.raises(QueryRefused, match="blocked_by_monitor"):
                _jacobian_stream(attacker, seeds, rounds=4)
            r = httpx.post(url + "/predict", json={"inputs": x_test[:1].tolist()},
                           headers={"X-API-Key": setup["keys"]["attacker"]})
            assert r.status_code == 403 and r.json()["decision"] == "blocked_by_monitor"
        else:
            _jacobian_stream(attacker, seeds, rounds=3)
    assert not monitor.is_flagged("honest") and monitor.is_flagged("attacker")
    honest_entries = [e for e in qlog.entries if e["client"] == "honest"]
    assert len(honest_entries) == 20 and not any(e["flagged"] for e in honest_entries)
    assert honest_entries[-1]["monitor_score"] > 0.9
    attacker_entries = [e for e in qlog.entries if e["client"] == "attacker"]
    flagged = [e for e in attacker_entries if e["flagged"]]
    assert flagged and flagged[0]["monitor_score"] < 0.9
    if mode == "block":
        assert attacker.stats.stopped and attacker.stats.queries_spent < 20 + 20 + 40 + 80 + 160
        assert [e["status"] for e in attacker_entries if e["decision"] == "blocked_by_monitor"][:1] == [403]
    else:
        assert all(e["status"] == 200 for e in attacker_entries) and attacker.stats.queries_spent == 160
