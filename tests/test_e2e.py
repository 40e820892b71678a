"""End to end through Flower's simulation engine on Ray: a tiny digits run, twice, via the CLI and the API."""

from __future__ import annotations

import json
import tomllib
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from fedsec.cli import app
from fedsec.clients.attacks import ATTACKS, Attack, AttackContext
from fedsec.plan import load_plan as load_experiment
from fedsec.runtime.runner import keep_ray, run_experiment

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "digits_smoke.toml"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same config and seed run twice: once through `fedsec run`, once through the Python API."""
    base = tmp_path_factory.mktemp("runs")
    with keep_ray():  # the second run takes the first's client actors (the "shared_ray" fixture's way)
        result = CliRunner().invoke(app, ["run", str(SMOKE), "--out", str(base / "a"), "--set", "rounds=3"])
        assert result.exit_code == 0, result.output
        second = run_experiment(load_experiment(SMOKE, ["rounds=3"]), base / "b")
    return base / "a", second.run_dir, result.output


def test_run_directory_follows_the_results_contract(two_runs):
    run_dir, _, output = two_runs
    assert {p.name for p in run_dir.iterdir()} >= {"config.toml", "rounds.csv", "clients.csv", "summary.json",
                                                   "plots"}
    assert (run_dir / "plots" / "accuracy.png").stat().st_size > 10_000
    config = tomllib.loads((run_dir / "config.toml").read_text())
    assert config["rounds"] == 3 and config["train"]["batch_size"] == 16 and config["backend"]["num_cpus"] == 1.0

    rounds = pd.read_csv(run_dir / "rounds.csv")
    assert list(rounds["round"]) == [0, 1, 2, 3]
    assert {"accuracy", "loss", "seconds", "train_loss", "recall_0", "recall_9"} <= set(rounds.columns)
    # 10 classes: chance is 0.1; the initial model sits near it, training lifts it well above
    assert rounds["accuracy"].iloc[0] < 0.3
    assert rounds["accuracy"].iloc[-1] > 0.8
    assert rounds["loss"].iloc[-1] < rounds["loss"].iloc[0]

    clients = pd.read_csv(run_dir / "clients.csv")
    assert len(clients) == 3 * 4
    assert set(clients["client"]) == {0, 1, 2, 3}
    # FedAvg: each client's weight is its share of the round's examples
    share = clients["num_examples"] / clients.groupby("round")["num_examples"].transform("sum")
    assert (clients["accepted"] - share).abs().max() < 1e-6 and (clients["status"] == "accepted").all()
    assert (clients["malicious"] == 0).all() and (clients["update_norm"] > 0).all()
    assert clients["node"].str.len().gt(10).all()  # a Ray node id
    assert clients["num_examples"].groupby(clients["round"]).sum().eq(clients["num_examples"].iloc[:4].sum()).all()

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["stopped_reason"] == "completed"
    assert summary["seed"] == 0 and summary["versions"]["flwr"] == metadata.version("flwr")
    assert summary["accuracy"] == pytest.approx(rounds["accuracy"].iloc[-1])
    assert "run directory" in output and "accuracy" in output


def test_same_config_and_seed_give_identical_rounds(two_runs):
    a, b, _ = two_runs
    ra, rb = (pd.read_csv(d / "rounds.csv").filter(regex=r"^(?!.*seconds$)") for d in (a, b))
    assert {"accuracy", "loss", "train_loss"} <= set(ra.columns) and "eval_seconds" not in ra.columns
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    ca, cb = (pd.read_csv(d / "clients.csv").drop(columns=["node"]) for d in (a, b))
    pd.testing.assert_frame_equal(ca, cb, check_exact=True)


class NaNUpdate(Attack):
    """Sends an all-NaN update (a test attack: the config refuses ``attack.scale = nan``, tests/test_config_fuzz.py)."""

    kind = "nan_update"
    description = "test attack: NaN update"

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        return torch.full_like(update, float("nan"))


@pytest.mark.usefixtures("shared_ray")
def test_nan_updates_are_rejected_and_the_run_goes_on(tmp_path, two_runs):
    """Two clients send NaN updates: rejected, recorded, never aggregated; training goes on; the honest clients'
    updates are exactly those of the clean run."""
    ATTACKS.register("nan_update", NaNUpdate)
    try:
        experiment = load_experiment(SMOKE, ["attack.kind=nan_update", "attack.client_ids=[1, 2]", "rounds=2"])
        result = run_experiment(experiment, tmp_path / "run")
    finally:
        ATTACKS.unregister("nan_update")
    clients = pd.read_csv(result.run_dir / "clients.csv")
    bad = clients[clients["malicious"] == 1]
    assert set(bad["client"]) == {1, 2} and len(bad) == 4
    assert (bad["status"] == "invalid: non-finite values (NaN/Inf) in the update").all()
    assert (bad["accepted"] == 0).all()
    good = clients[clients["malicious"] == 0]
    assert (good["status"] == "accepted").all() and good.groupby("round")["accepted"].sum().round(6).eq(1).all()
    rounds = pd.read_csv(result.run_dir / "rounds.csv")
    assert list(rounds["clients_failed"].iloc[1:]) == [2, 2]
    assert rounds["accuracy"].iloc[-1] > 0.7 and rounds["loss"].notna().all()
    assert result.summary["malicious_clients"] == [1, 2]
    clean = pd.read_csv(two_runs[0] / "clients.csv")
    first = clean[(clean["round"] == 1) & clean["client"].isin([0, 3])].set_index("client")["update_norm"]
    ours = good[good["round"] == 1].set_index("client")["update_norm"]
    pd.testing.assert_series_equal(ours, first, check_exact=True)


class CrashingClient(Attack):
    """Raises inside the client (a test attack): the client's reply is a Flower error message."""

    kind = "crash"
    description = "test attack: the client raises"

    def poison_update(self, update: torch.Tensor, ctx: AttackContext) -> torch.Tensor:
        raise RuntimeError("injected client failure")


