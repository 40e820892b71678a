"""A deployment scenario: a real server for a run directory, honest users, unauthorized users and one extraction
attacker, all over HTTP; measures the source surveys' A/C and Q ("Deep Learning Under Siege", section 3.2).

- A/C = blocked unauthorized attempts / unauthorized attempts. Unauthorized attempts: requests with no key, a wrong
  key, an expired key, a revoked key, and a valid key whose role lacks ``predict``.
- Q = anomalous queries detected / queries: inputs (from honest users and the attacker) that arrived while the
  monitor had their client flagged, over all inputs those users sent. Reported with the monitor's detection rate on
  the attacker's inputs and its false-positive rate on honest users' inputs.
- extraction fidelity: the attacker surrogate's agreement with the target on held-out inputs when it stopped.

SCENARIO.toml::

    name = "prada-block"
    seed = 0
    access = "policies/top1_prada_block.toml"   # roles + monitor; keys are made per simulated user at run time
    [target]
    run_dir = ""             # a run directory with final_model.pt; "" trains a reference model (below) first
    model = "cnn"
    dataset = "digits"       # digits | fashion-mnist
    epochs = 3
    [honest]
    users = 3
    role = "analyst"
    queries = 200            # per user, drawn without replacement from the test set
    batch_size = 10
    [unauthorized]
    attempts = 4             # per kind (no key, wrong key, expired, revoked, wrong role)
    wrong_role = "viewer"
    [attacker]
    role = "analyst"
    method = "knockoff"      # knockoff | jacobian
    budget = 1000
    batch_size = 50
    epochs = 5
    seeds = 50               # jacobian only
"""

from __future__ import annotations

import json
import logging
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedsec.extraction.client import QueryRefused, RemoteModel
from fedsec.extraction.jacobian import jacobian_extract
from fedsec.extraction.knockoff import knockoff_extract
from fedsec.results.model_file import load_final_model

from .access import AccessPolicy, make_key
from .app import create_app
from .errors import PolicyError
from .local import LocalServer
from .querylog import QueryLog
from .reference import raw_dataset, train_reference_model

log = logging.getLogger(__name__)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target(_Section):
    run_dir: str = ""
    model: str = "cnn"
    dataset: Literal["digits", "fashion-mnist"] = "digits"
    epochs: int = Field(3, ge=1)
    max_train: int = Field(0, ge=0, description="train on the first N examples; 0 = all")


class Honest(_Section):
    users: int = Field(3, ge=0)
    role: str = "analyst"
    queries: int = Field(200, ge=1)
    batch_size: int = Field(10, ge=1)


class Unauthorized(_Section):
    attempts: int = Field(4, ge=0, description="requests per kind")
    wrong_role: str = "viewer"


class Attacker(_Section):
    role: str = "analyst"
    method: Literal["knockoff", "jacobian"] = "knockoff"
    budget: int = Field(1000, ge=1)
    batch_size: int = Field(50, ge=1)
    epochs: int = Field(5, ge=1)
    seeds: int = Field(50, ge=1)
    surrogate: str = "cnn"


class Scenario(_Section):
    name: str
    seed: int = 0
    access: str
    target: Target = Field(default_factory=Target)
    honest: Honest = Field(default_factory=Honest)
    unauthorized: Unauthorized = Field(default_factory=Unauthorized)
    attacker: Attacker = Field(default_factory=Attacker)


def load_scenario(path: str | Path) -> tuple[Scenario, AccessPolicy]:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
        sc = Scenario.model_validate(raw)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise PolicyError(f"{path}: cannot read scenario: {e}") from e
    except ValidationError as e:
        first = e.errors()[0]
        raise PolicyError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from e
    policy = AccessPolicy.from_toml((path.parent / sc.access).resolve())
    for role in (sc.honest.role, sc.attacker.role, sc.unauthorized.wrong_role):
        if role not in policy.roles:
            raise PolicyError(f"{path}: role {role!r} is not defined in {sc.access}; roles: {sorted(policy.roles)}")
    return sc, policy


