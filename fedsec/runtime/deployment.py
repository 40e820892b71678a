"""fedsec on Flower's deployment engine on one machine: a SuperLink, one SuperNode per client, ``flwr run``.

Under ``fedsec run`` (Flower's simulation engine) the ServerApp runs in the driver, which also holds handles to
the Ray actors that run the clients and keeps every node's ``context.state``: code in the server's process can
reach into the clients. Here (``fedsec deploy``) nothing is shared: the ServerApp runs in a ``flwr-serverapp``
process that the SuperLink starts, each client behind a ``flower-supernode`` process of its own, and Flower starts a
``flwr-clientapp`` process for every message (Flower 1.42: ``SubprocessExecutor``); server and clients talk only
through the SuperLink's messages. No Ray. Each SuperNode's ``--node-config`` stays on that node (Flower never sends
it to the SuperLink), so under ``encryption.trust = "clients"`` or ``"threshold"`` the clients' key directory is
named there and the server gets only the public key info (a file given in the run config).

Operating-system accounts: started as root, the SuperLink and the ServerApp run as ``nobody`` (:class:`ServerAccount`,
``--server-user``) and the clients as the launching account, so the server's process can read neither the clients'
key files nor their memory; otherwise (not root, or ``nobody`` cannot run this Python) everything runs as one
account, which can, and the result says why. It is slow: every message starts a Python process that imports torch
and builds its client's data (about 90 s for the 2-round digits smoke run on 2 cores, against 12 s with ``fedsec
run``).

Flower's flags used (flwr 1.42): ``flower-superlink --insecure --host --port`` (Control, Fleet and ServerAppIo on
one port), ``flower-supernode --insecure --superlink --host --port --node-config``, ``flwr run APP CONNECTION
--stream --run-config`` with the connection in ``$FLWR_HOME/config.toml``; ``flwr run`` exits 0 when the ServerApp
fails, so the run's status is read back with ``flwr ls``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fedsec.crypto.openfhe_side import OPENFHE_PYTHON_ENV, openfhe_python
from fedsec.errors import ConfigError, FedsecRuntimeError
from fedsec.plan import RunPlan

from .flower_app import APP_ROOT, SERVER_KEYS_KEY, check_app_plan
from .processes import LINUX, die_with_parent, free_port, stop_tree, wait_port

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
    server_user: str  # the account the server ran as ("": the clients' own)
    why_shared: str = ""  # why the server ran as the clients' account, when it did


def _wait_port(port: int, process: subprocess.Popen, what: str, log: Path, timeout: float = 60.0) -> None:
    why = wait_port(port, process, timeout=timeout)
    if why == "exited":
        raise DeploymentError(f"{what} ended with exit code {process.returncode} before it listened; see {log}")
    if why == "timeout":
        raise DeploymentError(f"{what} did not open 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def _follow(submit: subprocess.Popen, rounds_csv: Path, on_round: Callable[[dict[str, str]], None] | None, *,
            deadline: float, logs: Path, sync: Callable[[], None] | None = None) -> None:
    """Wait for ``flwr run`` to end, handing each new row of the run's ``rounds.csv`` to ``on_round`` (and calling
    ``sync`` after each new round: the server's staging folder copied to the run directory)."""
    seen = 0
    while True:
        ended = submit.poll() is not None
        if rounds_csv.is_file():
            with rounds_csv.open(newline="") as f:
                rows = list(csv.DictReader(f))
            for row in rows[seen:]:
                if on_round is not None:
                    on_round(row)
            if len(rows) > seen and sync is not None:
                sync()
            seen = max(seen, len(rows))
        if ended:
            return
        if time.monotonic() > deadline:
            raise DeploymentError(f"the run did not end within the timeout; logs in {logs}")
        time.sleep(0.5)