@pytest.mark.usefixtures("shared_ray")
def test_failed_client_under_ckks_keeps_its_identity(tmp_path):
    """Under CKKS a failed client's row keeps its partition id, malicious flag and node (it was client = -1,
    malicious = 0, no node, and detection metrics NaN); the round goes on with the others."""
    ATTACKS.register("crash", CrashingClient)
    try:
        experiment = load_experiment(SMOKE, ["attack.kind=crash", "attack.client_ids=[1]", "rounds=2",
                                             "encryption.scheme=ckks"])
        result = run_experiment(experiment, tmp_path / "run")
    finally:
        ATTACKS.unregister("crash")
    clients = pd.read_csv(result.run_dir / "clients.csv")
    failed = clients[clients["status"].str.startswith("failed")]
    assert len(failed) == 2 and set(failed["client"]) == {1} and (failed["malicious"] == 1).all()
    assert failed["node"].str.len().gt(10).all() and (failed["accepted"] == 0).all()
    assert (clients.loc[clients["client"] != 1, "status"] == "accepted").all()
    rounds = pd.read_csv(result.run_dir / "rounds.csv")
    assert list(rounds["malicious_sampled"].iloc[1:]) == [1, 1] and list(rounds["clients_failed"].iloc[1:]) == [1, 1]
    assert result.summary["stopped_reason"] == "completed"


