"""fedsec on Flower's deployment engine on one machine: a SuperLink, one SuperNode per client, ``flwr run``.

Under ``fedsec run`` (Flower's simulation engine) the ServerApp runs in the driver, which also holds handles to
the Ray actors that run the clients and keeps every node's ``context.state``: code in the server's process can
reach into the clients. Here (``fedsec deploy``) nothing is shared: the ServerApp runs in a ``flwr-serverapp``
process that the SuperLink starts, each client behind a ``flower-supernode`` process of its own, and Flower starts a
``flwr-clientapp`` process for every message (Flower 1.42: ``SubprocessExecutor``); server and clients talk only
through the SuperLink's messages. No Ray. Each SuperNode's ``--node-config`` stays on that node (Flower never sends
it to the SuperLink), so under ``encryption.trust = "clients"`` the clients' key directory is named there and the
server gets only the public key info (a file given in the run config).

What it does not separate: every process runs as the same operating-system account on one machine, so the
server's process could still read the clients' key files or memory through the operating system; SuperNodes on
the clients' own machines close that. It is slow: every message starts a Python process that imports torch and
builds its client's data (about 100 s for the 2-round digits smoke run on 2 cores, against 12 s with ``fedsec
run``).

Flower's flags used (flwr 1.42): ``flower-superlink --insecure --host --port`` (Control, Fleet and ServerAppIo on
one port), ``flower-supernode --insecure --superlink --host --port --node-config``, ``flwr run APP CONNECTION
--stream --run-config`` with the connection in ``$FLWR_HOME/config.toml``; ``flwr run`` exits 0 when the ServerApp
fails, so the run's status is read back with ``flwr ls``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fedsec.errors import FedsecRuntimeError
from fedsec.plan import RunPlan

from .flower_app import APP_ROOT, SERVER_KEYS_KEY

logger = logging.getLogger(__name__)

CONNECTION = "fedsec-local"


class DeploymentError(FedsecRuntimeError):
    """The local deployment could not be started or the run did not complete."""


@dataclass
class DeploymentResult:
    run_dir: Path
    status: str
    wall_seconds: float
    log_dir: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen, what: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(f"{what} ended with exit code {process.returncode} before it listened; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise DeploymentError(f"{what} did not open 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc (Flower's SuperExec and apps start sessions of their own, so a process
    group does not hold them)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(pids: list[int]) -> list[int]:
    tree, out, todo = _children(), [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += tree.get(pid, [])
    return out


def _stop_all(processes: list[subprocess.Popen]) -> None:
    """TERM every process the deployment started and their descendants, then KILL what is left after 10 s."""
    pids = _tree([p.pid for p in processes if p.poll() is None])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(p.poll() is None for p in processes):
            time.sleep(0.1)
    for p in processes:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 10  # the descendants are reaped by init once their parents are gone
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.1)


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie waiting to be reaped counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_deployment(plan: RunPlan, config: Path, overrides: list[str], out: Path, *,
                   timeout: float = 3600.0) -> DeploymentResult:
    """Run ``config`` (with ``overrides``; ``plan`` is its validated plan) on a local SuperLink and one SuperNode
    per client; the run directory is ``out``. Under CKKS with ``trust = "clients"`` the keys are provisioned first:
    the SuperNodes get the key directory in their node config, the ServerApp the public info file."""
    if not (APP_ROOT / "pyproject.toml").is_file():
        raise DeploymentError(f"`fedsec deploy` runs the Flower App of a fedsec checkout (pyproject.toml with "
                              f"[tool.flwr.app]); none at {APP_ROOT}")
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="fedsec-deploy-"))
    logs, home = work / "logs", work / "flwr-home"
    logs.mkdir()
    home.mkdir()
    port = _free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    keys = None
    run_config = {"config": str(Path(config).resolve()), "overrides": shlex.join(overrides),
                  "out": str(Path(out).resolve()), "engine": "deployment"}
    processes: list[subprocess.Popen] = []

    def start(args: list[str], name: str) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("w")
        process = subprocess.Popen([str(bin_dir / args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT,
                                   env=env, cwd=work)
        processes.append(process)
        return process

    t0 = time.perf_counter()
    try:
        if plan.crypto is not None and plan.facts.trust == "clients":
            keys = plan.start_keys()
            server_file = work / "server-keys.info"  # public: the context without its secret key, verify keys
            keys.write_server_info(server_file)
            run_config[SERVER_KEYS_KEY] = str(server_file)
        link = start(["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                      "--host", "127.0.0.1", "--port", str(port)], "superlink")
        _wait_port(port, link, "the SuperLink", logs / "superlink.log")
        n = plan.facts.num_clients
        for pid in range(n):
            node_port = _free_port()
            node_config = f"partition-id={pid} num-partitions={n}"
            if keys is not None:
                node_config += f" fedsec-keys={json.dumps(str(keys.path))}"
            node = start(["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                          "--port", str(node_port), "--node-config", node_config], f"supernode{pid}")
            _wait_port(node_port, node, f"SuperNode {pid}", logs / f"supernode{pid}.log")
        logger.info("fedsec deploy: SuperLink on 127.0.0.1:%d and %d SuperNodes up; logs in %s", port, n, logs)
        text = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        with (logs / "flwr_run.log").open("w") as log:
            try:
                subprocess.run([str(bin_dir / "flwr"), "run", str(APP_ROOT), CONNECTION, "--stream", "--run-config",
                                text], env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                               check=False)
            except subprocess.TimeoutExpired as e:
                raise DeploymentError(f"the run did not end within {timeout:.0f} s; logs in {logs}") from e
        listing = subprocess.run([str(bin_dir / "flwr"), "ls", CONNECTION, "--format", "json"], env=env, cwd=work,
                                 capture_output=True, text=True, timeout=120, check=False)
        try:
            runs = json.loads(listing.stdout)["runs"]
            status = str(runs[-1]["status"]) if runs else "not found"
        except (ValueError, KeyError, TypeError):
            status = f"unknown ({listing.stdout.strip()[:200] or listing.stderr.strip()[:200]})"
    finally:
        _stop_all(processes)
        if keys is not None:
            keys.stop()
        shutil.rmtree(home, ignore_errors=True)  # Flower's state and the installed app; the logs stay
        (work / "server-keys.info").unlink(missing_ok=True)
    return DeploymentResult(Path(out), status, time.perf_counter() - t0, logs)
