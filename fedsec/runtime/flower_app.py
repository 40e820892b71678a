"""fedsec as a Flower App: ``flwr run .`` runs the same ServerApp and ClientApp as ``fedsec run``.

The run config (``[tool.flwr.app.config]`` in ``pyproject.toml``, overridable with ``flwr run . --run-config``)
names the experiment::

    config = "experiments/quickstart.toml"   # relative to the working directory or to the fedsec checkout
    overrides = ""                            # e.g. "rounds=3 defense.strategy='median'" (space-separated key=value)
    out = ""                                  # run directory; default runs/<name>-<time>

The number of simulated SuperNodes must equal ``data.num_clients`` (``flwr run . --federation-config
"num-supernodes=20"``); the ServerApp says so when it differs. Each worker builds the client data itself from the
experiment and its seed, once per worker process (Flower's simulation runtime starts Ray for us, so there is no
driver to put the data in the object store). Under ``flwr run`` the server aggregates in the ServerApp process;
colluding attackers and CKKS encryption need the runner's extra actors, so they run with ``fedsec run`` only.
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

APP_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "experiments/quickstart.toml"


def plan_from_run_config(run_config: dict) -> RunPlan:
    """The run plan of the experiment named by a Flower run config (keys ``config`` and ``overrides``)."""
    name = str(run_config.get("config") or DEFAULT_CONFIG)
    path = Path(name)
    if not path.is_absolute() and not path.is_file():
        path = APP_ROOT / name
    plan = load_plan(path, shlex.split(str(run_config.get("overrides") or "")))
    if plan.crypto is not None:
        raise ConfigError("encryption.scheme='ckks' needs the runner's key authority: use `fedsec run`")
    if plan.attack.colluding:
        raise ConfigError("attack.knowledge='colluding' needs the runner's collusion board: use `fedsec run` "
                          "or attack.knowledge='omniscient'")
    return plan


@cache
def _client_app(config: str, overrides: str) -> ClientApp:
    from fedsec.clients.app import make_client_app
    from fedsec.clients.spec import ClientSpec

    plan = plan_from_run_config({"config": config, "overrides": overrides})
    return make_client_app(ClientSpec.from_plan(plan, data_ref=None))


def _dispatch(message: Message, context: Context) -> Message:
    run_config = context.run_config
    return _client_app(str(run_config.get("config", "")), str(run_config.get("overrides", "")))(message, context)


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
        raise ConfigError(f"the federation has {nodes} SuperNodes but data.num_clients={wanted}; run "
                          f"`flwr run . --federation-config \"num-supernodes={wanted}\"`")
    out = str(context.run_config.get("out") or "") or default_run_dir(plan.name)
    run_dir = RunDirectory(out, plan, config_toml=plan.to_toml())
    t_data = time.perf_counter()
    data = build_federated_data(plan.data_config, plan.seed)
    data_seconds = time.perf_counter() - t_data
    outcome = ServerOutcome()
    try:
        run_rounds(grid, plan.server_plan(), data, run_dir, outcome=outcome)
    finally:
        summary = run_dir.finish(stopped_reason=outcome.stopped_reason,
                                 extra=summary_extra(plan, outcome, data_seconds=data_seconds,
                                                     wall_seconds=time.perf_counter() - t0, runtime="flwr run"))
        add_seed_metrics(plan, summary, run_dir.path)
    print(f"fedsec: run directory {Path(out).resolve()}", flush=True)
