"""A hardened model server (issue 29): a real `fedsec serve` process on a free loopback port, attacked over httpx and
raw sockets. Auth and size checks before the body is read, 422 for inputs outside the model's domain, slow
connections closed within the configured timeouts, every request in the query log, API docs closed under
require_key. Timeouts here are 1 s; every wait is bounded."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_serving_support import write_digits_run

from fedsec.data import load_digits
from fedsec.serving import (
    AccessPolicy,
    LocalServer,
    PolicyError,
    QueryLog,
    create_app,
    free_port,
    load_final_model,
    make_key,
    read_query_log,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TIMEOUT = 1.0  # header_timeout and body_timeout of the served policy
SLACK = 2.0  # scheduling slack on a loaded 2-core machine
ROLE = {"permissions": ["predict", "predict_probabilities"], "output": "probabilities"}
CLI = "import typer; from fedsec.serving.cli import register; app = typer.Typer(); register(app); app()"


def _policy_toml(key_hash: str, extra: str = "") -> str:
    return f"""require_key = true
max_batch_size = 16
[roles.analyst]
permissions = ["predict", "predict_probabilities"]
output = "probabilities"
[[keys]]
id = "alice"
role = "analyst"
hash = "{key_hash}"
[limits]
header_timeout = {TIMEOUT}
body_timeout = {TIMEOUT}
{extra}"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_digits_run(tmp_path_factory.mktemp("hardening") / "run", epochs=2)


@pytest.fixture(scope="module")
def server(run_dir, tmp_path_factory):
    """`fedsec serve RUN_DIR --access ACCESS.toml` in its own process (its memory is measured on its own)."""
    tmp = tmp_path_factory.mktemp("served")
    key, hashed = make_key("alice")
    (tmp / "access.toml").write_text(_policy_toml(hashed))
    port, log_path = free_port(), tmp / "queries.jsonl"
    out = open(tmp / "server.out", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "serve", str(run_dir), "--port", str(port), "--access", str(tmp / "access.toml"),
         "--log", str(log_path)], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (tmp / "server.out").read_text()
            assert time.monotonic() < deadline, "server did not answer /health within 90 s"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield {"url": url, "port": port, "key": key, "log": log_path, "pid": proc.pid, "x": load_digits().x_test}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        out.close()


# ---------------------------------------------------------------------------------------------------------- helpers
def _peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(TIMEOUT + SLACK + 2)
    return s


def _until_closed(s: socket.socket, *, limit: float = TIMEOUT + SLACK + 2) -> tuple[float, bytes]:
    """Read until the server closes the connection (or ``limit`` s pass: an AssertionError); (seconds, bytes)."""
    start, data = time.monotonic(), b""
    s.settimeout(0.2)
    while time.monotonic() - start < limit:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    else:
        raise AssertionError(f"connection still open after {limit} s (got {data[:200]!r})")
    return time.monotonic() - start, data


