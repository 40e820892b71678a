"""Serving: model file, access control over real HTTP, output modes, query log, fuzzed bodies."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest
import torch
from test_serving_support import ROLES as BASE_ROLES
from test_serving_support import make_keys, write_digits_run
from typer.testing import CliRunner

from fedsec.data import load_digits
from fedsec.serving import (
    AccessPolicy,
    LocalServer,
    ModelFileError,
    PolicyError,
    QueryLog,
    create_app,
    hash_key,
    load_final_model,
    make_key,
    read_query_log,
    verify_key,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROLES = {
    **BASE_ROLES,
    "coarse": {"permissions": ["predict", "predict_probabilities"], "output": "rounded", "decimals": 2},
    "viewer": {"permissions": [], "output": "label"},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    run_dir = write_digits_run(tmp / "run")
    keys, entries = make_keys({
        "analyst": {"role": "analyst"},
        "app": {"role": "app"},
        "coarse": {"role": "coarse"},
        "viewer": {"role": "viewer"},
        "expired": {"role": "analyst", "expires": datetime.now(UTC) - timedelta(hours=1)},
        "revoked": {"role": "analyst", "revoked": True},
        "quota": {"role": "analyst", "quota": 5},
        "rate": {"role": "analyst", "rate": 0.01, "burst": 2},
    })
    policy = AccessPolicy.from_dict({"max_batch_size": 16, "roles": ROLES, "keys": entries})
    log_path = tmp / "queries.jsonl"
    model = load_final_model(run_dir)
    app = create_app(model, policy, query_log=QueryLog(log_path))
    with LocalServer(app) as url:
        yield {"url": url, "keys": keys, "log": log_path, "model": model, "x": load_digits().x_test}


def post(served, body=None, *, key=None, content=None, client=httpx):
    headers = {"X-API-Key": served["keys"][key]} if key else {}
    if content is not None:
        headers["content-type"] = "application/json"
        return client.post(served["url"] + "/predict", content=content, headers=headers, timeout=30)
    return client.post(served["url"] + "/predict", json=body, headers=headers, timeout=30)


def last_log(served, decision):
    entries = [e for e in read_query_log(served["log"]) if e["decision"] == decision]
    assert entries, f"no log entry with decision {decision!r}"
    return entries[-1]


def test_model_file_roundtrip_and_errors(tmp_path, served):
    model = served["model"]
    assert (model.model_name, model.dataset, model.input_shape, model.num_classes) == ("cnn", "digits", (1, 8, 8), 10)
    with pytest.raises(ModelFileError, match="final_model.pt: no model file"):
        load_final_model(tmp_path)
    (tmp_path / "final_model.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match="final_model.pt: unreadable or corrupt"):
        load_final_model(tmp_path)


def test_keys_are_hashed_and_checked():
    key, stored = make_key("alice")
    assert key.startswith("fsk.alice.") and key not in stored and stored.startswith("sha256:")
    assert verify_key(key, stored) and not verify_key(key + "x", stored)
    assert hash_key(key) != hash_key(key)  # fresh salt each time
    with pytest.raises(PolicyError, match=r"keys\[id='bob'\].role='nope': unknown role"):
        AccessPolicy.from_dict({"roles": ROLES, "keys": [{"id": "bob", "role": "nope", "hash": stored}]})
    with pytest.raises(PolicyError, match="predict_probabilities"):
        AccessPolicy.from_dict({"roles": {"r": {"permissions": ["predict"], "output": "probabilities"}}})


@pytest.mark.parametrize(
    ("key", "status", "decision"),
    [
        (None, 401, "no_key"),
        ("wrong", 401, "wrong_key"),
        ("expired", 403, "expired"),
        ("revoked", 403, "revoked"),
        ("viewer", 403, "missing_permission"),
    ],
)
def test_refusals_have_status_and_are_logged(served, key, status, decision):
    headers = {}
    if key == "wrong":
        real = served["keys"]["analyst"]
        headers = {"X-API-Key": real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")}
    elif key:
        headers = {"X-API-Key": served["keys"][key]}
    r = httpx.post(served["url"] + "/predict", json={"inputs": served["x"][:1].tolist()}, headers=headers)
    assert r.status_code == status and r.json()["decision"] == decision
    entry = last_log(served, decision)
    assert entry["status"] == status and entry["reason"] == r.json()["detail"]
    text = served["log"].read_text()
    assert all(k not in text for k in served["keys"].values()), "a plain API key leaked into the query log"


def test_output_modes_follow_the_role(served):
    x = served["x"][:4]
    expected = served["model"].probabilities(torch.from_numpy(x)).numpy()
    full = post(served, {"inputs": x.tolist()}, key="analyst").json()
    assert full["output"] == "probabilities" and full["labels"] == expected.argmax(1).tolist()
    np.testing.assert_allclose(full["probabilities"], expected, rtol=1e-4, atol=1e-9)
    top1 = post(served, {"inputs": x.tolist()}, key="app").json()
    assert top1 == {"output": "label", "labels": expected.argmax(1).tolist()}
    coarse = post(served, {"inputs": x.reshape(4, 64).tolist()}, key="coarse").json()  # flat inputs accepted
    np.testing.assert_array_equal(coarse["probabilities"], np.round(expected, 2))
    entry = last_log(served, "allowed")
    assert (entry["key_id"], entry["role"], entry["batch_size"], entry["status"]) == ("coarse", "coarse", 4, 200)


def test_quota_counts_inputs(served):
    x = served["x"][:3].tolist()
    assert post(served, {"inputs": x}, key="quota").status_code == 200  # 3 of 5
    r = post(served, {"inputs": x}, key="quota")  # 6 > 5: refused, nothing charged
    assert r.status_code == 429 and r.json()["decision"] == "quota_exceeded" and "quota of 5" in r.json()["detail"]
    assert post(served, {"inputs": x[:2]}, key="quota").status_code == 200  # exactly 5
    assert post(served, {"inputs": x[:1]}, key="quota").status_code == 429
    assert last_log(served, "quota_exceeded")["key_id"] == "quota"


def test_rate_limit_token_bucket(served):
    x = served["x"][:1].tolist()
    codes = [post(served, {"inputs": x}, key="rate").status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # burst 2, refill 0.01/s
    assert last_log(served, "rate_limited")["key_id"] == "rate"


def test_bad_inputs_get_4xx_with_reason(served):
    cases = [
        ({"inputs": np.zeros((2, 1, 8, 7)).tolist()}, 422, "shape [1, 8, 8]"),
        ({"inputs": []}, 422, "empty batch"),
        ({"inputs": np.zeros((17, 64)).tolist()}, 413, "max_batch_size=16"),
        ({"inputs": [[["a"] * 8] * 8]}, 422, "rectangular array of numbers"),
        ({"x": 1}, 422, "body"),
    ]
    for body, status, reason in cases:
        r = post(served, body, key="analyst")
        assert r.status_code == status and reason in r.json()["detail"], (body, r.text)
    r = post(served, key="analyst", content=b'{"inputs": [[NaN, 1]]}')
    assert r.status_code == 422
    r = post(served, key="analyst", content=json.dumps({"inputs": [[1e39] * 64]}).encode())
    assert r.status_code == 422 and "NaN or infinite" in r.json()["detail"]


def _fuzz_bodies(n_random: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    valid = json.dumps({"inputs": [[0.5] * 64]})
    fixed = [b"", b"garbage", b"{", b"[]", b"null", b"1", b'"s"', b'{"inputs": null}', b'{"inputs": "x"}',
             b'{"inputs": [null]}', b'{"inputs": [[1, 2], [3]]}', b'{"inputs": [{"a": 1}]}', b'{"inputs": [true]}',
             b'{"inputs": [[' + b"1" * 500 + b"]]}", b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}",
             b'{"inputs": [[Infinity]]}', b'{"inputs": [[-Infinity, NaN]]}', b"\xff\xfe\x00", b'{"inputs": [[]]}',
             b'{"inputs": [[0.5]], "extra": 1}']
    bodies = list(fixed)
    for _ in range(n_random):
        s = list(valid)
        op = rng.randrange(4)
        if op == 0:
            s = s[: rng.randrange(len(s))]
        elif op == 1:
            for _ in range(rng.randint(1, 5)):
                s[rng.randrange(len(s))] = rng.choice('{}[],:"a-e.0 9\\')
        elif op == 2:
            i = rng.randrange(len(s))
            s = s[:i] + list(rng.choice(["[", "]]", '"x"', "-", "1e999", ",", "null"])) + s[i:]
        else:
            s = list(bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))).decode("latin-1"))
        bodies.append("".join(s).encode("latin-1"))
    return bodies


def test_fuzz_never_500_and_server_keeps_serving(served):
    bodies = _fuzz_bodies(120)
    assert len(bodies) >= 100
    with httpx.Client() as client:
        statuses = [post(served, key="analyst", content=b, client=client).status_code for b in bodies]
    assert 500 not in statuses and all(s < 500 for s in statuses)
    assert sum(400 <= s < 500 for s in statuses) >= 100
    assert httpx.get(served["url"] + "/health").json()["status"] == "ok"
    assert post(served, {"inputs": served["x"][:1].tolist()}, key="analyst").status_code == 200


def test_cli_serve_missing_model_exits_2(tmp_path):
    import typer

    from fedsec.serving.cli import register

    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["serve", str(tmp_path)])
    assert result.exit_code == 2 and "final_model.pt: no model file" in result.output
    result = CliRunner().invoke(app, ["attack", "extract", "http://127.0.0.1:9", "--method", "nope"])
    assert result.exit_code == 2 and "--method='nope'" in result.output


def test_a_local_server_leaves_the_processs_logging_handlers_open():
    """uvicorn's default logging config runs logging.config.dictConfig, which closes every handler in the process
    (the caller's, a run's log file, absl's, which then closes a stream it does not own): an in-process server must
    not."""
    import logging

    from fastapi import FastAPI

    class Recording(logging.Handler):
        closed = False

        def emit(self, record: logging.LogRecord) -> None:
            pass

        def close(self) -> None:
            self.closed = True
            super().close()

    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    handler = Recording()
    logger = logging.getLogger("fedsec.test.local_server")
    logger.addHandler(handler)
    try:
        with LocalServer(app) as url:
            assert httpx.get(url + "/health").status_code == 200
        assert not handler.closed
    finally:
        logger.removeHandler(handler)
        handler.close()