@pytest.mark.usefixtures("shared_ray")
def test_central_dp_budget_guard_stops_the_run_before_overspending(tmp_path):
    """Noise 2, all 4 clients each round, delta 1e-3: rounds 1..4 would spend 1.546, 2.330, 2.971, 3.537;
    with a budget of 3.0 the run stops before round 4."""
    overrides = ["privacy.mode=central", "privacy.noise_multiplier=2.0", "privacy.epsilon=3.0",
                 "privacy.delta=1e-3", "privacy.clip_norm=5.0", "rounds=6"]
    result = run_experiment(load_experiment(SMOKE, overrides), tmp_path / "run")
    rounds = pd.read_csv(result.run_dir / "rounds.csv")
    assert list(rounds["round"]) == [0, 1, 2, 3]
    assert rounds["epsilon"].round(3).tolist() == [0.0, 1.546, 2.330, 2.971]
    assert (rounds["epsilon"] <= 3.0).all()
    summary = result.summary
    assert summary["stopped_reason"] == "privacy_budget" and summary["rounds_completed"] == 3
    assert summary["privacy"]["epsilon"] == pytest.approx(2.9714, abs=1e-3)
    assert summary["privacy"]["epsilon_budget"] == 3.0
    clients = pd.read_csv(result.run_dir / "clients.csv")
    assert (clients["accepted"] <= 0.25 + 1e-9).all()  # DP-FedAvg: uniform weights, clipped, divided by k=4


@pytest.mark.usefixtures("shared_ray")
def test_ckks_encrypted_run_matches_the_plaintext_run(tmp_path, two_runs):
    """The same run under CKKS: the server sums ciphertexts only; accuracy equals the plaintext run's. Run in
    cohort mode (two Flower nodes of two clients each, every client encrypting its own update), against the
    plaintext run's one message per client."""
    result = run_experiment(load_experiment(SMOKE, ["rounds=3", "encryption.scheme=ckks", "backend.messages=cohort",
                                                    "backend.cohort_nodes=2"]), tmp_path / "run")
    assert result.summary["client_messages"] == "cohort (2 nodes)"
    encrypted = pd.read_csv(result.run_dir / "rounds.csv")
    plain = pd.read_csv(two_runs[0] / "rounds.csv")
    assert (encrypted["accuracy"] - plain["accuracy"]).abs().max() < 0.01
    assert (encrypted["loss"] - plain["loss"]).abs().max() < 1e-3
    # 4 clients x 650 parameters: ciphertexts of about 8x the float32 bytes
    assert (encrypted["bytes_up"].iloc[1:] / plain["bytes_up"].iloc[1:] > 4).all()
    clients = pd.read_csv(result.run_dir / "clients.csv")
    assert clients["update_norm"].isna().all()  # the server never sees a plaintext update


@pytest.mark.usefixtures("shared_ray")
def test_local_dp_accountants_accumulate_and_the_guard_refuses_overspending(tmp_path):
    """DP-SGD on every client with noise 1.0 (about 2.4, 3.1, 3.6 epsilon after 1, 2, 3 rounds here): with a
    budget of 3.3 every client trains twice, refuses round 3, and the run stops with the privacy reason."""
    overrides = ["privacy.mode=local", "privacy.noise_multiplier=1.0", "privacy.epsilon=3.3", "privacy.delta=1e-4",
                 "rounds=5"]
    result = run_experiment(load_experiment(SMOKE, overrides), tmp_path / "run")
    clients = pd.read_csv(result.run_dir / "clients.csv")
    trained = clients[clients["status"] == "accepted"].pivot(index="round", columns="client", values="epsilon")
    assert list(trained.index) == [1, 2]
    assert (trained.loc[2] > trained.loc[1]).all() and (trained.loc[1] > 2.0).all()  # accountants accumulate
    assert (trained.max() <= 3.3).all()
    refused = clients[clients["round"] == 3]
    assert len(refused) == 4 and refused["status"].str.contains("privacy budget exhausted").all()
    rounds = pd.read_csv(result.run_dir / "rounds.csv")
    assert (rounds["epsilon"] <= 3.3).all() and rounds["epsilon"].iloc[-1] == pytest.approx(trained.loc[2].max())
    assert result.summary["stopped_reason"] == "privacy_budget"
    assert set(result.summary["privacy"]["client_epsilon"]) == {"0", "1", "2", "3"}
    # every client epsilon is the larger of two independent accountants', both recorded, and they agree
    done = clients[clients["status"] == "accepted"]
    both = done[["epsilon_opacus_rdp", "epsilon_dp_accounting_rdp"]]
    assert (done["epsilon"] == both.max(axis=1)).all() and ((both.max(axis=1) - both.min(axis=1)) < 0.01).all()