@dataclass(frozen=True)
class ServerAccount:
    """The operating-system account the SuperLink, and so the ServerApp, runs as when it is not the clients'."""

    name: str
    uid: int
    gid: int

    @classmethod
    def resolve(cls, name: str | None, *, also: tuple[list[str], ...] = ()) -> tuple[ServerAccount | None, str]:
        """(the account, or None for the launching one; why not another). ``"auto"``: ``nobody`` when this process
        may switch accounts (root) and that account can run this Python with Flower, else the launching account;
        ``""``/None: the launching account; a name: that account, or :class:`DeploymentError` saying why not.
        ``also``: further commands the account must be able to run (the OpenFHE side Python under threshold CKKS)."""
        auto = name == "auto"
        if auto:
            if os.geteuid() != 0:
                return None, "not started as root, so the server cannot run as another account"
            name = "nobody"
        if not name:
            return None, "--server-user ''"
        try:
            if os.geteuid() != 0:
                raise DeploymentError(f"--server-user {name}: starting the server as another account needs root")
            try:
                entry = pwd.getpwnam(name)
            except KeyError as e:
                raise DeploymentError(f"--server-user {name}: no such account") from e
            account = cls(name, entry.pw_uid, entry.pw_gid)
            account.check(also)
            return account, ""
        except DeploymentError as e:
            if not auto:
                raise
            return None, str(e)

    def check(self, also: tuple[list[str], ...] = ()) -> None:
        """That the account can run this Python and import Flower (a Python under a home directory only its owner
        may enter cannot be), and run each command of ``also``."""
        for command in ([sys.executable, "-c", "import flwr.serverapp"], *also):
            try:
                done = subprocess.run(command, user=self.uid, group=self.gid, extra_groups=[], cwd="/",
                                      capture_output=True, text=True, timeout=120, check=False)
            except (OSError, subprocess.SubprocessError) as e:
                raise DeploymentError(f"--server-user {self.name}: cannot run {command[0]} as {self.name}: "
                                      f"{e}") from e
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise DeploymentError(f"--server-user {self.name}: {' '.join(command)} fails as {self.name}: "
                                      f"{last}")

    def own(self, path: Path) -> Path:
        os.chown(path, self.uid, self.gid)
        return path


def _copy_run(staging: Path, out: Path) -> None:
    """The server's staging run directory to ``out`` (as rounds end, and at the end), so that a killed command
    leaves the rounds and checkpoint so far where ``--resume`` finds them. A file the server is rewriting may be
    copied half-written; the next copy mends it."""
    try:
        shutil.copytree(staging, out, dirs_exist_ok=True)
    except (OSError, shutil.Error) as e:
        logger.warning("fedsec deploy: copying the run directory: %s", e)


