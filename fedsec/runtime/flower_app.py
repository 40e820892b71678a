"""fedsec as a Flower App: ``flwr run .`` runs the same ServerApp and ClientApp as ``fedsec run``.

The run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, overridable with ``flwr run . --run-config``)
names the experiment::

    config = "experiments/quickstart.toml"   # relative to the working directory or to the fedsec checkout
    overrides = ""                            # e.g. "rounds=3 defense.strategy='median'" (space-separated key=value)
    out = ""                                  # run directory; default runs/<name>-<time>

The number of SuperNodes must equal ``data.num_clients`` (in simulation: ``flwr run . --federation-config
"num-supernodes=20"``; on the deployment engine, one ``flower-supernode`` per client, as ``fedsec deploy`` starts
them, :mod:`fedsec.runtime.deployment`); the ServerApp says so when it differs. Each worker builds the client data
itself from the experiment and its seed, once per worker process (there is no driver to put the data in the object
store). The server aggregates in the ServerApp process. Colluding attackers and the CKKS key authority need the
runner's extra actors, so they run with ``fedsec run`` only; CKKS with ``encryption.trust = "clients"`` or
``"threshold"`` runs here
when the SuperNodes' node config names the clients' key directory (``fedsec-keys``) and the run config the
server's public key info (``server_keys``), as ``fedsec deploy`` sets them up.
"""

from __future__ import annotations

import shlex
import time
from functools import cache
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedsec.errors import ConfigError
from fedsec.plan import RunPlan, load_plan

APP_ROOT = Path(__file__).resolve().parents[2]  # the checkout: pyproject.toml, experiments/
DEFAULT_CONFIG = "experiments/quickstart.toml"
SERVER_KEYS_KEY = "server_keys"  # run config: the public key info file (encryption.trust = clients | threshold)
CLIENT_KEYS_KEY = "fedsec-keys"  # node config: the clients' key directory (encryption.trust = clients | threshold)


def plan_from_run_config(run_config: dict) -> RunPlan:
    """The run plan of the experiment named by a Flower run config (keys ``config`` and ``overrides``)."""
    name = str(run_config.get("config") or DEFAULT_CONFIG)
    path = Path(name)
    if not path.is_absolute() and not path.is_file():
        path = APP_ROOT / name
    plan = load_plan(path, shlex.split(str(run_config.get("overrides") or "")))
    check_app_plan(plan)
    if plan.crypto is not None and not run_config.get(SERVER_KEYS_KEY):
        raise ConfigError(f"encryption.trust={plan.facts.trust!r} needs the clients' keys provisioned: use "
                          "`fedsec deploy`, which gives the SuperNodes the key directory and the server the public "
                          "info")
    return plan


def check_app_plan(plan: RunPlan) -> None:
    """Refuse what needs the runner's Ray actors (:class:`ConfigError` with the way out)."""
    if plan.crypto is not None and plan.facts.trust == "authority":
        raise ConfigError("encryption.trust='authority' needs the runner's key authority: use `fedsec run`, or "
                          "encryption.trust='clients' or 'threshold' with `fedsec deploy`")
    if plan.attack.colluding:
        raise ConfigError("attack.knowledge='colluding' needs the runner's collusion board: use `fedsec run` "
                          "or attack.knowledge='omniscient'")


@cache
def _client_app(config: str, overrides: str, keys: str, server_keys: str) -> ClientApp:
    from fedsec.clients.app import make_client_app
    from fedsec.clients.spec import ClientSpec
    from fedsec.crypto.client_keys import ClientKeyDir
    from fedsec.crypto.threshold import ThresholdKeyDir

    plan = plan_from_run_config({"config": config, "overrides": overrides, SERVER_KEYS_KEY: server_keys})
    crypto_ref = None
    if plan.crypto is not None:
        if not keys:
            raise ConfigError(f"encryption.trust={plan.facts.trust!r}: this SuperNode's node config names no key "
                              f"directory ({CLIENT_KEYS_KEY}=...)")
        crypto_ref = ThresholdKeyDir(keys) if plan.facts.trust == "threshold" else ClientKeyDir(keys)
    return make_client_app(ClientSpec.from_plan(plan, data_ref=None, crypto_ref=crypto_ref))


def _dispatch(message: Message, context: Context) -> Message:
    run_config = context.run_config
    return _client_app(str(run_config.get("config", "")), str(run_config.get("overrides", "")),
                       str(context.node_config.get(CLIENT_KEYS_KEY, "")),
                       str(run_config.get(SERVER_KEYS_KEY, "")))(message, context)


client_app = ClientApp()
client_app.train()(_dispatch)
client_app.evaluate()(_dispatch)
client_app.query()(_dispatch)

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Load the experiment from the run config, run every round on ``grid``, write the run directory."""
    from fedsec.data.federated import build_federated_data
    from fedsec.results import RunDirectory
    from fedsec.runtime.runner import add_seed_metrics, default_run_dir, summary_extra
    from fedsec.server.app import ServerOutcome, run_rounds

    t0 = time.perf_counter()
    plan = plan_from_run_config(context.run_config)
    wanted, deadline = plan.facts.num_clients, time.monotonic() + 15.0
    while (nodes := len(list(grid.get_node_ids()))) < wanted and time.monotonic() < deadline:
        time.sleep(0.2)  # SuperNodes register while the ServerApp starts
    if nodes != wanted:
        raise ConfigError(f"the federation has {nodes} SuperNodes but data.num_clients={wanted}; start one "
                          f"SuperNode per client (`fedsec deploy` does), or in simulation run "
                          f"`flwr run . --federation-config \"num-supernodes={wanted}\"`")
    out = str(context.run_config.get("out") or "") or default_run_dir(plan.name)
    resume = str(context.run_config.get("resume") or "") == "1"
    run_dir = RunDirectory(out, plan, config_toml=plan.to_toml(), resume=resume)
    state = None
    if resume:  # `fedsec deploy --resume`: from the last checkpoint; later rows are dropped and redone
        from fedsec.server.checkpoint import load_checkpoint

        state = load_checkpoint(run_dir.path)
        run_dir.truncate_after(state["round"] if state else -1)
    t_data = time.perf_counter()
    data = build_federated_data(plan.data_config, plan.seed)
    data_seconds = time.perf_counter() - t_data
    outcome = ServerOutcome()
    keys = None
    if plan.crypto is not None:  # trust = "clients" or "threshold": the public info only (checked above)
        from fedsec.crypto.client_keys import ServerKeys

        keys = ServerKeys.read(Path(str(context.run_config[SERVER_KEYS_KEY])))
    runtime = "flwr deployment" if context.run_config.get("engine") == "deployment" else "flwr run"
    try:
        run_rounds(grid, plan.server_plan(), data, run_dir, outcome=outcome, key_authority=keys, resume_state=state)
    finally:
        summary = run_dir.finish(stopped_reason=outcome.stopped_reason,
                                 extra=summary_extra(plan, outcome, data_seconds=data_seconds,
                                                     wall_seconds=time.perf_counter() - t0, runtime=runtime))
        add_seed_metrics(plan, summary, run_dir.path)
    print(f"fedsec: run directory {Path(out).resolve()}", flush=True)