def _with_keys(policy: AccessPolicy, sc: Scenario) -> tuple[AccessPolicy, dict[str, str]]:
    """The policy plus one key per simulated user (hashes only in the policy); returns the plain keys aside."""
    raw = policy.model_dump()
    keys: dict[str, str] = {}

    def add(key_id: str, role: str, **extra: Any) -> None:
        key, hashed = make_key(key_id)
        keys[key_id] = key
        raw["keys"].append({"id": key_id, "role": role, "hash": hashed, **extra})

    for i in range(sc.honest.users):
        add(f"honest-{i}", sc.honest.role)
    add("attacker", sc.attacker.role)
    add("expired", sc.honest.role, expires=datetime.now(UTC) - timedelta(days=1))
    add("revoked", sc.honest.role, revoked=True)
    add("wrong-role", sc.unauthorized.wrong_role)
    return AccessPolicy.from_dict(raw), keys


def _unauthorized_attempts(url: str, keys: dict[str, str], sample: list, attempts: int) -> dict[str, dict[str, int]]:
    wrong = keys["attacker"][:-6] + "AAAAAA"
    headers = {
        "no_key": {},
        "wrong_key": {"X-API-Key": wrong},
        "expired_key": {"X-API-Key": keys["expired"]},
        "revoked_key": {"X-API-Key": keys["revoked"]},
        "wrong_role": {"X-API-Key": keys["wrong-role"]},
    }
    out = {}
    with httpx.Client(timeout=30) as c:
        for kind, h in headers.items():
            statuses = [c.post(url + "/predict", json={"inputs": sample}, headers=h).status_code
                        for _ in range(attempts)]
            out[kind] = {"attempts": attempts, "blocked": sum(s != 200 for s in statuses), "statuses": statuses}
    return out


def run_scenario(path: str | Path, *, out: str | Path) -> dict[str, Any]:
    """Run the scenario at ``path``; writes report.json, report.md, queries.jsonl and the attacker's result dir."""
    sc, policy = load_scenario(path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = Path(sc.target.run_dir) if sc.target.run_dir else out / "target"
    if sc.target.run_dir and not run_dir.is_absolute():
        run_dir = (Path(path).parent / run_dir).resolve()
    if not sc.target.run_dir:
        train_reference_model(run_dir, model=sc.target.model, dataset=sc.target.dataset, epochs=sc.target.epochs,
                              max_train=sc.target.max_train or None, seed=sc.seed)
    served = load_final_model(run_dir)
    x_train, _, x_test, y_test, _ = raw_dataset(served.dataset)
    policy, keys = _with_keys(policy, sc)
    qlog = QueryLog(out / "queries.jsonl")
    app = create_app(served, policy, query_log=qlog)
    rng = np.random.default_rng(sc.seed)
    half = len(x_test) // 2
    perm = rng.permutation(len(x_test))
    eval_idx, honest_pool = perm[:half], perm[half:]
    target_labels = served.probabilities(torch.from_numpy(x_test[eval_idx])).argmax(1).numpy()
    honest_stats = []
    with LocalServer(app) as url:
        for i in range(sc.honest.users):
            remote = RemoteModel(url, key=keys[f"honest-{i}"], batch_size=sc.honest.batch_size)
            idx = rng.permutation(honest_pool)[: sc.honest.queries]
            try:
                remote.query(x_test[idx])
            except QueryRefused as e:
                log.warning("honest user %d refused: %s", i, e)
            honest_stats.append(vars(remote.stats))
        unauthorized = _unauthorized_attempts(url, keys, x_test[:1].tolist(), sc.unauthorized.attempts)
        attacker = RemoteModel(url, key=keys["attacker"], batch_size=sc.attacker.batch_size)
        common = dict(budget=sc.attacker.budget, eval_x=x_test[eval_idx], eval_y=y_test[eval_idx],
                      target_labels=target_labels, surrogate=sc.attacker.surrogate, num_classes=served.num_classes,
                      epochs=sc.attacker.epochs, seed=sc.seed)
        if sc.attacker.method == "knockoff":
            extraction = knockoff_extract(attacker, x_train, **common)
        else:
            seeds = x_train[rng.permutation(len(x_train))[: sc.attacker.seeds]]
            extraction = jacobian_extract(attacker, seeds, **common)
    qlog.close()
    report = _metrics(sc, qlog.entries, unauthorized, extraction.to_dict(), honest_stats)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "report.md").write_text(_markdown(report))
    from fedsec.extraction.results import write_result_dir

    write_result_dir(extraction, out / "attacker")
    return report