def run_deployment(plan: RunPlan, out: Path, *, timeout: float = 3600.0, server_user: str | None = "auto",
                   resume: bool = False, on_round: Callable[[dict[str, str]], None] | None = None) -> DeploymentResult:
    """Run ``plan`` on a local SuperLink and one SuperNode per client; the run directory is ``out``; ``on_round``
    gets each row of ``rounds.csv`` as it is written. Under CKKS (``trust = "clients"`` or ``"threshold"``) the keys are
    provisioned first: the SuperNodes get the key directory in their node config, the ServerApp the public info
    file. ``server_user`` (``"auto"``: ``nobody`` when run as root): the account the SuperLink and the ServerApp run
    as, apart from the clients' (the launching) account, so that the server's process cannot read the clients' key
    files or memory; it then writes the run directory in a staging folder of its own, copied to ``out`` at the end.
    The ServerApp reads the resolved config (``plan.to_toml()``), so the config file need not be readable by that
    account (data directories named in it must be). ``resume``: go on from ``out``'s last checkpoint (not under
    local DP: each client's accountant history would have to reach its SuperNode)."""
    if not (APP_ROOT / "pyproject.toml").is_file():
        raise DeploymentError(f"`fedsec deploy` runs the Flower App of a fedsec checkout (pyproject.toml with "
                              f"[tool.flwr.app]); none at {APP_ROOT}")
    check_app_plan(plan)  # before anything starts: what needs Ray actors is refused with the way out
    if resume and plan.experiment.privacy.mode == "local":
        raise ConfigError("privacy.mode='local': `fedsec deploy --resume` cannot hand the clients their accountant "
                          "histories; resume local-DP runs with `fedsec run --resume`")
    also: tuple[list[str], ...] = ()
    if plan.crypto is not None and plan.facts.trust == "threshold":  # the server fuses in an OpenFHE side process
        also = ([str(openfhe_python()), "-I", "-c", "import openfhe"],)
    account, why_shared = ServerAccount.resolve(server_user, also=also)
    if account is None:
        logger.warning("fedsec deploy: the server runs as this account (%s): it can read the clients' key files "
                       "and memory", why_shared)
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="fedsec-deploy-"))
    work.chmod(0o711)  # the server's account may pass through to its own folders, not list or read the rest
    logs, home = work / "logs", work / "flwr-home"  # the clients' side and the flwr CLI
    server_home, server_flwr, staging = work / "server-home", work / "server-flwr", work / "run"
    logs.mkdir(mode=0o700)  # the launching account's (the server's processes write to files opened here)
    home.mkdir()
    for folder in (server_home, server_flwr, staging):
        folder.mkdir()
        if account is not None:
            account.own(folder)
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    base = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    if also:  # threshold CKKS: Flower runs the app from its own copy, which has no .venv-openfhe beside it
        base[OPENFHE_PYTHON_ENV] = also[0][0]
    env = {**base, "FLWR_HOME": str(home)}
    server_env = {**base, "FLWR_HOME": str(server_flwr), "HOME": str(server_home),
                  "XDG_CACHE_HOME": str(server_home / ".cache")} if account is not None else env
    config_file = work / "experiment.toml"  # the resolved config: the same plan on both sides
    config_file.write_text(plan.to_toml())
    config_file.chmod(0o644)
    run_dir = staging if account is not None else Path(out).resolve()
    if resume and account is not None:  # the server's account goes on in its own copy of the run directory
        shutil.copytree(out, staging, dirs_exist_ok=True)
        for path in [staging, *staging.rglob("*")]:
            account.own(path)
    run_config = {"config": str(config_file), "overrides": "", "out": str(run_dir), "engine": "deployment",
                  "resume": "1" if resume else ""}
    keys = None
    processes: list[subprocess.Popen] = []

    def start(args: list[str], name: str, *, as_server: bool = False) -> subprocess.Popen:
        log = (logs / f"{name}.log").open("w")
        user = {"user": account.uid, "group": account.gid, "extra_groups": []} if as_server and account else {}
        try:
            process = subprocess.Popen([str(bin_dir / args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT,
                                       env=server_env if as_server else env, cwd=server_home if as_server else work,
                                       start_new_session=True,  # Ctrl-C reaches us; we stop them in order
                                       preexec_fn=die_with_parent if LINUX else None, **user)  # and if we are killed
        except OSError as e:
            raise DeploymentError(f"cannot start {args[0]} ({bin_dir / args[0]}): {e}") from e
        processes.append(process)
        return process

    t0 = time.perf_counter()
    try:
        if plan.crypto is not None:  # trust = "clients" or "threshold" (check_app_plan refused the authority)
            keys = plan.start_keys()
            server_file = work / "server-keys.info"  # public: the context without its secret key, verify keys
            keys.write_server_info(server_file)
            server_file.chmod(0o644)
            run_config[SERVER_KEYS_KEY] = str(server_file)
        link = start(["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
                      "--host", "127.0.0.1", "--port", str(port)], "superlink", as_server=True)
        _wait_port(port, link, "the SuperLink", logs / "superlink.log")
        n = plan.facts.num_clients
        for pid in range(n):
            node_port = free_port()
            node_config = f"partition-id={pid} num-partitions={n}"
            if keys is not None:
                node_config += f" fedsec-keys={json.dumps(str(keys.path))}"
            node = start(["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                          "--port", str(node_port), "--node-config", node_config], f"supernode{pid}")
            _wait_port(node_port, node, f"SuperNode {pid}", logs / f"supernode{pid}.log")
        logger.info("fedsec deploy: SuperLink on 127.0.0.1:%d (account %s) and %d SuperNodes up; logs in %s", port,
                    account.name if account else "this one", n, logs)
        text = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        with (logs / "flwr_run.log").open("w") as log:
            submit = subprocess.Popen([str(bin_dir / "flwr"), "run", str(APP_ROOT), CONNECTION, "--stream",
                                       "--run-config", text], env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=die_with_parent if LINUX else None)
            processes.append(submit)
            _follow(submit, run_dir / "rounds.csv", on_round, deadline=time.monotonic() + timeout, logs=logs,
                    sync=(lambda: _copy_run(staging, Path(out))) if account is not None else None)
        listing = subprocess.run([str(bin_dir / "flwr"), "ls", CONNECTION, "--format", "json"], env=env, cwd=work,
                                 capture_output=True, text=True, timeout=120, check=False)
        try:
            runs = json.loads(listing.stdout)["runs"]
            status = str(runs[-1]["status"]) if runs else "not found"
        except (ValueError, KeyError, TypeError):
            status = f"unknown ({listing.stdout.strip()[:200] or listing.stderr.strip()[:200]})"
    finally:
        stop_tree(processes)
        if keys is not None:
            keys.stop()
        if account is not None and staging.is_dir():  # the server's run directory, handed to the launching account
            _copy_run(staging, Path(out))
        for folder in (home, server_home, server_flwr, staging):  # Flower's state, installed apps; the logs stay
            shutil.rmtree(folder, ignore_errors=True)
        for file in (work / "server-keys.info", config_file):
            file.unlink(missing_ok=True)
    return DeploymentResult(Path(out), status, time.perf_counter() - t0, logs, account.name if account else "",
                            why_shared)
