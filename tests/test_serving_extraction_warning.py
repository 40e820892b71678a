"""The extraction warning (Kesarwani et al. 2018): the proxy kernel on cases with known answers, the monitor's
cadence and bad settings, and over real HTTP: a Knockoff-style stream of natural images, which PRADA lets through,
is blocked once a proxy fitted to its answers agrees with the model on 92.5% of the server's validation inputs, while
an honest user with a few hundred queries is not."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from test_serving_support import write_digits_run

from fedsec.data import load_digits
from fedsec.extraction import QueryRefused, RemoteModel
from fedsec.serving import AccessPolicy, LocalServer, PolicyError, QueryLog, create_app, load_final_model, make_key
from fedsec.serving.app import build_monitor
from fedsec.serving.extraction_warning import ExtractionWarningMonitor, proxy_agreement
from fedsec.serving.monitor import PradaMonitor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_proxy_learns_a_linear_rule_exactly_and_a_constant_answer():
    gen = torch.Generator().manual_seed(0)
    x, val = torch.randn(300, 5, generator=gen), torch.randn(200, 5, generator=gen)
    w = torch.randn(5, 3, generator=gen)
    assert proxy_agreement(x.numpy(), (x @ w).argmax(1).numpy(), val.numpy(), (val @ w).argmax(1).numpy(),
                           num_classes=3) >= 0.93  # 0.945: the L2 penalty keeps it off the exact rule
    # every answer was class 2: the proxy says 2 everywhere, so it agrees where the model says 2
    served = np.array([2] * 50 + [0] * 150)
    assert proxy_agreement(x.numpy(), np.full(300, 2), val.numpy(), served, num_classes=3) == pytest.approx(0.25)


def test_monitor_scores_from_min_queries_every_check_every_and_keeps_max_stored():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4, 2, generator=gen)
    val = torch.randn(100, 4, generator=gen)
    mon = ExtractionWarningMonitor(val, (val @ w).argmax(1), threshold=1.0, min_queries=30, check_every=20,
                                   max_stored=40)
    scores = []
    for _ in range(6):
        x = torch.randn(10, 4, generator=gen)
        scores.append(mon.observe("c", x, (x @ w).argmax(1)).score)
    assert scores[:2] == [None, None] and scores[2] is not None  # first fit at 30 inputs
    assert scores[3] == scores[2] and scores[5] == scores[4]  # no refit between checks
    state = mon._clients["c"]
    assert state.next_check == 70  # fits at 30 and 50
    assert state.queries == 60 and state.stored == 40  # whole old batches dropped beyond max_stored


def test_flag_is_sticky_and_reported_once():
    val = torch.eye(2)
    mon = ExtractionWarningMonitor(val, torch.tensor([0, 1]), threshold=0.5, min_queries=2, check_every=1)
    first = mon.observe("c", torch.eye(2), torch.tensor([0, 1]))
    assert first.flagged and first.newly_flagged and first.score == 1.0
    again = mon.observe("c", torch.eye(2), torch.tensor([1, 0]))  # whatever it learns now, it stays flagged
    assert again.flagged and not again.newly_flagged and mon.is_flagged("c") and not mon.is_flagged("other")


@pytest.mark.parametrize(("kwargs", "text"), [
    ({"threshold": 0.0}, "monitor.threshold=0.0"),
    ({"min_queries": 10, "max_stored": 5}, "max_stored=5"),
    ({"check_every": 0}, "check_every=0"),
])
def test_bad_settings_name_the_key(kwargs, text):
    with pytest.raises(ValueError, match=text):
        ExtractionWarningMonitor(torch.zeros(3, 2), torch.zeros(3), **kwargs)


def test_policy_rejects_unknown_kind_and_unusable_dataset(tmp_path):
    with pytest.raises(PolicyError, match="monitor.kind"):
        AccessPolicy.from_dict({"monitor": {"mode": "log", "kind": "oracle"}})
    model = load_final_model(write_digits_run(tmp_path / "run", epochs=1))
    model.dataset = "cifar-10"
    policy = AccessPolicy.from_dict({"monitor": {"mode": "log", "kind": "extraction_warning"}})
    with pytest.raises(PolicyError, match="no validation inputs for dataset 'cifar-10'"):
        build_monitor(model, policy)


def test_knockoff_stream_blocked_by_the_warning_not_by_prada_honest_user_not_flagged(tmp_path):
    model = load_final_model(write_digits_run(tmp_path / "run"))
    keys, entries = {}, []
    for key_id in ("honest", "attacker"):
        keys[key_id], hashed = make_key(key_id)
        entries.append({"id": key_id, "role": "app", "hash": hashed})
    policy = AccessPolicy.from_dict({
        "roles": {"app": {"permissions": ["predict"], "output": "label"}}, "keys": entries,
        "monitor": {"mode": "block", "kind": "extraction_warning", "threshold": 0.925, "min_queries": 200,
                    "check_every": 100}})
    ds = load_digits()
    qlog = QueryLog(tmp_path / "queries.jsonl")
    app = create_app(model, policy, query_log=qlog)
    monitor = app.state.fedsec.monitor
    assert isinstance(monitor, ExtractionWarningMonitor) and len(monitor.validation) == len(ds.x_test)
    order = np.random.default_rng(0).permutation(len(ds.x_train))  # natural images, never repeated
    stream, honest_inputs = ds.x_train[order[:1100]], ds.x_train[order[1100:1350]]
    with LocalServer(app) as url:
        honest = RemoteModel(url, key=keys["honest"], batch_size=50)
        honest.query(honest_inputs)
        attacker = RemoteModel(url, key=keys["attacker"], batch_size=50)
        with pytest.raises(QueryRefused, match="blocked_by_monitor"):
            attacker.query(stream)
        r = httpx.post(url + "/predict", json={"inputs": ds.x_test[:1].tolist()},
                       headers={"X-API-Key": keys["attacker"]})
        assert r.status_code == 403 and "extraction warning" in r.json()["detail"]
    assert not monitor.is_flagged("honest") and monitor.is_flagged("attacker")
    honest_scores = [e["monitor_score"] for e in qlog.entries if e["client"] == "honest"]
    assert honest_scores[2] is None and honest_scores[-1] < 0.925  # scored from 200 inputs on (250 sent)
    answered = attacker.stats.queries_spent
    assert 200 <= answered < len(stream)  # stopped early, after the first fit
    blocked = [e for e in qlog.entries if e["client"] == "attacker" and e["decision"] == "blocked_by_monitor"]
    assert blocked and blocked[0]["status"] == 403
    # PRADA on the very same answered stream: natural images give normal distances, nothing is flagged
    prada = PradaMonitor(delta=0.9, min_queries=100)
    labels = model.probabilities(torch.from_numpy(stream[:answered])).argmax(1)
    verdict = prada.observe("attacker", torch.from_numpy(stream[:answered]), labels)
    assert not verdict.flagged and verdict.score > 0.9
