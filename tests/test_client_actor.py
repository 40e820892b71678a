"""fedsec's client actor (fedsec/runtime/client_actor.py): its processes never import Flower's simulation engine,
they pass a message through the ClientApp it comes with, and a failing ClientApp reaches the engine as Flower's
``ClientAppException``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "digits_smoke.toml"
#: what importing Flower's ``flwr.simulation`` brings (its engine, the SuperLink's state, FastAPI)
ENGINE = ("flwr.simulation", "flwr.server.superlink.fleet.vce", "flwr.server.superlink.linkstate", "sqlalchemy",
          "alembic", "fastapi")


def test_the_actor_and_the_client_import_none_of_flowers_engine():
    code = ("import sys, fedsec.runtime.client_actor, fedsec.clients.app\n"
            f"print(sorted(m for m in sys.modules if m.startswith({ENGINE!r}))[:5])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _probe(message, context):
    """Runs in the actor: which of Flower's engine modules and torch the process has imported."""
    import sys

    from flwr.app import ConfigRecord, Message, RecordDict

    if message.content["config"]["fail"]:
        raise ValueError("the probe was told to fail")
    engine = sorted(m for m in sys.modules if m.startswith(ENGINE))
    return Message(RecordDict({"probe": ConfigRecord({"engine": engine or [""], "torch": "torch" in sys.modules,
                                                      "cid": context.node_config["partition-id"]})}),
                   reply_to=message)


@pytest.mark.e2e
def test_a_runs_actors_train_without_flowers_engine_and_report_failures_as_flower_does(tmp_path, shared_ray,
                                                                                         server_identity):
    import ray
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.clientapp.client_app import ClientAppException

    from fedsec.plan import load_plan
    from fedsec.runtime import warm_actors
    from fedsec.runtime.runner import run_experiment

    result = run_experiment(load_plan(SMOKE, ["rounds=1", "data.num_clients=3", "train.clients_per_round=3"]),
                            tmp_path / "run")
    assert result.summary["rounds_completed"] == 1
    actors = [a for kept in warm_actors._KEPT.values() for a in kept]
    assert actors

    def app_fn() -> ClientApp:
        app = ClientApp()
        app.train()(_probe)
        return app

    def message(fail: bool) -> Message:
        return Message(RecordDict({"config": ConfigRecord({"fail": fail})}), dst_node_id=7,
                       message_type=MessageType.TRAIN)

    context = Context(run_id=1, node_id=7, node_config={"partition-id": 2}, state=RecordDict(), run_config={})
    for actor in actors:
        cid, reply, _ = ray.get(actor.run.remote(app_fn, message(False), "2", context), timeout=60)
        probe = reply.content["probe"]
        assert cid == "2" and probe["cid"] == 2
        assert probe["torch"] is True  # the actor trained a client of the run
        assert probe["engine"] == [""]  # and never imported Flower's engine
        with pytest.raises(ClientAppException, match="the probe was told to fail"):
            ray.get(actor.run.remote(app_fn, message(True), "2", context), timeout=60)


@pytest.mark.e2e
def test_actors_started_ahead_import_the_client_before_any_message(shared_ray, server_identity):
    import ray
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.clientapp import ClientApp

    from fedsec.config import BackendConfig
    from fedsec.runtime import runner, warm_actors

    runner.init_ray(BackendConfig())
    warm_actors.release_kept_actors()  # none kept from an earlier test: these start now
    one_cpu = {"num_cpus": 1.0, "num_gpus": 0.0}
    count = warm_actors.start_actors(one_cpu, preload=("no_such_module_here", *runner.CLIENT_MODULES))
    started = [a._actor_id.hex() for a in warm_actors._KEPT[warm_actors._key(one_cpu)]]
    assert count == len(started) == int(ray.cluster_resources()["CPU"])

    def app_fn() -> ClientApp:
        app = ClientApp()
        app.train()(_probe)
        return app

    message = Message(RecordDict({"config": ConfigRecord({"fail": False})}), dst_node_id=7,
                      message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    for actor in warm_actors._KEPT[warm_actors._key(one_cpu)]:  # a missing module did not stop the others
        probe = ray.get(actor.run.remote(app_fn, message, "0", context), timeout=120)[1].content["probe"]
        assert probe["torch"] is True and probe["engine"] == [""]
    assert warm_actors.start_actors(one_cpu) == count  # kept: none started
    assert [a._actor_id.hex() for a in warm_actors._KEPT[warm_actors._key(one_cpu)]] == started
    two_cpus = {"num_cpus": 2.0, "num_gpus": 0.0}
    assert warm_actors.start_actors(two_cpus) == count // 2  # the 1-CPU actors made room
    assert list(warm_actors._KEPT) == [warm_actors._key(two_cpus)]