def test_a_two_node_ray_cluster_gives_the_single_node_results(tmp_path, two_runs):
    """A two-node Ray cluster on loopback (1 CPU per node): clients run on both nodes, and the run equals the
    single-node run of the same config and seed. Only the cluster's own processes are stopped."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        result = CliRunner().invoke(app, ["run", str(SMOKE), "--out", str(tmp_path / "cluster"), "--set", "rounds=3",
                                          "--set", f"backend.address={cluster.address}"])
        assert result.exit_code == 0, result.output
    finally:
        cluster.shutdown()
    run_dir = tmp_path / "cluster"
    clients = pd.read_csv(run_dir / "clients.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert clients["node"].nunique() == 2
    assert len(summary["clients_per_node"]) == 2 and sum(summary["clients_per_node"].values()) == 3 * 4
    assert sorted(summary["client_slots_per_node"].values()) == [1, 1]
    single = two_runs[0]
    ra, rb = (pd.read_csv(d / "rounds.csv").filter(regex=r"^(?!.*seconds$)") for d in (single, run_dir))
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)
    ca, cb = (pd.read_csv(d / "clients.csv").drop(columns=["node"]) for d in (single, run_dir))
    pd.testing.assert_frame_equal(ca, cb, check_exact=True)


def test_a_cluster_without_the_requested_resources_fails_fast(tmp_path):
    """No node has a GPU (CI), yet each client asks for one: a clear error, not a wait on an empty actor pool
    (the subprocess timeout only guards against a hang; it is not a speed target)."""
    import os
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "-m", "fedsec.cli", "run", str(SMOKE), "--out", str(tmp_path / "r"),
                             "--set", "backend.num_gpus=0.5"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "COLUMNS": "200"})
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "backend.num_gpus=0.5: no Ray node can host a client" in output.replace("\n", " ")
    assert "0 GPUs" in output and "Traceback" not in output


def test_flwr_run_runs_the_same_server_and_client_apps(tmp_path, two_runs):
    """`flwr run .` (Flower's own CLI, a SuperLink in simulation mode, fedsec.runtime.flower_app from pyproject's
    [tool.flwr.app]) gives the rounds of `fedsec run` for the same config and seed."""
    import os
    import shutil
    import socket
    import subprocess
    import sys
    import time

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "flower-superlink").exists():
        pytest.skip("flower-superlink is not installed next to this Python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    superlink = subprocess.Popen(
        [str(bin_dir / "flower-superlink"), "--insecure", "--simulation", "--disable-runtime-dependency-installation",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and superlink.poll() is None, "SuperLink did not start"
                time.sleep(0.3)
        out = tmp_path / "flwr-run"
        result = subprocess.run(
            [str(bin_dir / "flwr"), "run", str(REPO), "--stream", "--run-config",
             f"config='{SMOKE}' overrides='rounds=3' out='{out}'", "--federation-config", "num-supernodes=4"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        superlink.terminate()
        superlink.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    ra, rb = (pd.read_csv(d / "rounds.csv").filter(regex=r"^(?!.*seconds$)") for d in (two_runs[0], out))
    # the same accuracies; the server's evaluation and norms run in another process with another torch thread
    # count, so losses and norms may differ in the last bits of a float32 sum
    pd.testing.assert_frame_equal(ra, rb, check_exact=False, rtol=1e-6)
    pd.testing.assert_series_equal(ra["accuracy"], rb["accuracy"], check_exact=True)
    ca, cb = (pd.read_csv(d / "clients.csv").drop(columns=["node"]) for d in (two_runs[0], out))
    pd.testing.assert_frame_equal(ca, cb, check_exact=False, rtol=1e-6)
    assert json.loads((out / "summary.json").read_text())["runtime"] == "flwr run"