def _metrics(sc: Scenario, entries: list[dict], unauthorized: dict, extraction: dict, honest: list) -> dict[str, Any]:
    attempts = sum(v["attempts"] for v in unauthorized.values())
    blocked = sum(v["blocked"] for v in unauthorized.values())
    users = [e for e in entries if e["client"].startswith(("honest-", "attacker"))]
    queries = sum(e["batch_size"] for e in users)
    detected = sum(e["batch_size"] for e in users if e["flagged"] or e["decision"] == "blocked_by_monitor")
    att = [e for e in users if e["client"] == "attacker"]
    hon = [e for e in users if e["client"].startswith("honest-")]
    att_q, hon_q = sum(e["batch_size"] for e in att), sum(e["batch_size"] for e in hon)
    att_det = sum(e["batch_size"] for e in att if e["flagged"] or e["decision"] == "blocked_by_monitor")
    hon_det = sum(e["batch_size"] for e in hon if e["flagged"] or e["decision"] == "blocked_by_monitor")
    first_flag = next((i for i, e in enumerate(att) if e["flagged"] or e["decision"] == "blocked_by_monitor"), None)
    return {
        "scenario": sc.name,
        "A/C": {"formula": "blocked unauthorized attempts / unauthorized attempts", "blocked": blocked,
                "attempts": attempts, "value": blocked / attempts if attempts else None, "by_kind": unauthorized},
        "Q": {"formula": "anomalous queries detected / queries (honest users + attacker)", "detected": detected,
              "queries": queries, "value": detected / queries if queries else None},
        "monitor_detection_rate_attacker": att_det / att_q if att_q else None,
        "monitor_false_positive_rate_honest": hon_det / hon_q if hon_q else None,
        "honest_users_flagged": len({e["client"] for e in hon if e["flagged"]}),
        "attacker_queries_before_flag": sum(e["batch_size"] for e in att[:first_flag]) if first_flag is not None
        else None,
        "extraction": {k: extraction[k] for k in ("method", "budget", "queries_spent", "refused_requests",
                                                  "stopped_early", "stop_decision", "status", "final_accuracy",
                                                  "final_agreement")},
        "honest_users": honest,
    }


def _markdown(r: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    ex = r["extraction"]
    lines = [
        f"# Scenario {r['scenario']}",
        "",
        "| metric | value | inputs |",
        "|---|---|---|",
        f"| A/C | {fmt(r['A/C']['value'])} | {r['A/C']['blocked']} blocked / {r['A/C']['attempts']} attempts |",
        f"| Q | {fmt(r['Q']['value'])} | {r['Q']['detected']} detected / {r['Q']['queries']} queries |",
        f"| monitor detection (attacker) | {fmt(r['monitor_detection_rate_attacker'])} | |",
        f"| monitor false positives (honest) | {fmt(r['monitor_false_positive_rate_honest'])} | |",
        f"| attacker queries before flag | {fmt(r['attacker_queries_before_flag'])} | |",
        f"| extraction agreement | {fmt(ex['final_agreement'])} | {ex['method']}, {ex['queries_spent']} queries "
        f"answered of {ex['budget']}, {ex['status']} {ex['stop_decision']} |",
        f"| surrogate accuracy | {fmt(ex['final_accuracy'])} | |",
        "",
    ]
    return "\n".join(lines)