def _one_response(s: socket.socket) -> tuple[int, dict]:
    """Read one HTTP response with a Content-Length from ``s``; (status, JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length"))
    while len(body) < length:
        body += s.recv(65536)
    return int(head.split()[1]), json.loads(body[:length])


def _status_and_body(raw: bytes) -> tuple[int, dict]:
    head, body = raw.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def _predict(server, content: bytes, *, key: bool = True) -> httpx.Response:
    headers = {"content-type": "application/json", **({"X-API-Key": server["key"]} if key else {})}
    return httpx.post(server["url"] + "/predict", content=content, headers=headers, timeout=30)


def _log(server) -> list[dict]:
    return read_query_log(server["log"])


def _row(values: str = "0.5", n: int = 64) -> str:
    return "[" + ", ".join([values] + ["0.5"] * (n - 1)) + "]"


def _body(*rows: str, extra: str = "") -> str:
    return '{"inputs": [' + ", ".join(rows) + "]" + extra + "}"


# ---------------------------------------------------------------------------- refused before the body is read
@pytest.mark.parametrize(("key", "status", "decision"), [
    ("", 401, "no_key"), ("fsk.alice.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", 401, "wrong_key"),
    ("valid", 413, "body_too_large"),
])
def test_refused_before_any_body_byte_is_sent(server, key, status, decision):
    """Only the headers, announcing 50 MB: the answer comes at once and the connection is closed."""
    key = server["key"] if key == "valid" else key
    s = _connect(server["port"])
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {50 << 20}\r\n"
    s.sendall((head + (f"X-API-Key: {key}\r\n" if key else "") + "\r\n").encode())
    seconds, raw = _until_closed(s, limit=5)
    s.close()
    got, body = _status_and_body(raw)
    assert (got, body["decision"]) == (status, decision) and seconds < TIMEOUT  # not a body timeout: refused at once
    assert b"connection: close" in raw.lower()


def test_50mb_body_without_key_is_refused_quickly_without_memory(server):
    """The issue measured 0.77 s and +230 MB per request (the body was parsed before the key was checked)."""
    chunk = b"1" * (1 << 20)
    before = _peak_rss_kb(server["pid"])
    results = []
    for headers in ({}, {"X-API-Key": server["key"]}):  # 401 without a key; 413 for a valid key (chunked, streamed)
        start = time.monotonic()
        length = {} if headers else {"content-length": str(50 << 20)}
        r = httpx.post(server["url"] + "/predict", content=(chunk for _ in range(50)), timeout=30,
                       headers={"content-type": "application/json", **headers, **length})
        results.append((r.status_code, r.json()["decision"], time.monotonic() - start))
    grown_mb = (_peak_rss_kb(server["pid"]) - before) / 1024
    assert [(s, d) for s, d, _ in results] == [(401, "no_key"), (413, "body_too_large")]
    assert all(t < 3.0 for _, _, t in results), results
    assert grown_mb < 10, f"server's peak memory grew by {grown_mb:.1f} MB for a 50 MB body"


# ------------------------------------------------------------------------------------------ inputs outside the domain
BAD_INPUTS = {
    "nan literal": (_body(_row("NaN")), 422, "NaN is not a finite number"),
    "infinity literal": (_body(_row("Infinity")), 422, "Infinity is not a finite number"),
    "-infinity literal": (_body(_row("-Infinity")), 422, "-Infinity is not a finite number"),
    "3e38 (finite in float32)": (_body(_row("3e38")), 422, "values must lie in [0, 1]"),
    "1e39 (beyond float32)": (_body(_row("1e39")), 422, "NaN or infinite"),
    "below range": (_body(_row("-0.5")), 422, "got min -0.5"),
    "boolean": (_body(_row("true")), 422, "JSON booleans are not numbers"),
    "null": (_body(_row("null")), 422, "null is not a number"),
    "duplicate inputs key": (_body(_row(), extra=', "inputs": [' + _row() + "]"), 422, "duplicate key 'inputs'"),
    "extra key": (_body(_row(), extra=', "x": 1'), 422, 'the single key "inputs"'),
    "wrong shape": (_body(_row(n=63)), 422, "shape [1, 8, 8]"),
    "ragged": (_body(_row(), "[0.5]"), 422, "rectangular array of numbers"),
    "not json": ("{inputs: [1]", 422, "not valid JSON"),
    "deep nesting": ('{"inputs": ' + "[" * 5000 + "]" * 5000 + "}", 422, "more nested arrays"),
    "17 inputs (max_batch_size 16)": (_body(*[_row()] * 17), 413, "max_batch_size=16"),
    "too many values, counted before parsing": (_body(_row(n=2000)), 413, "more than max_batch_size"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_inputs_outside_the_domain_get_a_reason_and_a_log_line(server, case):
    body, status, reason = BAD_INPUTS[case]
    r = _predict(server, body.encode())
    assert r.status_code == status and reason in r.json()["detail"], r.text
    entry = [e for e in _log(server) if e["reason"] == r.json()["detail"]][-1]
    assert (entry["status"], entry["key_id"], entry["path"]) == (status, "alice", "/predict")


def test_valid_batch_still_answered_and_bad_ones_never_500(server):
    r = _predict(server, json.dumps({"inputs": server["x"][:16].tolist()}).encode())
    assert r.status_code == 200 and len(r.json()["labels"]) == 16
    assert np.isfinite(r.json()["probabilities"]).all()
    assert not [e for e in _log(server) if e["status"] >= 500]


def test_non_finite_outputs_refused_when_no_range_is_set(run_dir):
    """input_range = "none": 3e38 is finite in float32 but overflows the model; 422, not NaN probabilities."""
    key, hashed = make_key("bob")
    policy = AccessPolicy.from_dict({"roles": {"analyst": ROLE}, "keys": [{"id": "bob", "role": "analyst",
                                     "hash": hashed}], "limits": {"input_range": "none"}})
    qlog = QueryLog(None)
    with LocalServer(create_app(load_final_model(run_dir), policy, query_log=qlog)) as url:
        r = httpx.post(url + "/predict", content=_body(_row("3e38")).encode(),
                       headers={"X-API-Key": key}, timeout=30)
        ok = httpx.post(url + "/predict", content=_body(_row("7.5")).encode(),
                        headers={"X-API-Key": key}, timeout=30)
    assert r.status_code == 422 and "output is not finite" in r.json()["detail"]
    assert ok.status_code == 200  # outside [0, 1], but no range is configured
    assert qlog.entries[-2]["status"] == 422 and qlog.entries[-2]["reason"] == r.json()["detail"]


# ------------------------------------------------------------------------------------------------ slow connections
def test_slow_headers_closed_within_the_header_timeout(server):
    partial = _connect(server["port"])
    partial.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-")  # and nothing more
    seconds, raw = _until_closed(partial)
    partial.close()
    status, body = _status_and_body(raw)
    assert (status, body["decision"]) == (408, "header_timeout") and TIMEOUT * 0.9 <= seconds <= TIMEOUT + SLACK
    assert any(e["decision"] == "header_timeout" and e["status"] == 408 for e in _log(server))

    idle = _connect(server["port"])  # sends nothing at all
    seconds, _ = _until_closed(idle)
    idle.close()
    assert TIMEOUT * 0.9 <= seconds <= TIMEOUT + SLACK

    trickle = _connect(server["port"])  # a header line every 0.2 s does not extend the deadline
    start, closed = time.monotonic(), False
    trickle.sendall(b"GET /health HTTP/1.1\r\n")
    for i in range(int((TIMEOUT + SLACK) / 0.2)):
        try:
            trickle.sendall(b"X-%d: y\r\n" % i)
        except OSError:
            closed = True
            break
        time.sleep(0.2)
    trickle.close()
    assert closed and time.monotonic() - start <= TIMEOUT + SLACK


def test_slow_next_request_on_a_kept_alive_connection_is_closed(server):
    s = _connect(server["port"])
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert _one_response(s)[0] == 200
    s.sendall(b"GET /health HTTP/1.1\r\nHo")
    seconds, raw = _until_closed(s)
    s.close()
    assert _status_and_body(raw)[0] == 408 and seconds <= TIMEOUT + SLACK


@pytest.mark.parametrize("chunked", [False, True])
def test_slow_body_closed_within_the_body_timeout(server, chunked):
    s = _connect(server["port"])
    head = f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {server['key']}\r\n"
    if chunked:
        s.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode() + b"a\r\n{\"inputs\":\r\n")
    else:
        s.sendall((head + "Content-Length: 2000\r\n\r\n").encode() + b'{"inputs": [[' + b"0.5, " * 100)
    seconds, raw = _until_closed(s)
    s.close()
    status, body = _status_and_body(raw)
    assert (status, body["decision"]) == (408, "body_timeout") and TIMEOUT * 0.9 <= seconds <= TIMEOUT + SLACK
    assert [e for e in _log(server) if e["decision"] == "body_timeout"][-1]["key_id"] == "alice"


# ------------------------------------------------------------------------------------------- every request logged
def test_every_request_is_in_the_query_log_once(server):
    tag = uuid.uuid4().hex[:8]
    before = len(_log(server))
    x = json.dumps({"inputs": server["x"][:2].tolist()}).encode()
    with httpx.Client(base_url=server["url"], timeout=30) as c:
        sent = [
            (c.get(f"/nothing-{tag}"), 404, "not_found"),
            (c.get("/predict"), 405, "method_not_allowed"),
            (c.delete("/health"), 405, "method_not_allowed"),
            (c.post("/predict", content=x), 401, "no_key"),
            (c.post("/predict", content=b"x" * 40_000, headers={"X-API-Key": server["key"]}), 413, "body_too_large"),
            (c.post("/predict", content=b'{"inputs": [[true]]}', headers={"X-API-Key": server["key"]}), 422,
             "bad_input"),
            (c.post("/predict", content=x, headers={"X-API-Key": server["key"]}), 200, "allowed"),
            (c.get("/health"), 200, "ok"),
            (c.get("/docs"), 404, "not_found"),
        ]
    s = _connect(server["port"])
    s.sendall(b"GET /health HTTP/1.1\r\n")
    _until_closed(s)
    s.close()
    entries = _log(server)[before:]
    assert len(entries) == len(sent) + 1, [(e["path"], e["status"]) for e in entries]
    for (r, status, decision), e in zip(sent, entries, strict=False):
        assert r.status_code == status and (e["status"], e["decision"]) == (status, decision), (r.request.url, e)
        assert e["path"] == r.request.url.path and e["method"] == r.request.method and e["host"] == "127.0.0.1"
        if status >= 400:
            assert e["reason"] and e["reason"] == r.json()["detail"]
    assert (entries[-1]["status"], entries[-1]["decision"], entries[-1]["path"]) == (408, "header_timeout", "-")
    assert f"/nothing-{tag}" in entries[0]["reason"] and entries[1]["reason"].endswith("allowed: POST")
    assert sent[1][0].headers["allow"] == "POST"


# ------------------------------------------------------------------------------------------------------------- docs
def test_docs_closed_under_require_key(server):
    for path in ("/docs", "/redoc", "/openapi.json"):
        for headers in ({}, {"X-API-Key": server["key"]}):
            r = httpx.get(server["url"] + path, headers=headers, timeout=30)
            assert r.status_code == 404 and r.json()["decision"] == "not_found", (path, r.text)


@pytest.mark.parametrize(("require_key", "docs", "expected"), [
    (False, "auto", {"/docs": 200, "/openapi.json": 200}),
    (True, "open", {"/docs": 200, "/openapi.json": 200}),
    (True, "key", {"/docs": 404, "/openapi.json": 401, "/openapi.json+key": 200}),
    (False, "off", {"/docs": 404, "/redoc": 404, "/openapi.json": 404}),
])
def test_docs_setting(run_dir, require_key, docs, expected):
    key, hashed = make_key("carol")
    policy = AccessPolicy.from_dict({"require_key": require_key, "anonymous_role": "analyst", "docs": docs,
                                     "roles": {"analyst": ROLE},
                                     "keys": [{"id": "carol", "role": "analyst", "hash": hashed}]})
    with LocalServer(create_app(load_final_model(run_dir), policy)) as url:
        for path, status in expected.items():
            headers = {"X-API-Key": key} if path.endswith("+key") else {}
            r = httpx.get(url + path.removesuffix("+key"), headers=headers, timeout=30)
            assert r.status_code == status, (path, r.text[:200])
            if path.startswith("/openapi") and status == 200:
                body = r.json()["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
                assert "inputs" in body["schema"]["properties"]


# ---------------------------------------------------------------------- protocol caps, on both uvicorn protocols
@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_protocol_caps_and_deadlines(run_dir, http):
    pytest.importorskip(http)
    policy = AccessPolicy.from_dict({"require_key": False, "anonymous_role": "analyst", "roles": {"analyst": ROLE},
                                     "limits": {"header_timeout": TIMEOUT, "body_timeout": TIMEOUT,
                                                "max_header_bytes": 1024, "max_connections": 3}})
    qlog = QueryLog(None)
    with LocalServer(create_app(load_final_model(run_dir), policy, query_log=qlog), http=http) as url:
        port = int(url.rsplit(":", 1)[1])
        big = _connect(port)
        big.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000)
        _, raw = _until_closed(big)
        big.close()
        assert _status_and_body(raw) == (431, {"detail": "request line and headers exceed limits.max_header_bytes=1024",
                                               "decision": "headers_too_large"})
        time.sleep(0.2)  # the server has seen the earlier connections go
        held = [_connect(port) for _ in range(3)]
        time.sleep(0.2)
        extra = _connect(port)
        _, raw = _until_closed(extra, limit=TIMEOUT / 2)  # refused at once, not at the deadline
        extra.close()
        assert _status_and_body(raw)[:1] == (503,) and _status_and_body(raw)[1]["decision"] == "too_many_connections"
        closed = [_until_closed(s)[0] for s in held]  # the idle ones go at the header deadline
        assert max(closed) <= TIMEOUT + SLACK
        for s in held:
            s.close()
        slow = _connect(port)
        slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        seconds, raw = _until_closed(slow)
        slow.close()
        assert _status_and_body(raw)[0] == 408 and seconds <= TIMEOUT + SLACK
        assert httpx.get(url + "/health", timeout=10).status_code == 200
    decisions = {e["decision"] for e in qlog.entries}
    assert {"headers_too_large", "too_many_connections", "body_timeout"} <= decisions


# ---------------------------------------------------------------------------------------------------- policy checks
@pytest.mark.parametrize(("limits", "message"), [
    ({"header_timeout": 0}, "limits.header_timeout"),
    ({"body_timeout": 1e6}, "limits.body_timeout"),
    ({"max_body_bytes": 10}, "max_body_bytes=10: use 0"),
    ({"input_range": [1.0, 0.0]}, "input_range=[1.0, 0.0]"),
    ({"max_connections": 0}, "limits.max_connections"),
    ({"max_body": 5}, "limits.max_body"),
])
def test_limits_are_validated(limits, message):
    with pytest.raises(PolicyError, match=re.escape(message)):
        AccessPolicy.from_dict({"roles": {"analyst": ROLE}, "require_key": True, "limits": limits})


def test_derived_limits_follow_the_model(run_dir):
    model = load_final_model(run_dir)
    policy = AccessPolicy.from_dict({"max_batch_size": 16, "roles": {"analyst": ROLE}})
    limits = policy.limits.resolve(model, max_batch_size=16)
    assert limits.max_body_bytes == 32 * 16 * 64 + 4096 and limits.input_range == (0.0, 1.0)
    custom = AccessPolicy.from_dict({"roles": {"analyst": ROLE}, "limits": {"input_range": [-1, 2],
                                                                             "max_body_bytes": 2048}})
    resolved = custom.limits.resolve(model, max_batch_size=16)
    assert (resolved.input_range, resolved.max_body_bytes) == ((-1.0, 2.0), 2048)
