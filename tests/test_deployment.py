"""``fedsec deploy`` (fedsec/runtime/deployment.py): the run on Flower's deployment engine on this machine, a
SuperLink, one SuperNode per client, the ServerApp in a ``flwr-serverapp`` process of its own and no Ray. With the
CKKS key held by the clients, what code in the server's process reaches of the key is measured by the curious
server (``collusion.routes``): no Ray, no object, and (started as root, the server runs as ``nobody``) no key
file; under one shared account the key files are readable (docs/encryption.md says so)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from fedsec.crypto.openfhe_side import missing_reason
from fedsec.errors import ConfigError
from fedsec.runtime.flower_app import SERVER_KEYS_KEY, plan_from_run_config

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "digits_smoke.toml"
FEDSEC = [sys.executable, "-m", "fedsec.cli"]


def test_the_flower_app_takes_ckks_only_with_the_clients_keys_provisioned():
    with pytest.raises(ConfigError, match="encryption.trust='authority' needs the runner's key authority"):
        plan_from_run_config({"config": str(SMOKE), "overrides": "encryption.scheme='ckks' "
                                                                  "encryption.trust='authority'"})
    with pytest.raises(ConfigError, match="needs the clients' keys provisioned: use `fedsec deploy`"):
        plan_from_run_config({"config": str(SMOKE), "overrides": "encryption.scheme='ckks'"})
    plan = plan_from_run_config({"config": "experiments/digits_smoke.toml", "overrides": "encryption.scheme='ckks'",
                                 SERVER_KEYS_KEY: "/nonexistent"})  # a relative config: from the checkout
    assert plan.facts.trust == "clients"


def test_deploy_refuses_a_run_directory_that_is_not_empty_and_what_needs_ray(tmp_path):
    (tmp_path / "something").write_text("x")
    done = subprocess.run([*FEDSEC, "deploy", str(SMOKE), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 2 and "the directory is not empty" in done.stderr
    done = subprocess.run([*FEDSEC, "deploy", str(SMOKE), "--set", "encryption.scheme=ckks", "--set",
                           "encryption.trust=authority", "--out", str(tmp_path / "new")], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and "needs the runner's key authority" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "new").exists()  # refused before anything started


def _flower_processes() -> set[int]:
    """Flower's processes alive (a killed one waiting for init to reap it is not)."""
    out = subprocess.run(["ps", "-eo", "pid=,stat=,args="], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[0]) for line in out.splitlines()
            if re.search(r"flower-super|flwr-serverapp|flwr-clientapp", line) and not line.split()[1].startswith("Z")}


@pytest.mark.slow
@pytest.mark.parametrize(("trust", "tolerance"), [
    ("clients", 1e-6),
    pytest.param("threshold", 1e-5, marks=pytest.mark.skipif(bool(missing_reason()), reason=missing_reason() or "-"))])
def test_ckks_with_the_clients_keys_on_the_deployment_engine(tmp_path, trust, tolerance):
    before = _flower_processes()
    overrides = ["rounds=2", "encryption.scheme=ckks", f"encryption.trust={trust}", "attack.kind=collude_with_server",
                 "attack.client_ids=[3]"]
    done = subprocess.run([*FEDSEC, "deploy", str(SMOKE), *[a for o in overrides for a in ("--set", o)],
                           "--out", str(tmp_path / "run"), "--timeout", "900"],
                          capture_output=True, text=True, timeout=1000, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "round 1: accuracy 0.8644" in done.stderr and "round 2: accuracy 0.9111" in done.stderr  # as they ended
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["runtime"] == "flwr deployment" and summary["stopped_reason"] == "completed"
    rounds = pd.read_csv(tmp_path / "run" / "rounds.csv")
    # the same run under `fedsec run` (2026-12-04): 0.8644 and 0.9111 (the curious server withholds replies)
    assert rounds["accuracy"].iloc[1:].sub([0.8644, 0.9111]).abs().max() < 1e-3
    routes = summary["collusion"]["routes"]
    assert routes["ray_named_actor"]["found"] == "the server's process is not connected to Ray"
    assert routes["objects_in_process"]["found"] == "no object holding or naming a key"
    if "the server ran as nobody" in done.stdout:  # started as root: the clients' key files are out of its reach
        assert routes["key_files"] == {"found": "no readable key file", "victim_update_error": None, "best_key": None}
    else:  # one machine, one account: the files are readable, as docs/encryption.md says, and the command says so
        assert "note: the server ran as this account" in done.stderr
        assert routes["key_files"]["victim_update_error"] < tolerance
    assert summary["collusion"]["best_error"] < tolerance  # and one colluder with the withheld replies suffices
    assert not list(Path(tempfile.gettempdir()).glob(f"fedsec-{trust}-keys-*".replace("clients-", "client-"))), \
        "the keys go with the run"
    assert _flower_processes() <= before  # everything it started is gone


@pytest.mark.slow
def test_a_deployed_run_stopped_with_ctrl_c_resumes_to_the_same_rounds(tmp_path):
    import signal
    import time

    run, log = tmp_path / "run", tmp_path / "first.log"
    cmd = [*FEDSEC, "deploy", str(SMOKE), "--set", "rounds=2", "--set", "encryption.scheme=ckks", "--out", str(run),
           "--timeout", "600"]  # a hung run ends the command, and with it this loop
    with log.open("w") as err:
        first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        while "round 1: accuracy" not in log.read_text():  # the CLI prints each round as it ends
            assert first.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    text = log.read_text()
    assert first.returncode == 130 and "fedsec deploy --resume" in text, text[-2000:]
    assert not _flower_processes()  # everything it started is stopped
    done = subprocess.run([*FEDSEC, "deploy", "--resume", str(run)], capture_output=True, text=True, timeout=900,
                          cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rounds = pd.read_csv(run / "rounds.csv")
    assert rounds["round"].tolist() == [0, 1, 2]
    assert rounds["accuracy"].iloc[1:].sub([0.9111, 0.9044]).abs().max() < 1e-3  # as the uninterrupted run
